"""`llava merge-lora ADAPTER OUT`: fold a LoRA run into a full checkpoint that loads with `from_pretrained`.

A LoRA run may start from two backbones that never existed as one checkpoint, so the adapter folder records how its
base was built (`llava_base.json`); the base is rebuilt by the same function training used, the adapter (LoRA weights
plus the fully trained projector) is applied and merged with PEFT, and the result is saved with its processor. Like
the original's LoRA merge, the base is rebuilt unquantized, so QLoRA adapters merge into 16/32-bit weights.
"""

import json
from pathlib import Path

from peft import PeftModel
from transformers import AutoProcessor
from trl import ModelConfig

from hub_cards.model_card import ADAPTER_BASE_NAME
from modeling_llava.convert_checkpoint import atomic_folder

from .train import LlavaScriptArguments, build_model_and_processor


def merge_lora(adapter: str | Path, out: str | Path) -> Path:
    """Merges the adapter in `adapter` into its base model and saves the full checkpoint to `out`.

    `out` appears only once it is complete: the checkpoint is written beside it and renamed into place.
    """
    adapter, out = Path(adapter), Path(out)
    if not (adapter / ADAPTER_BASE_NAME).is_file():
        raise FileNotFoundError(
            f"{str(adapter)!r} has no {ADAPTER_BASE_NAME}: it is not the output of `llava train lora`."
        )
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} already exists and is not empty; choose another output folder.")
    base = json.loads((adapter / ADAPTER_BASE_NAME).read_text())
    model_args = ModelConfig(model_name_or_path=base["model_name_or_path"], dtype=base.get("dtype", "float32"))
    # Merged into full-precision weights, also for a QLoRA adapter: a 4-bit base cannot hold the merged values.
    model, _ = build_model_and_processor(LlavaScriptArguments(**base["script_args"]), model_args)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload(progressbar=True)

    with atomic_folder(out) as staging:
        merged.save_pretrained(staging)
        AutoProcessor.from_pretrained(adapter).save_pretrained(staging)
    return out


__all__ = ["merge_lora"]
