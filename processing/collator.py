"""Batches for LLaVA training: TRL's vision-language collator, fed images that are opened in the dataloader worker.

Rows carry image paths (see `llava_data`), so a 665K-sample mix never sits decoded in memory and decoding runs in the
workers. Length has been dealt with before training (`drop_overflowing`), so the collator never truncates: TRL's
truncation would cut through image tokens and break the token/feature match.
"""

from dataclasses import dataclass
from typing import Any

from PIL import Image
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .llava_data import DataError


def open_image(record_id: str, image: Any) -> Image.Image:
    """An RGB PIL image from a path (or an already decoded image), with an error naming the record if it is bad."""
    if not isinstance(image, str):
        return image.convert("RGB")
    try:
        with Image.open(image) as opened:
            return opened.convert("RGB")
    except OSError as error:
        raise DataError(f"Record {record_id!r}: image file {image!r} cannot be read ({error}).") from error


@dataclass
class LlavaDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's `DataCollatorForVisionLanguageModeling` over rows of `{"id", "messages", "images"}`.

    With `assistant_only_loss=True`, labels keep only the assistant answers and their end-of-sequence token: the
    chat template's `{% generation %}` markers decide. `chat_template` names the processor's template to render
    (`"plain"` for stage 1; `None` for its default, `vicuna_v1`).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [
            {
                "messages": example["messages"],
                "images": [open_image(example.get("id", "?"), image) for image in example.get("images") or []],
            }
            for example in examples
        ]
        return super().torch_call(examples)


__all__ = ["LlavaDataCollator", "open_image"]
