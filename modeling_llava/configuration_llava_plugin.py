"""Configuration of the LLaVA family (v1 linear projector, LLaVA-1.5 MLP projector and variants).

A subclass of transformers' own `LlavaConfig`, so that sub-config handling, defaults and serialisation follow the
user's transformers release instead of a copy frozen at one version (this file ships as remote code with every
checkpoint). It adds LLaVA's projector types and derives `image_seq_length` from the vision tower; everything that
can be checked without building the model is checked here, so that a bad combination fails at config time with a
message instead of deep inside a forward pass.
"""

import inspect
import re

from huggingface_hub.dataclasses import strict
from transformers import MODEL_MAPPING, LlavaConfig, PreTrainedConfig

# Vision towers whose sequence has no leading CLS token: dropping "the first token" there would drop a real patch.
VISION_TOWERS_WITHOUT_CLS = frozenset({"siglip_vision_model"})

_MLP_GELU = re.compile(r"^mlp(\d+)x_gelu$")


def projector_depth(projector_type: str) -> int:
    """Number of linear layers of a projector type: 0 for `identity`, 1 for `linear`, N for `mlpNx_gelu`."""
    if projector_type == "identity":
        return 0
    if projector_type == "linear":
        return 1
    match = _MLP_GELU.match(projector_type)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"Unknown projector_type {projector_type!r}: expected 'linear' (LLaVA v1), 'mlp2x_gelu' (LLaVA-1.5), "
            "any 'mlpNx_gelu' with N >= 1, or 'identity'."
        )
    return int(match.group(1))


def image_seq_length_for(vision_config: PreTrainedConfig, vision_feature_select_strategy: str) -> int:
    """Number of image tokens one image becomes: the vision tower's sequence, less the CLS token for `default`.

    Shared by the config and the processor so that the number of `<image>` tokens the processor writes and the
    number of features the model scatters can never disagree.
    """
    image_size = getattr(vision_config, "image_size", None)
    patch_size = getattr(vision_config, "patch_size", None)
    if not isinstance(image_size, int) or not isinstance(patch_size, int):
        raise ValueError(
            f"Cannot derive the number of image tokens from a {type(vision_config).__name__} without integer "
            f"`image_size` and `patch_size` (got {image_size!r}, {patch_size!r}); pass `image_seq_length` explicitly."
        )
    has_cls = vision_config.model_type not in VISION_TOWERS_WITHOUT_CLS
    if vision_feature_select_strategy == "default" and not has_cls:
        raise ValueError(
            f"vision_feature_select_strategy='default' drops the CLS token, but {vision_config.model_type} has none "
            "(its first token is an image patch). Use vision_feature_select_strategy='full'."
        )
    return (image_size // patch_size) ** 2 + int(has_cls) - int(vision_feature_select_strategy == "default")


class LlavaPluginConfigChecks:
    """What LLaVA and LLaVA-NeXT configs share: the projector's input width and the checks of tower and projector."""

    @property
    def num_vision_feature_layers(self) -> int:
        return 1 if isinstance(self.vision_feature_layer, int) else len(self.vision_feature_layer)

    def _check_vision_tower(self) -> None:
        vision_model_class = MODEL_MAPPING.get(type(self.vision_config), None)
        if vision_model_class is None:
            raise ValueError(
                f"No AutoModel class is registered for vision config {type(self.vision_config).__name__}."
            )
        recordable = getattr(vision_model_class, "_can_record_outputs", None) or {}
        takes_flag = "output_hidden_states" in inspect.signature(vision_model_class.forward).parameters
        if "hidden_states" not in recordable and not takes_flag:
            raise ValueError(
                f"{vision_model_class.__name__} cannot return hidden states, so no vision_feature_layer can be "
                "selected from it; LLaVA needs a vision tower that does (CLIP, SigLIP, ...)."
            )
        num_layers = self.vision_config.num_hidden_layers
        layers = (
            [self.vision_feature_layer] if isinstance(self.vision_feature_layer, int) else self.vision_feature_layer
        )
        # hidden_states has num_layers + 1 entries (the embeddings first).
        if not layers or any(not -(num_layers + 1) <= layer <= num_layers for layer in layers):
            raise ValueError(
                f"vision_feature_layer={self.vision_feature_layer!r} is out of range for a vision tower with "
                f"{num_layers} layers (valid: {-(num_layers + 1)} .. {num_layers})."
            )

    def _settle_image_seq_length(self, unit: str) -> None:
        """Sets `image_seq_length` to the features of one `unit` (an image, or a LLaVA-NeXT tile) the tower gives;
        a value given that disagrees is an error."""
        derived = image_seq_length_for(self.vision_config, self.vision_feature_select_strategy)
        if self.image_seq_length is not None and self.image_seq_length != derived:
            raise ValueError(
                f"image_seq_length={self.image_seq_length} disagrees with the vision tower, which gives {derived} "
                f"image features per {unit} with vision_feature_select_strategy="
                f"{self.vision_feature_select_strategy!r}."
            )
        self.image_seq_length = derived

    def _check_projector(self) -> None:
        if projector_depth(self.projector_type) == 0:
            vision_width = self.vision_config.hidden_size * self.num_vision_feature_layers
            if vision_width != self.text_config.hidden_size:
                raise ValueError(
                    f"projector_type='identity' needs the vision features ({vision_width} = hidden_size "
                    f"{self.vision_config.hidden_size} x {self.num_vision_feature_layers} layer(s)) to be as wide as "
                    f"the language model ({self.text_config.hidden_size}); use 'linear' or 'mlp2x_gelu'."
                )


@strict
class LlavaPluginConfig(LlavaPluginConfigChecks, LlavaConfig):
    r"""
    Configuration of [`LlavaPluginForConditionalGeneration`]: transformers' [`LlavaConfig`] plus the projector type.

    Every field of [`LlavaConfig`] keeps its meaning (`vision_config` defaults to CLIP ViT-L/14 at 336 px, the tower
    of LLaVA-1.5; `text_config` to Llama); the subclass adds what the original LLaVA has and the built-in lacks, and
    checks at config time what would otherwise fail deep inside a forward pass.

    Args:
        projector_type (`str`, *optional*, defaults to `"mlp2x_gelu"`):
            `"linear"` (LLaVA v1), `"mlp2x_gelu"` (LLaVA-1.5), any `"mlpNx_gelu"`, or `"identity"` (no projector; the
            vision width must then equal the text width).
        image_seq_length (`int`, *optional*):
            Image tokens per image. Derived from the vision config when not given; a given value must agree.
        image_start_token_id (`int`, *optional*):
            The token before each image's tokens (`<im_start>`), in the checkpoints of the paper (April-June 2023,
            `mm_use_im_start_end`), which frame every image; the model checks the framing. None (LLaVA-1.5 and
            later) frames nothing.
        image_end_token_id (`int`, *optional*):
            The token after each image's tokens (`<im_end>`), with `image_start_token_id`.

    Example:

    ```python
    >>> from transformers import LlamaConfig
    >>> from modeling_llava import LlavaPluginConfig, LlavaPluginForConditionalGeneration

    >>> # LLaVA v1: CLIP ViT-L/14, Vicuna-7B-shaped Llama, one linear projector
    >>> config = LlavaPluginConfig(text_config=LlamaConfig(), projector_type="linear")
    >>> model = LlavaPluginForConditionalGeneration(config)
    ```"""

    model_type = "llava_plugin"

    projector_type: str = "mlp2x_gelu"
    image_seq_length: int | None = None
    image_start_token_id: int | None = None
    image_end_token_id: int | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if (self.image_start_token_id is None) != (self.image_end_token_id is None):
            raise ValueError(
                f"image_start_token_id={self.image_start_token_id} and image_end_token_id={self.image_end_token_id}: "
                "the two frame each image together, give both or neither."
            )
        self._check_vision_tower()
        self._check_projector()
        self._settle_image_seq_length("image")


__all__ = ["LlavaPluginConfig", "LlavaPluginConfigChecks", "image_seq_length_for", "projector_depth"]
