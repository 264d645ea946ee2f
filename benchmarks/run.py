"""`python -m benchmarks.run`: this project against transformers' built-in Llava trained by stock TRL, side by side.

Both sides run in one process on one device, on the same shapes (CLIP-L/336 with a Llama-7B or ~1.1B shape, random
weights), the same synthetic LLaVA-1.5 data (`synthetic.py`), the same per-device batch and the same number of steps:

- baseline: `transformers.LlavaForConditionalGeneration` trained by `trl.SFTTrainer` with its defaults for a VLM
  (TRL's padded collator, gradient checkpointing, no dataloader workers), frozen as the stage is and at the recipe's
  `max_length` and learning rate; generation is plain `generate()`.
- ours: `LlavaPluginForConditionalGeneration` trained by `llava train`'s own `main()` with the shipped recipe (whatever
  speed settings it holds: padding-free batches, `torch_varlen` attention, dataloader workers, ...); only the model,
  the data and the final save are swapped for in-memory ones. Generation uses the same weights with a static KV cache,
  which transformers compiles with CUDA graphs on a GPU.

Writes `results.json` (merged with the cases of an earlier run on the same device) and `results.md` into `--output`.
`--small` keeps the real token lengths and shrinks the widths, for a quick CPU run.
"""

import argparse
import gc
import json
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset
from PIL import Image
from transformers import LlavaForConditionalGeneration
from trl import SFTConfig, SFTTrainer

from modeling_llava import CHAT_TEMPLATES, LlavaPluginForConditionalGeneration
from trainers import train as train_module
from trainers.generation import decoding_kwargs
from trainers.stages import apply_freeze, get_stage, lora_config

from .measure import BatchRecorder, ModelCounts, PeakMemory, peak_flops, synchronize
from .report import markdown_table, merge_results
from .synthetic import (
    Shapes,
    as_dataset,
    generation_prompts,
    processors_for,
    save_images,
    shapes,
    stage1_rows,
    stage2_rows,
)


@dataclass(frozen=True)
class TrainingCase:
    stage: str
    recipe: str  # the shipped recipe `llava train` runs for ours; the baseline takes its lr and max_length
    llm: str
    rows: Callable[[int, list[str]], list[dict[str, Any]]]


TRAINING_CASES = {
    "stage1": TrainingCase("stage1", "llava-1.5-7b-stage1", "7b", stage1_rows),
    "lora": TrainingCase("lora", "llava-1.5-7b-lora", "7b", stage2_rows),
    "stage2": TrainingCase("stage2", "llava-1.5-7b-stage2", "1.1b", stage2_rows),
}
GENERATION_BATCHES, NEW_TOKENS = (1, 8), 128


@dataclass
class Settings:
    device: str
    small: bool
    steps: int
    warmup: int
    batch_size: int | None
    repeats: int
    ours_args: list[str]
    peak: float | None
    folder: Path
    images: list[str]

    @property
    def total_steps(self) -> int:
        """Warm-up steps, timed steps, and one more whose start closes the last timed one."""
        return self.warmup + self.steps + 1

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.device == "cuda" else torch.float32

    def device_args(self) -> list[str]:
        """bf16 on a GPU as the recipes say; fp32 on a CPU, where bf16 matmuls are emulated."""
        return [] if self.device == "cuda" else ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]


def build(model_class: type, config, settings: Settings) -> torch.nn.Module:
    """A randomly initialised model, created on the device (a 7B model would take minutes to initialise on a CPU)."""
    torch.manual_seed(0)
    with torch.device(settings.device):
        return model_class._from_config(config, dtype=settings.dtype)


def free_memory() -> None:
    """Returns what the last side left behind, so that the next one's peak memory is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_baseline(
    case: TrainingCase, shape: Shapes, processors, dataset: Dataset, batch_size: int, settings: Settings
) -> dict:
    ours_processor, builtin_processor = processors
    builtin_processor.chat_template = CHAT_TEMPLATES[get_stage(case.stage).template]
    _, recipe, recipe_model = train_module.parse(["--config", case.recipe, *settings.device_args()])
    args = SFTConfig(
        output_dir=str(settings.folder / f"{case.stage}-baseline"),
        per_device_train_batch_size=batch_size,
        max_steps=settings.total_steps,
        max_length=recipe.max_length,
        learning_rate=recipe.learning_rate,
        bf16=settings.device == "cuda",
        use_cpu=settings.device == "cpu",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
    )
    with PeakMemory(settings.device) as memory:
        model = build(LlavaForConditionalGeneration, shape.builtin_config(ours_processor.image_token_id), settings)
        apply_freeze(model, get_stage(case.stage))  # the same parts train on both sides
        recorder = BatchRecorder(settings.device)
        model.model.register_forward_pre_hook(recorder, with_kwargs=True)
        peft_config = None
        if get_stage(case.stage).uses_lora:
            peft_config = lora_config(model, recipe_model.lora_r, recipe_model.lora_alpha, recipe_model.lora_dropout)
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=dataset, processing_class=builtin_processor, peft_config=peft_config
        )
        trainer.train()
    result = recorder.summary(settings.warmup, ModelCounts.of(trainer.model, model.config), settings.peak)
    return result | {"peak_memory_gib": memory.gib, "settings": settings_of(trainer, model)}


def train_ours(
    case: TrainingCase, shape: Shapes, processors, dataset: Dataset, batch_size: int, settings: Settings
) -> dict:
    """`llava train --config RECIPE`'s own `build_trainer`, on an in-memory model and dataset, without the save."""
    processor = processors[0]
    argv = [
        "--config", case.recipe, "--output_dir", str(settings.folder / f"{case.stage}-ours"),
        "--per_device_train_batch_size", str(batch_size), "--global_batch_size", str(batch_size),
        "--max_steps", str(settings.total_steps), "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", "1", *settings.device_args(), *settings.ours_args,
    ]  # fmt: skip
    script_args, training_args, model_args = train_module.parse(argv)
    recorder = BatchRecorder(settings.device)
    with PeakMemory(settings.device) as memory:
        model = build(LlavaPluginForConditionalGeneration, shape.plugin_config(processor.image_token_id), settings)
        if model_args.attn_implementation:
            model.set_attn_implementation(model_args.attn_implementation)
        model.model.register_forward_pre_hook(recorder, with_kwargs=True)
        trainer, _ = train_module.build_trainer(
            script_args, training_args, model_args, model_and_processor=(model, processor), train_dataset=dataset
        )
        trainer.train()
    result = recorder.summary(settings.warmup, ModelCounts.of(trainer.model, model.config), settings.peak)
    return result | {"peak_memory_gib": memory.gib, "settings": settings_of(trainer, model)}


def settings_of(trainer: SFTTrainer, model: torch.nn.Module) -> dict[str, Any]:
    """The settings in which the two sides may differ, for the record."""
    return {
        "collator": type(trainer.data_collator).__name__,
        "attn_implementation": model.config.text_config._attn_implementation,
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "dataloader_num_workers": trainer.args.dataloader_num_workers,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def run_training_case(name: str, settings: Settings) -> dict:
    case = TRAINING_CASES[name]
    shape = shapes(case.llm, settings.small)
    processors = processors_for(shape, settings.folder / f"{name}-backbones")
    _, recipe, _ = train_module.parse(["--config", case.recipe, *settings.device_args()])
    # --small quarters the recipe's batch, so that a CPU gets through a step in seconds.
    batch_size = settings.batch_size or recipe.per_device_train_batch_size // (4 if settings.small else 1)
    dataset = as_dataset(case.rows(batch_size * settings.total_steps, settings.images))
    runs = {"baseline": [], "ours": []}
    for _ in range(settings.repeats):  # alternating, so that a busy spell on a shared machine hits both sides
        for side, train in (("baseline", train_baseline), ("ours", train_ours)):
            runs[side].append(train(case, shape, processors, dataset, batch_size, settings))
            free_memory()
    best = {side: max(results, key=lambda result: result["samples_per_s"]) for side, results in runs.items()}
    return {"llm": case.llm, "recipe": case.recipe, "batch_size": batch_size, "repeats": settings.repeats, **best}


def timed_generate(model, inputs: dict, settings: Settings, repeats: int, **kwargs) -> tuple[torch.Tensor, float]:
    """Greedy `NEW_TOKENS` tokens (end-of-sequence suppressed, so every run decodes them all).

    Returns the tokens and the best time of `repeats` runs after a warm-up run (allocations, and for a static cache
    the compilation).
    """
    kwargs |= {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS, "do_sample": False}
    model.generate(**inputs, **kwargs)
    best, tokens = float("inf"), None
    for _ in range(repeats):
        synchronize(settings.device)
        start = time.perf_counter()
        tokens = model.generate(**inputs, **kwargs)
        synchronize(settings.device)
        best = min(best, time.perf_counter() - start)
    return tokens, best


def run_generation_case(settings: Settings) -> dict[str, dict]:
    shape = shapes("7b", settings.small)
    processor = processors_for(shape, settings.folder / "generate-backbones")[0]
    builtin = build(LlavaForConditionalGeneration, shape.builtin_config(processor.image_token_id), settings).eval()
    ours = build(LlavaPluginForConditionalGeneration, shape.plugin_config(processor.image_token_id), settings).eval()
    ours.load_state_dict(builtin.state_dict(), strict=True)  # same weights: the tokens must agree
    weights_gib = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30
    results = {}
    for batch_size in GENERATION_BATCHES:
        images = [Image.open(path) for path in settings.images[:batch_size]]
        inputs = processor(
            images=images, text=generation_prompts(processor, batch_size), return_tensors="pt", padding=True
        ).to(settings.device)
        sides = {}
        # Ours decodes as `llava eval` does on a GPU (`decoding_kwargs`); forced on, so that a CPU run measures it too.
        for side, model, kwargs in (
            ("baseline", builtin, {}),
            ("ours", ours, decoding_kwargs(ours, static_cache=True)),
        ):
            with PeakMemory(settings.device) as memory:
                resident = torch.cuda.memory_allocated() / 2**30 if settings.device == "cuda" else 0.0
                tokens, seconds = timed_generate(model, inputs, settings, repeats=2, **kwargs)
            sides[side] = {
                "tokens": tokens,
                "seconds": seconds,
                "samples_per_s": batch_size / seconds,
                "tokens_per_s": batch_size * NEW_TOKENS / seconds,
                "padding_fraction": 0.0,
                "mfu": None,
                # One model's weights plus what generate() allocated beyond the two resident models.
                "peak_memory_gib": None if memory.gib is None else weights_gib + memory.gib - resident,
                "settings": {"cache": kwargs.get("cache_implementation", "dynamic")},
            }
        new = slice(inputs["input_ids"].shape[1], None)
        agree = (sides["ours"].pop("tokens")[:, new] == sides["baseline"].pop("tokens")[:, new]).float().mean()
        results[f"generate-b{batch_size}"] = {
            "llm": "7b",
            "batch_size": batch_size,
            "same_tokens_fraction": float(agree),
            **sides,
        }
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny widths at the real lengths: a CPU run in minutes")
    parser.add_argument("--cases", default="stage1,lora,stage2,generate", help="comma-separated subset to run")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--steps", type=int, help="timed training steps per side (default 10; 4 with --small)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 3; 1 with --small)")
    parser.add_argument("--batch-size", type=int, help="per-device batch of every training case (default: recipe's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; the best one counts")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, if not a known GPU")
    parser.add_argument(
        "--ours-args", default="", help="extra `llava train` flags for ours ('--padding_free_batches false')"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cases = args.cases.split(",")
    unknown = set(cases) - {*TRAINING_CASES, "generate"}
    if unknown:
        raise SystemExit(f"Unknown cases {sorted(unknown)}: choose among {[*TRAINING_CASES, 'generate']}.")
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(
            device=args.device,
            small=args.small,
            steps=args.steps or (4 if args.small else 10),
            warmup=args.warmup if args.warmup is not None else (1 if args.small else 3),
            batch_size=args.batch_size,
            repeats=args.repeats,
            ours_args=shlex.split(args.ours_args),
            peak=peak_flops(args.device, args.peak_tflops),
            folder=Path(folder),
            images=save_images(Path(folder) / "images"),
        )
        results = {}
        for name in cases:
            print(f"[benchmark] {name} ...", flush=True)
            if name == "generate":
                results |= run_generation_case(settings)
                free_memory()
            else:
                results[name] = run_training_case(name, settings)
    run = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "mode": "small" if args.small else "full",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "ours_args": args.ours_args,
    }
    merged = merge_results(args.output / "results.json", run, results)
    table = markdown_table(merged)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    (args.output / "results.md").write_text(table)
    print(table)
    return merged


if __name__ == "__main__":
    main()
