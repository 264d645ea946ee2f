"""PyTorch LLaVA: a vision tower, a projector and a causal language model (Liu et al., "Visual Instruction Tuning").

Subclasses transformers' own Llava classes, so forward, generation plumbing and output classes are the user's
transformers release, not a copy frozen at one version: this file ships as remote code with every checkpoint and must
keep loading when transformers renames an internal. Weight names are the built-in's (`model.vision_tower`,
`model.multi_modal_projector.linear_1/linear_2`, `model.language_model`, `lm_head`), so a checkpoint of
`LlavaForConditionalGeneration` loads 1:1. What the plugin adds: LLaVA v1's single linear projector and the other
projector types, an error that names the sample whose image tokens and features disagree, and `from_backbones`,
which builds a fresh LLaVA from a pretrained vision checkpoint and a pretrained LLM (the start of LLaVA's stage 1).
"""

import contextlib

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.models.llava.modeling_llava import (
    LlavaForConditionalGeneration,
    LlavaModel,
    LlavaPreTrainedModel,
)
from transformers.utils import logging

from .configuration_llava_plugin import VISION_TOWERS_WITHOUT_CLS, LlavaPluginConfig, projector_depth

logger = logging.get_logger(__name__)


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


class LlavaPluginPreTrainedModel(LlavaPreTrainedModel):
    """The built-in's capability flags (SDPA, flash, flex, compile, gradient checkpointing), the plugin's config."""

    config: LlavaPluginConfig
    config_class = LlavaPluginConfig

    @classmethod
    def is_custom_code(cls) -> bool:
        # transformers treats every class outside its package as custom code and then skips, while initialising
        # missing weights, each module without parameters of its own: CLIP's attention and MLP blocks, whose
        # `_init_weights` sets their layers' scales. The plugin initialises only through transformers' own
        # `_init_weights` (the sub-models' included), so it takes the built-in path: a missing vision-tower weight
        # gets CLIP's initialisation, exactly as when loaded into the built-in Llava.
        return False


class LlavaPluginModel(LlavaPluginPreTrainedModel, LlavaModel):
    """LLaVA without a language modeling head: vision tower, projector and the LLM's decoder.

    `forward` and `get_image_features` are the built-in's; only the projector and the placeholder check differ.
    """

    def __init__(self, config: LlavaPluginConfig):
        # The built-in's __init__ would build its fixed 2-layer projector; build the same modules with ours instead.
        LlavaPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaPluginMultiModalProjector(config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def get_placeholder_mask(
        self, input_ids: torch.LongTensor | None, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.BoolTensor:
        """Mask of the image-token positions, of shape `(batch_size, sequence_length, 1)`.

        Before the built-in's batch-wide count check, raises a `ValueError` naming the first sample whose image
        tokens cannot be filled by the images given (`image_features` is `(num_image_tokens, hidden_size)`).
        """
        if not torch.compiler.is_compiling():
            if input_ids is None:
                image_embedding = self.get_input_embeddings()(
                    torch.tensor(self.config.image_token_id, dtype=torch.long, device=inputs_embeds.device)
                )
                image_tokens = (inputs_embeds == image_embedding).all(-1)
            else:
                image_tokens = input_ids == self.config.image_token_id
                if self.config.image_start_token_id is not None:
                    self._check_image_framing(input_ids, image_tokens)
            self._check_image_token_counts(image_tokens.sum(-1).tolist(), image_features.shape[0])
        return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)

    def _check_image_framing(self, input_ids: torch.LongTensor, image_tokens: torch.BoolTensor) -> None:
        """Every run of image tokens sits between `image_start_token_id` and `image_end_token_id`, as the paper's
        model checked ("The image end token should follow the image start token"): its features were trained so."""
        runs = nn.functional.pad(image_tokens.int(), (1, 1))  # 0 beyond both ends
        before = nn.functional.pad(input_ids, (1, -1), value=-1)  # the token before each position
        after = nn.functional.pad(input_ids, (-1, 1), value=-1)
        opens = (runs[:, 1:-1] > runs[:, :-2]) & (before != self.config.image_start_token_id)
        closes = (runs[:, 1:-1] > runs[:, 2:]) & (after != self.config.image_end_token_id)
        unframed = (opens | closes).any(-1)
        if unframed.any():
            raise ValueError(
                f"Sample {int(unframed.int().argmax())} has image tokens not framed by the start token "
                f"{self.config.image_start_token_id} and the end token {self.config.image_end_token_id}, which this "
                "model's images were trained with; build the prompt with this checkpoint's processor."
            )

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


def _whole(parameter: nn.Parameter, zero3: bool) -> contextlib.AbstractContextManager:
    """The parameter whole for the duration (gathered from its ZeRO-3 partitions, rank 0's change kept), or as is."""
    if not zero3:
        return contextlib.nullcontext()
    # In a try block, which transformers' check of remote code's imports leaves out: DeepSpeed is optional.
    try:
        import deepspeed
    except ImportError as error:  # ZeRO-3 is only ever on where DeepSpeed is installed
        raise ImportError("ZeRO-3 is enabled but DeepSpeed cannot be imported.") from error
    return deepspeed.zero.GatheredParameters([parameter], modifier_rank=0)


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


class LlavaBackbonesMixin:
    """`from_backbones` for a LLaVA model class (LLaVA-1.5's, LLaVA-NeXT's): the backbones moved into a shell of the
    class's own config, the parts that exist in neither backbone drawn fresh by `_init_new_parts`."""

    @classmethod
    def from_backbones(
        cls,
        vision: str,
        text: str,
        projector_type: str = "mlp2x_gelu",
        dtype: torch.dtype | str | None = None,
        quantization_config=None,
        **config_kwargs,
    ) -> PreTrainedModel:
        """Builds a fresh LLaVA from a pretrained vision checkpoint and a pretrained causal LM: LLaVA's stage-1 start.

        Both backbones keep their weights; the projector (and LLaVA-NeXT's `image_newline`) is random. The LLM's
        tokenizer gets the `<image>` token (as the processor's `from_backbones` does, so ids agree) and the embeddings
        grow to fit it, new rows set to the mean of the existing ones as the original LLaVA does.

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
                Any other field of the class's config (`vision_feature_layer`, `image_grid_pinpoints`, ...).
        """
        from .processing_llava_plugin import tokenizer_with_image_token

        random_state = torch.random.get_rng_state()
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
        config = cls.config_class(
            vision_config=vision_tower.config,
            text_config=language_model.config,
            projector_type=projector_type,
            image_token_id=tokenizer.convert_tokens_to_ids(tokenizer.image_token),
            **config_kwargs,
        )
        # Build the shell on the meta device and move the pretrained modules in, so no weight exists twice. Under
        # DeepSpeed ZeRO-3, which partitions every sub-model `from_config` creates and cannot partition a meta tensor,
        # the shell is built for real instead: its sub-models hold 1/N of their weights each, and are dropped.
        zero3 = is_deepspeed_zero3_enabled()
        with contextlib.nullcontext() if zero3 else torch.device("meta"):
            model = cls(config)
        model.model.vision_tower = vision_tower
        model.model.language_model = language_model.get_decoder()
        model.lm_head = language_model.get_output_embeddings()
        # The new parts are drawn from the random state of the call, whatever building the rest drew (ZeRO-3
        # initialises modules before loading them): one seed, one projector, with DeepSpeed or without.
        torch.random.set_rng_state(random_state)
        model._init_new_parts(language_model.dtype)
        # Keep the LLM's decoding defaults (its eos ends an answer) and pad with the tokenizer's pad token.
        model.generation_config = language_model.generation_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id

        old_rows = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > old_rows:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
            for embeddings in {model.get_input_embeddings(), model.get_output_embeddings()}:
                with _whole(embeddings.weight, zero3), torch.no_grad():
                    embeddings.weight[old_rows:] = embeddings.weight[:old_rows].mean(dim=0, keepdim=True)
        return model

    def _init_new_parts(self, dtype: torch.dtype) -> None:
        """A fresh projector in `dtype`, initialised as transformers initialises the built-in's."""
        self.model.multi_modal_projector = LlavaPluginMultiModalProjector(self.config).to(dtype)
        self.model.multi_modal_projector.apply(self._init_weights)


class LlavaPluginForConditionalGeneration(
    LlavaBackbonesMixin, LlavaPluginPreTrainedModel, LlavaForConditionalGeneration, GenerationMixin
):
    """LLaVA with a language modeling head: the model that is trained, generates, and ships to the Hub.

    `forward`, `get_image_features` and generation are the built-in's; `from_backbones` is the plugin's.
    """

    def __init__(self, config: LlavaPluginConfig):
        LlavaPreTrainedModel.__init__(self, config)
        self.model = LlavaPluginModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = [
    "LlavaBackbonesMixin",
    "load_vision_tower",
    "LlavaPluginForConditionalGeneration",
    "LlavaPluginModel",
    "LlavaPluginMultiModalProjector",
    "LlavaPluginPreTrainedModel",
]
