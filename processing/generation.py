"""Loading a LLaVA checkpoint and batched greedy generation: how `llava chat`, every evaluation and the demo get the
model and its answers.

Each sample is one conversation (Hugging Face chat format) and at most one image; prompts go through the processor's
chat template (`vicuna_v1` for this project's checkpoints), batches are left-padded so that every answer starts in
the same column, and a batch may mix samples with and without an image (ScienceQA's text-only problems). Images may
be given as paths: they are opened batch by batch, not all at once.

Decoding uses a static KV cache on a GPU, where transformers compiles the decoding step and replays it as CUDA graphs
(the speed benchmark's generation case); the greedy tokens are those of the default dynamic cache (tested). On a CPU
there is nothing to compile and it measured no faster, so the dynamic cache stays there.
"""

import argparse
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

import modeling_llava  # noqa: F401  (registers the Auto classes)


def load_llava(path: str | Path, device: str | None = None, vision_tower: str | None = None):
    """The model (in eval mode) and processor of a LLaVA checkpoint in any format `llava convert` reads (this
    plugin's, llava-hf, the original repository's), from a folder or the Hub; on `device` (default: CUDA when present)
    in bf16 there, else in fp32. `vision_tower` stands in for an original checkpoint's `mm_vision_tower`."""
    from huggingface_hub import snapshot_download

    from modeling_llava.convert_checkpoint import load_any

    folder = path if Path(path).is_dir() else snapshot_download(str(path))
    model, processor = load_any(folder, vision_tower=vision_tower)
    device = device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return model.to(device=device, dtype=dtype).eval(), processor


def decoding_kwargs(model, static_cache: bool | None = None) -> dict[str, str]:
    """`generate()` arguments for fast decoding: a static KV cache where `static_cache` (default: on a GPU)."""
    if static_cache is None:
        static_cache = model.device.type == "cuda"
    return {"cache_implementation": "static"} if static_cache else {}


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--static-cache`, as every command that answers questions with a checkpoint takes them."""
    parser.add_argument("--device", help="default: cuda when present, else cpu")
    parser.add_argument(
        "--static-cache",
        action=argparse.BooleanOptionalAction,
        help="decode with a static, compiled KV cache (default: on a GPU); the tokens are the same either way",
    )


def generate_greedy(
    model,
    processor,
    conversations: list[list[dict]],
    images: list[Image.Image | str | Path | None],
    batch_size: int = 8,
    max_new_tokens: int = 64,
    progress: bool = True,
    desc: str = "generating",
    static_cache: bool | None = None,
) -> list[str]:
    """The greedy answer to each `conversations[i]` about `images[i]` (None: no image), stripped of whitespace.

    `static_cache` decodes with a static KV cache (see `decoding_kwargs`; default: on a GPU).
    """
    if len(conversations) != len(images):
        raise ValueError(f"Got {len(conversations)} conversations but {len(images)} image entries; give one each.")
    answers = []
    for start in tqdm(range(0, len(conversations), batch_size), desc=desc, disable=not progress, leave=False):
        batch = conversations[start : start + batch_size]
        prompts = [processor.apply_chat_template(turns, add_generation_prompt=True) for turns in batch]
        batch_images = [
            [] if image is None else [image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")]
            for image in images[start : start + batch_size]
        ]
        inputs = processor(
            images=batch_images if any(batch_images) else None,
            text=prompts,
            padding=True,
            padding_side="left",
            add_special_tokens=False,  # the template already wrote the BOS
            return_tensors="pt",
        ).to(model.device, dtype=model.dtype)
        with torch.no_grad():
            generated = model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, **decoding_kwargs(model, static_cache)
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]
    return answers


__all__ = ["add_decoding_arguments", "decoding_kwargs", "generate_greedy", "load_llava"]
