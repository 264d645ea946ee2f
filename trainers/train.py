"""`llava train [STAGE] --config RECIPE [--key value ...]`: LLaVA's training stages as one TRL SFT script.

A recipe is a YAML file of `LlavaScriptArguments`, TRL's `SFTConfig` and `ModelConfig` fields, parsed by `TrlParser`;
command-line flags override it. The stage is a recipe field (`stage: stage1`); the word after `llava train` is a
shortcut for `--stage`. Stages differ only by data (see `stages.py`): what is frozen, which chat template renders the
data, and whether LoRA adapters are trained. The shipped recipes live in `trainers/recipes/` and can be named without
their path (`--config llava-1.5-7b-stage1`).

Every field is acted on or refused: the fields of TRL's and transformers' arguments that a LLaVA run cannot honour
(packing, TRL's own padding-free switch, LoRA fields of a full fine-tune, ...) stop the run with what to do instead
(`NOT_HONOURED`). `build_trainer` is the whole setup before `trainer.train()`, callable on an in-memory model and
dataset (the speed benchmark does so).
"""

import json
import os
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import torch
import yaml
from datasets import Dataset, load_dataset
from PIL import Image
from transformers import set_seed
from transformers.utils import logging
from trl import ModelConfig, SFTConfig, TrlParser, get_quantization_config

from hub_cards.model_card import ADAPTER_BASE_NAME
from modeling_llava import (
    TEMPLATE_NAMES,
    LlavaPluginForConditionalGeneration,
    LlavaPluginProcessor,
    chat_template,
    use_template,
)
from processing.adapters import BASE_FIELDS, build_base
from processing.collator import LlavaDataCollator
from processing.data_checks import PROBLEMS_NAME, DataProblems, check_images
from processing.lengths import drop_overflowing, measure_lengths
from processing.llava_data import DataError, convert_dataset, read_records, rows_to_dataset
from processing.padding_free import LlavaPaddingFreeCollator

from .checkpoints import RunMismatchError, prepare_output_dir, run_fingerprint
from .llava_trainer import LlavaSFTTrainer
from .projector_artifact import load_projector
from .stages import STAGES, Stage, apply_freeze, get_stage, lora_config_of_run, trainable_summary

logger = logging.get_logger(__name__)
RECIPES = Path(__file__).parent / "recipes"
DROPPED_NAME = "dropped_samples.json"


class SetupError(ValueError):
    """A run that cannot start as configured; the message says what to change. `llava train` prints it alone."""


@dataclass
class LlavaScriptArguments:
    """What a LLaVA run trains on and starts from; the rest is `SFTConfig` and `ModelConfig`."""

    stage: str | None = field(
        default=None,
        metadata={"help": f"What is trained: {', '.join(STAGES)} (see `llava train --help`).", "choices": [*STAGES]},
    )
    data_path: str | None = field(
        default=None, metadata={"help": "LLaVA JSON (a list of records), or a JSON/JSONL file of `messages` rows."}
    )
    image_folder: str | None = field(default=None, metadata={"help": "Folder the records' image paths are under."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "A Hugging Face dataset (Hub id or local) of `messages` + `images` rows."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of `dataset_name` to train on."})
    vision_tower: str | None = field(
        default=None,
        metadata={"help": "Vision checkpoint to start from (with `language_model`): CLIP-L/336 in LLaVA-1.5."},
    )
    language_model: str | None = field(default=None, metadata={"help": "Causal LM checkpoint to start from."})
    pretrain_projector: str | None = field(
        default=None, metadata={"help": "Stage-1 projector artifact to load (the original's pretrain_mm_mlp_adapter)."}
    )
    projector_type: str = field(default="mlp2x_gelu", metadata={"help": "linear, mlp2x_gelu, mlpNx_gelu, identity."})
    vision_feature_layer: int = field(default=-2, metadata={"help": "Vision hidden state fed to the projector."})
    pad_to_square: bool = field(default=False, metadata={"help": "LLaVA-1.5's image_aspect_ratio=pad."})
    anyres: bool = field(
        default=False,
        metadata={
            "help": "Build a LLaVA-NeXT (1.6) from the backbones: AnyRes tiles, each image its own token count (the "
            "original's image_aspect_ratio=anyres with mm_patch_merge_type=spatial_unpad)."
        },
    )
    image_grid_pinpoints: list | str | None = field(
        default=None,
        metadata={
            "help": "AnyRes resolutions as (height, width) pairs, e.g. [[672, 336], [336, 672]] (the original's "
            "--image_grid_pinpoints lists (width, height)); default LLaVA-1.6's, scaled to the vision tower."
        },
    )
    train_vision_tower: bool = field(
        default=False,
        metadata={"help": "Train the vision tower too, in stage2 (LLaVA-1.6's mm_tunable_parts=mm_vision_tower,...)."},
    )
    vision_tower_lr: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the vision tower, if its own (the original's mm_vision_tower_lr)."},
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template the data is rendered with, and the checkpoint answers in (the original's "
            "--version): default plain for stage1, vicuna_v1 otherwise; v0 is the paper's; backbone is the language "
            "model's own.",
            "choices": [*TEMPLATE_NAMES],
        },
    )
    image_in_place: bool = field(
        default=False,
        metadata={
            "help": "Keep each <image> where the data wrote it (the paper's code), instead of moving it to the start "
            "of its turn (the original from v1.0.0)."
        },
    )
    padding_free_batches: bool = field(
        default=False,
        metadata={
            "help": "Each batch as one row without padding (processing/padding_free.py); pair with "
            "attn_implementation: torch_varlen so that samples attend only to themselves."
        },
    )
    group_by_modality_length: bool = field(
        default=False,
        metadata={
            "help": "Image and text-only samples in separate batches, similar lengths together (the original's "
            "sampler, on in the LLaVA-1.5 recipes); order only, every sample is still seen once per epoch."
        },
    )
    global_batch_size: int | None = field(
        default=None, metadata={"help": "Samples per optimizer step; gradient accumulation is derived from it."}
    )
    projector_lr: float | None = field(default=None, metadata={"help": "Learning rate of the projector, if its own."})
    on_overflow: Literal["drop", "error"] = field(
        default="drop", metadata={"help": "Samples longer than max_length: drop and list them, or stop."}
    )
    on_bad_record: Literal["error", "skip"] = field(
        default="error",
        metadata={
            "help": f"Records that cannot be trained on (listed in {PROBLEMS_NAME}): stop before training, or train "
            f"without them (listed in {DROPPED_NAME})."
        },
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

    def __post_init__(self):
        if isinstance(self.image_grid_pinpoints, str):  # given on the command line, as JSON
            try:
                self.image_grid_pinpoints = json.loads(self.image_grid_pinpoints)
            except json.JSONDecodeError as error:
                raise SetupError(
                    f"image_grid_pinpoints={self.image_grid_pinpoints!r} is not a JSON list of [height, width] pairs "
                    f"({error})."
                ) from None


# LLaVA's default, where TRL's is False: the loss is on the assistant's answers (and their end of turn) only, as in
# the original's preprocessing. A recipe or `--assistant_only_loss false` trains on every text token instead.
LLAVA_DEFAULTS = {"assistant_only_loss": True}

# Fields of TRL's `SFTConfig` and `ModelConfig` that a LLaVA run does not act on: a value other than the field's
# default stops the run with what to do instead, so that no accepted flag is silently ignored.
NOT_HONOURED = {
    "padding_free": "TRL's padding-free switch refuses image data; LLaVA's own is `padding_free_batches: true`.",
    "packing": "packing is not supported for image data; `padding_free_batches: true` removes padding instead.",
    "completion_only_loss": "the data are conversations, not prompt/completion pairs; `assistant_only_loss` "
    "chooses which tokens carry the loss.",
    "truncation_mode": "samples are never truncated (a cut could split an image's tokens); longer ones are dropped "
    "or refused (`on_overflow`).",
    "chat_template_path": "`template` names the chat template (plain, vicuna_v1, llava_v1, v0, mistral_instruct, "
    "chatml_direct, backbone).",
    "dataset_text_field": "records are conversations (`messages`), not a text column.",
    "dataset_kwargs": "the data is read by `data_path`/`dataset_name`, not prepared by TRL.",
    "shuffle_dataset": "the trainer's sampler already shuffles every epoch (`seed`, `data_seed`).",
    "eos_token": "the checkpoint's tokenizer and chat template define the end of an answer.",
    "pad_token": "the checkpoint's tokenizer defines the padding token.",
    "loss_type": "the loss is the causal LM's token cross-entropy.",
    "model_init_kwargs": "use `dtype`, `attn_implementation` and the QLoRA fields.",
    "trust_remote_code": "backbones load with transformers' own classes.",
    "router_aux_loss_coef": "no mixture-of-experts language model is supported.",
    "use_peft": "the stage chooses LoRA: `--stage lora` (or `qlora`).",
    "lora_target_modules": "LoRA adapts every linear layer of the language model, as LLaVA's recipe does.",
    "lora_target_parameters": "LoRA adapts every linear layer of the language model, as LLaVA's recipe does.",
    "lora_modules_to_save": "the projector is trained in full, the rest is frozen, as LLaVA's recipe does.",
    "lora_task_type": "LLaVA's adapters are for causal LM.",
    "load_in_8bit": "QLoRA loads the language model in 4-bit: `--stage qlora`.",
}
# Fields that only a LoRA stage reads, and only the QLoRA stage for the quantization ones.
LORA_FIELDS = ("lora_r", "lora_alpha", "lora_dropout", "use_rslora", "use_dora")
QLORA_FIELDS = ("load_in_4bit", "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")


def _changed(arguments, names) -> list[str]:
    """The fields among `names` whose value differs from their dataclass default."""
    defaults = {f.name: f.default for f in fields(arguments)}
    return [name for name in names if name in defaults and getattr(arguments, name) != defaults[name]]


def check_arguments(script_args: LlavaScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> Stage:
    """The run's stage, once every field is known to be honoured; otherwise a `SetupError` naming the field.

    Also derives gradient accumulation from `global_batch_size` (`fill_global_batch`), which the run's fingerprint
    records.
    """
    check_launch(training_args)
    if script_args.stage is None:
        raise SetupError(f"No stage: give it as `llava train STAGE` or `stage:` in the recipe ({', '.join(STAGES)}).")
    stage = get_stage(script_args.stage)
    if script_args.template is not None:
        if script_args.template not in TEMPLATE_NAMES:
            names = ", ".join(TEMPLATE_NAMES)
            raise SetupError(f"Unknown template {script_args.template!r}: expected one of {names}.")
        stage = replace(stage, template=script_args.template)
    if script_args.train_vision_tower:
        try:
            stage = stage.with_vision_tower()
        except ValueError as error:
            raise SetupError(str(error)) from None
    elif script_args.vision_tower_lr is not None:
        raise SetupError(
            f"`vision_tower_lr: {script_args.vision_tower_lr}` is not used: the vision tower is frozen unless "
            "`train_vision_tower: true` (stage2)."
        )
    refused = [(name, NOT_HONOURED[name]) for name in _changed(training_args, NOT_HONOURED)]
    refused += [(name, NOT_HONOURED[name]) for name in _changed(model_args, NOT_HONOURED)]
    if stage.uses_lora and "use_peft" in dict(refused):
        refused = [(name, why) for name, why in refused if name != "use_peft"]
    if not stage.uses_lora:
        refused += [
            (name, f"stage {stage.name} trains no LoRA adapters.") for name in _changed(model_args, LORA_FIELDS)
        ]
    if not stage.quantized:
        refused += [(name, "only `--stage qlora` quantizes.") for name in _changed(model_args, QLORA_FIELDS)]
    if refused:
        name, why = refused[0]
        value = getattr(training_args, name, getattr(model_args, name, None))
        raise SetupError(f"`{name}: {value}` is not used by a LLaVA run: {why}")
    half = model_args.dtype in ("bfloat16", "float16")
    if half and not (training_args.bf16 or training_args.fp16):
        raise SetupError(
            f"dtype={model_args.dtype} loads the weights in half precision, but bf16 and fp16 are off: the run would "
            f"train in {model_args.dtype}, not fp32. Pass --dtype float32 too for fp32 (a CPU), or keep --bf16 true."
        )
    sampling = getattr(training_args, "train_sampling_strategy", "random")
    if script_args.group_by_modality_length and (sampling != "random" or getattr(training_args, "group_by_length", 0)):
        raise SetupError(
            f"`group_by_modality_length: true` and `train_sampling_strategy: {sampling}` both choose the sampler; "
            "keep one."
        )
    fill_global_batch(script_args, training_args)
    return stage


def check_launch(training_args: SFTConfig) -> None:
    """A multi-process launch must be one run over all the processes, not one run per process.

    torchrun and `accelerate launch` set WORLD_SIZE; transformers then trains with DDP only if it finds a device per
    process. On a machine without GPUs that takes `use_cpu` (DDP over gloo): without it, transformers warns and goes
    on, and every process trains its own copy of the run, logging every step and all writing the same output folder.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:
        raise SetupError(
            f"{launched} processes were launched (WORLD_SIZE={launched}), but transformers found no GPU to give "
            f"each, so each would train its own copy of the run into {training_args.output_dir}. On a CPU, add "
            "`--use_cpu true` (DDP over gloo)."
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
    script_args: LlavaScriptArguments, model_args: ModelConfig, quantized: bool = False
) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """The run's starting point: a saved LLaVA checkpoint (this plugin's, llava-hf's or the original's, see
    `build_base`), or two backbones (plus a stage-1 projector artifact).

    `quantized` loads the language model in 4-bit for QLoRA.
    """
    quantization_config = None
    if quantized:
        require_cuda_for_qlora()
        quantization_config = get_quantization_config(model_args)  # of the language model alone (`build_base`)
    dtype = getattr(torch, model_args.dtype) if model_args.dtype not in (None, "auto") else model_args.dtype
    if not model_args.model_name_or_path and not (script_args.vision_tower and script_args.language_model):
        raise SetupError(
            "Nothing to start from: give `model_name_or_path` (a LLaVA checkpoint) or both `vision_tower` and "
            "`language_model` (backbone checkpoints)."
        )
    try:  # a checkpoint of this plugin's, llava-hf's or the original's format; the last two converted as they load
        model, processor = build_base(
            model_args.model_name_or_path,
            **{name: getattr(script_args, name) for name in BASE_FIELDS},
            dtype=dtype,
            quantization_config=quantization_config,
            revision=model_args.model_revision,
        )
    except ValueError as error:  # a folder of no LLaVA format, an adapter, a conversion QLoRA cannot quantize
        raise SetupError(str(error)) from None
    if script_args.pretrain_projector:
        load_projector(model, script_args.pretrain_projector)
        logger.warning(
            f"Loaded the stage-1 projector ({model.config.projector_type}) from {script_args.pretrain_projector}."
        )
    if model_args.attn_implementation:
        model.set_attn_implementation(model_args.attn_implementation)
    return model, processor


def load_training_rows(
    script_args: LlavaScriptArguments,
    processor: LlavaPluginProcessor,
    max_length: int | None,
    template: str,
    num_proc: int | None = None,
    progress: bool = True,
    problems_file: Path | None = None,
) -> tuple[Dataset, list[dict]]:
    """Reads and checks every record and the header of every image (`processing.data_checks`), measures every sample
    (`processing.lengths`, cached and in `num_proc` processes), then drops (or refuses) the ones longer than
    `max_length`.

    All bad records are found before one is refused: they are listed in `problems_file` (where given) and stop the
    run (`on_bad_record: error`), or are left out (`skip`). Stage 1's `plain` template holds every record to one
    image and its caption. Images are not decoded: paths for a LLaVA JSON, undecoded bytes for a Hub dataset. Returns
    the dataset, with its `length` and `has_images` columns, and the dropped samples (`{"id", "length"}` for length,
    the problem's entry for a skipped record), which the run reports by id.
    """
    problems = DataProblems(script_args.data_path or script_args.dataset_name)
    checks = {
        "problems": problems.entries,
        "single_exchange": template == "plain",
        "image_in_place": script_args.image_in_place,
    }
    folder, outside = script_args.image_folder, script_args.allow_images_outside_folder
    if script_args.data_path:
        rows = read_records(script_args.data_path, folder, outside, progress, **checks)
        dataset = rows_to_dataset(rows)  # empties `rows` as it goes
    elif script_args.dataset_name:
        source = load_dataset(script_args.dataset_name, split=script_args.dataset_split)
        dataset = convert_dataset(source, folder, outside, num_proc, progress, **checks)
    else:
        raise SetupError("No training data: give `data_path` (LLaVA JSON) or `dataset_name`.")
    problems.records = read = len(dataset) + len(problems.entries)
    dataset = check_images(dataset, problems.entries, script_args.max_image_pixels, num_proc, progress)
    if problems.entries:
        if problems_file is not None:
            problems.write(problems_file)
        if script_args.on_bad_record == "error":
            raise DataError(
                f"{problems.summary(problems_file)}\nFix them, or train without them: --on_bad_record skip"
            )
        logger.warning(f"Skipped (--on_bad_record skip): {problems.summary(problems_file)}")
    jinja = chat_template(template, script_args.image_in_place, processor.tokenizer)
    dataset = measure_lengths(dataset, processor, jinja, num_proc, progress)
    dataset, report = drop_overflowing(dataset, max_length, script_args.on_overflow)
    too_long = report.dropped if report is not None else []
    if too_long:
        logger.warning(report.summary())
    if not len(dataset):
        skipped = f", {len(problems.entries)} of them cannot be trained on," if problems.entries else ""
        raise SetupError(
            f"Nothing to train on: {problems.source!r} holds {read} records{skipped} and {len(too_long)} of them are "
            f"longer than max_length={max_length} tokens. Raise max_length or check the data."
        )
    return dataset, problems.entries + too_long


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
    """What `processing.adapters.load_adapter` needs to rebuild the model a LoRA adapter was trained on."""
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


def build_trainer(
    script_args: LlavaScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    model_and_processor: tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor] | None = None,
    train_dataset: Dataset | None = None,
    fingerprint: dict | None = None,
) -> tuple[LlavaSFTTrainer, list[dict]]:
    """Everything `llava train` does before `trainer.train()`, for the stage the arguments name.

    `model_and_processor` and `train_dataset` stand in for the ones the arguments describe (the speed benchmark
    passes a randomly initialised model and an in-memory dataset); the stage's freezing, LoRA, collator and
    optimizer are applied to them all the same. Returns the trainer and the samples dropped for their length.
    """
    return _assemble_trainer(
        check_arguments(script_args, training_args, model_args),
        script_args,
        training_args,
        model_args,
        model_and_processor,
        train_dataset,
        fingerprint,
    )


def _assemble_trainer(
    stage: Stage,
    script_args: LlavaScriptArguments,
    training_args: SFTConfig,
    model_args: ModelConfig,
    model_and_processor: tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor] | None,
    train_dataset: Dataset | None,
    fingerprint: dict | None,
) -> tuple[LlavaSFTTrainer, list[dict]]:
    """`build_trainer` for arguments `check_arguments` has passed."""
    # Before anything random exists (the projector's init, LoRA's): the same seed gives the same run.
    set_seed(training_args.seed)
    Image.MAX_IMAGE_PIXELS = script_args.max_image_pixels  # read by every image opened, in dataloader workers too
    model, processor = model_and_processor or build_model_and_processor(script_args, model_args, stage.quantized)
    apply_freeze(model, stage)
    try:
        template = chat_template(stage.template, script_args.image_in_place, processor.tokenizer)
    except ValueError as error:  # `backbone` on a language model without a chat template, or one it cannot cut
        raise SetupError(str(error)) from error
    if script_args.template not in (None, "plain"):  # the checkpoint answers in the format it is trained on
        use_template(processor, script_args.template)
    dropped = []
    progress = training_args.process_index == 0 and not training_args.disable_tqdm
    if train_dataset is None:
        # Each node's first process measures and caches the lengths; the node's others then read its cache.
        with training_args.main_process_first(local=True, desc="reading and measuring the data"):
            train_dataset, dropped = load_training_rows(
                script_args,
                processor,
                training_args.max_length,
                stage.template,
                training_args.dataset_num_proc,
                progress,
                Path(training_args.output_dir) / PROBLEMS_NAME if training_args.process_index == 0 else None,
            )
    elif script_args.group_by_modality_length and "length" not in train_dataset.column_names:
        train_dataset = measure_lengths(train_dataset, processor, template, progress=progress, cache=False)
    collator_class = LlavaPaddingFreeCollator if script_args.padding_free_batches else LlavaDataCollator
    peft_config = None
    if stage.uses_lora:
        peft_config = lora_config_of_run(model, model_args)
    trainer = LlavaSFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=processor,
        # Length was dealt with above; the collator never truncates (that would cut through image tokens).
        data_collator=collator_class(
            processor=processor,
            assistant_only_loss=training_args.assistant_only_loss,
            chat_template=template,
            pad_to_multiple_of=training_args.pad_to_multiple_of,
        ),
        peft_config=peft_config,
        projector_lr=script_args.projector_lr,
        vision_tower_lr=script_args.vision_tower_lr,
        projector_provenance=(
            {"vision_tower": script_args.vision_tower, "language_model": script_args.language_model}
            if stage.name == "stage1"
            else None
        ),
        run_info=run_info(stage, script_args, model_args),
        fingerprint=fingerprint,
        group_by_modality_length=script_args.group_by_modality_length,
    )
    logger.warning(f"{stage.name}: trainable parameters per part {trainable_summary(trainer.model)}")
    return trainer, dropped


def main(script_args: LlavaScriptArguments, training_args: SFTConfig, model_args: ModelConfig) -> LlavaSFTTrainer:
    """`llava train`: checks the arguments and the output folder, builds the trainer, trains, saves (and pushes)."""
    stage = check_arguments(script_args, training_args, model_args)
    fingerprint = run_fingerprint(script_args, training_args, model_args)
    # The main process checks, clears and binds the folder first; the others then read what it left, so that every
    # process agrees on the checkpoint to resume from (or on the mistake to report).
    with training_args.main_process_first(local=False, desc="checking the output folder"):
        resume_from, notes = prepare_output_dir(
            training_args.output_dir,
            fingerprint,
            resume=script_args.resume,
            overwrite=script_args.overwrite_output_dir,
            write=training_args.process_index == 0,
        )
    for note in notes:
        logger.warning(note)
    output_dir = Path(training_args.output_dir)
    if training_args.process_index == 0:  # what an earlier run in this folder found is not this run's
        for name in (DROPPED_NAME, PROBLEMS_NAME):
            (output_dir / name).unlink(missing_ok=True)
    trainer, dropped = _assemble_trainer(stage, script_args, training_args, model_args, None, None, fingerprint)

    if dropped and training_args.process_index == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / DROPPED_NAME).write_text(json.dumps(dropped, indent=2) + "\n")
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else training_args.resume_from_checkpoint)
    trainer.save_model()
    if stage.uses_lora and training_args.process_index == 0:
        base = base_description(script_args, model_args)
        (output_dir / ADAPTER_BASE_NAME).write_text(json.dumps(base, indent=2) + "\n")
    if training_args.push_to_hub:
        trainer.push_to_hub()
    if training_args.process_index == 0:
        written = "model, card, run record, loss history and plot"
        if stage.uses_lora:
            written = f"LoRA adapter, its base ({ADAPTER_BASE_NAME}), card, run record, loss history and plot"
        if dropped:
            written += f", {DROPPED_NAME} ({len(dropped)} samples)"
        print(f"{stage.name}: saved to {output_dir} ({written})")
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
            raise SetupError(f"Recipe {name!r} is neither a file nor a shipped recipe ({shipped_recipes()}).")
    return argv


def parser() -> TrlParser:
    """The parser of `llava train`: LLaVA's fields, TRL's `SFTConfig` and `ModelConfig`, with LLaVA's defaults."""
    parser = TrlParser((LlavaScriptArguments, SFTConfig, ModelConfig), prog="llava train")
    parser.set_defaults(**LLAVA_DEFAULTS)
    return parser


def with_stage_word(argv: list[str]) -> list[str]:
    """`llava train STAGE ...` as `llava train ... --stage STAGE`: the word is a shortcut for the recipe field."""
    if argv and argv[0] in STAGES:
        return [*argv[1:], "--stage", argv[0]]
    return list(argv)


def parse(argv: list[str]) -> tuple[LlavaScriptArguments, SFTConfig, ModelConfig]:
    return parser().parse_args_and_config(resolve_recipe(with_stage_word(argv)))


def recipe_help(argv: list[str]) -> str:
    """`llava train [STAGE] [--config RECIPE] --help`: LLaVA's fields and the recipe's values, each with its help.

    TRL's and transformers' hundreds of other fields are listed by `--help-all`.
    """
    argv = resolve_recipe(with_stage_word([arg for arg in argv if arg not in ("-h", "--help")]))
    recipe_path = argv[argv.index("--config") + 1] if "--config" in argv else None
    recipe = yaml.safe_load(Path(recipe_path).read_text()) or {} if recipe_path else {}
    if "--stage" in argv:
        recipe["stage"] = argv[argv.index("--stage") + 1]
    actions = {action.dest: action for action in parser()._actions if action.dest != "help"}
    own = [f.name for f in fields(LlavaScriptArguments)]
    others = [name for name in recipe if name not in own]

    def row(name: str, value) -> str:
        text = (actions[name].help or "").split(". ")[0].replace("%%", "%") if name in actions else "(unknown field)"
        return f"  --{name:<30} {str(value):<34} {text}"

    lines = ["usage: llava train [STAGE] --config RECIPE [--FIELD VALUE ...]", ""]
    lines.append(f"Recipe: {recipe_path}" if recipe_path else f"Shipped recipes: {shipped_recipes()}")
    lines += ["", "LLaVA's fields (value from the recipe, else the default):"]
    lines += [row(name, recipe.get(name, actions[name].default)) for name in own]
    if others:
        lines += ["", "TRL and transformers fields the recipe sets:"]
        lines += [row(name, recipe[name]) for name in others]
    lines += [
        "",
        "Any field of TRL's SFTConfig and ModelConfig can be given as --FIELD VALUE and overrides the recipe;",
        "`llava train --help-all` lists them. Fields a LLaVA run cannot act on are refused with what to use instead.",
    ]
    return "\n".join(lines)


def shipped_recipes() -> str:
    return ", ".join(sorted(path.stem for path in RECIPES.glob("*.yaml")))


def cli(argv: list[str]) -> None:
    """`llava train`: a mistake in the setup, the data or the output folder is one line and exit status 2."""
    if "--help-all" in argv:
        parser().print_help()
        return
    if "-h" in argv or "--help" in argv:
        try:
            print(recipe_help(argv))
        except SetupError as error:
            raise SystemExit(f"llava train: {error}") from None
        return
    try:
        arguments = parse(argv)
    except ValueError as error:  # a value transformers' or TRL's own checks refuse: bf16 without a GPU, ...
        print(f"llava train: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        main(*arguments)
    except (SetupError, RunMismatchError, DataError, FileNotFoundError) as error:
        print(f"llava train: {error}", file=sys.stderr)
        raise SystemExit(2) from None


__all__ = [
    "LlavaScriptArguments",
    "SetupError",
    "build_model_and_processor",
    "build_trainer",
    "check_arguments",
    "cli",
    "load_training_rows",
    "main",
    "parse",
]
