"""`PYTHON benchmarks/vllm_greedy.py FOLDER --image IMAGE --prompt TEXT --question TEXT --output FILE`: vLLM's greedy
tokens for one image, asked two ways.

Run by `benchmarks/vllm_export_check.py` with the interpreter of an environment that has vLLM; it imports vLLM and
Pillow only (not this package, whose transformers pin vLLM's CPU build does not accept). Two requests, as a server
gets them: `generate` with a prompt text holding `<image>`, and `chat` with an OpenAI-style message (the image as a
data URL, the prompt built by the folder's own chat template). For each, the JSON file (vLLM logs to stdout) holds the
prompt ids vLLM built (`<image>` expanded by the folder's processor) and the generated ids, past any EOS.
"""

import argparse
import base64
import json
from pathlib import Path

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", help="a llava-hf checkpoint, e.g. the output of `llava convert SRC DST --to llava-hf`"
    )
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", required=True, help="the prompt text for `generate`, with one <image>")
    parser.add_argument("--question", required=True, help="the user's text for `chat`")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--output", required=True, help="the JSON file to write")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    # fp32 as the plugin's side computes; eager, as a CPU has no graphs to capture; a short context for a small cache.
    llm = LLM(model=args.folder, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    # Past an EOS, so that no stop hides a difference; the caller cuts at the first one.
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=True)
    image = Image.open(args.image).convert("RGB")
    (generated,) = llm.generate({"prompt": args.prompt, "multi_modal_data": {"image": image}}, greedy, use_tqdm=False)
    url = "data:image/png;base64," + base64.b64encode(Path(args.image).read_bytes()).decode()
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": args.question}]
    (chatted,) = llm.chat([{"role": "user", "content": content}], greedy, use_tqdm=False)
    result = {
        name: {"prompt_ids": list(output.prompt_token_ids), "tokens": list(output.outputs[0].token_ids)}
        for name, output in (("generate", generated), ("chat", chatted))
    }
    Path(args.output).write_text(json.dumps(result))


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
