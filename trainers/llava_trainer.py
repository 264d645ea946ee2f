"""TRL's `SFTTrainer` with the two things LLaVA needs and TRL lacks.

1. Learning rates of their own for the projector (the original's `mm_projector_lr`: LLaVA's LoRA recipe trains the
   adapters at 2e-4 but the projector, which is trained in full, at 2e-5) and the vision tower (LLaVA-NeXT's
   `mm_vision_tower_lr`: LLaVA-1.6 trained the tower at 2e-6 beside the LLM's 1e-5).
2. Stage 1's projector-only artifact (the original's `mm_projector.bin`) written next to every checkpoint it saves,
   so stage 2 can start from the backbones plus a few MB.
3. A model card, `llava_run.json` (stage, sources, hyperparameters, progress) and the loss history with its plot
   (`loss_history.json`, `loss_curve.png`) next to every checkpoint it saves, instead of TRL's text-generation card.
4. Pushes during training that carry what makes a LLaVA repo loadable and described (remote code, card, run record,
   projector artifact; Trainer copies only config and weights), to a `hub_revision` branch created when missing.
5. Checkpoints marked complete (`checkpoints.py`) once everything in them is written, so `--resume` never picks a
   half-written one.
6. LLaVA-1.5's `group_by_modality_length` sampler (`length_grouping.py`), on the `length` and `has_images` columns
   that `processing.lengths.measure_lengths` adds.
7. No Hub token on disk: Trainer pickles its arguments, `hub_token` included, into `training_args.bin` of every
   checkpoint and of each push, and uploads that file. A given `hub_token` is moved into this process's `HF_TOKEN`,
   where huggingface_hub finds it for every push, and out of the arguments.

Everything else (data collation, loss masking, PEFT wrapping, checkpointing, resuming) is TRL's and transformers'.
"""

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import transformers.trainer as transformers_trainer
from huggingface_hub import HfApi
from peft import PeftModel
from trl import SFTTrainer

from hub_cards.model_card import LOSS_HISTORY_NAME, LOSS_PLOT_NAME, RUN_INFO_NAME, write_model_card
from hub_cards.push import IGNORE_PATTERNS, files_to_push
from processing.adapters import save_image_newline
from processing.lengths import LENGTH_COLUMNS
from processing.padding_free import LlavaPaddingFreeCollator

from .checkpoints import describe_budgets, mark_complete
from .length_grouping import ModalityLengthGroupedSampler
from .projector_artifact import save_projector

PROJECTOR = "multi_modal_projector"
VISION_TOWER = "vision_tower"


class _IgnoringHub:
    """transformers' shared `HfApi`, whose model uploads also leave out `patterns`."""

    def __init__(self, api, patterns: list[str]):
        self._api, self._patterns = api, patterns

    def __getattr__(self, name: str):
        return getattr(self._api, name)

    def upload_folder(self, *args, ignore_patterns=None, path_in_repo=None, **kwargs):
        if path_in_repo is None:  # the model at the repo's root; a pushed `last-checkpoint` keeps its training state
            ignore_patterns = [*(ignore_patterns or []), *self._patterns]
        return self._api.upload_folder(*args, ignore_patterns=ignore_patterns, path_in_repo=path_in_repo, **kwargs)


@contextlib.contextmanager
def _uploads_leaving_out(patterns: list[str]) -> Iterator[None]:
    """Trainer's pushes upload `output_dir` leaving out only `_*` and `checkpoint-*`, a list it offers no way to
    extend: for their duration, the `hf_api` its module calls is wrapped so that they leave out `llava push`'s
    `IGNORE_PATTERNS` too (the run's fingerprint, `training_args.bin`). One list decides what reaches the Hub."""
    original = getattr(transformers_trainer, "hf_api", None)
    if original is None:  # a transformers that uploads some other way: its own list applies
        yield
        return
    transformers_trainer.hf_api = lambda: _IgnoringHub(original(), patterns)
    try:
        yield
    finally:
        transformers_trainer.hf_api = original


class LlavaSFTTrainer(SFTTrainer):
    """`SFTTrainer` for LLaVA.

    Args:
        projector_lr (`float`, *optional*):
            Learning rate of the projector's parameters; the others use `args.learning_rate`. `None` keeps one rate.
        vision_tower_lr (`float`, *optional*):
            Learning rate of the vision tower's parameters (where the stage trains it), as `projector_lr`.
        projector_provenance (`dict`, *optional*):
            When given, every save also writes the projector artifact with this provenance (stage 1 does this).
        run_info (`dict`, *optional*):
            `{"stage", "description", "template", "sources"}`: what the card says of the run; the trainer adds the
            hyperparameters and the progress at each save. `None` writes no card.
        fingerprint (`dict`, *optional*):
            What defines the run (`checkpoints.run_fingerprint`); each checkpoint gets it in its completion marker,
            written after everything else.
        group_by_modality_length (`bool`, *optional*, defaults to `False`):
            Batches of image samples and of text-only samples apart, of similar lengths within each, one optimizer
            step's samples drawn together (the original's sampler). The dataset needs `length` and `has_images`.
        kwargs:
            Everything `SFTTrainer` takes.
    """

    def __init__(
        self,
        *args,
        projector_lr: float | None = None,
        vision_tower_lr: float | None = None,
        projector_provenance: dict[str, Any] | None = None,
        run_info: dict[str, Any] | None = None,
        fingerprint: dict[str, Any] | None = None,
        group_by_modality_length: bool = False,
        **kwargs,
    ):
        self.fingerprint = fingerprint
        self.group_by_modality_length = group_by_modality_length
        self.projector_lr = projector_lr
        self.vision_tower_lr = vision_tower_lr
        self.projector_provenance = projector_provenance
        self.run_info = run_info
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.hub_token:
            os.environ["HF_TOKEN"], training_args.hub_token = training_args.hub_token, None
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: torch.nn.Module | None = None) -> torch.optim.Optimizer:
        """The default optimizer, each of its groups split by part: the projector's parameters at `projector_lr`, the
        vision tower's at `vision_tower_lr`, the rest at the group's rate (weight decay as the default decides)."""
        optimizer = super().create_optimizer(model)
        rates = {part: lr for part, lr in ((PROJECTOR, self.projector_lr), (VISION_TOWER, self.vision_tower_lr))}
        rates = {part: lr for part, lr in rates.items() if lr is not None}
        if not rates:
            return optimizer
        opt_model = self.model if model is None else model
        part_of = {
            id(p): next((part for part in rates if part in name), None) for name, p in opt_model.named_parameters()
        }
        groups = []
        for group in optimizer.param_groups:
            params = group.pop("params")
            for part in (None, *rates):
                selected = [p for p in params if part_of.get(id(p)) == part]
                if selected:
                    groups.append({**group, "params": selected, "lr": rates.get(part, group["lr"])})
        optimizer.param_groups.clear()
        for group in groups:
            optimizer.add_param_group(group)
        return optimizer

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        super().save_model(output_dir, _internal_call)
        if isinstance(self.model, PeftModel) and self.args.should_save:
            save_image_newline(self.accelerator.unwrap_model(self.model), output_dir or self.args.output_dir)
        if self.projector_provenance is not None and self.args.should_save:
            model = self.accelerator.unwrap_model(self.model)
            save_projector(model, output_dir or self.args.output_dir, **self.projector_provenance)
        if self.run_info is not None and self.args.should_save:
            self._write_run_info_and_card(Path(output_dir or self.args.output_dir))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            mark_complete(folder, self.fingerprint, self.state.global_step)

    def create_model_card(self, *args, **kwargs) -> None:
        """Our card instead of TRL's (which calls a LLaVA a text-generation model), once `output_dir` holds a model.

        TRL calls this before each checkpoint is written and before `push_to_hub` uploads `output_dir`.
        """
        output_dir = Path(self.args.output_dir)
        if self.run_info is not None and self.is_world_process_zero():
            if (output_dir / "config.json").is_file() or (output_dir / "adapter_config.json").is_file():
                self._write_run_info_and_card(output_dir)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        super().init_hf_repo(token, private)
        if self.is_world_process_zero() and self.args.hub_revision:
            token = token if token is not None else self.args.hub_token
            HfApi().create_branch(self.hub_model_id, branch=self.args.hub_revision, token=token, exist_ok=True)

    def push_to_hub(self, *args, **kwargs):
        with _uploads_leaving_out(IGNORE_PATTERNS):
            return super().push_to_hub(*args, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        with _uploads_leaving_out(IGNORE_PATTERNS):
            self._copy_and_push_checkpoint(checkpoint_folder)

    def _copy_and_push_checkpoint(self, checkpoint_folder: str) -> None:
        if self.is_world_process_zero():
            # What `llava push` would upload of this checkpoint (one list: `IGNORE_PATTERNS`); Trainer's own copy
            # takes config, weights and processor only, and the upload is of `output_dir`.
            for name, path in files_to_push(checkpoint_folder).items():
                if "/" not in name:
                    shutil.copy(path, Path(self.args.output_dir) / name)
        super()._push_from_checkpoint(checkpoint_folder)

    def _write_run_info_and_card(self, folder: Path) -> None:
        args = self.args
        losses = [entry["loss"] for entry in self.state.log_history if "loss" in entry]
        hyperparameters = {
            "learning_rate": args.learning_rate,
            "projector learning rate": self.projector_lr or args.learning_rate,
            **({"vision tower learning rate": self.vision_tower_lr} if self.vision_tower_lr is not None else {}),
            "global batch size": args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
            "per-device batch size": args.per_device_train_batch_size,
            "gradient accumulation": args.gradient_accumulation_steps,
            # How the processes shared the work: NO (one), MULTI_CPU / MULTI_GPU (DDP), FSDP or DEEPSPEED.
            "processes": f"{args.world_size} ({self.accelerator.distributed_type.value})",
            "sample order": "grouped by modality and length" if self.group_by_modality_length else "random",
            "epochs": args.num_train_epochs if args.max_steps <= 0 else f"max_steps {args.max_steps}",
            "warmup": f"{args.warmup_steps:.0%} of the steps"
            if args.warmup_steps < 1
            else f"{args.warmup_steps:g} steps",
            "scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
            "weight decay": args.weight_decay,
            "max length": args.max_length,
            "precision": precision(self.model, args),
            "gradient checkpointing": args.gradient_checkpointing,
            "padding-free batches": isinstance(self.data_collator, LlavaPaddingFreeCollator),
            "loss on": "assistant answers"
            if getattr(self.data_collator, "assistant_only_loss", False)
            else "all text",
            "attention": self.model.config.text_config._attn_implementation,
            "seed": args.seed,
        }
        progress = {"steps done": self.state.global_step, "epoch": round(self.state.epoch or 0.0, 4)}
        if losses:
            progress["last logged loss"] = round(losses[-1], 4)
        budgets = (self.fingerprint or {}).get("budgets", [])
        if len(budgets) > 1:  # extended with --resume
            progress["step budgets"] = describe_budgets(budgets)
        run = {**self.run_info, "hyperparameters": hyperparameters, "progress": progress}
        folder.mkdir(parents=True, exist_ok=True)
        (folder / RUN_INFO_NAME).write_text(json.dumps(run, indent=2) + "\n")
        write_loss_history(self.state.log_history, folder)
        write_model_card(folder, repo_id=args.hub_model_id)

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        if not self.group_by_modality_length:
            return super()._get_train_sampler(train_dataset)
        dataset = self.train_dataset if train_dataset is None else train_dataset
        missing = [name for name in LENGTH_COLUMNS if name not in dataset.column_names]
        if missing:
            raise ValueError(f"group_by_modality_length needs the columns {missing} (processing.lengths).")
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return ModalityLengthGroupedSampler(
            list(dataset["length"]),
            list(dataset["has_images"]),
            batch_size=self.args.train_batch_size,
            # One megabatch is one optimizer step over every rank, as in the original.
            world_size=self.args.world_size * self.args.gradient_accumulation_steps,
            seed=seed,
        )

    def _set_signature_columns_if_needed(self) -> None:
        # Keep the record id through the column filter, so that an unreadable image is reported by its record, and
        # the measured lengths, which the grouped sampler reads.
        super()._set_signature_columns_if_needed()
        kept = [name for name in ("id", *LENGTH_COLUMNS) if name not in self._signature_columns]
        self._signature_columns = [*self._signature_columns, *kept]


def write_loss_history(log_history: list[dict[str, Any]], folder: Path) -> None:
    """`loss_history.json` (step and training loss of every logged step) and its plot, `loss_curve.png`."""
    logged = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    if not logged:
        return
    steps, losses = map(list, zip(*logged, strict=True))
    (folder / LOSS_HISTORY_NAME).write_text(json.dumps({"step": steps, "loss": losses}) + "\n")
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axis = pyplot.subplots(figsize=(6, 3.2))
    axis.plot(steps, losses)
    axis.set_xlabel("step")
    axis.set_ylabel("training loss")
    figure.tight_layout()
    figure.savefig(folder / LOSS_PLOT_NAME, dpi=100)
    pyplot.close(figure)


def precision(model: torch.nn.Module, args) -> str:
    """What the run computed in, read from the parameters themselves (a recipe's `dtype` can differ from `bf16`)."""
    dtypes = sorted({str(parameter.dtype).removeprefix("torch.") for parameter in model.parameters()})
    autocast = " with bf16 autocast" if args.bf16 else " with fp16 autocast" if args.fp16 else ""
    return f"weights in {', '.join(dtypes)}{autocast}"


__all__ = ["LlavaSFTTrainer", "precision"]
