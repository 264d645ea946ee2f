"""The one way a conversation becomes model inputs and an answer, for `llava chat`, `llava serve`'s API and its page.

Training renders with the processor's chat template and tokenizes the result without adding special tokens (the
template writes the BOS); answering must do exactly the same, or the model sees prompts it was never trained on. Images
are decoded as the training collator decodes them (`processing.images.decode_image`, transparent pixels on the
processor's mean colour). A template whose answers end with a stop string rather than `eos_token` (`v0`'s `###`) has
generation stop there (`stop_arguments`) and the string cut off the answer (`answer_text`), as the original's
`KeywordsStoppingCriteria` and its `outputs[:-len(stop_str)]`.
"""

import torch
from PIL import Image
from transformers import BatchFeature

from modeling_llava import LlavaPluginProcessor, stop_string


def user_message(text: str, images: int = 0) -> dict:
    """A user turn in the Hugging Face chat format: its images first, where LLaVA's training data puts them."""
    return {"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": text}]}


def assistant_message(text: str) -> dict:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render_conversation(
    processor: LlavaPluginProcessor, messages: list[dict], images: list[Image.Image] | None = None
) -> BatchFeature:
    """`input_ids` and `attention_mask` (1, prompt length, image tokens expanded) and, with images, `pixel_values`
    (images, 3, H, W; for LLaVA-NeXT images, tiles, 3, H, W with each image's `image_sizes`) of `messages` followed by
    the assistant's generation prompt."""
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # The template already wrote the BOS token.
    return processor(images=images or None, text=prompt, add_special_tokens=False, return_tensors="pt")


def stop_arguments(processor: LlavaPluginProcessor) -> dict:
    """`generate()` arguments that end an answer at the chat template's stop string, if it has one."""
    stop = stop_string(processor)
    return {"stop_strings": [stop], "tokenizer": processor.tokenizer} if stop else {}


def answer_text(processor: LlavaPluginProcessor, text: str, partial: bool = False) -> str:
    """Decoded answer `text` up to the chat template's stop string, stripped. `partial` (an answer still being
    generated) also holds back an end that may be the start of the stop string."""
    stop = stop_string(processor)
    if stop:
        text = text.split(stop, 1)[0]
        if partial:
            text = next((text[: -len(stop[:k])] for k in range(len(stop) - 1, 0, -1) if text.endswith(stop[:k])), text)
    return text.strip()


def decode_answer(processor: LlavaPluginProcessor, new_tokens: torch.Tensor) -> str:
    """The text of generated tokens (1-D), special tokens dropped, up to the template's stop string, stripped as the
    original's CLI strips it."""
    return answer_text(processor, processor.decode(new_tokens, skip_special_tokens=True))


__all__ = [
    "answer_text",
    "assistant_message",
    "decode_answer",
    "render_conversation",
    "stop_arguments",
    "user_message",
]
