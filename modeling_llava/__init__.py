"""LLaVA as a Transformers-native model: importing this package registers it with the Auto classes.

This is the one place where registration happens. `register_for_auto_class` makes `save_pretrained` write `auto_map`
and copy this folder's code next to the weights, so a checkpoint also loads with `trust_remote_code=True` where this
package is not installed.
"""

from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModel,
    AutoModelForImageTextToText,
    AutoProcessor,
)
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from .attention_varlen import VARLEN_ATTENTION, varlen_attention_forward, varlen_mask
from .chat_templates import CHAT_TEMPLATES, TEMPLATE_NAMES, chat_template, stop_string, use_template
from .configuration_llava_next_plugin import LlavaNextPluginConfig
from .configuration_llava_plugin import LlavaPluginConfig
from .modeling_llava_next_plugin import (
    LlavaNextPluginForConditionalGeneration,
    LlavaNextPluginModel,
    LlavaNextPluginPreTrainedModel,
)
from .modeling_llava_plugin import (
    LlavaPluginForConditionalGeneration,
    LlavaPluginModel,
    LlavaPluginPreTrainedModel,
)
from .processing_llava_next_plugin import LlavaNextPluginProcessor
from .processing_llava_plugin import LlavaPluginProcessor, tokenizer_with_image_token

# Either model type with its head, for code that takes any checkpoint of this package (chat, serving, evaluation); both
# processors are `LlavaPluginProcessor`s (the NeXT one subclasses it).
AnyLlavaForConditionalGeneration = LlavaPluginForConditionalGeneration | LlavaNextPluginForConditionalGeneration

AutoConfig.register(LlavaPluginConfig.model_type, LlavaPluginConfig, exist_ok=True)
AutoModel.register(LlavaPluginConfig, LlavaPluginModel, exist_ok=True)
AutoModelForImageTextToText.register(LlavaPluginConfig, LlavaPluginForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlavaPluginConfig, LlavaPluginProcessor, exist_ok=True)
AutoConfig.register(LlavaNextPluginConfig.model_type, LlavaNextPluginConfig, exist_ok=True)
AutoModel.register(LlavaNextPluginConfig, LlavaNextPluginModel, exist_ok=True)
AutoModelForImageTextToText.register(LlavaNextPluginConfig, LlavaNextPluginForConditionalGeneration, exist_ok=True)
AutoProcessor.register(LlavaNextPluginConfig, LlavaNextPluginProcessor, exist_ok=True)

# The padding-free recipes' attention (`attn_implementation="torch_varlen"`), for training with this package.
AttentionInterface.register(VARLEN_ATTENTION, varlen_attention_forward)
ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_ATTENTION, varlen_mask)

LlavaPluginConfig.register_for_auto_class()
LlavaPluginModel.register_for_auto_class("AutoModel")
LlavaPluginForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
LlavaPluginProcessor.register_for_auto_class("AutoProcessor")
LlavaNextPluginConfig.register_for_auto_class()
LlavaNextPluginModel.register_for_auto_class("AutoModel")
LlavaNextPluginForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")
LlavaNextPluginProcessor.register_for_auto_class("AutoProcessor")

__all__ = [
    "AnyLlavaForConditionalGeneration",
    "CHAT_TEMPLATES",
    "TEMPLATE_NAMES",
    "VARLEN_ATTENTION",
    "LlavaNextPluginConfig",
    "LlavaNextPluginForConditionalGeneration",
    "LlavaNextPluginModel",
    "LlavaNextPluginPreTrainedModel",
    "LlavaNextPluginProcessor",
    "LlavaPluginConfig",
    "LlavaPluginForConditionalGeneration",
    "LlavaPluginModel",
    "LlavaPluginPreTrainedModel",
    "LlavaPluginProcessor",
    "chat_template",
    "stop_string",
    "tokenizer_with_image_token",
    "use_template",
]
