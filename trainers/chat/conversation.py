"""The one way a conversation becomes model inputs and an answer, for `llava chat`, `llava serve`'s API and its page.

Training renders with the processor's chat template and tokenizes the result without adding special tokens (the
template writes the BOS); answering must do exactly the same, or the model sees prompts it was never trained on. Images
are decoded as the training collator decodes them: `processing.images.to_rgb`, transparent pixels on the processor's
mean colour.
"""

import warnings
from typing import IO

import torch
from PIL import Image
from transformers import BatchFeature

from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from processing.images import to_rgb


def user_message(text: str, images: int = 0) -> dict:
    """A user turn in the Hugging Face chat format: its images first, where LLaVA's training data puts them."""
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render_conversation(
    processor: LlavaPluginProcessor, messages: list[dict], images: list[Image.Image] | None = None
) -> BatchFeature:
    """`input_ids` and `attention_mask` (1, prompt length, image tokens expanded) and, with images, `pixel_values`
    (images, 3, H, W) of `messages` followed by the assistant's generation prompt."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The template already wrote the BOS token.
    return processor(images=images or None, text=prompt, add_special_tokens=False, return_tensors="pt")


def on_model(inputs: BatchFeature, model: LlavaPluginForConditionalGeneration) -> BatchFeature:
    """`inputs` on the model's device, pixel values in its dtype (token ids stay integers)."""
    inputs = inputs.to(model.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    return inputs


def decode_answer(processor: LlavaPluginProcessor, new_tokens: torch.Tensor) -> str:
    """The text of generated tokens (1-D), special tokens dropped, stripped as the original's CLI strips it."""
    return processor.decode(new_tokens, skip_special_tokens=True).strip()


def image_background(processor: LlavaPluginProcessor) -> tuple[int, int, int]:
    """The colour transparent pixels become: the processor's mean colour, the colour LLaVA-1.5 pads images with."""
    mean = getattr(processor.image_processor, "image_mean", None) or (0, 0, 0)
    return tuple(round(255 * value) for value in mean)


def decode_image(
    file: str | IO[bytes], background: tuple[int, int, int], max_pixels: int | None = None
) -> Image.Image:
    """The RGB picture in `file` (a path or a binary stream).

    Raises `Image.DecompressionBombError` past `max_pixels` or PIL's `MAX_IMAGE_PIXELS` (read from the header, before
    any pixel is decoded; PIL itself only warns below twice its limit, here the limit is the limit) and `OSError` for
    anything that is not a whole image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as opened:
                if max_pixels is not None and opened.width * opened.height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"{opened.width}x{opened.height} = {opened.width * opened.height:,} pixels, "
                        f"more than the limit of {max_pixels:,}"
                    )
                opened.load()  # a truncated file fails here, not later in the processor
                return to_rgb(opened, background)
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from warning
        except (SyntaxError, ValueError, EOFError) as error:  # what some of PIL's decoders raise on corrupt data
            raise OSError(str(error)) from error


__all__ = [
    "assistant_message",
    "decode_answer",
    "decode_image",
    "image_background",
    "on_model",
    "render_conversation",
    "user_message",
]
