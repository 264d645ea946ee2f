"""Checkpoints a run can trust: each one marked complete only when everything in it is written, and an output folder
bound to one run by a fingerprint of what defines it.

A kill during a checkpoint write leaves a folder that looks like a checkpoint; `--resume` takes the newest one whose
completion marker exists and says which it skipped. A new run started in an old run's `output_dir` would otherwise
resume the old run's weights, or rotate its checkpoints away: the fingerprint (the recipe values that change the
math, a hash of the data file, the starting weights as given) stops that unless `--overwrite_output_dir`.
"""

import hashlib
import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hub_cards.model_card import COMPLETE_NAME, FINGERPRINT_NAME

# The training arguments that change what is computed; logging, saving and output settings do not.
MATH_ARGUMENTS = (
    "learning_rate",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "max_grad_norm",
    "optim",
    "lr_scheduler_type",
    "warmup_steps",
    "num_train_epochs",
    "max_steps",
    "seed",
    "data_seed",
    "bf16",
    "fp16",
    "max_length",
    "assistant_only_loss",
    "label_smoothing_factor",
    "group_by_length",
)


class RunMismatchError(ValueError):
    """An output folder that holds another run, or checkpoints a fresh run would overwrite."""


def _file_hash(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(script_args, training_args, model_args) -> dict[str, Any]:
    """What defines a run: the stage, the recipe values that change the math, the data file's hash, the starting
    weights as given."""
    # `on_bad_record` is not part of it: a run that trains has the same data either way (with `error`, only data
    # without bad records trains), and a refused start must not bind the folder against its own hint (`skip`).
    ignored = {"resume", "overwrite_output_dir", "on_bad_record"}
    script = {k: v for k, v in asdict(script_args).items() if k not in ignored}
    training = {name: str(getattr(training_args, name, None)) for name in MATH_ARGUMENTS}
    # The samples per optimizer step, however they are split across devices and accumulation steps: a run may resume
    # on another number of processes with the same global batch.
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    training["global_batch_size"] = str(per_step * training_args.world_size)
    return {
        "stage": script_args.stage,
        "script": script,
        "model": {k: str(v) for k, v in asdict(model_args).items()},
        "training": training,
        "data_sha256": _file_hash(script_args.data_path),
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    found = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


def checkpoint_folders(output_dir: Path) -> list[Path]:
    """`checkpoint-N` folders, newest (highest step) first."""
    found = [p for p in output_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(found, key=lambda path: int(path.name.split("-")[-1]), reverse=True)


def newest_complete_checkpoint(output_dir: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint whose completion marker exists, and why each newer one was passed over."""
    skipped = []
    for folder in checkpoint_folders(output_dir):
        if (folder / COMPLETE_NAME).is_file():
            return folder, skipped
        skipped.append(f"{folder.name}: no {COMPLETE_NAME}, so its save did not finish (interrupted?)")
    return None, skipped


def mark_complete(folder: str | Path, fingerprint: dict[str, Any], step: int) -> None:
    """Written last into a checkpoint folder: what it belongs to and that everything before it is on disk."""
    path = Path(folder) / COMPLETE_NAME
    staging = path.with_name(f".{COMPLETE_NAME}.tmp")
    staging.write_text(json.dumps({"step": step, "fingerprint": fingerprint}, indent=2) + "\n")
    staging.replace(path)


def prepare_output_dir(
    output_dir: str | Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool, write: bool = True
) -> tuple[Path | None, list[str]]:
    """Binds `output_dir` to this run; returns the checkpoint to resume from (or None) and messages for the log.

    Raises `RunMismatchError` when the folder holds another run, or checkpoints that a fresh run would overwrite.
    Only the process that `write`s (the main one) deletes or writes anything.
    """
    output_dir = Path(output_dir)
    path = output_dir / FINGERPRINT_NAME
    notes = []
    if overwrite and write:
        for folder in checkpoint_folders(output_dir):
            shutil.rmtree(folder)
        path.unlink(missing_ok=True)
    recorded = json.loads(path.read_text()) if path.is_file() else None
    checkpoints = checkpoint_folders(output_dir)
    if recorded is not None and recorded != fingerprint:
        changes = "; ".join(_differences(recorded, fingerprint)[:8])
        raise RunMismatchError(
            f"{str(output_dir)!r} holds another run (what differs: {changes}). Use another output_dir, or "
            "--overwrite_output_dir to start over there (its checkpoints are deleted)."
        )
    if checkpoints and not resume:
        raise RunMismatchError(
            f"{str(output_dir)!r} already holds checkpoints ({', '.join(p.name for p in checkpoints[:3])}): --resume "
            "continues that run, --overwrite_output_dir starts over (deleting them)."
        )
    resume_from = None
    if resume:
        resume_from, notes = newest_complete_checkpoint(output_dir)
        if recorded is None and checkpoints:
            notes.append(f"{str(output_dir)!r} has no {FINGERPRINT_NAME}: its checkpoints cannot be checked.")
        if resume_from is None:
            notes.append(f"No complete checkpoint in {str(output_dir)!r}: training starts from the beginning.")
        else:
            notes.append(f"Resuming from {resume_from.name}.")
    if write:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(fingerprint, indent=2) + "\n")
    return resume_from, notes


__all__ = [
    "COMPLETE_NAME",
    "FINGERPRINT_NAME",
    "RunMismatchError",
    "checkpoint_folders",
    "mark_complete",
    "newest_complete_checkpoint",
    "prepare_output_dir",
    "run_fingerprint",
]
