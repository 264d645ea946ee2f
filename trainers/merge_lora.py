"""`llava merge-lora ADAPTER OUT`: fold a LoRA run into a full checkpoint that loads with `from_pretrained`.

The adapter is loaded as every command loads it (`processing.adapters.load_adapter`: its base rebuilt from
`llava_base.json` by the function training built it with, the LoRA weights plus the fully trained projector applied
with PEFT), then merged with PEFT, and the result is saved with its processor. Like the original's LoRA merge, the base
is rebuilt unquantized, so QLoRA adapters merge into 16/32-bit weights.
"""

from pathlib import Path

from modeling_llava.convert_checkpoint import atomic_folder
from processing.adapters import load_adapter


def merge_lora(adapter: str | Path, out: str | Path) -> Path:
    """Merges the adapter in `adapter` into its base model and saves the full checkpoint to `out`.

    `out` appears only once it is complete: the checkpoint is written beside it and renamed into place.
    """
    adapter, out = Path(adapter), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{str(out)!r} already exists and is not empty; choose another output folder.")
    # In the dtype the run loaded its base in; merged into full-precision weights, also for a QLoRA adapter: a 4-bit
    # base cannot hold the merged values.
    model, processor = load_adapter(adapter)
    merged = model.merge_and_unload(progressbar=True)

    with atomic_folder(out) as staging:
        merged.save_pretrained(staging)
        processor.save_pretrained(staging)
    return out


__all__ = ["merge_lora"]
