"""Batches for LLaVA training: TRL's vision-language collator, fed images that are opened in the dataloader worker.

Rows carry image paths (see `llava_data`), so a 665K-sample mix never sits decoded in memory and decoding runs in the
workers. Length has been dealt with before training (`drop_overflowing`), so the collator never truncates: TRL's
truncation would cut through image tokens and break the token/feature match.
"""

from dataclasses import dataclass
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from .images import image_background, open_image


@dataclass
class LlavaDataCollator(DataCollatorForVisionLanguageModeling):
    """TRL's `DataCollatorForVisionLanguageModeling` over rows of `{"id", "messages", "images"}`.

    With `assistant_only_loss=True`, labels keep only the assistant answers and their end-of-sequence token: the
    chat template's `{% generation %}` markers decide. With `False`, every text token is a label. Image tokens never
    are: they are replaced by image features, so there is nothing to predict there. `chat_template` names the
    processor's template to render (`"plain"` for stage 1; `None` for its default, `vicuna_v1`).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        background = image_background(self.processor)
        examples = [
            {
                "messages": example["messages"],
                "images": [open_image(example.get("id", "?"), image, background) for image in _images(example)],
            }
            for example in examples
        ]
        batch = super().torch_call(examples)
        batch["labels"][batch["input_ids"] == self.processor.image_token_id] = -100
        return batch


def _images(example: dict[str, Any]) -> list[Any]:
    images = example.get("images") or []
    return images if isinstance(images, list) else [images]  # a Hub dataset's single Image column


__all__ = ["LlavaDataCollator"]
