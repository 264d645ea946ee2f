"""The model a LLaVA run starts from, and a LoRA adapter applied to it as it is: how training, `llava merge-lora` and
every command that answers questions build them.

A run starts from a saved LLaVA checkpoint or from two backbones joined by a fresh projector (`build_base`). The
checkpoint may be this plugin's, llava-hf's or the original repository's (a folder or a Hub id): the other two are
converted in memory as it loads, as `llava convert` would, so a released LLaVA is fine-tuned without a step of its own
and rebuilt the same way under an adapter trained on it. A LoRA run may start from two backbones that never existed as
one checkpoint, so its output folder records how its base was built (`llava_base.json`, written by `llava train`);
`load_adapter` rebuilds that base with the same function and applies the adapter with PEFT, unmerged. The adapter holds
the LoRA weights and the whole trained projector (PEFT's `modules_to_save`), which replaces the base's: the stage-1
projector the run started from is not needed to rebuild it. A LLaVA-NeXT base's `image_newline`, frozen under LoRA but
random where the base was built from backbones, is a parameter and no module PEFT could save: it is kept beside the
adapter (`IMAGE_NEWLINE_NAME`) and put back into the rebuilt base. Like the original's LoRA loading, the base may be
rebuilt in another dtype or quantized than it was trained in.
"""

import json
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig
from transformers.utils import logging

from hub_cards.model_card import ADAPTER_BASE_NAME
from modeling_llava import (
    LlavaNextPluginForConditionalGeneration,
    LlavaNextPluginProcessor,
    LlavaPluginForConditionalGeneration,
    LlavaPluginProcessor,
)
from modeling_llava.convert_checkpoint import FORMAT_NAMES, Format, checkpoint_format, detect_format, load_any

logger = logging.get_logger(__name__)

# Only the language model is quantized, by QLoRA and by 4-/8-bit inference alike: the vision tower, the projector
# and the head (transformers' default) stay in the model's dtype.
NOT_QUANTIZED = ("vision_tower", "multi_modal_projector", "lm_head")
# What `build_base` reads of a run's recorded arguments (`llava_base.json`'s `script_args`).
BASE_FIELDS = (
    "vision_tower",
    "language_model",
    "projector_type",
    "vision_feature_layer",
    "pad_to_square",
    "anyres",
    "image_grid_pinpoints",
)
# The `image_newline` of a LLaVA-NeXT LoRA run's base, beside its adapter.
IMAGE_NEWLINE_NAME = "image_newline.safetensors"
# A model either kind of LLaVA: LLaVA-1.5 (one tile per image) or LLaVA-NeXT (AnyRes tiles).
LlavaModel = LlavaPluginForConditionalGeneration | LlavaNextPluginForConditionalGeneration
LlavaProcessor = LlavaPluginProcessor | LlavaNextPluginProcessor


def is_adapter(folder: str | Path) -> bool:
    """Whether `folder` holds a PEFT adapter rather than a full checkpoint."""
    return (Path(folder) / "adapter_config.json").is_file()


def checkpoint_source(model_name_or_path: str, revision: str | None = None) -> tuple[str, Format]:
    """Where a checkpoint's files are and its format: a local folder as it is; for a Hub id, its `config.json` tells
    the format, and only a checkpoint that needs converting is downloaded whole (`from_pretrained` fetches the rest).
    Raises `FileNotFoundError` for a name that is neither.
    """
    if Path(model_name_or_path).is_dir():
        return model_name_or_path, detect_format(model_name_or_path)
    try:
        config = Path(hf_hub_download(model_name_or_path, "config.json", revision=revision))
    except (OSError, ValueError) as error:  # not a repo id, unknown on the Hub, or offline
        raise FileNotFoundError(
            f"{model_name_or_path!r} is neither a checkpoint folder nor a model on the Hub ({error})"
        ) from error
    kind = checkpoint_format(json.loads(config.read_text()), f"{model_name_or_path}/config.json")
    if kind == "plugin":
        return model_name_or_path, kind
    return snapshot_download(model_name_or_path, revision=revision), kind


def build_base(
    model_name_or_path: str | None = None,
    vision_tower: str | None = None,
    language_model: str | None = None,
    projector_type: str = "mlp2x_gelu",
    vision_feature_layer: int = -2,
    pad_to_square: bool = False,
    anyres: bool = False,
    image_grid_pinpoints: list | None = None,
    dtype: torch.dtype | str | None = None,
    quantization_config: BitsAndBytesConfig | None = None,
    revision: str | None = None,
) -> tuple[LlavaModel, LlavaProcessor]:
    """A LLaVA checkpoint (`model_name_or_path`, a folder or Hub id), or a fresh LLaVA from a vision and a
    language backbone (`vision_tower` + `language_model`, with a random `projector_type` projector reading the
    `vision_feature_layer`); with its processor.

    A checkpoint loads as the kind it is saved as (`llava_plugin` or `llava_next_plugin`); from backbones, `anyres`
    builds a LLaVA-NeXT tiling images by `image_grid_pinpoints` ((height, width) pairs; LLaVA-1.6's by default),
    otherwise a LLaVA-1.5 (`pad_to_square` its `image_aspect_ratio=pad`).

    The checkpoint is this plugin's, or llava-hf's or the original repository's, converted in memory (`load_any`,
    with `vision_tower` standing in for the tower an original checkpoint names) and cast to `dtype`.
    `quantization_config` (bitsandbytes) applies to the language model alone (`NOT_QUANTIZED`), of this plugin's
    checkpoints only: bitsandbytes quantizes as `from_pretrained` reads, and a converted model is assembled in memory.
    """
    if quantization_config is not None:
        quantization_config.llm_int8_skip_modules = list(NOT_QUANTIZED)
    if model_name_or_path:
        source, kind = checkpoint_source(model_name_or_path, revision)
        if kind != "plugin":
            if quantization_config is not None:
                raise ValueError(
                    f"{model_name_or_path!r} is {FORMAT_NAMES[kind]} checkpoint, which loads quantized once "
                    f"converted: `llava convert {model_name_or_path} CONVERTED`, then use CONVERTED."
                )
            model, processor = load_any(source, vision_tower=vision_tower)
            logger.warning(
                f"model_name_or_path {model_name_or_path} is {FORMAT_NAMES[kind]} checkpoint: converted on the fly "
                "(as `llava convert` would)."
            )
            model = model.to(dtype) if isinstance(dtype, torch.dtype) else model
        else:
            model = AutoModelForImageTextToText.from_pretrained(
                model_name_or_path, revision=revision, dtype=dtype, quantization_config=quantization_config
            )
            processor = AutoProcessor.from_pretrained(model_name_or_path, revision=revision)
        _check_tiling(model, model_name_or_path, anyres, image_grid_pinpoints)
        return model, processor
    if not (vision_tower and language_model):
        raise ValueError(
            "Nothing to start from: give a LLaVA checkpoint (model_name_or_path) or both a vision_tower and a "
            "language_model."
        )
    if anyres:
        if pad_to_square:
            raise ValueError(
                "pad_to_square and anyres both decide how an image is fitted to the tower; AnyRes keeps the aspect "
                "ratio by tiling: drop pad_to_square."
            )
        model = LlavaNextPluginForConditionalGeneration.from_backbones(
            vision_tower,
            language_model,
            image_grid_pinpoints=image_grid_pinpoints,
            projector_type=projector_type,
            dtype=dtype,
            quantization_config=quantization_config,
            vision_feature_layer=vision_feature_layer,
        )
        processor = LlavaNextPluginProcessor.from_backbones(
            vision_tower, language_model, image_grid_pinpoints=model.config.image_grid_pinpoints
        )
        return model, processor
    if image_grid_pinpoints is not None:
        raise ValueError("image_grid_pinpoints are AnyRes tiling: set anyres too, or drop them.")
    model = LlavaPluginForConditionalGeneration.from_backbones(
        vision_tower,
        language_model,
        projector_type=projector_type,
        dtype=dtype,
        quantization_config=quantization_config,
        vision_feature_layer=vision_feature_layer,
    )
    processor = LlavaPluginProcessor.from_backbones(
        vision_tower,
        language_model,
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        pad_to_square=pad_to_square,
    )
    return model, processor


def _check_tiling(model: LlavaModel, name: str, anyres: bool, image_grid_pinpoints: list | None) -> None:
    """A checkpoint carries its own tiling: AnyRes settings that it does not have are refused, not ignored."""
    next_model = isinstance(model, LlavaNextPluginForConditionalGeneration)
    if anyres and not next_model:
        raise ValueError(
            f"anyres is set, but {name!r} is a LLaVA-1.5 checkpoint (one tile per image): AnyRes is built from "
            "backbones (vision_tower + language_model), or loaded from a LLaVA-NeXT checkpoint."
        )
    saved = model.config.image_grid_pinpoints if next_model else None
    if image_grid_pinpoints is not None and [list(pair) for pair in image_grid_pinpoints] != saved:
        raise ValueError(
            f"image_grid_pinpoints={image_grid_pinpoints} differ from those of {name!r} ({saved}): a checkpoint "
            "keeps the tiling it was trained with; drop image_grid_pinpoints."
        )


def save_image_newline(model: PeftModel, folder: str | Path) -> None:
    """Writes the `image_newline` of the LLaVA-NeXT under `model` beside its adapter (nothing for LLaVA-1.5)."""
    base = model.get_base_model()
    if isinstance(base, LlavaNextPluginForConditionalGeneration):
        newline = base.model.image_newline.detach().cpu().contiguous()
        save_file({"image_newline": newline}, Path(folder) / IMAGE_NEWLINE_NAME, metadata={"format": "pt"})


def load_adapter(
    adapter: str | Path,
    dtype: torch.dtype | str | None = None,
    quantization_config: BitsAndBytesConfig | None = None,
) -> tuple[PeftModel, LlavaProcessor]:
    """The output folder of `llava train lora`/`qlora` as a `PeftModel` (unmerged, eval mode) on its rebuilt base,
    with the processor saved beside the adapter.

    `dtype` defaults to the one the run loaded its base in (`llava_base.json`). Raises `FileNotFoundError` for a folder
    without `llava_base.json`.
    """
    adapter = Path(adapter)
    if not (adapter / ADAPTER_BASE_NAME).is_file():
        raise FileNotFoundError(
            f"{str(adapter)!r} has no {ADAPTER_BASE_NAME}: it is not the output of `llava train lora`."
        )
    base = json.loads((adapter / ADAPTER_BASE_NAME).read_text())
    if dtype is None:
        dtype = base.get("dtype", "float32")
        dtype = getattr(torch, dtype) if dtype not in (None, "auto") else dtype
    script = {name: value for name, value in base.get("script_args", {}).items() if name in BASE_FIELDS}
    model, _ = build_base(
        base.get("model_name_or_path"), **script, dtype=dtype, quantization_config=quantization_config
    )
    if (adapter / IMAGE_NEWLINE_NAME).is_file():
        newline = load_file(adapter / IMAGE_NEWLINE_NAME)["image_newline"]
        with torch.no_grad():
            model.model.image_newline.copy_(newline)
    return PeftModel.from_pretrained(model, adapter).eval(), AutoProcessor.from_pretrained(adapter)


__all__ = [
    "IMAGE_NEWLINE_NAME",
    "NOT_QUANTIZED",
    "build_base",
    "checkpoint_source",
    "is_adapter",
    "load_adapter",
    "save_image_newline",
]
