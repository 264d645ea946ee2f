"""`llava demo --resolution`: what LLaVA-NeXT's AnyRes tiling buys, in miniature, offline, on a CPU.

The world of `detail.py` asks where a mark of fine checks is, which a 64 px image shows and its 32 px resize does not,
and what colour a coarse dot is, which both show. The same stand-ins for CLIP and Vicuna (`backbones.py`, pretrained
on the demo's shape world) start two runs of the `demo-resolution` recipe that differ in nothing but the image
preprocessing: LLaVA-1.5's single tile (the image resized to the tower's 32 px) and LLaVA-NeXT's AnyRes (the 2 x 2
tiles of the image at its own resolution beside that resized base tile; `anyres: true`). Same data, steps, seed and
backbones. Held-out accuracy of each per question kind, beside the chance level of the held-out answers and how much
of the mark each model's pixel values hold, goes to `resolution_results.json` (removed first, written last).
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from transformers import AutoProcessor

from modeling_llava.anyres import llava_next_pinpoints

from .backbones import TEXT_STEPS, VISION_STEPS, pretrain_language_model, pretrain_vision_tower
from .detail import DETAIL_KINDS, GREY, TILE_SIZE, write_detail_world
from .evaluate import heldout_accuracy
from .run import plot_losses, train_stage
from .world import COLOURS, WorldFiles, write_world

RECIPE = "demo-resolution"
# LLaVA-1.6's five resolutions scaled from its 336 px tower to the demo's 32 px one, (height, width) in tiles of 1 x 2,
# 2 x 1, 2 x 2, 1 x 3 and 3 x 1: a 64 px square image takes the 2 x 2 grid, at its own resolution.
PINPOINTS = llava_next_pinpoints(TILE_SIZE)
# The two runs: the recipe as it is (LLaVA-1.5), and with AnyRes (LLaVA-NeXT).
VARIANTS = {
    "single_tile": {},
    "anyres": {"anyres": "true", "image_grid_pinpoints": json.dumps(PINPOINTS)},
}


@dataclass(frozen=True)
class ResolutionSize:
    shape_images: int  # images of the shape world the backbones pretrain on
    vision_steps: int
    text_steps: int
    num_train: int  # images of the detail world, two questions each
    num_heldout: int
    max_steps: int | None  # caps each run; None trains the recipe's epochs


FULL = ResolutionSize(2000, VISION_STEPS, TEXT_STEPS, num_train=1000, num_heldout=100, max_steps=None)
QUICK = ResolutionSize(48, 4, 4, num_train=32, num_heldout=8, max_steps=2)  # plumbing only


def mark_signal(model_dir: Path, world: WorldFiles) -> float:
    """The most the mark changes any pixel value the model at `model_dir` is fed, over the held-out images, in grey
    levels: each image against itself with the mark painted over in the background grey (every pixel that is not the
    dot's colour; the dot stays where it is)."""
    image_processor = AutoProcessor.from_pretrained(model_dir).image_processor
    records = {record["image"]: record for record in json.loads(world.heldout.read_text()) if record["kind"] == "dot"}
    largest = 0.0
    for name, record in records.items():
        pixels = np.asarray(Image.open(world.image_folder / name).convert("RGB"))
        dot = COLOURS[record["conversations"][1]["value"].removeprefix("The dot is ").removesuffix(".")]
        unmarked = np.where((pixels == dot).all(axis=-1, keepdims=True), pixels, GREY).astype(np.uint8)
        values = [
            image_processor(image, return_tensors="np")["pixel_values"]
            for image in (Image.fromarray(pixels), Image.fromarray(unmarked))
        ]
        # Normalised values back to grey levels: x 255 x the channel's std.
        std = np.asarray(image_processor.image_std).reshape(3, 1, 1)
        largest = max(largest, float(np.abs((values[0] - values[1]) * std * 255).max()))
    return largest


def chance(world: WorldFiles) -> dict[str, float]:
    """Per question kind, the share of held-out questions whose answer is the kind's most frequent one: the accuracy
    of a model that always gives that answer (what a model that does not see the answer can best do)."""
    answers: dict[str, dict[str, int]] = {}
    for record in json.loads(world.heldout.read_text()):
        counts = answers.setdefault(record["kind"], {})
        answer = record["conversations"][1]["value"]
        counts[answer] = counts.get(answer, 0) + 1
    return {kind: max(counts.values()) / sum(counts.values()) for kind, counts in answers.items()}


def print_resolution_report(results: dict) -> None:
    print(f"\nHeld-out accuracy ({results['heldout_images']} new images, one question of each kind)")
    print(f"{'':<30}" + "".join(f"{kind:>10}" for kind in DETAIL_KINDS) + f"{'mark signal (grey levels)':>28}")
    labels = {"single_tile": "LLaVA-1.5, one 32 px tile", "anyres": "LLaVA-NeXT, AnyRes 2 x 2"}
    for variant, label in labels.items():
        entry = results["heldout"][variant]["per_kind"]
        signal = results["mark_signal_grey_levels"][variant]
        print(f"{label:<30}" + "".join(f"{entry[kind]:>10.3f}" for kind in DETAIL_KINDS) + f"{signal:>28.0f}")
    print(f"{'chance (most frequent answer)':<30}" + "".join(f"{results['chance'][k]:>10.3f}" for k in DETAIL_KINDS))


def run_resolution(
    output_dir: str | Path = "demo_resolution", quick: bool = False, seed: int = 0, size: ResolutionSize | None = None
) -> dict:
    """Runs the comparison into `output_dir` and returns what it writes to `resolution_results.json`.

    `size` overrides `FULL` (or `QUICK` where `quick`): the tests run a small comparison that still learns."""
    started = time.perf_counter()
    size = size or (QUICK if quick else FULL)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "resolution_results.json").unlink(missing_ok=True)

    shapes = write_world(output_dir / "world", size.shape_images, num_heldout=5, seed=seed)
    vision_tower, _ = pretrain_vision_tower(shapes, output_dir / "clip", steps=size.vision_steps, seed=seed)
    language_model, _ = pretrain_language_model(shapes, output_dir / "vicuna", steps=size.text_steps, seed=seed)
    world = write_detail_world(output_dir / "detail", size.num_train, size.num_heldout, seed)
    common = {
        "data_path": world.stage2,
        "image_folder": world.image_folder,
        "vision_tower": vision_tower,
        "language_model": language_model,
    }
    curves = {
        variant: train_stage("stage2", RECIPE, output_dir / variant, seed, size.max_steps, **common, **fields)
        for variant, fields in VARIANTS.items()
    }
    heldout = {variant: heldout_accuracy(output_dir / variant, world) for variant in VARIANTS}
    plot_losses(curves, output_dir / "resolution_loss_curves.png", [("the same run, two preprocessings", [*VARIANTS])])
    results = {
        "accuracy_mark": {variant: heldout[variant].summary()["per_kind"]["mark"] for variant in VARIANTS},
        "accuracy_dot": {variant: heldout[variant].summary()["per_kind"]["dot"] for variant in VARIANTS},
        "chance": chance(world),
        "heldout": {variant: accuracy.summary() for variant, accuracy in heldout.items()},
        "heldout_images": size.num_heldout,
        "mark_signal_grey_levels": {variant: mark_signal(output_dir / variant, world) for variant in VARIANTS},
        "mistakes": {variant: accuracy.mistakes for variant, accuracy in heldout.items()},
        "seconds_per_step": {variant: curve["seconds_per_step"] for variant, curve in curves.items()},
        "loss": curves,
        "pinpoints": PINPOINTS,
        "size": asdict(size),
        "seed": seed,
        "wall_seconds": time.perf_counter() - started,
    }
    (output_dir / "resolution_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_resolution_report(results)
    print(f"\nWrote {output_dir / 'resolution_results.json'} in {results['wall_seconds']:.0f} s.")
    return results


__all__ = ["FULL", "PINPOINTS", "QUICK", "ResolutionSize", "chance", "mark_signal", "run_resolution"]
