"""`llava convert SRC DST`: checkpoints between the original LLaVA repository's format, llava-hf and this plugin.

The three formats hold the same weights under different names:

- original (`liuhaotian/llava-v1.5-7b`): the LLM at `model.*` and `lm_head`, the projector at
  `model.mm_projector.{0,2}` (`model.mm_projector` for `linear`), the vision tower usually not in the weights but
  named by `mm_vision_tower`;
- llava-hf (transformers' built-in, model_type `llava`): `model.vision_tower`,
  `model.multi_modal_projector.linear_{1,2}`, `model.language_model`, `lm_head` in memory; released checkpoints
  (and `--to llava-hf` exports) keep the older names `vision_tower.vision_model`, `multi_modal_projector`,
  `language_model.model` and `language_model.lm_head`, which every transformers release and vLLM read;
- this plugin (`llava_plugin`): as llava-hf, with `linear_N` for projectors of any depth.

`model_type` alone does not tell the first two apart: the original's Llama class was registered as `llava` from its
v1.0.0 (July 2023) through LLaVA-1.5, and renamed `llava_llama` only in 1.6 (January 2024), so every LLaVA-1.5 release
says `"model_type": "llava"`, as llava-hf does. An original config is known by the `mm_*` fields the original writes
into it (`mm_vision_tower`, `mm_hidden_size`), a llava-hf one by its `vision_config` and `text_config`
(`checkpoint_format`, which everything that sorts checkpoints calls).

This module is the one place where those mappings live. The original splices image features at a sentinel id
(-200) that no tokenizer holds; the converted tokenizer gets a real `<image>` token (its embedding row the mean of the
others, which no image position ever reads). Original settings become config and processor fields:
`mm_vision_select_layer` -> `vision_feature_layer`, `mm_vision_select_feature` (`patch`/`cls_patch`) ->
`vision_feature_select_strategy` (`default`/`full`), `image_aspect_ratio=pad` -> the processor's pad-to-square.

The paper's checkpoints (April-June 2023: `LLaVA-13b-delta-v0`, `LLaVA-7b-delta-v0`, `LLaVA-13b-delta-v0-science_qa`,
`LLaVA-Lightning-7B-delta-v1-1`) are original ones too (`"model_type": "llava"`, `mm_vision_tower`), released as
deltas to LLaMA (`apply_delta`, `--delta-base`), with a `[PAD]` token and `<im_patch>`, `<im_start>`, `<im_end>`
appended to LLaMA's vocabulary; `mm_use_im_start_end` becomes the processor's image framing and the config's
`image_start_token_id` / `image_end_token_id`.

Weights keep their dtypes and the source's shard size; DST is written beside its final place and renamed into it, so
a conversion that fails half-way leaves nothing at DST.
"""

import ast
import copy
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from safetensors import safe_open
from tqdm.auto import tqdm
from transformers import (
    AutoConfig,
    AutoProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.utils import logging

from .anyres import pinpoints_from_original
from .chat_templates import CHAT_TEMPLATES
from .configuration_llava_next_plugin import LlavaNextPluginConfig
from .configuration_llava_plugin import LlavaPluginConfig, image_seq_length_for
from .modeling_llava_next_plugin import LlavaNextPluginForConditionalGeneration
from .modeling_llava_plugin import LlavaPluginForConditionalGeneration, load_vision_tower
from .processing_llava_next_plugin import LlavaNextPluginProcessor
from .processing_llava_plugin import IMAGE_PROCESSOR_CLASS, LlavaPluginProcessor, load_tokenizer

logger = logging.get_logger(__name__)

Format = Literal["original", "llava-hf", "plugin"]
FORMAT_NAMES = {"original": "an original LLaVA", "llava-hf": "a llava-hf", "plugin": "a llava_plugin"}
# What an original checkpoint's config class wraps, by its model_type: `llava` is LlavaLlama's name until LLaVA-1.5.
ORIGINAL_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral", "llava_qwen": "qwen2"}
# What the original writes into every config it trains (`initialize_vision_modules`, all versions): its own model
# builds the tower and projector when `mm_vision_tower` is there.
ORIGINAL_FIELDS = ("mm_vision_tower", "mm_hidden_size")
# Fields of an original config that are LLaVA's, not the language model's (besides every `mm_*`).
ORIGINAL_ONLY = {
    "model_type",
    "architectures",
    "image_aspect_ratio",
    "tune_mm_mlp_adapter",
    "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower",
    "use_mm_proj",
    "sep_image_conv_front",
    "tokenizer_model_max_length",
    "tokenizer_padding_side",
    "image_grid_pinpoints",
    "image_crop_resolution",
    "image_split_resolution",
}
# Fields that mean the same in transformers' LlavaConfig and LlavaPluginConfig.
SHARED_CONFIG_FIELDS = (
    "vision_feature_layer",
    "vision_feature_select_strategy",
    "image_token_id",
    "multimodal_projector_bias",
    "tie_word_embeddings",
)
SELECT_FEATURE = {"patch": "default", "cls_patch": "full"}
# The paper's checkpoints (`mm_use_im_start_end`) frame each image's patch tokens with these two tokens of their own
# tokenizer (`llava/model/llava.py`, April-June 2023: `<im_start>` + 256 `<im_patch>` + `<im_end>`).
IMAGE_FRAME = ("<im_start>", "<im_end>")
# Weights of an original LLaVA that its LLM has no counterpart of: a delta holds them as they are (`apply_delta.py`).
DELTA_OWN_PREFIXES = ("model.mm_projector.", "model.vision_tower.")
# Rows that the original's training appended ([PAD], <im_patch>, <im_start>, <im_end>): the delta is wider there.
DELTA_GROWN = ("model.embed_tokens.weight", "lm_head.weight")
# Buffers that the transformers of the original's day saved with the weights; today's models rebuild them.
SAVED_BUFFERS = (".position_ids", ".rotary_emb.inv_freq")
# In-memory prefix of transformers' LlavaForConditionalGeneration -> the prefix released llava-hf checkpoints
# (llava-hf/llava-1.5-7b-hf) use. vLLM's LlavaForConditionalGeneration loads these names as they are.
LLAVA_HF_RELEASE_PREFIXES = {
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.vision_tower.": "vision_tower.",
    "model.image_newline": "image_newline",
}
# `image_aspect_ratio` values of LLaVA-NeXT's later repository (LLaVA-VL/LLaVA-NeXT) that lay images out otherwise
# than 1.6's `anyres`; any other value than `pad` and `anyres` is the CLIP resize and crop, as in the original.
REFUSED_ASPECT_RATIOS = re.compile(r"^(anyres.+|highres|crop_split)$")
# LLaVA-1.6 merges tile features with `spatial_unpad` only; `flat` and `spatial` lay them out otherwise.
ANYRES_MERGE = "spatial_unpad"


def checkpoint_format(config: dict, where: str = "config.json") -> Format:
    """The format of a checkpoint from its `config.json` contents: the one rule that sorts checkpoints.

    An original checkpoint by its `mm_*` fields whatever its model_type (`llava`, `llava_llama`, `llava_mistral`, ...),
    a llava-hf one by its `vision_config` and `text_config` under model_type `llava`, this plugin's by `llava_plugin`.
    `where` names the config in the error.
    """
    model_type = config.get("model_type")
    if model_type in ("llava_plugin", "llava_next_plugin"):
        return "plugin"
    if any(field in config for field in ORIGINAL_FIELDS):
        return "original"
    if model_type in ("llava", "llava_next") and "vision_config" in config and "text_config" in config:
        return "llava-hf"
    raise ValueError(
        f"{where!r} has model_type {model_type!r} and neither the original LLaVA's {' / '.join(ORIGINAL_FIELDS)} "
        "fields nor llava-hf's vision_config and text_config: expected an original LLaVA checkpoint, a llava-hf one "
        "(model_type 'llava') or this plugin's ('llava_plugin')."
    )


def detect_format(source: str | Path) -> Format:
    """The format of a checkpoint folder, from its `config.json` (see `checkpoint_format`)."""
    config_path = Path(source) / "config.json"
    if (Path(source) / "adapter_config.json").is_file():
        raise ValueError(
            f"{str(source)!r} is a LoRA adapter, not a full checkpoint: merge it into one first "
            f"(`llava merge-lora {source} MERGED`) and use MERGED."
        )
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(source)!r} has no config.json: not a checkpoint folder.")
    return checkpoint_format(json.loads(config_path.read_text()), str(config_path))


def iter_weights(source: Path, desc: str = "reading weights") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of a checkpoint folder, shard by shard, in its stored dtype.

    Safetensors are memory-mapped. The original repository's releases are `pytorch_model-*.bin` only; those are read
    with `torch.load(weights_only=True, mmap=True)`, which accepts tensors and nothing executable.
    """
    files = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{str(source)!r} holds no weights (*.safetensors or pytorch_model*.bin).")
    for file in tqdm(files, desc=desc, leave=False, disable=len(files) < 2):
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt") as handle:
                yield from ((name, handle.get_tensor(name)) for name in handle.keys())
        else:
            yield from torch.load(file, map_location="cpu", weights_only=True, mmap=True).items()


def read_weights(source: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint folder, in its stored dtype (see `iter_weights`)."""
    return dict(iter_weights(source))


def apply_delta(delta: dict[str, torch.Tensor], base: Path, where: str) -> dict[str, torch.Tensor]:
    """The paper's released weights from their delta: the original's `llava/model/apply_delta.py` rule.

    Every LLM weight of the delta gets the base LLaMA's weight added, in the delta's dtype (the original adds in
    float16, the dtype of both its loads); `model.embed_tokens` and `lm_head`, wider in the delta by the tokens the
    original's training appended, get it added to their first rows only. The projector (and a saved vision tower)
    has no counterpart in the base and is kept as it is. The base is read shard by shard; `where` names the delta in
    errors. A base that is not the delta's LLaMA (a weight missing on either side, another shape) is an error.
    """
    target, missing = dict(delta), set(delta)
    with tqdm(desc="applying delta", unit="tensor", leave=False) as progress:
        for name, base_tensor in iter_weights(base, desc="reading the base"):
            if name.endswith(SAVED_BUFFERS):
                continue
            if name not in delta:
                raise ValueError(
                    f"The base {str(base)!r} has {name!r}, which the delta {where!r} lacks: pass the LLaMA the "
                    "delta was made from as --delta-base."
                )
            tensor = delta[name]
            rows = tuple(slice(0, size) for size in base_tensor.shape)
            fits = base_tensor.shape == tensor.shape or (
                name in DELTA_GROWN and all(b <= d for b, d in zip(base_tensor.shape, tensor.shape, strict=True))
            )
            if base_tensor.dim() != tensor.dim() or not fits:
                raise ValueError(
                    f"{name!r} is {tuple(tensor.shape)} in the delta {where!r} but {tuple(base_tensor.shape)} in the "
                    f"base {str(base)!r}: pass the LLaMA the delta was made from as --delta-base."
                )
            summed = tensor.clone()
            summed[rows] += base_tensor.to(tensor.dtype)
            target[name] = summed
            missing.discard(name)
            progress.update()
    unmatched = sorted(
        name for name in missing if not name.startswith(DELTA_OWN_PREFIXES) and not name.endswith(SAVED_BUFFERS)
    )
    if unmatched:
        raise ValueError(
            f"The delta {where!r} holds {unmatched[:3]} (and {max(len(unmatched) - 3, 0)} more), which the base "
            f"{str(base)!r} lacks: pass the LLaMA the delta was made from as --delta-base."
        )
    return target


def shard_size(source: Path) -> int | None:
    """The largest weight file of a sharded source in bytes, so the converted checkpoint shards alike."""
    files = list(source.glob("*.safetensors")) or list(source.glob("pytorch_model*.bin"))
    return max(file.stat().st_size for file in files) if len(files) > 1 else None


def _grow_embeddings(weights: dict[str, torch.Tensor], new_rows: int, names: list[str]) -> None:
    """Appends `new_rows` rows equal to the mean of the existing ones (the `<image>` token), as `from_backbones`."""
    for name in names:
        if name in weights:
            table = weights[name]
            mean = table.float().mean(dim=0, keepdim=True).to(table.dtype)
            weights[name] = torch.cat([table, mean.expand(new_rows, -1)])


def load_original(
    source: Path, vision_tower: str | None, template: str, delta_base: str | Path | None = None
) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """An original-repository checkpoint (`llava`, `llava_llama`, ...) as a plugin model and processor.

    With `delta_base`, `source` is a delta (the paper's releases, `LLaVA-13b-delta-v0`) and `delta_base` the LLaMA
    it is added to (`apply_delta`). A checkpoint with `mm_use_im_start_end` (the paper's) frames each image with
    its tokenizer's `<im_start>` and `<im_end>`, in the processor and the config.
    """
    raw = json.loads((source / "config.json").read_text())
    if raw.get("model_type") not in ORIGINAL_MODEL_TYPES:
        raise ValueError(
            f"{str(source)!r} is an original LLaVA checkpoint with model_type {raw.get('model_type')!r}, whose "
            f"language model this plugin does not map; it converts {', '.join(map(repr, ORIGINAL_MODEL_TYPES))}."
        )
    anyres = _check_image_layout(raw, source)
    vision = vision_tower or raw.get("mm_vision_tower") or raw.get("vision_tower")
    if not vision:
        raise ValueError(f"{str(source)!r} names no vision tower (mm_vision_tower); pass --vision-tower PATH.")
    if raw.get("mm_vision_select_feature", "patch") not in SELECT_FEATURE:
        raise ValueError(f"Unknown mm_vision_select_feature {raw['mm_vision_select_feature']!r} in {str(source)!r}.")

    frame = IMAGE_FRAME if raw.get("mm_use_im_start_end") else (None, None)
    weights = read_weights(source)
    if delta_base is not None:
        weights = apply_delta(weights, Path(delta_base), str(source))
    dtype = weights["model.embed_tokens.weight"].dtype
    text_fields = {key: value for key, value in raw.items() if key not in ORIGINAL_ONLY and not key.startswith("mm_")}
    text_config = AutoConfig.for_model(ORIGINAL_MODEL_TYPES[raw["model_type"]], **text_fields)
    try:
        tower = load_vision_tower(vision, dtype=dtype)
    except OSError as error:
        raise OSError(
            f"The vision tower {vision!r} named by {str(source)!r} cannot be loaded ({error}); pass --vision-tower "
            "with a local copy of it."
        ) from error
    select_strategy = SELECT_FEATURE[raw.get("mm_vision_select_feature", "patch")]
    if anyres:
        if frame[0]:
            raise ValueError(
                f"{str(source)!r} frames its images with start/end tokens and tiles them (anyres): no LLaVA release "
                "did both, and this plugin does not convert the pair."
            )
        pinpoints = raw["image_grid_pinpoints"]
        pinpoints = pinpoints_from_original(ast.literal_eval(pinpoints) if isinstance(pinpoints, str) else pinpoints)
        processor = LlavaNextPluginProcessor.from_backbones(vision, str(source), image_grid_pinpoints=pinpoints)
    else:
        processor = LlavaPluginProcessor.from_backbones(
            vision,
            str(source),
            vision_feature_select_strategy=select_strategy,
            pad_to_square=raw.get("image_aspect_ratio") == "pad",
            image_start_token=frame[0],
            image_end_token=frame[1],
        )
    processor.chat_template = {"default": CHAT_TEMPLATES[template], **CHAT_TEMPLATES}

    converted: dict[str, torch.Tensor] = {}
    # The original's trainer saves the tower it trained with (`model.vision_tower.vision_tower.vision_model.*`, as
    # its transformers named CLIP's weights); those are the weights to use, `mm_vision_tower` only names its shape.
    embedded_tower = {k: v for k, v in weights.items() if k.startswith("model.vision_tower.vision_tower.")}
    tower_weights = embedded_tower or {
        f"model.vision_tower.vision_tower.{k}": v for k, v in tower.state_dict().items()
    }
    tower_keys = set(tower.state_dict())
    for name, tensor in {**weights, **tower_weights}.items():
        if name.endswith(SAVED_BUFFERS):
            continue
        if name.startswith("model.vision_tower.vision_tower."):
            key = name.removeprefix("model.vision_tower.vision_tower.")
            if key not in tower_keys and key.removeprefix("vision_model.") in tower_keys:
                key = key.removeprefix("vision_model.")  # today's CLIPVisionModel names them without the prefix
            converted["model.vision_tower." + key] = tensor
        elif name.startswith("model.mm_projector."):
            # nn.Sequential(Linear, GELU, Linear, ...): linear k sits at index 2 (k - 1); `linear` has no index.
            match = re.match(r"model\.mm_projector\.(?:(\d+)\.)?(weight|bias)$", name)
            index = 1 if match.group(1) is None else int(match.group(1)) // 2 + 1
            converted[f"model.multi_modal_projector.linear_{index}.{match.group(2)}"] = tensor
        elif name == "model.image_newline":
            converted[name] = tensor
        elif name.startswith("model."):
            converted["model.language_model." + name.removeprefix("model.")] = tensor
        else:  # lm_head
            converted[name] = tensor

    tokenizer = processor.tokenizer
    new_rows = len(tokenizer) - text_config.vocab_size
    if new_rows > 0:
        _grow_embeddings(converted, new_rows, ["model.language_model.embed_tokens.weight", "lm_head.weight"])
        text_config.vocab_size = len(tokenizer)
    config_class, model_class = (
        (LlavaNextPluginConfig, LlavaNextPluginForConditionalGeneration)
        if anyres
        else (LlavaPluginConfig, LlavaPluginForConditionalGeneration)
    )
    config = config_class(
        vision_config=tower.config,
        text_config=text_config,
        projector_type=raw.get("mm_projector_type", "linear"),
        vision_feature_layer=raw.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=select_strategy,
        image_token_id=tokenizer.convert_tokens_to_ids(processor.image_token),
        image_start_token_id=tokenizer.convert_tokens_to_ids(frame[0]) if frame[0] else None,
        image_end_token_id=tokenizer.convert_tokens_to_ids(frame[1]) if frame[1] else None,
        multimodal_projector_bias="model.multi_modal_projector.linear_1.bias" in converted,
        tie_word_embeddings=text_config.tie_word_embeddings,
        **({"image_grid_pinpoints": processor.image_processor.image_grid_pinpoints} if anyres else {}),
    )
    model = _assemble(model_class, config, converted, dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


def _check_image_layout(raw: dict, source: Path) -> bool:
    """Whether an original config tiles images (LLaVA-1.6's `anyres`); a layout this plugin does not implement is
    refused naming its field and value."""
    aspect_ratio = raw.get("image_aspect_ratio")
    if isinstance(aspect_ratio, str) and REFUSED_ASPECT_RATIOS.match(aspect_ratio):
        raise ValueError(
            f"{str(source)!r} uses image_aspect_ratio={aspect_ratio!r}, which this plugin does not implement; it "
            "converts 'pad' (LLaVA-1.5), 'anyres' (LLaVA-1.6) and the plain resize and crop."
        )
    for field in ("s2", "s2_scales"):
        if raw.get(field):
            raise ValueError(
                f"{str(source)!r} uses {field}={raw[field]!r} (S2 multi-scale vision features), which this plugin "
                "does not implement."
            )
    merge = raw.get("mm_patch_merge_type", "flat")
    if aspect_ratio == "anyres":
        if merge != ANYRES_MERGE:
            raise ValueError(
                f"{str(source)!r} uses mm_patch_merge_type={merge!r} with image_aspect_ratio='anyres'; this plugin "
                f"implements LLaVA-1.6's {ANYRES_MERGE!r} merge only."
            )
        if not raw.get("image_grid_pinpoints"):
            raise ValueError(f"{str(source)!r} uses image_aspect_ratio='anyres' but has no image_grid_pinpoints.")
        return True
    if merge != "flat":
        raise ValueError(
            f"{str(source)!r} uses mm_patch_merge_type={merge!r} without image_aspect_ratio='anyres'; this plugin "
            "merges tile features only for anyres checkpoints (LLaVA-1.6)."
        )
    return False


def load_llava_next_hf(
    source: Path, original_grids: bool = False
) -> tuple[LlavaNextPluginForConditionalGeneration, LlavaNextPluginProcessor]:
    """A llava-hf LLaVA-NeXT checkpoint (transformers' built-in `llava_next`) as a plugin model and processor.

    Its `image_grid_pinpoints` keep transformers' (height, width) reading, so the plugin tiles as the built-in does.
    llava-hf's 1.6 releases copied the original's (width, height) list unchanged: where two pinpoints tie (images
    with both sides at most 336), their grid differs from the one the weights were trained with. `original_grids`
    reads the list as the original does (`anyres.pinpoints_from_original`), which gives every image the original's
    grid, as converting the original checkpoint does.
    """
    hf_config = LlavaNextConfig.from_pretrained(source)
    pinpoints = hf_config.image_grid_pinpoints
    if original_grids:
        pinpoints = pinpoints_from_original(pinpoints)
    if hf_config.projector_hidden_act != "gelu":
        raise ValueError(
            f"{str(source)!r} has a {hf_config.projector_hidden_act!r} projector activation; this plugin's "
            "mlpNx_gelu projectors use gelu."
        )
    hf_model = LlavaNextForConditionalGeneration.from_pretrained(source, dtype="auto")
    hf_processor = AutoProcessor.from_pretrained(source)
    config = LlavaNextPluginConfig(
        vision_config=hf_config.vision_config,
        text_config=hf_config.text_config,
        projector_type="mlp2x_gelu",
        image_grid_pinpoints=pinpoints,
        **{field: getattr(hf_config, field) for field in SHARED_CONFIG_FIELDS},
    )
    model = _assemble(LlavaNextPluginForConditionalGeneration, config, hf_model.state_dict(), hf_model.dtype)
    model.generation_config = hf_model.generation_config
    tokenizer = load_tokenizer(str(source))
    tokenizer.image_token = hf_processor.image_token
    source_images = hf_processor.image_processor
    image_processor = LlavaNextImageProcessorPil(
        size=source_images.size,
        crop_size=source_images.crop_size,
        image_mean=source_images.image_mean,
        image_std=source_images.image_std,
        resample=source_images.resample,
        image_grid_pinpoints=pinpoints,
    )
    default = (
        hf_processor.chat_template if isinstance(hf_processor.chat_template, str) else CHAT_TEMPLATES["vicuna_v1"]
    )
    processor = LlavaNextPluginProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        image_token=hf_processor.image_token,
        chat_template={"default": default, **CHAT_TEMPLATES},
    )
    return model, processor


def load_llava_hf(source: Path) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """A llava-hf checkpoint (transformers' built-in `llava`) as a plugin model and processor: the same weights."""
    hf_config = LlavaConfig.from_pretrained(source)
    if hf_config.projector_hidden_act != "gelu":
        raise ValueError(
            f"{str(source)!r} has a {hf_config.projector_hidden_act!r} projector activation; this plugin's "
            "mlpNx_gelu projectors use gelu."
        )
    hf_model = LlavaForConditionalGeneration.from_pretrained(source, dtype="auto")  # maps legacy key layouts too
    hf_processor = AutoProcessor.from_pretrained(source)
    config = LlavaPluginConfig(
        vision_config=hf_config.vision_config,
        text_config=hf_config.text_config,
        projector_type="mlp2x_gelu",
        **{field: getattr(hf_config, field) for field in SHARED_CONFIG_FIELDS},
    )
    model = _assemble(LlavaPluginForConditionalGeneration, config, hf_model.state_dict(), hf_model.dtype)
    model.generation_config = hf_model.generation_config

    tokenizer = load_tokenizer(str(source))  # the processor's own, with `legacy` read as the original read it
    image_token = hf_processor.image_token
    tokenizer.image_token = image_token  # what LlavaPluginProcessor looks the placeholder up by
    source_images = hf_processor.image_processor
    # The same resize / crop / normalisation, in the image processor class this plugin's processor holds.
    image_processor = IMAGE_PROCESSOR_CLASS(
        size=source_images.size,
        crop_size=getattr(source_images, "crop_size", None),
        do_center_crop=getattr(source_images, "do_center_crop", True),
        image_mean=source_images.image_mean,
        image_std=source_images.image_std,
        resample=source_images.resample,
        do_pad=getattr(source_images, "do_pad", False),
    )
    templates = dict(CHAT_TEMPLATES)
    if isinstance(hf_processor.chat_template, str):  # keep the prompt format the model was trained with
        templates = {"default": hf_processor.chat_template, **templates}
    else:
        templates = {"default": CHAT_TEMPLATES["vicuna_v1"], **templates}
    processor = LlavaPluginProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=config.image_seq_length,
        image_token=image_token,
        chat_template=templates,
    )
    return model, processor


def load_any(
    source: str | Path,
    vision_tower: str | None = None,
    template: str = "vicuna_v1",
    delta_base: str | Path | None = None,
    original_grids: bool = False,
) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """Any of the three formats as a plugin model and processor (what `llava chat` and `llava convert` load).

    `delta_base` (the LLaMA an original delta is added to) applies to original checkpoints only; `original_grids`
    (read the pinpoints as the original's (width, height) list, `load_llava_next_hf`) to llava-hf's LLaVA-NeXT
    checkpoints only."""
    source = Path(source)
    kind = detect_format(source)
    if delta_base is not None and kind != "original":
        raise ValueError(
            f"{str(source)!r} is {FORMAT_NAMES[kind]} checkpoint, not an original LLaVA delta: --delta-base applies "
            "to the original's delta releases (LLaVA-13b-delta-v0, ...) only."
        )
    model_type = json.loads((source / "config.json").read_text()).get("model_type")
    if original_grids and not (kind == "llava-hf" and model_type == "llava_next"):
        raise ValueError(
            f"{str(source)!r} is {FORMAT_NAMES[kind]} checkpoint of model_type {model_type!r}: --original-grids "
            "applies to llava-hf's LLaVA-NeXT (llava_next) checkpoints only (an original 1.6 checkpoint always "
            "converts with the original's grids)."
        )
    if kind == "original":
        return load_original(source, vision_tower, template, delta_base)
    if kind == "llava-hf":
        return load_llava_next_hf(source, original_grids) if model_type == "llava_next" else load_llava_hf(source)
    model_class = LlavaNextPluginForConditionalGeneration if model_type == "llava_next_plugin" else None
    model = (model_class or LlavaPluginForConditionalGeneration).from_pretrained(source, dtype="auto")
    return model, AutoProcessor.from_pretrained(source)


def to_llava_hf(
    model: LlavaPluginForConditionalGeneration, processor: LlavaPluginProcessor
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The plugin model as transformers' built-in Llava (LlavaNext for LLaVA-NeXT), which vLLM, SGLang and TGI serve.

    A LLaVA-NeXT export keeps the plugin's (height, width) pinpoints, so the built-in tiles as the plugin does; the
    built-in rounds the unpadded feature size where the plugin (as the original) truncates it, which gives another
    token count for a few image sizes (`anyres` module docstring).
    """
    config = model.config
    # LLaVA-1.5's config only: LLaVA-NeXT's declares no framing (one converted from an original may carry it as None).
    if getattr(config, "image_start_token_id", None) is not None:
        raise ValueError(
            "This checkpoint frames each image with start and end tokens (the paper's <im_start> / <im_end>), which "
            "transformers' built-in LlavaProcessor cannot write; keep it in this plugin's format."
        )
    if config.projector_type != "mlp2x_gelu":
        raise ValueError(
            f"projector_type {config.projector_type!r} cannot be expressed by transformers' built-in "
            "LlavaForConditionalGeneration, whose projector is always two linear layers with GELU (mlp2x_gelu)."
        )
    next_model = isinstance(config, LlavaNextPluginConfig)
    config_class, model_class = (
        (LlavaNextConfig, LlavaNextForConditionalGeneration)
        if next_model
        else (LlavaConfig, LlavaForConditionalGeneration)
    )
    hf_config = config_class(
        vision_config=config.vision_config.to_dict(),
        text_config=config.text_config.to_dict(),
        projector_hidden_act="gelu",
        image_seq_length=config.image_seq_length,
        **({"image_grid_pinpoints": config.image_grid_pinpoints} if next_model else {}),
        **{field: getattr(config, field) for field in SHARED_CONFIG_FIELDS},
    )
    hf_model = _assemble(model_class, hf_config, model.state_dict(), model.dtype)
    hf_model.generation_config = model.generation_config
    vision = config.vision_config
    has_cls = image_seq_length_for(vision, "full") > (vision.image_size // vision.patch_size) ** 2
    templates = processor.chat_template
    chat_template = templates.get("default") if isinstance(templates, dict) else templates
    # The conversation template alone, in the tokenizer too: several (`plain`, stage 1's, beside it) load as a dict,
    # which vLLM's chat rendering cannot take ("TypeError: unhashable type: 'dict'"), and serving needs none other.
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = chat_template
    hf_processor = (LlavaNextProcessor if next_model else LlavaProcessor)(
        image_processor=processor.image_processor,
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_token=processor.image_token,
        num_additional_image_tokens=int(has_cls),
        chat_template=chat_template,
    )
    return hf_model, hf_processor


def llava_hf_release_weights(model: LlavaForConditionalGeneration) -> dict[str, torch.Tensor]:
    """`model`'s weights under the names of released llava-hf checkpoints, for `--to llava-hf` to write.

    Transformers 5 holds them under other names in memory (`model.language_model.*`, and CLIP's and SigLIP's towers
    without their `vision_model.` level) and writes the released names back only for a model it loaded from a file,
    by reverting the renamings it recorded there. The export is assembled from a state dict, so it recorded none and
    would be saved under its in-memory names, which vLLM's loader refuses ("There is no module or parameter named
    'vision_tower.embeddings'"). These names load in transformers (the renamings it applies to every released
    checkpoint) and in vLLM alike.
    """
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    weights = {}
    for name, tensor in model.state_dict().items():
        if name in tied:
            continue
        prefix = next(prefix for prefix in LLAVA_HF_RELEASE_PREFIXES if name.startswith(prefix))
        rest = name.removeprefix(prefix)
        if prefix == "model.vision_tower." and not rest.startswith("vision_model."):
            rest = "vision_model." + rest
        weights[LLAVA_HF_RELEASE_PREFIXES[prefix] + rest] = tensor
    return weights


def _assemble(model_class: type, config, state_dict: dict[str, torch.Tensor], dtype: torch.dtype):
    """A model holding exactly `state_dict`'s weights, through `from_pretrained` (meta init, buffers, tying).

    Strict: a key the model lacks, or a weight the state dict lacks (which would be left random), is an error.
    """
    model = model_class.from_pretrained(None, config=config, state_dict=state_dict, dtype=dtype)
    names = set(model.state_dict())
    missing = names - set(state_dict) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    unexpected = set(state_dict) - names
    if missing or unexpected:
        raise ValueError(
            f"The converted weights do not fit {model_class.__name__}: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}."
        )
    return model.eval()


@contextmanager
def atomic_folder(destination: str | Path) -> Iterator[Path]:
    """Yields a temporary folder beside `destination`, renamed into place only when the block succeeds.

    The staging folders that a killed earlier write left for the same destination are removed first (one writer
    per destination at a time), and the finished folder gets the permissions of the user's umask, not mkdtemp's 0700.
    """
    destination = Path(destination)
    if destination.exists() and any(destination.iterdir()):
        raise FileExistsError(f"{str(destination)!r} exists and is not empty; choose another destination.")
    destination.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{destination.name}.partial-"
    for stale in destination.parent.glob(f"{prefix}*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=destination.parent))
    try:
        yield staging
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        if destination.exists():
            destination.rmdir()
        os.replace(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def convert(
    source: str | Path,
    destination: str | Path,
    to: Literal["plugin", "llava-hf"] = "plugin",
    vision_tower: str | None = None,
    template: str = "vicuna_v1",
    delta_base: str | Path | None = None,
    original_grids: bool = False,
) -> Path:
    """Converts the checkpoint at `source` (any of the three formats) into `destination` in the `to` format.

    `delta_base`: `source` is an original delta release, and this the LLaMA it is added to (`apply_delta`).
    `original_grids`: `source` is one of llava-hf's LLaVA-NeXT releases, whose pinpoints are read as the original's
    (`load_llava_next_hf`)."""
    source, destination = Path(source), Path(destination)
    model, processor = load_any(source, vision_tower, template, delta_base, original_grids)
    if to == "llava-hf":
        model, processor = to_llava_hf(model, processor)
    elif to != "plugin":
        raise ValueError(f"Unknown target format {to!r}: expected 'plugin' or 'llava-hf'.")
    max_shard_size = shard_size(source)
    save_arguments = {"max_shard_size": max_shard_size} if max_shard_size else {}
    if to == "llava-hf":  # the released names, written as they are (no renaming of transformers' on top)
        save_arguments |= {"state_dict": llava_hf_release_weights(model), "save_original_format": False}
    with atomic_folder(destination) as staging:
        model.save_pretrained(staging, **save_arguments)
        processor.save_pretrained(staging)
    logger.warning(f"Converted {detect_format(source)} checkpoint {str(source)!r} to {to} at {str(destination)!r}.")
    return destination


__all__ = [
    "FORMAT_NAMES",
    "apply_delta",
    "checkpoint_format",
    "convert",
    "detect_format",
    "llava_hf_release_weights",
    "load_any",
    "to_llava_hf",
]
