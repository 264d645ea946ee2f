"""`PYTHON benchmarks/vllm_greedy.py FOLDER --image IMAGE --prompt TEXT`: vLLM's greedy tokens for one prompt.

Run by `benchmarks/vllm_export_check.py` with the interpreter of an environment that has vLLM; it imports vLLM and
Pillow only (not this package, whose transformers pin vLLM's CPU build does not accept). Writes a JSON file (vLLM
logs to stdout): the prompt ids vLLM built (the `<image>` expanded by the folder's own processor) and the generated
token ids, past any EOS.
"""

import argparse
import json

from PIL import Image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folder", help="a llava-hf checkpoint, e.g. the output of `llava convert SRC DST --to llava-hf`"
    )
    parser.add_argument("--image", required=True)
    parser.add_argument("--prompt", required=True, help="the prompt text, with one <image>")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--output", required=True, help="the JSON file to write")
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    # fp32 as the plugin's side computes; eager, as a CPU has no graphs to capture; a short context for a small cache.
    llm = LLM(model=args.folder, dtype="float32", max_model_len=512, enforce_eager=True, seed=0)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.max_new_tokens, ignore_eos=True)
    image = Image.open(args.image).convert("RGB")
    (output,) = llm.generate({"prompt": args.prompt, "multi_modal_data": {"image": image}}, greedy, use_tqdm=False)
    result = {"prompt_ids": list(output.prompt_token_ids), "tokens": list(output.outputs[0].token_ids)}
    with open(args.output, "w") as file:
        json.dump(result, file)


if __name__ == "__main__":  # vLLM starts its engine in a spawned process, which imports this file again
    main()
