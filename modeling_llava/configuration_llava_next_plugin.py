"""Configuration of LLaVA-NeXT (LLaVA-1.6): transformers' `LlavaNextConfig` with this project's projector types.

A subclass of the built-in, as the LLaVA-1.5 config is of `LlavaConfig`, so sub-configs, defaults and serialisation
follow the user's transformers release (this file ships as remote code). `image_grid_pinpoints` are (height, width)
pairs, as transformers reads them; an original checkpoint's (width, height) pairs are swapped on conversion
(`anyres.pinpoints_from_original`), so that every image gets the original's grid.
"""

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextConfig

from .configuration_llava_plugin import LlavaPluginConfigChecks, image_seq_length_for


@strict
class LlavaNextPluginConfig(LlavaPluginConfigChecks, LlavaNextConfig):
    r"""
    Configuration of [`LlavaNextPluginForConditionalGeneration`]: [`LlavaNextConfig`] plus the projector type.

    Args:
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            As in [`LlavaPluginConfig`]: `"linear"`, any `"mlpNx_gelu"` (LLaVA-1.6 is `"mlp2x_gelu"`), `"identity"`.
        image_seq_length (`int`, *optional*):
            Features of one tile (the base image's tokens): the vision tower's patches. Derived when not given.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from modeling_llava import LlavaNextPluginConfig, LlavaNextPluginForConditionalGeneration

    >>> config = LlavaNextPluginConfig(text_config=LlamaConfig())  # CLIP ViT-L/14-336, LLaVA-1.6's pinpoints
    >>> model = LlavaNextPluginForConditionalGeneration(config)
    ```"""

    model_type = "llava_next_plugin"

    projector_type: str = "mlp2x_gelu"
    image_seq_length: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        self._check_vision_tower()
        self._check_projector()
        per_tile = image_seq_length_for(self.vision_config, self.vision_feature_select_strategy)
        side = self.vision_config.image_size // self.vision_config.patch_size
        # Tiles are laid out as a map of side x side features each: a kept CLS token would not fit in it.
        if per_tile != side**2:
            raise ValueError(
                f"vision_feature_select_strategy={self.vision_feature_select_strategy!r} gives {per_tile} features "
                f"per tile, but AnyRes lays tiles out as {side} x {side} patches: use 'default' with a tower that has "
                "a CLS token (CLIP), 'full' with one that has none (SigLIP)."
            )
        self._settle_image_seq_length("tile")
        bad = [
            pair for pair in self.image_grid_pinpoints if any(side % self.vision_config.image_size for side in pair)
        ]
        if bad:
            raise ValueError(
                f"image_grid_pinpoints {bad} are not whole multiples of the vision tower's image_size "
                f"({self.vision_config.image_size}); every pinpoint must divide into tiles."
            )


__all__ = ["LlavaNextPluginConfig"]
