"""Checkpoints a run can trust: each one marked complete only when everything in it is written, and an output folder
bound to one run by a fingerprint of what decides its result.

A kill during a checkpoint write leaves a folder that looks like a checkpoint; `--resume` takes the newest one whose
completion marker exists and says which it skipped. A new run started in an old run's `output_dir` would otherwise
resume the old run's weights, or rotate its checkpoints away: the fingerprint (`llava_fingerprint.json`) stops that
unless `--overwrite_output_dir`.

The fingerprint keeps apart what makes a run's result from where its files are and from how long it runs:

- `run`, what decides the weights, compared on every start: the stage; every field of the three argument classes
  except those listed below (so a field added to TRL, transformers or this project counts until it is listed; a
  field that one side's record lacks counts only where its value is not the default, so a run started before an
  upgrade added a field resumes after it, as long as the new field keeps its default); the
  global batch instead of its split into devices and accumulation steps (a run may resume on another number of
  processes); and the data by content: the data file's bytes (sha256; a local `dataset_name` folder's files the
  same way), the images its records name by (relative path, size) in record order, the stage-1 projector
  artifact's bytes. Image bytes are not hashed (hundreds of gigabytes for LLaVA-1.5's mix, where one `stat` per
  image costs seconds), so an image replaced by another of the very same size goes unnoticed. Starting weights
  (`vision_tower`, `language_model`, `model_name_or_path`) are named as given, a Hub id or a path: their gigabytes
  are not read, so a moved model folder is a difference. A Hub dataset is its id and split; with
  `dataset_name`, `image_folder` counts by its path (its images are named inside the dataset, unread here).
- `where`, the paths of the same content (`data_path`, `image_folder`, `pretrain_projector`, a local
  `dataset_name`, `output_dir`): a change resumes, with a line saying what moved.
- `budget` (`max_steps`, `num_train_epochs`): `--resume` may change it as long as it does not end before the
  checkpoint it continues from, as transformers' Trainer allows; each change is kept in `budgets` and in the run
  record. A schedule that spans the budget (linear, cosine, a warmup given as a fraction) follows the new budget
  from that checkpoint on, as Trainer's does; the log says so. In a folder without checkpoints, a changed budget is
  another run.
- A folder with neither checkpoints nor saved weights binds nothing: a start refused before training (bad data, say)
  may be followed by another run in it, the mended data for one, with a line saying the record was replaced.
- A refused start names the ways that keep the checkpoints (the recorded values with `--resume`; a new run from the
  newest complete checkpoint's weights in another folder, `--model_name_or_path OUTPUT/checkpoint-N`) before
  `--overwrite_output_dir`, which deletes them.
- Left out, since they decide only memory, speed, logging, saving, pushing, where things are or which machine runs
  the run (`OPERATIONAL`): they may change between starts. A kernel switch that changes rounding (`tf32`,
  `torch_compile`, `attn_implementation`, Liger kernels) is not among them, nor anything that changes which samples
  a step sees or in what order (`dataloader_drop_last`, `dataloader_in_order`, `accelerator_config`).
"""

import hashlib
import json
import os
import shlex
import shutil
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from hub_cards.model_card import COMPLETE_NAME, FINGERPRINT_NAME
from processing.llava_data import parse_data_file

from .projector_artifact import CONFIG_NAME, WEIGHTS_NAME

FORMAT = 2
BUDGET = ("max_steps", "num_train_epochs")
# Replaced by their product with the number of processes, the global batch.
BATCH_SPLIT = ("per_device_train_batch_size", "gradient_accumulation_steps")
# Fields that never change the weights a run ends with (see the module docstring).
OPERATIONAL = frozenset(
    {
        # where things are; their content is fingerprinted on its own (a Hub `dataset_name` by its id)
        "output_dir", "data_path", "image_folder", "dataset_name", "pretrain_projector", "resume_from_checkpoint",
        # this start's choices: what to do with the folder, which data mistakes to accept (`on_bad_record`: a run
        # that trains sees the same records either way, since with `error` only data without bad records trains, and
        # a refused start must not bind the folder against its own hint, `skip`)
        "resume", "overwrite_output_dir", "allow_images_outside_folder", "max_image_pixels", "on_bad_record",
        # logging and progress
        "logging_strategy", "logging_steps", "logging_first_step", "log_on_each_node", "logging_nan_inf_filter",
        "include_num_input_tokens_seen", "log_level", "log_level_replica", "disable_tqdm", "report_to", "run_name",
        "project", "trackio_space_id", "trackio_bucket_id", "trackio_static_space_id", "skip_memory_metrics", "debug",
        # saving and pushing (`load_best_model_at_end`, which changes the final weights, counts)
        "save_strategy", "save_steps", "save_total_limit", "save_on_each_node", "save_only_model",
        "enable_jit_checkpoint", "push_to_hub", "hub_token", "hub_private_repo", "hub_model_id", "hub_strategy",
        "hub_always_push", "hub_revision",
        # evaluation (a LLaVA run has no evaluation set)
        "eval_strategy", "eval_steps", "eval_delay", "per_device_eval_batch_size", "prediction_loss_only",
        "eval_on_start", "eval_do_concat_batches", "eval_use_gather_object", "eval_accumulation_steps",
        "include_for_metrics", "batch_eval_metrics", "bf16_full_eval", "fp16_full_eval", "eval_packing",
        "do_train", "do_eval", "do_predict",
        # memory and speed: recomputed or moved activations are the same numbers
        "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_checkpointing",
        "activation_checkpointing_kwargs", "activation_offloading", "torch_empty_cache_steps",
        "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers",
        "dataloader_prefetch_factor", "dataloader_multiprocessing_context", "dataset_num_proc",
        # the machine and the processes (the global batch is recorded instead)
        "use_cpu", "local_rank", "ddp_backend", "ddp_timeout", "ddp_find_unused_parameters", "ddp_bucket_cap_mb",
        "ddp_broadcast_buffers", "ddp_static_graph",
        *BUDGET,
        *BATCH_SPLIT,
    }
)  # fmt: skip
# Schedules whose learning rate at a step does not depend on the step budget.
BUDGET_FREE_SCHEDULES = ("constant", "constant_with_warmup")


class RunMismatchError(ValueError):
    """An output folder that holds another run, or checkpoints a fresh run would overwrite."""


def _file_hash(path: str | Path | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _folder_hash(folder: Path, names: list[str] | None = None) -> str:
    """sha256 over the relative path and sha256 of each file (`names`, or every file under `folder`)."""
    paths = [folder / name for name in names] if names else sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in paths:
        digest.update(f"{path.relative_to(folder).as_posix()}\0{_file_hash(path)}\n".encode())
    return digest.hexdigest()


def _is_local(path: str | None) -> bool:
    return bool(path) and Path(path).exists()


def _image_references(record: Any) -> list[str]:
    """The image paths a LLaVA (`image`) or `messages` (`images`) record names; others are the data checks' concern."""
    if not isinstance(record, dict):
        return []
    images = record.get("image") if "conversations" in record else record.get("images", record.get("image"))
    images = [images] if isinstance(images, str) else images if isinstance(images, list) else []
    return [image for image in images if isinstance(image, str)]


def images_digest(data_path: str, image_folder: str | None) -> dict[str, Any]:
    """The images the data file's records name, as (relative path, size) in record order: what training reads from
    `image_folder`, wherever that folder is. A missing file counts with no size; the data checks report it."""
    digest, count, total = hashlib.sha256(), 0, 0
    records, _ = parse_data_file(Path(data_path), problems=[])  # as `read_records` parses it; its checks report lines
    for record in records if isinstance(records, list) else []:
        for image in _image_references(record):
            try:
                size = os.stat(os.path.join(image_folder, image) if image_folder else image).st_size
            except OSError:
                size = None
            digest.update(f"{image}\0{size}\n".encode())
            count, total = count + 1, total + (size or 0)
    return {"files": count, "bytes": total, "sha256": digest.hexdigest()}


def _data_identity(script_args) -> tuple[dict[str, Any], dict[str, str]]:
    """What the run trains on, by content, and where that content is."""
    data, where = {}, {}
    if script_args.data_path:
        where["data_path"] = os.path.abspath(script_args.data_path)
        data["data_file_sha256"] = _file_hash(script_args.data_path)
        if data["data_file_sha256"] is not None:
            data["images"] = images_digest(script_args.data_path, script_args.image_folder)
        if script_args.image_folder:
            where["image_folder"] = os.path.abspath(script_args.image_folder)
    if script_args.dataset_name:
        name = script_args.dataset_name
        if _is_local(name):
            where["dataset_name"] = os.path.abspath(name)
            data["dataset_sha256"] = _file_hash(name) if Path(name).is_file() else _folder_hash(Path(name))
        else:
            data["dataset_name"] = name
        if script_args.image_folder:
            data["image_folder"] = script_args.image_folder
    if script_args.pretrain_projector:
        path = Path(script_args.pretrain_projector)
        folder = path if path.is_dir() else path.parent
        where["pretrain_projector"] = os.path.abspath(path)
        exists = all((folder / name).is_file() for name in (WEIGHTS_NAME, CONFIG_NAME))
        data["pretrain_projector_sha256"] = _folder_hash(folder, [WEIGHTS_NAME, CONFIG_NAME]) if exists else None
    return data, where


def _counted(arguments) -> dict[str, str]:
    return {f.name: str(getattr(arguments, f.name)) for f in fields(arguments) if f.name not in OPERATIONAL}


def _defaults(arguments) -> dict[str, str]:
    """The counted fields' defaults as `_counted` writes values, for fields one record has and the other lacks."""
    found = {}
    for item in fields(arguments):
        if item.name in OPERATIONAL:
            continue
        if item.default is not MISSING:
            found[item.name] = str(item.default)
        elif item.default_factory is not MISSING:
            found[item.name] = str(item.default_factory())
    return found


def run_fingerprint(script_args, training_args, model_args) -> dict[str, Any]:
    """What decides the run's result (`run`), where its files are (`where`) and its step budget (`budget`); see the
    module docstring for which field goes where."""
    training = _counted(training_args)
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    training["global_batch_size"] = str(per_step * training_args.world_size)
    if isinstance(training_args.deepspeed, str) and _is_local(training_args.deepspeed):  # counts by what it says
        training["deepspeed"] = _file_hash(training_args.deepspeed)
    data, where = _data_identity(script_args)
    where["output_dir"] = os.path.abspath(training_args.output_dir)
    return {
        "format": FORMAT,
        "run": {
            "stage": script_args.stage,
            "script": _counted(script_args),
            "model": _counted(model_args),
            "training": training,
            "data": data,
        },
        "where": where,
        "budget": {name: getattr(training_args, name) for name in BUDGET},
        "defaults": {
            "script": _defaults(script_args),
            "model": _defaults(model_args),
            "training": _defaults(training_args),
        },
    }


def _differences(
    old: dict, new: dict, prefix: str = "", old_defaults: dict | None = None, new_defaults: dict | None = None
) -> list[str]:
    """`key: old -> new` for each value that differs. A key one side lacks (a field added or removed by an upgrade
    between two starts) differs only where the other side's value is not that side's default (`*_defaults`, the same
    nesting)."""
    old_defaults, new_defaults = old_defaults or {}, new_defaults or {}
    found = []
    for key in sorted(old.keys() | new.keys()):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += _differences(a, b, f"{prefix}{key}.", old_defaults.get(key), new_defaults.get(key))
        elif key not in old and key in new_defaults and b == new_defaults[key]:
            continue
        elif key not in new and key in old_defaults and a == old_defaults[key]:
            continue
        elif a != b:
            found.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return found


def _run_differences(recorded: dict, fingerprint: dict) -> list[str]:
    """What differs between a recorded run and this start's (`run`), a field new to either side at its default not."""
    return _differences(recorded["run"], fingerprint["run"], "", recorded.get("defaults"), fingerprint.get("defaults"))


def describe_budget(budget: dict[str, Any]) -> str:
    return f"max_steps {budget['max_steps']}" if budget["max_steps"] > 0 else f"{budget['num_train_epochs']:g} epochs"


def describe_budgets(budgets: list[dict[str, Any]]) -> str:
    """The run's step budgets in order, e.g. `max_steps 12, then max_steps 24 from step 12`."""
    parts = [describe_budget(budgets[0])]
    parts += [f"then {describe_budget(budget)} from step {budget['from_step']}" for budget in budgets[1:]]
    return ", ".join(parts)


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


def _keeping_checkpoints(recorded: dict[str, Any], checkpoint: Path | None) -> str:
    """The ways out of a refused start that keep the folder's checkpoints, then the one that deletes them."""
    ways = "put back the recorded values and --resume"
    stage = recorded["run"]["stage"]
    if checkpoint is not None and stage not in ("lora", "qlora"):  # a LoRA checkpoint holds an adapter, no model
        flags = f"--model_name_or_path {shlex.quote(str(checkpoint))} --output_dir NEW_FOLDER"
        if recorded["where"].get("pretrain_projector"):  # it would replace the checkpoint's trained projector
            flags += " --pretrain_projector ''"
        ways += f"; or start a new run from {checkpoint.name}'s weights (a fresh optimizer and schedule): {flags}"
    return (
        f"To keep its checkpoints: {ways}; or use another output_dir. "
        "--overwrite_output_dir starts over there, deleting them."
    )


def _budget_below(checkpoint: Path, budget: dict[str, Any]) -> str | None:
    """Why `budget` ends before `checkpoint`, read from the Trainer's own state file, or None."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    step, epoch = state["global_step"], state.get("epoch") or 0.0
    if budget["max_steps"] > 0 and budget["max_steps"] < step:
        return f"max_steps {budget['max_steps']} ends before {checkpoint.name} (step {step})"
    if budget["max_steps"] <= 0 and budget["num_train_epochs"] < epoch:
        return f"num_train_epochs {budget['num_train_epochs']:g} ends before {checkpoint.name} (epoch {epoch:g})"
    return None


def _holds_weights(output_dir: Path) -> bool:
    """Whether a run's final save is in `output_dir`: a model, an adapter or a stage-1 projector."""
    return any(output_dir.glob("*.safetensors")) or any(output_dir.glob("*.bin"))


def prepare_output_dir(
    output_dir: str | Path, fingerprint: dict[str, Any], resume: bool, overwrite: bool, write: bool = True
) -> tuple[Path | None, list[str]]:
    """Binds `output_dir` to this run; returns the checkpoint to resume from (or None) and messages for the log.

    Raises `RunMismatchError` when the folder holds another run, or checkpoints that a fresh run would overwrite.
    Sets `fingerprint["budgets"]`, the run's step budgets so far. Only the process that `write`s (the main one)
    deletes or writes anything.
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
    if recorded is not None and recorded.get("format") != FORMAT:
        notes.append(f"{str(path)!r} was written by an earlier llava-plugin: its checkpoints cannot be checked.")
        recorded = None
    if recorded is not None and not checkpoints and not _holds_weights(output_dir):
        # A start refused before training (bad data, say) bound the folder; the mended data is another file, and
        # nothing here is lost by starting anew.
        if _run_differences(recorded, fingerprint):
            notes.append(f"{str(output_dir)!r} held no trained weights: its record of an earlier start is replaced.")
        recorded = None
    newest, skipped = newest_complete_checkpoint(output_dir)
    resume_from = newest if resume else None
    budgets = [{**fingerprint["budget"], "from_step": 0}]
    if recorded is not None:
        changes = _run_differences(recorded, fingerprint)
        budget_changed = recorded["budget"] != fingerprint["budget"]
        if budget_changed and not checkpoints:  # nothing to continue: another run
            changes += _differences(recorded["budget"], fingerprint["budget"], "budget.")
        if changes:
            raise RunMismatchError(
                f"{str(output_dir)!r} holds another run (what differs: {'; '.join(changes[:8])}). "
                + _keeping_checkpoints(recorded, newest)
            )
        budgets = recorded.get("budgets", budgets)
        moved = _differences(recorded["where"], fingerprint["where"])
        if moved:
            notes.append(f"The same content at another place: {'; '.join(moved)}.")
        if budget_changed and resume_from is None:  # a new start with the new budget
            budgets = [{**fingerprint["budget"], "from_step": 0}]
        elif budget_changed:
            below = _budget_below(resume_from, fingerprint["budget"])
            if below:
                raise RunMismatchError(
                    f"{below}: a run cannot go back. Give a budget from there on to continue it. "
                    + _keeping_checkpoints(recorded, resume_from)
                )
            step = int(resume_from.name.split("-")[-1])
            budgets = [*budgets, {**fingerprint["budget"], "from_step": step}]
            notes.append(
                f"Extending the run from {describe_budget(recorded['budget'])} to "
                f"{describe_budget(fingerprint['budget'])}, from {resume_from.name}."
            )
            training = fingerprint["run"]["training"]
            schedule = training["lr_scheduler_type"].split(".")[-1].lower()
            if schedule not in BUDGET_FREE_SCHEDULES or 0 < float(training["warmup_steps"]) < 1:
                notes.append(
                    f"The learning-rate schedule ({schedule}) follows the step budget: the steps after "
                    f"{resume_from.name} follow the new budget's schedule, the ones before followed the old one's."
                )
    if checkpoints and not resume:
        raise RunMismatchError(
            f"{str(output_dir)!r} already holds checkpoints ({', '.join(p.name for p in checkpoints[:3])}): --resume "
            "continues that run (also to a larger max_steps or num_train_epochs), --overwrite_output_dir starts "
            "over (deleting them)."
        )
    fingerprint["budgets"] = budgets
    if resume:
        notes = [*skipped, *notes]
        if recorded is None and checkpoints and not path.is_file():
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
    "describe_budgets",
    "mark_complete",
    "newest_complete_checkpoint",
    "prepare_output_dir",
    "run_fingerprint",
]
