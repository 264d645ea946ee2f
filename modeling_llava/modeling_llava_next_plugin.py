"""PyTorch LLaVA-NeXT (LLaVA-1.6): LLaVA with AnyRes tiling, on transformers' own LlavaNext classes.

Subclasses the built-in `LlavaNextModel` and `LlavaNextForConditionalGeneration` (forward, generation, output
classes and `get_image_features` are the user's transformers release), with weight names the built-in's
(`model.image_newline` included), so a llava-hf 1.6 checkpoint loads 1:1. What the plugin changes: the projector
(this project's projector types, shared with LLaVA-1.5) and `pack_image_features`, which lays out each image's tile
features by `anyres.anyres_layout`, the one function the processor counts image tokens with, so that the model keeps
exactly the features the original LLaVA-1.6 keeps (it truncates the unpadded size where the built-in rounds it).
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextModel,
    LlavaNextPreTrainedModel,
)

from .anyres import anyres_layout, llava_next_pinpoints
from .configuration_llava_next_plugin import LlavaNextPluginConfig
from .modeling_llava_plugin import LlavaBackbonesMixin, LlavaPluginMultiModalProjector


class LlavaNextPluginPreTrainedModel(LlavaNextPreTrainedModel):
    """The built-in's capability flags and `image_newline` initialisation, the plugin's config."""

    config: LlavaNextPluginConfig
    config_class = LlavaNextPluginConfig

    @classmethod
    def is_custom_code(cls) -> bool:
        # As for LlavaPluginPreTrainedModel: initialise missing weights on transformers' own path.
        return False


class LlavaNextPluginModel(LlavaNextPluginPreTrainedModel, LlavaNextModel):
    """LLaVA-NeXT without a language modeling head: vision tower, projector, `image_newline` and the LLM's decoder."""

    def __init__(self, config: LlavaNextPluginConfig):
        # The built-in's __init__ would build its fixed 2-layer projector; build the same modules with ours instead.
        LlavaNextPreTrainedModel.__init__(self, config)
        self.vision_tower = AutoModel.from_config(config.vision_config)
        self.multi_modal_projector = LlavaPluginMultiModalProjector(config)
        width = config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.randn(width, dtype=self.dtype) / width**0.5)
        self.vocab_size = config.text_config.vocab_size
        self.language_model = AutoModel.from_config(config.text_config)
        self.post_init()

    def pack_image_features(
        self,
        image_features: list[torch.Tensor],
        image_sizes: torch.Tensor,
        vision_feature_select_strategy: str,
        image_newline: torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Each image's tile features as the token sequence its `<image>` stands for.

        Args:
            image_features (`list[torch.Tensor]`): per image, `(num_tiles, side * side, hidden_size)`, base tile first.
            image_sizes (`torch.Tensor` of shape `(num_images, 2)`): each image's (height, width) before processing.
            vision_feature_select_strategy (`str`): unused; the config guarantees `side * side` features per tile.
            image_newline (`torch.Tensor` of shape `(hidden_size,)`, *optional*): appended to each row of the map.

        Returns:
            The per-image sequences `(num_tokens, hidden_size)` (`anyres_layout(...).num_tokens` rows each) and their
            lengths.
        """
        vision = self.config.vision_config
        side = vision.image_size // vision.patch_size
        packed = []
        for features, image_size in zip(image_features, image_sizes, strict=True):
            size = image_size.tolist() if isinstance(image_size, torch.Tensor) else image_size
            layout = anyres_layout(size, self.config.image_grid_pinpoints, vision.image_size, side)
            rows, columns = layout.grid
            if features.shape[0] != layout.num_tiles:
                raise ValueError(
                    f"An image of size {tuple(size)} (height, width) has {layout.num_tiles} tiles with these "
                    f"image_grid_pinpoints, but {features.shape[0]} were given: process it with this model's "
                    "processor."
                )
            hidden = features.shape[-1]
            # (rows * columns, side, side, hidden) -> one (rows * side, columns * side, hidden) map, tiles row-major.
            feature_map = features[1:].view(rows, columns, side, side, hidden).permute(0, 2, 1, 3, 4)
            feature_map = feature_map.reshape(rows * side, columns * side, hidden)
            top, height, left, width = layout.crop
            feature_map = feature_map[top : top + height, left : left + width]
            if image_newline is not None:
                newline = image_newline.to(feature_map.device, feature_map.dtype).expand(height, 1, hidden)
                feature_map = torch.cat([feature_map, newline], dim=1)
            packed.append(torch.cat([features[0], feature_map.reshape(-1, hidden)]))
        lengths = [len(sequence) for sequence in packed]
        lengths = torch.tensor(lengths, dtype=torch.long, device=image_features[0].device)
        return packed, lengths


class LlavaNextPluginForConditionalGeneration(
    LlavaBackbonesMixin, LlavaNextPluginPreTrainedModel, LlavaNextForConditionalGeneration
):
    """LLaVA-NeXT with a language modeling head: `forward`, `get_image_features` and generation are the built-in's;
    `from_backbones` is the plugin's (shared with LLaVA-1.5)."""

    def __init__(self, config: LlavaNextPluginConfig):
        LlavaNextPreTrainedModel.__init__(self, config)
        self.model = LlavaNextPluginModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    @classmethod
    def from_backbones(
        cls,
        vision: str,
        text: str,
        image_grid_pinpoints: list | None = None,
        projector_type: str = "mlp2x_gelu",
        dtype: torch.dtype | str | None = None,
        quantization_config=None,
        **config_kwargs,
    ) -> "LlavaNextPluginForConditionalGeneration":
        """Builds a fresh LLaVA-NeXT from a pretrained vision checkpoint and a pretrained causal LM
        ([`LlavaBackbonesMixin.from_backbones`]); the projector and `image_newline` are random.

        `image_grid_pinpoints` ((height, width) pairs, as [`LlavaNextPluginConfig`] reads them; the original's
        `--image_grid_pinpoints` are (width, height)) default to LLaVA-1.6's, scaled to the vision tower's size, as
        [`LlavaNextPluginProcessor.from_backbones`] chooses them.
        """
        if image_grid_pinpoints is None:
            vision_config = AutoConfig.from_pretrained(vision)
            vision_config = getattr(vision_config, "vision_config", vision_config)  # a full CLIP's, or a bare tower's
            image_grid_pinpoints = llava_next_pinpoints(vision_config.image_size)
        return super().from_backbones(
            vision,
            text,
            projector_type=projector_type,
            dtype=dtype,
            quantization_config=quantization_config,
            image_grid_pinpoints=image_grid_pinpoints,
            **config_kwargs,
        )

    def _init_new_parts(self, dtype: torch.dtype) -> None:
        """The projector, and `image_newline` drawn as the original draws it (`randn / sqrt(hidden_size)`,
        LLaVA-NeXT's `llava_arch.py`): on the meta device until now, it gets real values here."""
        super()._init_new_parts(dtype)
        width = self.config.text_config.hidden_size
        self.model.image_newline = nn.Parameter(torch.randn(width, dtype=dtype) / width**0.5)


__all__ = [
    "LlavaNextPluginForConditionalGeneration",
    "LlavaNextPluginModel",
    "LlavaNextPluginPreTrainedModel",
]
