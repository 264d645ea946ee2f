"""`llava train STAGE --config RECIPE [--key value ...]`: LLaVA's training stages as one TRL SFT script.

Stages differ only by data (see `stages.py`): what is frozen, which chat template renders the data, and whether LoRA
adapters are trained. A recipe is a YAML file of `LlavaScriptArguments`, TRL's `SFTConfig` and `ModelConfig` fields,
parsed by `TrlParser`; command-line flags override it. The shipped recipes live in `trainers/recipes/` and can be
named without their path (`--config llava-1.5-7b-stage1`).
"""

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
from datasets import Dataset, load_dataset
from PIL import Image
from transformers import AutoProcessor, set_seed
from transformers.utils import logging
from trl import ModelConfig, SFTConfig, TrlParser, get_quantization_config

from hub_cards.model_card import ADAPTER_BASE_NAME
from modeling_llava import CHAT_TEMPLATES, LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from processing.collator import LlavaDataCollator
from processing.llava_data import DataError, convert_records, drop_overflowing, read_records
from processing.padding_free import LlavaPaddingFreeCollator

from .checkpoints import RunMismatchError, prepare_output_dir, run_fingerprint
from .llava_trainer import LlavaSFTTrainer
from .projector_artifact import load_projector
from .stages import Stage, apply_freeze, get_stage, lora_config, trainable_summary

logger = logging.get_logger(__name__)
RECIPES = Path(__file__).parent / "recipes"


class SetupError(ValueError):
    """A run that cannot start as configured; the message says what to change. `llava train` prints it alone."""


@dataclass
class LlavaScriptArguments:
    """What a LLaVA run trains on and starts from; the rest is `SFTConfig` and `ModelConfig`."""

    data_path: str | None = field(
        default=None, metadata={"help": "LLaVA JSON (a list of records), or a JSON/JSONL file of `messages` rows."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder the records' image paths are under."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hugging Face dataset (Hub id or local) of `messages` + `images` rows."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    vision_tower: str | None = field(
        default=None, metadata={"help": "Vision checkpoint to start from (with `language_model`), e.g. CLIP-L/336."}
    )
    language_model: str | None = field(default=None, metadata={"help": "Causal LM checkpoint to start from."})
    pretrain_projector: str | None = field(
        default=None, metadata={"help": "Stage-1 projector artifact to load (the original's pretrain_mm_mlp_adapter)."}
    )
    projector_type: str = field(default="mlp2x_gelu", metadata={"help": "linear, mlp2x_gelu, mlpNx_gelu, identity."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision hidden state fed to the projector."})
    pad_to_square: bool = field(default=False, metadata={"help": "LLaVA-1.5's image_aspect_ratio=pad."})
    global_batch_size: int | None = field(
        default=None, metadata={"help": "Samples per optimizer step; gradient accumulation is derived from it."}
    )
    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector, if its own."})
    on_overflow: Literal["drop", "error"] = field(
        default="drop", metadata={"help": "Samples longer than max_length: drop and list them, or stop."}
    )
    resume: bool = field(
        default=False, metadata={"help": "Continue this run from the newest complete checkpoint in output_dir."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start over in an output_dir that holds a run (its checkpoints are deleted)."}
    )
    allow_images_outside_folder: bool = field(
        default=False, metadata={"help": "Accept image paths that lead outside image_folder (`../`, absolute)."}
    )
    max_image_pixels: int = field(
        default=89_478_485, metadata={"help": "Larger images stop the run, naming record and file (PIL's default)."}
    )


def require_cuda_for_qlora() -> None:
    if not torch.cuda.is_available():
        raise SystemExit(
            "QLoRA loads the language model in 4-bit with bitsandbytes, which needs a CUDA GPU, and none is present. "
            "Use `llava train lora` (the same recipe without quantization) on this machine."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as error:
        raise SystemExit("QLoRA needs bitsandbytes: pip install 'llava-plugin[qlora]'.") from error


def build_model_and_processor(
    script_args: LlavaScriptArguments, model_args: ModelConfig, stage: Stage
) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """The stage's starting point: a saved LLaVA checkpoint, or two backbones (plus a stage-1 projector artifact)."""
    quantization_config = None
    if stage.quantized:
        require_cuda_for_qlora()
        quantization_config = get_quantization_config(model_args)
        # Only the language model is quantized; the vision tower, projector and head stay in `dtype`.
        quantization_config.llm_int8_skip_modules = ["vision_tower", "multi_modal_projector", "lm_head"]
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else model_args.dtype
    if model_args.model_name_or_path:
        model = LlavaPluginForConditionalGeneration.from_pretrained(
            model_args.model_name_or_path, dtype=dtype, quantization_config=quantization_config
        )
        processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    elif script_args.vision_tower and script_args.language_model:
        model = LlavaPluginForConditionalGeneration.from_backbones(
            script_args.vision_tower,
            script_args.language_model,
            projector_type=script_args.projector_type,
            dtype=dtype,
            quantization_config=quantization_config,
            vision_feature_layer=script_args.vision_feature_layer,
        )
        processor = LlavaPluginProcessor.from_backbones(
            script_args.vision_tower,
            script_args.language_model,
            vision_feature_select_strategy=model.config.vision_feature_select_strategy,
            pad_to_square=script_args.pad_to_square,
        )
    else:
        raise SetupError(
            "Nothing to start from: give `model_name_or_path` (a LLaVA checkpoint) or both `vision_tower` and "
            "`language_model` (backbone checkpoints)."
        )
    if script_args.pretrain_projector:
        load_projector(model, script_args.pretrain_projector)
        logger.warning(
            f"Loaded the stage-1 projector ({model.config.projector_type}) from {script_args.pretrain_projector}."
        )
    if model_args.attn_implementation:
        model.set_attn_implementation(model_args.attn_implementation)
    return model, processor


def load_training_rows(
    script_args: LlavaScriptArguments, processor: LlavaPluginProcessor, max_length: int | None, stage: Stage
) -> tuple[Dataset, list[dict]]:
    """Reads and checks every record, then drops (or refuses) the ones longer than `max_length`.

    Returns the dataset and the dropped samples (`{"id", "length"}`), which the run reports by id.
    """
    if script_args.data_path:
        rows = read_records(script_args.data_path, script_args.image_folder, script_args.allow_images_outside_folder)
    elif script_args.dataset_name:
        rows = convert_records(load_dataset(script_args.dataset_name, split=script_args.dataset_split))
    else:
        raise SetupError("No training data: give `data_path` (LLaVA JSON) or `dataset_name`.")
    read = len(rows)
    rows, report = drop_overflowing(
        rows, processor, max_length, CHAT_TEMPLATES[stage.template], script_args.on_overflow
    )
    if report is not None and report.dropped:
        logger.warning(report.summary())
    if not rows:
        source = script_args.data_path or script_args.dataset_name
        raise SetupError(
            f"Nothing to train on: {source!r} holds {read} records and {read - len(rows)} of them are longer than "
            f"max_length={max_length} tokens. Raise max_length or check the data."
        )
    return Dataset.from_list(rows), report.dropped if report is not None else []


def fill_global_batch(script_args: LlavaScriptArguments, training_args: SFTConfig) -> None:
    """Derives gradient accumulation so that per-device batch x devices x accumulation = the global batch."""
    if script_args.global_batch_size is None:
        return
    per_step = training_args.per_device_train_batch_size * training_args.world_size
    if script_args.global_batch_size % per_step:
        raise SetupError(
            f"global_batch_size={script_args.global_batch_size} is not a multiple of per_device_train_batch_size "
            f"({training_args.per_device_train_batch_size}) x devices ({training_args.world_size}) = {per_step}."
        )
    training_args.gradient_accumulation_steps = script_args.global_batch_size // per_step


def _absolute(path: str | None) -> str | None:
    """A local path made absolute, so that a file storing it works from any directory; Hub ids stay as they are."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def base_description(script_args: LlavaScriptArguments, model_args: ModelConfig) -> dict:
    """What `build_model_and_processor` needs to rebuild the model a LoRA adapter was trained on."""
    script = asdict(script_args)
    for name in ("data_path", "image_folder", "vision_tower", "language_model", "pretrain_projector"):
        script[name] = _absolute(script[name])
    return {
        "script_args": script,
        "model_name_or_path": _absolute(model_args.model_name_or_path),
        "dtype": model_args.dtype,
    }


def run_info(stage: Stage, script_args: LlavaScriptArguments, model_args: ModelConfig) -> dict:
    """What the model card says of a run besides the trainer's hyperparameters: the stage and what it started from."""
    sources = {
        "vision_tower": script_args.vision_tower,
        "language_model": script_args.language_model,
        "model_name_or_path": model_args.model_name_or_path,
        "pretrain_projector": script_args.pretrain_projector,
        "data_path": script_args.data_path,
        "dataset_name": script_args.dataset_name,
    }
    return {"stage": stage.name, "description": stage.description, "template": stage.template, "sources": sources}


def main(
    stage_name: str, script_args: LlavaScriptArguments, training_args: SFTConfig, model_args: ModelConfig
) -> LlavaSFTTrainer:
    stage = get_stage(stage_name)
    half = model_args.dtype in ("bfloat16", "float16")
    if half and not (training_args.bf16 or training_args.fp16):
        raise SetupError(
            f"dtype={model_args.dtype} loads the weights in half precision, but bf16 and fp16 are off: the run would "
            f"train in {model_args.dtype}, not fp32. Pass --dtype float32 too for fp32 (a CPU), or keep --bf16 true."
        )
    fingerprint = run_fingerprint(stage.name, script_args, training_args, model_args)
    resume_from, notes = prepare_output_dir(
        training_args.output_dir,
        fingerprint,
        resume=script_args.resume,
        overwrite=script_args.overwrite_output_dir,
        write=training_args.process_index == 0,
    )
    for note in notes:
        logger.warning(note)
    # Before anything random exists (the projector's init, LoRA's): the same seed gives the same run.
    set_seed(training_args.seed)
    Image.MAX_IMAGE_PIXELS = script_args.max_image_pixels  # read by every image opened, in dataloader workers too
    fill_global_batch(script_args, training_args)
    # TRL's own `padding_free` switch, which TRL refuses for vision data: LlavaPaddingFreeCollator implements it.
    padding_free, training_args.padding_free = training_args.padding_free, False
    model, processor = build_model_and_processor(script_args, model_args, stage)
    apply_freeze(model, stage)
    train_dataset, dropped = load_training_rows(script_args, processor, training_args.max_length, stage)

    provenance = None
    if stage.name == "stage1":
        provenance = {"vision_tower": script_args.vision_tower, "language_model": script_args.language_model}
    trainer = LlavaSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        # Length was dealt with above; the collator never truncates (that would cut through image tokens).
        data_collator=(LlavaPaddingFreeCollator if padding_free else LlavaDataCollator)(
            processor=processor,
            assistant_only_loss=True,
            chat_template=CHAT_TEMPLATES[stage.template],
            pad_to_multiple_of=training_args.pad_to_multiple_of,
        ),
        peft_config=(
            lora_config(model, model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout)
            if stage.uses_lora
            else None
        ),
        projector_lr=script_args.projector_lr,
        projector_provenance=provenance,
        run_info=run_info(stage, script_args, model_args),
        fingerprint=fingerprint,
    )
    trainer.args.padding_free = padding_free  # past TRL's check: the card and saved arguments tell the truth
    logger.warning(f"{stage.name}: trainable parameters per part {trainable_summary(trainer.model)}")

    output_dir = Path(training_args.output_dir)
    if dropped and training_args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "dropped_samples.json").write_text(json.dumps(dropped, indent=2) + "\n")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else training_args.resume_from_checkpoint)
    trainer.save_model()
    if stage.uses_lora and training_args.process_index == 0:
        base = base_description(script_args, model_args)
        (output_dir / ADAPTER_BASE_NAME).write_text(json.dumps(base, indent=2) + "\n")
    if training_args.push_to_hub:
        trainer.push_to_hub()
    if training_args.process_index == 0:
        print(f"{stage.name}: saved to {output_dir} (model, card, run record, loss history and plot)")
    return trainer


def resolve_recipe(argv: list[str]) -> list[str]:
    """Lets `--config` name a shipped recipe (`llava-1.5-7b-stage1`) as well as a YAML path."""
    argv = list(argv)
    if "--config" in argv:
        index = argv.index("--config") + 1
        name = argv[index]
        if not Path(name).is_file() and (RECIPES / f"{name}.yaml").is_file():
            argv[index] = str(RECIPES / f"{name}.yaml")
        elif not Path(name).is_file():
            shipped = ", ".join(sorted(path.stem for path in RECIPES.glob("*.yaml")))
            raise SystemExit(f"Recipe {name!r} is neither a file nor a shipped recipe ({shipped}).")
    return argv


def parse(argv: list[str]) -> tuple[LlavaScriptArguments, SFTConfig, ModelConfig]:
    parser = TrlParser((LlavaScriptArguments, SFTConfig, ModelConfig))
    return parser.parse_args_and_config(resolve_recipe(argv))


def cli(stage_name: str, argv: list[str]) -> None:
    """`llava train`: a mistake in the setup, the data or the output folder is one line and exit status 2."""
    try:
        main(stage_name, *parse(argv))
    except (SetupError, RunMismatchError, DataError, FileNotFoundError) as error:
        print(f"llava train {stage_name}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = [
    "LlavaScriptArguments",
    "SetupError",
    "build_model_and_processor",
    "cli",
    "load_training_rows",
    "main",
    "parse",
]
