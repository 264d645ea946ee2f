"""Processor of LLaVA-NeXT (LLaVA-1.6): AnyRes tiles, and each `<image>` expanded to that image's own token count.

The LLaVA processor (original-style tokenization, chat templates) with transformers' `LlavaNextImageProcessorPil`:
the PIL backend, whose tiles are bit-equal to the original's `process_anyres_image` (the torchvision backend's are
not). It returns `pixel_values` (every tile of every image, base image first), `image_sizes` (height, width) and input
ids in which each `<image>` is `anyres_layout(...).num_tokens` image tokens: the count the model keeps features for.
"""

from math import isqrt

from transformers import AutoConfig
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from .anyres import LLAVA_NEXT_PINPOINTS, anyres_layout, llava_next_pinpoints
from .chat_templates import CHAT_TEMPLATES
from .processing_llava_plugin import LlavaPluginProcessor, tokenizer_with_image_token


class LlavaNextPluginProcessor(LlavaPluginProcessor):
    r"""
    Wraps a [`LlavaNextImageProcessorPil`] and a tokenizer into one LLaVA-NeXT processor.

    Args:
        image_processor ([`LlavaNextImageProcessorPil`], *optional*):
            Tiles images by its `image_grid_pinpoints` ((height, width) pairs) into `crop_size` squares.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The LLM's tokenizer, holding the `<image>` special token.
        image_seq_length (`int`, *optional*, defaults to 576):
            Features of one tile (24 x 24 for CLIP ViT-L/14-336); must equal the model config's.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder written in prompts, one per image.
        chat_template (`str` or `dict[str, str]`, *optional*):
            Jinja template(s).
    """

    def num_image_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Image tokens an image of `image_size` (height, width) becomes (`anyres.anyres_layout`)."""
        if image_size is None:
            raise ValueError(
                "A LLaVA-NeXT image's token count depends on its size: pass each <image>'s (height, width) as "
                "`image_sizes`, or the images themselves."
            )
        side = isqrt(self.image_seq_length)
        images = self.image_processor
        tile_size = images.crop_size["height"]
        return anyres_layout(image_size, images.image_grid_pinpoints, tile_size, side).num_tokens

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return self.image_token * self.num_image_tokens(tuple(image_inputs["image_sizes"][image_idx]))

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + ["pixel_values", "image_sizes"]))

    @classmethod
    def from_backbones(
        cls,
        vision: str,
        text: str,
        image_grid_pinpoints: list | None = None,
    ) -> "LlavaNextPluginProcessor":
        """The processor of a LLaVA-NeXT built on the vision checkpoint `vision` and the LLM `text`.

        Size, crop and normalisation come from the vision checkpoint's preprocessor config (else from its
        `image_size`); `image_grid_pinpoints` ((height, width) pairs) default to LLaVA-1.6's, scaled to the tower.
        """
        vision_config = AutoConfig.from_pretrained(vision)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        size = vision_config.image_size
        if image_grid_pinpoints is None:
            image_grid_pinpoints = llava_next_pinpoints(size)
        # `do_pad` here pads each image's tiles to the batch's most, so images of different grids stack; a vision
        # checkpoint's preprocessor config may say `do_pad: false` in LLaVA-1.5's other meaning (pad to square).
        settings = {"image_grid_pinpoints": image_grid_pinpoints, "do_pad": True}
        try:
            image_processor = LlavaNextImageProcessorPil.from_pretrained(vision, **settings)
        except OSError:  # a bare vision checkpoint without preprocessor config: size it from the model
            settings |= {"size": {"shortest_edge": size}, "crop_size": {"height": size, "width": size}}
            image_processor = LlavaNextImageProcessorPil(**settings)
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer_with_image_token(text),
            # Every tile gives side x side features (the config refuses a strategy that keeps a CLS token).
            image_seq_length=(size // vision_config.patch_size) ** 2,
            chat_template={"default": CHAT_TEMPLATES["vicuna_v1"], "plain": CHAT_TEMPLATES["plain"]},
        )


__all__ = ["LLAVA_NEXT_PINPOINTS", "LlavaNextPluginProcessor"]
