"""`llava demo`: LLaVA's whole pipeline in miniature, offline, on a CPU, through the same code as a real run.

1. A synthetic visual world (one coloured shape per image) with captions, conversations and held-out questions.
2. Stand-ins for CLIP and Vicuna pretrained here: a CLIP trained contrastively, a Llama trained as a causal LM.
3. `from_backbones`, stage 1 and stage 2 with the shipped demo recipes (`llava train`'s own `main`).
4. Held-out accuracy with the image, with a blank image, and for a stage-2 model that skipped stage 1 (the paper's
   ablation); `results.json`, a PNG of the loss curves, a table, and one chat.

`results.json` is removed first and written last, so a folder holding one is a finished run.

`llava demo --task` (`run_task`) then fine-tunes that final model on a question kind it was never trained on, with
the `demo-task-lora` recipe, as a user fine-tunes a released LLaVA on their own data: held-out accuracy on the new
task before and after, on the old questions after (what the adapter keeps), and its loss curve, in
`task_results.json` and `task_loss_curve.png`.
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib
from transformers import AutoModelForImageTextToText, AutoProcessor

from ..train import main, parse
from .backbones import (
    TEXT_STEPS,
    VISION_STEPS,
    caption_retrieval_accuracy,
    pretrain_language_model,
    pretrain_vision_tower,
)
from .evaluate import answer_questions, heldout_accuracy
from .world import TASK_KIND, WorldFiles, heldout_scenes, write_task, write_world

matplotlib.use("Agg")  # no display: the curves only go to a file
from matplotlib import pyplot as plt  # noqa: E402


@dataclass(frozen=True)
class DemoSize:
    num_train: int
    num_heldout: int
    vision_steps: int
    text_steps: int
    max_steps: int | None  # caps each LLaVA stage; None trains the recipe's epochs


FULL = DemoSize(num_train=2000, num_heldout=150, vision_steps=VISION_STEPS, text_steps=TEXT_STEPS, max_steps=None)
QUICK = DemoSize(num_train=48, num_heldout=6, vision_steps=4, text_steps=4, max_steps=2)  # plumbing only
# Samples of the new task (`llava demo --task`): a few hundred, as a small task of one's own; quick: plumbing only.
TASK_SAMPLES = {"full": 300, "quick": 12}


def train_stage(stage: str, recipe: str, output_dir: Path, seed: int, max_steps: int | None, **fields) -> dict:
    """Runs one stage as `llava train STAGE --config RECIPE --field value ...` would; returns its loss log."""
    # The demo owns its output folder: a rerun (quick or full) starts each stage over.
    argv = ["--config", recipe, "--output_dir", str(output_dir), "--seed", str(seed), "--overwrite_output_dir", "true"]
    argv += [item for key, value in fields.items() for item in (f"--{key}", str(value))]
    if max_steps is not None:
        argv += ["--max_steps", str(max_steps)]
    state = main(*parse([stage, *argv])).state
    runtime = next(entry["train_runtime"] for entry in reversed(state.log_history) if "train_runtime" in entry)
    return {
        "steps": [entry["step"] for entry in state.log_history if "loss" in entry],
        "loss": [entry["loss"] for entry in state.log_history if "loss" in entry],
        "seconds_per_step": runtime / state.global_step,
    }


DEMO_PANELS = [
    ("CLIP stand-in (contrastive)", ["vision_pretraining"]),
    ("Vicuna stand-in (causal LM)", ["text_pretraining"]),
    ("LLaVA stage 1 (projector)", ["stage1"]),
    ("LLaVA stage 2 (projector + LLM)", ["stage2", "stage2_no_stage1"]),
]


def plot_losses(curves: dict[str, dict], path: Path, panels: list[tuple[str, list[str]]] = DEMO_PANELS) -> None:
    """One panel per (title, curve names), side by side."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.25 * len(panels), 3.6), squeeze=False)
    for axis, (title, names) in zip(axes[0], panels, strict=True):
        for name in names:
            curve = curves[name]
            axis.plot(curve["steps"], curve["loss"], label=name.replace("_", " "))
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        if len(names) > 1:
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def show_chat(model_dir: Path, world: WorldFiles) -> list[dict[str, str]]:
    """Asks the trained model every question about the first held-out image, as `llava chat` would."""
    image_name, scene = heldout_scenes(world)[0]
    image = world.image_folder / image_name
    model = AutoModelForImageTextToText.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    questions = [question for question, _ in scene.questions()]
    answers = answer_questions(model, processor, [image] * len(questions), questions, progress=False)
    return [
        {"image": image_name, "question": question, "answer": answer, "reference": reference}
        for (question, reference), answer in zip(scene.questions(), answers, strict=True)
    ]


def print_report(results: dict) -> None:
    kinds = sorted(results["heldout"]["with_image"]["per_kind"])
    rows = [("with the image", "with_image"), ("with a blank image", "blank_image"), ("skipping stage 1", "no_stage1")]
    print(f"\nHeld-out accuracy ({results['heldout']['with_image']['total']} questions on new images)")
    print(f"{'':<22}{'overall':>9}" + "".join(f"{kind:>10}" for kind in kinds))
    for label, key in rows:
        entry = results["heldout"][key]
        print(f"{label:<22}{entry['accuracy']:>9.3f}" + "".join(f"{entry['per_kind'][k]:>10.3f}" for k in kinds))
    print("\nSeconds per step: " + ", ".join(f"{k} {v:.3f}" for k, v in results["seconds_per_step"].items()))
    print("\nOne chat with the trained model (a held-out image):")
    for turn in results["chat"]:
        print(f"  USER: {turn['question']}\n  ASSISTANT: {turn['answer']}")


def run_demo(output_dir: str | Path = "demo_output", quick: bool = False, seed: int = 0) -> dict:
    """Runs the whole demo into `output_dir` and returns what it writes to `results.json`."""
    started = time.perf_counter()
    size = QUICK if quick else FULL
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").unlink(missing_ok=True)

    world = write_world(output_dir / "world", size.num_train, size.num_heldout, seed)
    vision_tower, vision_losses = pretrain_vision_tower(world, output_dir / "clip", steps=size.vision_steps, seed=seed)
    language_model, text_losses = pretrain_language_model(
        world, output_dir / "vicuna", steps=size.text_steps, seed=seed
    )
    backbones = {"vision_tower": vision_tower, "language_model": language_model, "image_folder": world.image_folder}

    curves = {
        "vision_pretraining": {"steps": list(range(1, len(vision_losses) + 1)), "loss": vision_losses},
        "text_pretraining": {"steps": list(range(1, len(text_losses) + 1)), "loss": text_losses},
        "stage1": train_stage(
            "stage1", "demo-stage1", output_dir / "stage1", seed, size.max_steps, data_path=world.stage1, **backbones
        ),
    }
    stage2 = {"data_path": world.stage2, **backbones}
    curves["stage2"] = train_stage(
        "stage2", "demo-stage2", output_dir / "stage2", seed, size.max_steps,
        pretrain_projector=output_dir / "stage1", **stage2,
    )  # fmt: skip
    curves["stage2_no_stage1"] = train_stage(
        "stage2", "demo-stage2", output_dir / "stage2-no-stage1", seed, size.max_steps, **stage2
    )

    heldout = {
        "with_image": heldout_accuracy(output_dir / "stage2", world),
        "blank_image": heldout_accuracy(output_dir / "stage2", world, blank=True),
        "no_stage1": heldout_accuracy(output_dir / "stage2-no-stage1", world),
    }
    plot_losses(curves, output_dir / "loss_curves.png")
    results = {
        "accuracy_with_image": heldout["with_image"].value,
        "accuracy_blank_image": heldout["blank_image"].value,
        "accuracy_no_stage1": heldout["no_stage1"].value,
        "heldout": {name: accuracy.summary() for name, accuracy in heldout.items()},
        "mistakes_with_image": heldout["with_image"].mistakes,
        "seconds_per_step": {name: curves[name]["seconds_per_step"] for name in ("stage1", "stage2")},
        "clip_caption_retrieval": caption_retrieval_accuracy(vision_tower, world),
        "chat": show_chat(output_dir / "stage2", world),
        "size": asdict(size),
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
    }
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    written = f"{output_dir / 'results.json'} and {output_dir / 'loss_curves.png'}"
    print(f"\nWrote {written} in {results['wall_seconds']:.0f} s.")
    print(f"The trained LLaVA (stage 2) is in {output_dir / 'stage2'}: try `llava chat {output_dir / 'stage2'}`.")
    return results


def print_task_report(results: dict) -> None:
    rows = [
        (f"new task ({TASK_KIND}), before", "task_before"),
        (f"new task ({TASK_KIND}), after", "task_after"),
        ("same, blank image", "task_after_blank_image"),
        ("old questions, before", "old_before"),
        ("old questions, after", "old_after"),
    ]
    print(f"\nHeld-out accuracy before and after the LoRA fine-tune ({results['task_samples']} training samples)")
    for label, key in rows:
        entry = results["heldout"][key]
        kinds = "  ".join(f"{kind} {value:.3f}" for kind, value in sorted(entry["per_kind"].items()))
        print(f"  {label:<34}{entry['accuracy']:>7.3f}   ({entry['total']} questions: {kinds})")
    for turn in results["examples"]:
        print(f"  USER: {turn['question']}\n  BEFORE: {turn['before']}\n  AFTER: {turn['after']}")


class DemoFolderError(ValueError):
    """An output folder `llava demo --task` cannot fine-tune in as asked; the message says what to do."""


def run_task(output_dir: str | Path = "demo_output", quick: bool = False, seed: int = 0) -> dict:
    """Fine-tunes the demo's final model in `output_dir` on the new task with the `demo-task-lora` recipe (running the
    whole demo there first where `output_dir` holds no finished one) and returns what it writes to
    `task_results.json` (removed first, written last). Raises `DemoFolderError` where the demo there is of the other
    size (`--quick` or not)."""
    output_dir = Path(output_dir)
    if not (output_dir / "results.json").is_file():
        print(f"No finished demo in {output_dir}: running `llava demo` there first.")
        run_demo(output_dir, quick=quick, seed=seed)
    started = time.perf_counter()  # the fine-tune and its evaluations, not the demo before them
    if json.loads((output_dir / "results.json").read_text())["size"] != asdict(QUICK if quick else FULL):
        ran, fix = ("", "leave out --quick") if quick else (" --quick", "add --quick")
        raise DemoFolderError(
            f"{output_dir} holds a `llava demo{ran}` run, and the task is fine-tuned at the size of the demo it "
            f"starts from: {fix}, or give another --output-dir."
        )
    (output_dir / "task_results.json").unlink(missing_ok=True)
    world = WorldFiles.under(output_dir / "world")
    samples = TASK_SAMPLES["quick" if quick else "full"]
    write_task(world, samples, seed)
    base, adapter = output_dir / "stage2", output_dir / "task-lora"

    before = heldout_accuracy(base, world, questions=world.task_heldout)
    curve = train_stage(
        "lora", "demo-task-lora", adapter, seed, QUICK.max_steps if quick else None,
        model_name_or_path=base, data_path=world.task_train, image_folder=world.image_folder,
    )  # fmt: skip
    heldout = {
        "task_before": before,
        "task_after": heldout_accuracy(adapter, world, questions=world.task_heldout),
        "task_after_blank_image": heldout_accuracy(adapter, world, blank=True, questions=world.task_heldout),
        "old_after": heldout_accuracy(adapter, world),
    }
    plot_losses(
        {"task_lora": curve}, output_dir / "task_loss_curve.png", [("LoRA fine-tune on the new task", ["task_lora"])]
    )
    examples = [
        {
            "image": record["image"],
            "question": record["conversations"][0]["value"].removeprefix("<image>\n"),
            "reference": record["conversations"][1]["value"],
            "before": heldout["task_before"].answers[record["id"]],
            "after": heldout["task_after"].answers[record["id"]],
        }
        for record in json.loads(world.task_heldout.read_text())[:3]
    ]
    results = {
        "task_kind": TASK_KIND,
        "task_samples": samples,
        "accuracy_task_before": heldout["task_before"].value,
        "accuracy_task_after": heldout["task_after"].value,
        "accuracy_old_after": heldout["old_after"].value,
        # The old questions before: the demo's own measure of the same model, with the same function.
        "heldout": {name: accuracy.summary() for name, accuracy in heldout.items()}
        | {"old_before": json.loads((output_dir / "results.json").read_text())["heldout"]["with_image"]},
        "mistakes_task_after": heldout["task_after"].mistakes,
        "examples": examples,
        "loss": curve,
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
    }
    (output_dir / "task_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_task_report(results)
    written = f"{output_dir / 'task_results.json'} and {output_dir / 'task_loss_curve.png'}"
    print(f"\nWrote {written} in {results['wall_seconds']:.0f} s.")
    print(f"The adapter is in {adapter}: try `llava chat {adapter}` (it loads unmerged on {base}).")
    return results


__all__ = ["FULL", "QUICK", "DemoFolderError", "run_demo", "run_task"]
