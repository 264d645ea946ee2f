"""Loading a LLaVA checkpoint and batched generation: how `llava chat`, `llava predict`, every evaluation and the
demo get the model and its answers.

Each sample is one conversation (Hugging Face chat format) and at most one image; prompts go through the processor's
chat template (`vicuna_v1` for this project's checkpoints), batches are left-padded so that every answer starts in
the same column, and a batch may mix samples with and without an image (ScienceQA's text-only problems). Images may
be given as paths: they are decoded batch by batch, not all at once, by training's decoder (`processing.images`), so
that a model is scored on the pixels it was trained on.

Decoding uses a static KV cache on a GPU, where transformers compiles the decoding step and replays it as CUDA graphs
(the speed benchmark's generation case); the greedy tokens are those of the default dynamic cache (tested). On a CPU
there is nothing to compile and it measured no faster, so the dynamic cache stays there.

A model answers in the precision asked (`--dtype`; `auto` is bf16 on a GPU, fp32 on a CPU), or with its language
model quantized by bitsandbytes on a GPU (`--load-in-4bit` / `--load-in-8bit`, the original's `--load-4bit` /
`--load-8bit`); a LoRA folder is loaded unmerged on its rebuilt base (`processing.adapters`).
"""

import argparse
import importlib.util
from collections.abc import Iterator
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from modeling_llava import TEMPLATE_NAMES, use_template  # the import registers the Auto classes

from .conversation import answer_text, stop_arguments
from .images import image_background, open_image


class CheckpointError(ValueError):
    """A model that cannot be loaded; the message names the folder or Hub id and why."""


# The precisions a model is loaded in for answering questions; `auto` is bf16 on a GPU, fp32 on a CPU.
DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZATIONS = ("4bit", "8bit")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """The torch dtype that `dtype` (one of `DTYPES`) names on `device`."""
    if dtype not in DTYPES:
        raise CheckpointError(f"Unknown dtype {dtype!r}: expected one of {', '.join(DTYPES)}.")
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, dtype)


def quantization_config(quantization: str, dtype: torch.dtype, device: str):
    """bitsandbytes' settings for loading the language model in `quantization` (`4bit`, `8bit`), as the original's
    `load_4bit` / `load_8bit` (`llava/model/builder.py`: NF4 with double quantization; LLM.int8()), computing in
    `dtype`. Raises `CheckpointError` where bitsandbytes cannot run: without CUDA, or without the package."""
    from transformers import BitsAndBytesConfig

    if quantization not in QUANTIZATIONS:
        raise CheckpointError(f"Unknown quantization {quantization!r}: expected one of {', '.join(QUANTIZATIONS)}.")
    flag = f"--load-in-{quantization}"
    if not torch.cuda.is_available():
        raise CheckpointError(
            f"{flag} quantizes with bitsandbytes, which needs a CUDA GPU, and none is present: leave it out "
            "(--dtype chooses the precision)."
        )
    if not str(device).startswith("cuda"):
        raise CheckpointError(f"{flag} quantizes with bitsandbytes, which needs a CUDA device, not {device!r}.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise CheckpointError(f"{flag} needs bitsandbytes: pip install 'llava-plugin[qlora]'.")
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
    )


def load_llava(
    path: str | Path,
    device: str | None = None,
    vision_tower: str | None = None,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
):
    """The model (in eval mode) and processor of a LLaVA checkpoint in any format `llava convert` reads (this
    plugin's, llava-hf, the original repository's), or of a LoRA adapter folder (`llava train lora`, applied unmerged
    to its rebuilt base: `processing.adapters`), from a folder or the Hub.

    On `device` (default: CUDA when present) in `dtype` (one of `DTYPES`), or with the language model quantized by
    bitsandbytes (`quantization`: `4bit`, `8bit`; CUDA only, this plugin's checkpoints and adapters). `vision_tower`
    stands in for an original checkpoint's `mm_vision_tower`. `template` (one of `TEMPLATE_NAMES`) replaces the
    checkpoint's own chat template for answering (`--template`): the one place where inference chooses it.

    Raises `CheckpointError` when `path` is neither a checkpoint folder nor a model the Hub serves, or cannot be
    loaded as asked."""
    from huggingface_hub import snapshot_download

    from modeling_llava.convert_checkpoint import load_any

    from .adapters import build_base, is_adapter, load_adapter

    device = device if device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = resolve_dtype(dtype, device)
    quantized = quantization_config(quantization, torch_dtype, device) if quantization else None
    local = Path(path)
    if not local.is_dir() and (local.exists() or local.is_absolute() or str(path).startswith((".", "~"))):
        raise CheckpointError(f"{str(path)!r} is not a folder: give a checkpoint folder or a Hub model id.")
    try:
        folder = path if local.is_dir() else snapshot_download(str(path))
    except (OSError, ValueError) as error:  # not a repo id, unknown on the Hub, or offline
        message = f"{str(path)!r} is neither a checkpoint folder nor a model on the Hub ({error})."
        raise CheckpointError(message) from error
    try:
        if is_adapter(folder):
            model, processor = load_adapter(folder, torch_dtype, quantized)
        elif quantized is not None:  # this plugin's checkpoints only (`build_base` says what to do with others)
            model, processor = build_base(folder, dtype=torch_dtype, quantization_config=quantized)
        else:
            model, processor = load_any(folder, vision_tower=vision_tower)
        # bitsandbytes' weights keep their storage type: only their device may change.
        model = model.to(device) if quantized is not None else model.to(device=device, dtype=torch_dtype)
    except (OSError, ValueError) as error:  # no config.json, another format, no llava_base.json, bad weights
        message = str(error) if str(path) in str(error) else f"Checkpoint {str(path)!r}: {error}"
        raise CheckpointError(message) from error
    if template is not None:
        try:
            use_template(processor, template)
        except ValueError as error:
            raise CheckpointError(str(error)) from error
    return model.eval(), processor


def decoding_kwargs(model, static_cache: bool | None = None) -> dict[str, str]:
    """`generate()` arguments for fast decoding: a static KV cache where `static_cache` (default: on a GPU)."""
    if static_cache is None:
        static_cache = model.device.type == "cuda"
    return {"cache_implementation": "static"} if static_cache else {}


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """`--dtype` and `--load-in-4bit` / `--load-in-8bit`, read into `args.dtype` and `args.quantization` (what
    `load_llava` takes). `llava chat` and `serve` define the same flags without importing torch (`command_line`)."""
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default="auto",
        help="weights' precision (auto: bfloat16 on a GPU, float32 on a CPU)",
    )
    quantize = parser.add_mutually_exclusive_group()
    for quantization in QUANTIZATIONS:
        quantize.add_argument(
            f"--load-in-{quantization}",
            dest="quantization",
            action="store_const",
            const=quantization,
            help=f"the language model in {quantization[0]}-bit (bitsandbytes, CUDA only)",
        )


def add_template_argument(parser: argparse.ArgumentParser) -> None:
    """`--template NAME`, read into `args.template` (what `load_llava` takes). `llava chat` and `serve` define the same
    flag without importing torch (`command_line`)."""
    parser.add_argument(
        "--template",
        choices=TEMPLATE_NAMES,
        help="answer in this chat template instead of the checkpoint's own (v0: the paper's LLaVA v1 checkpoints)",
    )


def add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device`, the precision (`add_precision_arguments`), `--template` and `--static-cache`, as every command that
    answers questions with a checkpoint takes them."""
    parser.add_argument("--device", help="default: cuda when present, else cpu")
    add_precision_arguments(parser)
    add_template_argument(parser)
    parser.add_argument(
        "--static-cache",
        action=argparse.BooleanOptionalAction,
        help="decode with a static, compiled KV cache (default: on a GPU); the tokens are the same either way",
    )


def sampling_arguments(temperature: float = 0.0, top_p: float = 1.0) -> dict:
    """`generate()` arguments for greedy decoding where `temperature` is 0, else sampling at `temperature` with nucleus
    `top_p`, as the original's `do_sample=True if temperature > 0`. Explicit either way, so that a checkpoint's
    generation_config.json does not choose between greedy and sampling."""
    if temperature > 0:
        return {"do_sample": True, "temperature": temperature, "top_p": top_p}
    return {"do_sample": False}


def generate_answers(
    model,
    processor,
    conversations: list[list[dict]],
    images: list[Image.Image | str | Path | None],
    batch_size: int = 8,
    max_new_tokens: int = 64,
    static_cache: bool | None = None,
    ids: list[str] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
    prefills: list[str] | None = None,
) -> Iterator[list[str]]:
    """Yields, batch after batch, the answer to each `conversations[i]` about `images[i]` (None: no image), stripped
    of whitespace: a caller can write each batch's answers before the next is generated (`llava predict`).

    Greedy where `temperature` is 0; sampled at `temperature` with nucleus `top_p` otherwise, as the original's
    `do_sample=True if temperature > 0` (other filters, such as transformers' default `top_k` of 50, are the
    checkpoint's generation config, as there), from torch's global generator (seed it with `transformers.set_seed`:
    the same seed and batches give the same answers). `prefills[i]`, where given, is text written after the
    generation prompt, which the answer continues (the original's ScienceQA answer prompter). Images (paths or PIL
    images) are decoded as training decodes them (`processing.images.open_image`); one that cannot be read raises a
    `DataError` naming `ids[i]` (default: `#i`) and the file. `static_cache` decodes with a static KV cache (see
    `decoding_kwargs`; default: on a GPU).
    """
    if len(conversations) != len(images):
        raise ValueError(f"Got {len(conversations)} conversations but {len(images)} image entries; give one each.")
    ids = ids if ids is not None else [f"#{index}" for index in range(len(images))]
    background = image_background(processor)
    sampling = sampling_arguments(temperature, top_p)
    for start in range(0, len(conversations), batch_size):
        batch = conversations[start : start + batch_size]
        positions = range(start, start + len(batch))
        prompts = [
            processor.apply_chat_template(turns, add_generation_prompt=True) + (prefills[i] if prefills else "")
            for i, turns in zip(positions, batch, strict=True)
        ]
        batch_images = [[] if images[i] is None else [open_image(ids[i], images[i], background)] for i in positions]
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
                **inputs,
                max_new_tokens=max_new_tokens,
                **sampling,
                **stop_arguments(processor),
                **decoding_kwargs(model, static_cache),
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        yield [answer_text(processor, text) for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


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
    ids: list[str] | None = None,
) -> list[str]:
    """The greedy answers of `generate_answers`, all at once, with a progress bar in questions."""
    answers = []
    with tqdm(total=len(conversations), desc=desc, unit="question", disable=not progress, leave=False) as bar:
        for batch in generate_answers(
            model, processor, conversations, images, batch_size, max_new_tokens, static_cache, ids
        ):
            answers += batch
            bar.update(len(batch))
    return answers


__all__ = [
    "DTYPES",
    "CheckpointError",
    "add_decoding_arguments",
    "add_precision_arguments",
    "add_template_argument",
    "decoding_kwargs",
    "generate_answers",
    "generate_greedy",
    "load_llava",
    "quantization_config",
    "resolve_dtype",
    "sampling_arguments",
]
