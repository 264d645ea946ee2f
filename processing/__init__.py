"""Everything that turns raw data into model inputs.

The processor class itself lives in `modeling_llava/` (remote code must sit in one flat folder) and is re-exported
here; data readers and collators that only run locally join it with the training issue.
"""

from modeling_llava import CHAT_TEMPLATES, LlavaNextPluginProcessor, LlavaPluginProcessor, tokenizer_with_image_token

__all__ = ["CHAT_TEMPLATES", "LlavaNextPluginProcessor", "LlavaPluginProcessor", "tokenizer_with_image_token"]
