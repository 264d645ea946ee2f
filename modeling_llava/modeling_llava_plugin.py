"""PyTorch LLaVA: a vision tower, a projector and a causal language model (Liu et al., "Visual Instruction Tuning").

Mirrors transformers' `modeling_llava.py` module for module and weight for weight (`model.vision_tower`,
`model.multi_modal_projector.linear_1/linear_2`, `model.language_model`, `lm_head`), so that a checkpoint of the
built-in `LlavaForConditionalGeneration` loads 1:1. What it adds: LLaVA v1's single linear projector and the other
projector types, an error that names the sample whose image tokens and features disagree, and `from_backbones`, which
builds a fresh LLaVA from a pretrained vision checkpoint and a pretrained LLM (the start of LLaVA's stage 1).
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache
from transformers.modeling_outputs import BaseModelOutputWithPast, BaseModelOutputWithPooling, ModelOutput
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import logging
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import select_hidden_states

from .configuration_llava_plugin import VISION_TOWERS_WITHOUT_CLS, LlavaPluginConfig, projector_depth

logger = logging.get_logger(__name__)


@dataclass
class LlavaPluginModelOutputWithPast(BaseModelOutputWithPast):
    r"""
    image_hidden_states (`torch.FloatTensor` of shape `(num_images * image_seq_length, hidden_size)`, *optional*):
        Projected image features that replaced the image tokens.
    """

    image_hidden_states: torch.FloatTensor | None = None


@dataclass
class LlavaPluginCausalLMOutputWithPast(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `(1,)`, *optional*, returned when `labels` is provided):
        Next-token prediction loss.
    logits (`torch.FloatTensor` of shape `(batch_size, sequence_length, vocab_size)`):
        Scores of the language modeling head.
    past_key_values (`Cache`, *optional*):
        Key/value cache of the language model, for fast decoding.
    image_hidden_states (`torch.FloatTensor` of shape `(num_images * image_seq_length, hidden_size)`, *optional*):
        Projected image features that replaced the image tokens.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.FloatTensor] | None = None
    attentions: tuple[torch.FloatTensor] | None = None
    image_hidden_states: torch.FloatTensor | None = None


class LlavaPluginMultiModalProjector(nn.Module):
    """Maps vision features to the LLM's embedding width.

    `linear` is LLaVA v1's single layer (`linear_1`); `mlpNx_gelu` stacks N layers with GELU between them
    (`linear_1`, `act`, `linear_2`, ...), which for N = 2 is exactly LLaVA-1.5 and transformers' built-in projector;
    `identity` passes features through unchanged.
    """

    def __init__(self, config: LlavaPluginConfig):
        super().__init__()
        self.depth = projector_depth(config.projector_type)
        in_features = config.vision_config.hidden_size * config.num_vision_feature_layers
        width = config.text_config.hidden_size
        for index in range(1, self.depth + 1):
            layer = nn.Linear(in_features if index == 1 else width, width, bias=config.multimodal_projector_bias)
            setattr(self, f"linear_{index}", layer)
        if self.depth > 1:
            self.act = ACT2FN["gelu"]

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        hidden_states = image_features
        for index in range(1, self.depth + 1):
            if index > 1:
                hidden_states = self.act(hidden_states)
            hidden_states = getattr(self, f"linear_{index}")(hidden_states)
        return hidden_states


class LlavaPluginPreTrainedModel(PreTrainedModel):
    config: LlavaPluginConfig
    config_class = LlavaPluginConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _skip_keys_device_placement = ["past_key_values"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True
    _supports_attention_backend = True


class LlavaPluginModel(LlavaPluginPreTrainedModel):
    """LLaVA without a language modeling head: vision tower, projector and the LLM's decoder."""

    def __init__(self, config: LlavaPluginConfig):
        super().__init__(config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaPluginMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    @merge_with_config_defaults
    @can_return_tuple
    @select_hidden_states("vision_feature_layer")
    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        """Encodes images and projects them into the LLM's embedding space.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`):
                Images as produced by the processor.

        Returns:
            The vision tower's output with `pooler_output` set to a list of `num_images` tensors of shape
            `(image_seq_length, text_hidden_size)`.
        """
        image_outputs = self.vision_tower(pixel_values, return_dict=True, **kwargs)
        layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else vision_feature_layer
        selected = [image_outputs.hidden_states[layer] for layer in layers]
        if vision_feature_select_strategy == "default":
            # The original's "patch": drop the CLS token that leads CLIP's sequence.
            selected = [hidden_state[:, 1:] for hidden_state in selected]
        image_features = self.multi_modal_projector(torch.cat(selected, dim=-1))
        image_outputs.pooler_output = list(image_features)
        return image_outputs

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.FloatTensor, image_features: torch.FloatTensor
    ) -> torch.BoolTensor:
        """Mask of the image-token positions, of shape `(batch_size, sequence_length, 1)`.

        Raises a `ValueError` naming the first sample whose image tokens cannot be filled by the images given.
        """
        if input_ids is None:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
            )
            special_image_mask = (inputs_embeds == image_embedding).all(-1)
        else:
            special_image_mask = input_ids == self.config.image_token_id

        if not torch.compiler.is_compiling():
            self._check_image_token_counts(special_image_mask.sum(-1).tolist(), image_features.shape[0])
        return special_image_mask.unsqueeze(-1).to(inputs_embeds.device)

    def _check_image_token_counts(self, tokens_per_sample: list[int], num_features: int) -> None:
        per_image = self.config.image_seq_length
        available = num_features
        for sample, num_tokens in enumerate(tokens_per_sample):
            if num_tokens % per_image or num_tokens > available:
                raise ValueError(
                    f"Image features and image tokens do not match in sample {sample}: it has {num_tokens} image "
                    f"tokens (a whole number of images has a multiple of {per_image}), but {available} image "
                    f"features are left for it ({num_features} for the batch). Let the processor expand each "
                    "<image> and pass one image per <image>."
                )
            available -= num_tokens
        if available:
            raise ValueError(
                f"Image features and image tokens do not match: {num_features} image features but "
                f"{sum(tokens_per_sample)} image tokens in the batch (per sample: {tokens_per_sample})."
            )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> tuple | LlavaPluginModelOutputWithPast:
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")

        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)

        # generate() encodes the images once before prefill and hands them over as `mm_encoder_outputs`.
        mm_encoder_outputs = mm_encoder_outputs if mm_encoder_outputs is not None else {}
        if mm_encoder_outputs.get("image") is None and pixel_values is not None:
            mm_encoder_outputs["image"] = self.get_image_features(
                pixel_values=pixel_values,
                vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy,
                return_dict=True,
            )

        image_features = None
        if mm_encoder_outputs.get("image") is not None:
            image_features = torch.cat(mm_encoder_outputs["image"].pooler_output, dim=0)
            image_features = image_features.to(inputs_embeds.device, inputs_embeds.dtype)
            special_image_mask = self.get_placeholder_mask(input_ids, inputs_embeds, image_features)
            inputs_embeds = inputs_embeds.masked_scatter(special_image_mask, image_features)

        outputs = self.language_model(
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            **kwargs,
        )
        return LlavaPluginModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=image_features,
        )


def load_vision_tower(vision: str, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """The vision model of a bare vision checkpoint (`CLIPVisionModel`, ...) or of a full CLIP/SigLIP checkpoint."""
    vision_config = AutoConfig.from_pretrained(vision)
    full_checkpoint = hasattr(vision_config, "vision_config")
    verbosity = logging.get_verbosity()
    if full_checkpoint:  # the text tower's weights are left out on purpose: no load report about them
        logging.set_verbosity_error()
    try:
        return AutoModel.from_pretrained(
            vision, config=getattr(vision_config, "vision_config", vision_config), dtype=dtype
        )
    finally:
        logging.set_verbosity(verbosity)


class LlavaPluginForConditionalGeneration(LlavaPluginPreTrainedModel, GenerationMixin):
    """LLaVA with a language modeling head: the model that is trained, generates, and ships to the Hub."""

    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}
    _tp_plan = {"lm_head": "colwise_gather_output"}

    def __init__(self, config: LlavaPluginConfig):
        super().__init__(config)
        self.model = LlavaPluginModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_image_features(
        self,
        pixel_values: torch.FloatTensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> tuple | BaseModelOutputWithPooling:
        return self.model.get_image_features(
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            **kwargs,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        **kwargs,
    ) -> tuple | LlavaPluginCausalLMOutputWithPast:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`):
                Token ids in which every image is a run of `image_seq_length` image tokens (the processor does this).
            pixel_values (`torch.FloatTensor` of shape `(num_images, channels, height, width)`, *optional*):
                The images of the whole batch, in the order their image tokens appear.
            labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Targets for next-token prediction; -100 marks positions without loss (image tokens, prompts).
        """
        outputs = self.model(
            input_ids=input_ids,
            pixel_values=pixel_values,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            mm_encoder_outputs=mm_encoder_outputs,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs[0], logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs
            )
        return LlavaPluginCausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_hidden_states=outputs.image_hidden_states,
        )

    @classmethod
    def from_backbones(
        cls,
        vision: str,
        text: str,
        projector_type: str = "mlp2x_gelu",
        dtype: torch.dtype | str | None = None,
        quantization_config=None,
        **config_kwargs,
    ) -> "LlavaPluginForConditionalGeneration":
        """Builds a fresh LLaVA from a pretrained vision checkpoint and a pretrained causal LM: LLaVA's stage-1 start.

        Both backbones keep their weights; the projector is random. The LLM's tokenizer gets the `<image>` token
        (as `LlavaPluginProcessor.from_backbones` does, so ids agree) and the embeddings grow to fit it, new rows set
        to the mean of the existing ones as the original LLaVA does.

        Args:
            vision (`str`):
                Local path or Hub id of a bare vision model (`CLIPVisionModel`, `SiglipVisionModel`, ...) or of a full
                CLIP/SigLIP checkpoint, whose vision tower is taken.
            text (`str`):
                Local path or Hub id of a causal language model and its tokenizer.
            projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
                See [`LlavaPluginConfig`].
            dtype (`torch.dtype` or `str`, *optional*):
                Dtype to load both backbones in; the projector follows the LLM's.
            quantization_config (*optional*):
                Quantization of the language model alone (QLoRA's 4-bit bitsandbytes); the vision tower stays in
                `dtype`.
            config_kwargs:
                Any other [`LlavaPluginConfig`] field (`vision_feature_layer`, `vision_feature_select_strategy`, ...).
        """
        from .processing_llava_plugin import tokenizer_with_image_token

        vision_tower = load_vision_tower(vision, dtype)
        vision_config = vision_tower.config
        language_model = AutoModelForCausalLM.from_pretrained(
            text, dtype=dtype, quantization_config=quantization_config
        )
        tokenizer = tokenizer_with_image_token(text)

        config_kwargs.setdefault(
            "vision_feature_select_strategy",
            "full" if vision_config.model_type in VISION_TOWERS_WITHOUT_CLS else "default",
        )
        config = LlavaPluginConfig(
            vision_config=vision_tower.config,
            text_config=language_model.config,
            projector_type=projector_type,
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            **config_kwargs,
        )
        # Build the shell on the meta device and move the pretrained modules in, so no weight exists twice.
        with torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision_tower
        model.model.language_model = language_model.get_decoder()
        model.lm_head = language_model.get_output_embeddings()
        model.model.multi_modal_projector = LlavaPluginMultiModalProjector(config).to(language_model.dtype)
        model.model.multi_modal_projector.apply(model._init_weights)
        # Keep the LLM's decoding defaults (its eos ends an answer) and pad with the tokenizer's pad token.
        model.generation_config = language_model.generation_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id

        old_rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > old_rows:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            with torch.no_grad():
                for embeddings in {model.get_input_embeddings(), model.get_output_embeddings()}:
                    embeddings.weight[old_rows:] = embeddings.weight[:old_rows].mean(dim=0, keepdim=True)
        return model


__all__ = [
    "load_vision_tower",
    "LlavaPluginForConditionalGeneration",
    "LlavaPluginModel",
    "LlavaPluginMultiModalProjector",
    "LlavaPluginPreTrainedModel",
]
