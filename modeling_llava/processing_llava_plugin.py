"""Processor of the LLaVA family: image preprocessing, `<image>` expansion and LLaVA's chat templates.

It lives beside the model because transformers ships remote code from one flat folder; `processing/` re-exports it.
Images go through transformers' `LlavaImageProcessor`: CLIP's resize and center crop by default, LLaVA-1.5's
"pad" mode (pad to a square with the mean colour, then resize) with `do_pad=True`. Text is tokenized as the original
LLaVA's `tokenizer_image_token` does: BOS once, then each piece between `<image>` markers as a fresh text, with
`image_seq_length` image tokens (the number of features the vision tower gives, computed by the same function the
config uses) in place of each marker, framed by `<im_start>` and `<im_end>` for the paper's checkpoints.
"""

import transformers
from transformers import AutoConfig, AutoTokenizer, BatchFeature, LlamaTokenizer, PreTrainedConfig, ProcessorMixin
from transformers.models.auto.tokenization_auto import get_tokenizer_config
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
from transformers.utils import is_torchvision_available, logging

from .chat_templates import CHAT_TEMPLATES
from .configuration_llava_plugin import VISION_TOWERS_WITHOUT_CLS, image_seq_length_for
from .prompt_tokenization import encode_prompt, folds_leading_space

logger = logging.get_logger(__name__)

IMAGE_TOKEN = "<image>"
# The `from_pretrained` keyword arguments that say where a tokenizer's files are.
LOCATION_KWARGS = ("revision", "subfolder", "cache_dir", "token", "local_files_only")
# The text keyword arguments `__call__` honours; everything else goes to the image processor.
TEXT_KWARGS = (
    "add_special_tokens",
    "padding",
    "padding_side",
    "pad_to_multiple_of",
    "truncation",
    "max_length",
    "return_tensors",
    "return_attention_mask",
    "return_offsets_mapping",
)
# Same preprocessing either way; the torchvision backend is faster where torchvision is installed.
if is_torchvision_available():
    from transformers.models.llava.image_processing_llava import LlavaImageProcessor as IMAGE_PROCESSOR_CLASS
else:
    IMAGE_PROCESSOR_CLASS = LlavaImageProcessorPil


def load_tokenizer(checkpoint: str, **kwargs):
    """`AutoTokenizer.from_pretrained`, reading a Llama tokenizer as the original LLaVA read it: the one place that
    decides `legacy`.

    `legacy` decides the text after a special token: in `</s>USER`, `USER` starts with SentencePiece's `▁` when legacy
    (a fresh text), without it when not. The original loaded its Llama tokenizers with the slow
    `LlamaTokenizer` of transformers 4.30.2 (v1.0.0), 4.31.0 (LLaVA-1.5) and 4.36-4.37 (1.6): there, a tokenizer
    config without the key (Vicuna v0 to v1.3, the paper's backbones, and every tokenizer saved before the key existed)
    reads as legacy, the only behaviour before 4.31 and the default, with a warning, after. Transformers 5 reads it as
    non-legacy (and drops the key when it saves a Llama tokenizer). So such a tokenizer is loaded with `legacy=True`,
    said once in the log; the processor writes the key on save, so a trained checkpoint reloads as it was trained.
    A `legacy` in `kwargs` wins.

    An original LLaVA checkpoint's `config.json` (it names `mm_vision_tower`) says `model_type: "llava"` up to 1.5:
    for that name AutoTokenizer loads transformers' own Llava tokenizer class whatever `tokenizer_config.json` names,
    and that class tokenizes a SentencePiece Llama's text otherwise on some releases (5.23 drops the leading `▁`). Its
    tokenizer is its LLM's, so it is loaded as the original loaded it: the class its tokenizer config names.
    """
    location = {key: kwargs[key] for key in LOCATION_KWARGS if key in kwargs}
    tokenizer_class = _named_class_of_original(checkpoint, location)
    loader = tokenizer_class or AutoTokenizer
    tokenizer = loader.from_pretrained(checkpoint, **kwargs)
    if isinstance(tokenizer, LlamaTokenizer) and kwargs.get("legacy") is None:
        if get_tokenizer_config(checkpoint, **location).get("legacy") is None:
            logger.warning_once(
                f"The Llama tokenizer of {checkpoint!r} has no `legacy` in its config: read as legacy=True, as the "
                'original LLaVA\'s transformers read it; write `"legacy": false` into its tokenizer_config.json '
                "for the other reading."
            )
            tokenizer = loader.from_pretrained(checkpoint, **kwargs, legacy=True)
    return tokenizer


def _named_class_of_original(checkpoint: str, location: dict):
    """The tokenizer class an original LLaVA checkpoint's tokenizer config names, or None for any other folder."""
    try:
        config, _ = PreTrainedConfig.get_config_dict(checkpoint, **location)
    except OSError:  # a tokenizer folder without config.json
        return None
    if "mm_vision_tower" not in config:
        return None
    name = get_tokenizer_config(checkpoint, **location).get("tokenizer_class")
    return getattr(transformers, name, None) if isinstance(name, str) else None


def tokenizer_with_image_token(text_checkpoint: str, **kwargs):
    """Loads an LLM's tokenizer (`load_tokenizer`) with `<image>` added as its special `image_token`, and a pad token.

    The one place where the image token enters a tokenizer, so the model and processor built from the same LLM agree
    on its id. Like the original LLaVA, a tokenizer without a pad token pads with `unk` (or `eos` when it has none).
    """
    tokenizer = load_tokenizer(text_checkpoint, extra_special_tokens={"image_token": IMAGE_TOKEN}, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


class LlavaPluginProcessor(ProcessorMixin):
    r"""
    Wraps an image processor and a tokenizer into one LLaVA processor.

    Args:
        image_processor ([`LlavaImageProcessor`] or [`LlavaImageProcessorPil`], *optional*):
            Resizes, crops (or pads to square) and normalises images.
        tokenizer ([`PreTrainedTokenizerBase`], *optional*):
            The LLM's tokenizer, holding the `<image>` special token.
        image_seq_length (`int`, *optional*, defaults to 576):
            Image tokens per image; must equal the model config's `image_seq_length`.
        image_token (`str`, *optional*, defaults to `"<image>"`):
            The placeholder written in prompts, one per image.
        image_start_token (`str`, *optional*):
            A token written before each image's run, `<im_start>` for the paper's checkpoints
            (`mm_use_im_start_end`); the tokenizer must hold it. None (LLaVA-1.5 and later) writes none.
        image_end_token (`str`, *optional*):
            The token written after each image's run (`<im_end>`), with `image_start_token`.
        chat_template (`str` or `dict[str, str]`, *optional*):
            Jinja template(s); `from_backbones` installs `vicuna_v1` as default and `plain` by name.
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        image_seq_length: int = 576,
        image_token: str = IMAGE_TOKEN,
        image_start_token: str | None = None,
        image_end_token: str | None = None,
        chat_template: str | dict[str, str] | None = None,
        **kwargs,
    ):
        self.image_seq_length = image_seq_length
        self.image_token = getattr(tokenizer, "image_token", None) or image_token
        if self.image_token not in tokenizer.get_vocab():
            raise ValueError(
                f"The tokenizer has no {self.image_token!r} token; load it with `tokenizer_with_image_token` or add "
                f"it with `extra_special_tokens={{'image_token': {self.image_token!r}}}`."
            )
        if (image_start_token is None) != (image_end_token is None):
            raise ValueError("image_start_token and image_end_token frame an image together: give both or neither.")
        for frame in (image_start_token, image_end_token):
            if frame is not None and frame not in tokenizer.get_vocab():
                raise ValueError(f"The tokenizer has no {frame!r} token to frame each image with.")
        self.image_start_token, self.image_end_token = image_start_token, image_end_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if getattr(tokenizer, "legacy", None) is not None:
            # Llama's `legacy` decides the text after a special token (see `load_tokenizer`); transformers does not
            # write it back on save, so a saved legacy tokenizer would reload non-legacy and tokenize otherwise.
            tokenizer.init_kwargs["legacy"] = tokenizer.legacy
        self._folds_leading_space = folds_leading_space(tokenizer)
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)

    def __call__(self, images=None, text=None, **kwargs) -> BatchFeature:
        """Images as transformers' Llava processor prepares them, text tokenized as the original LLaVA tokenizes it.

        A `<image>` marker becomes `image_seq_length` image tokens, and the text between markers is tokenized piece by
        piece, each as a fresh text (the original's `tokenizer_image_token`), after one BOS. Tokenizing the whole
        expanded text instead gives other ids wherever a tokenizer treats text after a special token unlike the start
        of a text (non-legacy Llama tokenizers drop the `▁` there), and every released LLaVA was trained on the
        original's ids. A BOS the chat template wrote is that one BOS. Offsets (`return_offsets_mapping`) point into
        the text as given; image tokens and the BOS have empty offsets.
        """
        if text is None:
            return super().__call__(images=images, **kwargs)
        texts = [text] if isinstance(text, str) else list(text)
        text_kwargs = kwargs.pop("text_kwargs", {}) | {key: kwargs.pop(key) for key in TEXT_KWARGS if key in kwargs}
        if kwargs.pop("sanitize_control_tokens", False):
            raise ValueError(
                "sanitize_control_tokens is not supported: LLaVA reads special-token text (such as </s>) in prompts "
                "as the special token, as the original does."
            )
        kwargs.pop("return_text_replacement_offsets", None)  # offsets already point into the text as given
        images, texts, _, _ = self.prepare_inputs_layout(images=images, text=texts)  # fetches paths and URLs
        self.validate_inputs(images=images, text=texts)
        data = dict(super().__call__(images=images, **kwargs)) if images is not None else {}

        add_special_tokens = text_kwargs.get("add_special_tokens", True)
        # Each image's (height, width), in order, where the image processor reports them (the token count of a
        # LLaVA-NeXT image depends on its size).
        sizes = iter([tuple(int(side) for side in size) for size in data.get("image_sizes", [])])
        encoded = [
            self.encode_prompt(
                sample,
                add_special_tokens,
                [next(sizes) for _ in range(sample.count(self.image_token))] if "image_sizes" in data else None,
            )
            for sample in texts
        ]
        if text_kwargs.get("truncation") and text_kwargs.get("max_length") is not None:
            keep = slice(None, text_kwargs["max_length"])
            if self.tokenizer.truncation_side == "left":
                keep = slice(-text_kwargs["max_length"], None)
            encoded = [(ids[keep], offsets[keep]) for ids, offsets in encoded]
        padded = self.tokenizer.pad(
            {"input_ids": [ids for ids, _ in encoded]},
            padding=text_kwargs.get("padding", False),
            max_length=text_kwargs.get("max_length"),
            pad_to_multiple_of=text_kwargs.get("pad_to_multiple_of"),
            padding_side=text_kwargs.get("padding_side"),
            return_attention_mask=text_kwargs.get("return_attention_mask", True),
        )
        data.update(padded)
        if text_kwargs.get("return_offsets_mapping"):
            side = text_kwargs.get("padding_side") or self.tokenizer.padding_side
            width = max(len(ids) for ids in padded["input_ids"])
            filler = [[(0, 0)] * (width - len(offsets)) for _, offsets in encoded]
            data["offset_mapping"] = [
                fill + offsets if side == "left" else offsets + fill
                for (_, offsets), fill in zip(encoded, filler, strict=True)
            ]
        return BatchFeature(data=data, tensor_type=text_kwargs.get("return_tensors"))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        return (self.image_start_token or "") + self.image_token * self.image_seq_length + (self.image_end_token or "")

    def num_image_tokens(self, image_size: tuple[int, int] | None = None) -> int:
        """Image tokens one image becomes: `image_seq_length`, whatever its (height, width)."""
        return self.image_seq_length

    def encode_prompt(
        self, text: str, add_special_tokens: bool = True, image_sizes: list[tuple[int, int]] | None = None
    ) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of one prompt as the original's `tokenizer_image_token` builds them, with offsets into `text` (see
        `prompt_tokenization.encode_prompt`). Each `<image>` becomes its image tokens (`num_image_tokens`), between the
        paper's `<im_start>` and `<im_end>` where the processor frames images. `image_sizes`: each `<image>`'s
        (height, width), in order, for a processor whose token count depends on it."""
        head, tail = [], []
        if self.image_start_token is not None:
            start, end = self.tokenizer.convert_tokens_to_ids([self.image_start_token, self.image_end_token])
            head, tail = [start], [end]
        if image_sizes is None and self.image_token not in text:
            image_sizes = []  # a text without images has no run to build (a NeXT run needs its image's size)
        sizes = image_sizes if image_sizes is not None else [None]
        runs = [[*head, *[self.image_token_id] * self.num_image_tokens(size), *tail] for size in sizes]
        return encode_prompt(
            self.tokenizer,
            text,
            self.image_token,
            runs if image_sizes is not None else runs[0],
            add_special_tokens=add_special_tokens,
            folds_space=self._folds_leading_space,
        )

    def validate_inputs(self, images=None, text=None, **kwargs) -> None:
        """Per-sample check when images come nested per sample (`[[img], [img, img]]`), then the generic checks."""
        if text is not None and isinstance(images, (list, tuple)) and images and isinstance(images[0], (list, tuple)):
            texts = [text] if isinstance(text, str) else text
            if len(images) != len(texts):
                raise ValueError(f"Got {len(texts)} texts but image lists for {len(images)} samples.")
            for sample, (sample_text, sample_images) in enumerate(zip(texts, images, strict=True)):
                if sample_text.count(self.image_token) != len(sample_images):
                    raise ValueError(
                        f"Sample {sample} has {sample_text.count(self.image_token)} {self.image_token} markers but "
                        f"{len(sample_images)} images; write one {self.image_token} per image."
                    )
        super().validate_inputs(images=images, text=text, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return list(dict.fromkeys(self.tokenizer.model_input_names + ["pixel_values"]))

    @classmethod
    def from_backbones(
        cls,
        vision: str,
        text: str,
        vision_feature_select_strategy: str | None = None,
        pad_to_square: bool = False,
        image_start_token: str | None = None,
        image_end_token: str | None = None,
    ) -> "LlavaPluginProcessor":
        """Builds the processor matching `LlavaPluginForConditionalGeneration.from_backbones(vision, text)`.

        The image processor takes its size, crop and normalisation from the vision checkpoint's preprocessor config;
        `pad_to_square=True` selects LLaVA-1.5's pad mode; `image_start_token` and `image_end_token` frame each
        image as the paper's checkpoints do (tokens the tokenizer of `text` must hold). The chat templates are
        `vicuna_v1` (default) and `plain`.
        """
        vision_config = AutoConfig.from_pretrained(vision)
        vision_config = getattr(vision_config, "vision_config", vision_config)
        if vision_feature_select_strategy is None:
            no_cls = vision_config.model_type in VISION_TOWERS_WITHOUT_CLS
            vision_feature_select_strategy = "full" if no_cls else "default"
        try:
            image_processor = IMAGE_PROCESSOR_CLASS.from_pretrained(vision, do_pad=pad_to_square)
        except OSError:  # a bare vision checkpoint without preprocessor config: size it from the model
            size = vision_config.image_size
            image_processor = IMAGE_PROCESSOR_CLASS(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_pad=pad_to_square
            )
        return cls(
            image_processor=image_processor,
            tokenizer=tokenizer_with_image_token(text),
            image_seq_length=image_seq_length_for(vision_config, vision_feature_select_strategy),
            image_start_token=image_start_token,
            image_end_token=image_end_token,
            chat_template={"default": CHAT_TEMPLATES["vicuna_v1"], "plain": CHAT_TEMPLATES["plain"]},
        )


__all__ = ["LlavaPluginProcessor", "load_tokenizer", "tokenizer_with_image_token"]
