"""`python -m benchmarks.run`: this project against transformers' built-in Llava trained by stock TRL, side by side.

Both sides run in one process on one device, on the same shapes (CLIP-L/336 with a Llama-7B or ~1.1B shape, random
weights), the same synthetic LLaVA-1.5 data (`synthetic.py`), the same per-device batch and the same number of steps:

- baseline: `transformers.LlavaForConditionalGeneration` trained by `trl.SFTTrainer` (TRL's padded collator) with
  every setting that stock transformers and TRL expose by a flag and that the recipe turns on for ours: its dataloader
  workers, gradient checkpointing, assistant-only loss (TRL's `assistant_only_loss`, through the same chat template),
  `max_length` and learning rate, sdpa attention, length-grouped batches (transformers' `group_by_length` sampler over
  a `length` column computed by the baseline's own processor), frozen as the stage is; generation with a static KV
  cache, which transformers compiles on a GPU.
- ours: `LlavaPluginForConditionalGeneration` trained by `llava train`'s own `build_trainer` with the shipped recipe
  (whatever it holds beyond that: padding-free batches, `torch_varlen` attention, modality-grouped batches, ...);
  only the model, the data and the final save are swapped for in-memory ones. Generation uses the same weights and
  the same static cache.

The `next-lora` case does the same for LLaVA-NeXT (1.6): transformers' `LlavaNextForConditionalGeneration` with its
`LlavaNextProcessor` against this project's `LlavaNextPluginForConditionalGeneration` and processor, on images whose
sizes land on each of LLaVA-1.6's grids, so that every sample carries its own number of tiles and image tokens.

Each side records the settings it actually ran with, and the share of tokens that carried the loss.

Writes `results.json` (merged with the cases of an earlier run on the same device) and `results.md` into `--output`
after every case: a case that raises records its error and the run goes on, and a case still marked as started is one
whose process was killed. `--small` keeps the real token lengths and shrinks the widths, for a quick CPU run.
"""

import argparse
import gc
import importlib.util
import json
import shlex
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import transformers
import trl
from datasets import Dataset
from PIL import Image
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration, TrainerCallback
from trl import SFTConfig, SFTTrainer
from trl.data_utils import prepare_multimodal_messages

from modeling_llava import (
    CHAT_TEMPLATES,
    LlavaNextPluginForConditionalGeneration,
    LlavaPluginForConditionalGeneration,
    attention_varlen,
)
from processing.generation import decoding_kwargs
from processing.padding_free import LlavaPaddingFreeCollator
from trainers import train as train_module
from trainers.stages import apply_freeze, get_stage, lora_config

from .measure import BatchRecorder, ModelCounts, PeakMemory, peak_flops, synchronize
from .report import markdown_table, merge_results
from .synthetic import (
    NEXT_IMAGE_SIZES,
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
    name: str
    stage: str
    recipe: str  # the shipped recipe `llava train` runs for ours; the baseline takes its lr and max_length
    llm: str
    rows: Callable[[int, list[str], list[int], int], list[dict[str, Any]]]  # (count, images, their tokens, max_length)
    anyres: bool = False  # LLaVA-NeXT models, processors and images
    small_batch_divisor: int = 4  # --small divides the recipe's per-device batch by this

    @property
    def model_classes(self) -> tuple[type, type]:
        """The built-in model class and this project's."""
        if self.anyres:
            return LlavaNextForConditionalGeneration, LlavaNextPluginForConditionalGeneration
        return LlavaForConditionalGeneration, LlavaPluginForConditionalGeneration

    def recipe_argv(self, settings: "Settings") -> list[str]:
        return ["--config", self.recipe, *settings.device_args()]


TRAINING_CASES = {
    "stage1": TrainingCase("stage1", "stage1", "llava-1.5-7b-stage1", "7b", stage1_rows),
    "lora": TrainingCase("lora", "lora", "llava-1.5-7b-lora", "7b", stage2_rows),
    "stage2": TrainingCase("stage2", "stage2", "llava-1.5-7b-stage2", "1.1b", stage2_rows),
    "next-lora": TrainingCase(
        "next-lora",
        "lora",
        "llava-next-7b-lora",
        "7b",
        stage2_rows,
        anyres=True,
        small_batch_divisor=1,  # 4 is already small, and a batch of 1 has no padding to measure
    ),
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
    deadline: float | None = None  # epoch seconds by which a training case stops stepping (None: the step budget)
    side_seconds: float | None = None  # the share of one side, set as each side starts

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


class TimeGuard(TrainerCallback):
    """Stops training once `seconds` have passed since the side began, so that a slow case ends within its budget."""

    def __init__(self, seconds: float | None):
        self.seconds, self.start = seconds, time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is not None and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


def with_lengths(dataset: Dataset, processor) -> Dataset:
    """`dataset` with a `length` column, each row's tokens as `processor` renders it (image tokens expanded).

    transformers' `LengthGroupedSampler` reads it; the rows render as TRL's collator renders them.
    """

    def length(row: dict[str, Any]) -> dict[str, int]:
        messages = prepare_multimodal_messages(row["messages"], images=row["images"])
        tokens = processor.apply_chat_template(
            [messages], tokenize=True, return_dict=True, processor_kwargs={"add_special_tokens": False}
        )
        return {"length": len(tokens["input_ids"][0])}

    return dataset.map(length)


def train_baseline(
    case: TrainingCase, shape: Shapes, processors, dataset: Dataset, batch_size: int, settings: Settings
) -> dict:
    """Stock TRL on the built-in Llava, with every speed setting of the recipe that stock TRL/transformers offer."""
    ours_processor, builtin_processor = processors
    _, recipe, recipe_model = train_module.parse(case.recipe_argv(settings))
    args = SFTConfig(
        output_dir=str(settings.folder / f"{case.name}-baseline"),
        per_device_train_batch_size=batch_size,
        max_steps=settings.total_steps,
        max_length=recipe.max_length,
        learning_rate=recipe.learning_rate,
        assistant_only_loss=recipe.assistant_only_loss,
        dataloader_num_workers=recipe.dataloader_num_workers,
        gradient_checkpointing=recipe.gradient_checkpointing,
        train_sampling_strategy="group_by_length",
        remove_unused_columns=False,  # TRL keeps only its own columns of a VLM dataset; the sampler needs `length`
        bf16=settings.device == "cuda",
        use_cpu=settings.device == "cpu",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
    )
    recorder = BatchRecorder(settings.device)
    guard = TimeGuard(settings.side_seconds)
    with PeakMemory(settings.device) as memory:
        config = shape.builtin_config(ours_processor.image_token_id, anyres=case.anyres)
        model = build(case.model_classes[0], config, settings)
        model.set_attn_implementation("sdpa")  # the built-in's fastest kernel for padded batches
        apply_freeze(model, get_stage(case.stage))  # the same parts train on both sides
        recorder.attach(model)
        peft_config = None
        if get_stage(case.stage).uses_lora:
            peft_config = lora_config(model, recipe_model.lora_r, recipe_model.lora_alpha, recipe_model.lora_dropout)
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=builtin_processor,
            peft_config=peft_config,
            callbacks=[guard],
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
        *case.recipe_argv(settings), "--output_dir", str(settings.folder / f"{case.name}-ours"),
        "--per_device_train_batch_size", str(batch_size), "--global_batch_size", str(batch_size),
        "--max_steps", str(settings.total_steps), "--save_strategy", "no", "--report_to", "none",
        "--logging_steps", "1", *settings.ours_args,
    ]  # fmt: skip
    script_args, training_args, model_args = train_module.parse(argv)
    recorder = BatchRecorder(settings.device)
    guard = TimeGuard(settings.side_seconds)
    with PeakMemory(settings.device) as memory:
        model = build(case.model_classes[1], shape.plugin_config(processor.image_token_id, case.anyres), settings)
        if model_args.attn_implementation:
            model.set_attn_implementation(model_args.attn_implementation)
        recorder.attach(model)
        trainer, _ = train_module.build_trainer(
            script_args, training_args, model_args, model_and_processor=(model, processor), train_dataset=dataset
        )
        trainer.add_callback(guard)
        trainer.train()
    result = recorder.summary(settings.warmup, ModelCounts.of(trainer.model, model.config), settings.peak)
    return result | {"peak_memory_gib": memory.gib, "settings": settings_of(trainer, model)}


def settings_of(trainer: SFTTrainer, model: torch.nn.Module) -> dict[str, Any]:
    """The settings a training side ran with, read off its trainer and model, for the record."""
    return {
        "dataloader_num_workers": trainer.args.dataloader_num_workers,
        "sampler": type(trainer._get_train_sampler()).__name__,
        "loss_tokens": "assistant-only" if trainer.args.assistant_only_loss else "all",
        "attn_implementation": model.config.text_config._attn_implementation,
        "padding_free": isinstance(trainer.data_collator, LlavaPaddingFreeCollator),
        "collator": type(trainer.data_collator).__name__,
        "cache": None,
        "gradient_checkpointing": trainer.args.gradient_checkpointing,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }


def run_training_case(name: str, settings: Settings) -> dict:
    case = TRAINING_CASES[name]
    shape = shapes(case.llm, settings.small)
    processors = processors_for(shape, settings.folder / f"{name}-backbones", anyres=case.anyres)
    _, recipe, _ = train_module.parse(case.recipe_argv(settings))
    # --small divides the recipe's batch (by 4 for LLaVA-1.5's), so that a CPU gets through a step in seconds.
    batch_size = settings.batch_size or recipe.per_device_train_batch_size // (
        case.small_batch_divisor if settings.small else 1
    )
    images = settings.images
    if case.anyres:
        images = save_images(settings.folder / f"{name}-images", sizes=NEXT_IMAGE_SIZES)
    image_tokens = [processors[0].num_image_tokens(Image.open(path).size[::-1]) for path in images]
    rows = case.rows(batch_size * settings.total_steps, images, image_tokens, recipe.max_length)
    builtin_processor = processors[1]
    builtin_processor.chat_template = CHAT_TEMPLATES[get_stage(case.stage).template]  # generation markers included
    # The same rows: decoded by `datasets` for TRL's collator, as paths for ours (as `llava train` holds them).
    datasets = {"baseline": with_lengths(as_dataset(rows), builtin_processor), "ours": as_dataset(rows, decode=False)}
    runs = {"baseline": [], "ours": []}
    # Alternating, so that a busy spell on a shared machine hits both sides.
    sides = [("baseline", train_baseline), ("ours", train_ours)] * settings.repeats
    for index, (side, train) in enumerate(sides):
        # Each side may step for an equal share of the time left before the deadline.
        seconds = (
            None if settings.deadline is None else max(0.0, settings.deadline - time.time()) / (len(sides) - index)
        )
        side_settings = replace(settings, side_seconds=seconds)
        runs[side].append(train(case, shape, processors, datasets[side], batch_size, side_settings))
        free_memory()
    best = {side: max(results, key=lambda result: result["samples_per_s"]) for side, results in runs.items()}
    return {
        "llm": case.llm,
        "recipe": case.recipe,
        "batch_size": batch_size,
        "repeats": settings.repeats,
        **best,
    }


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


def run_generation_case(settings: Settings, batch_sizes: tuple[int, ...] = GENERATION_BATCHES) -> dict[str, dict]:
    shape = shapes("7b", settings.small)
    processor = processors_for(shape, settings.folder / "generate-backbones")[0]
    builtin = build(LlavaForConditionalGeneration, shape.builtin_config(processor.image_token_id), settings).eval()
    ours = build(LlavaPluginForConditionalGeneration, shape.plugin_config(processor.image_token_id), settings).eval()
    ours.load_state_dict(builtin.state_dict(), strict=True)  # same weights: the tokens must agree
    weights_gib = sum(p.numel() * p.element_size() for p in ours.parameters()) / 2**30
    results = {}
    for batch_size in batch_sizes:
        images = [Image.open(path) for path in settings.images[:batch_size]]
        inputs = processor(
            images=images, text=generation_prompts(processor, batch_size), return_tensors="pt", padding=True
        ).to(settings.device)
        sides = {}
        # Both decode as `llava eval` does on a GPU (`decoding_kwargs`): a static cache, which the built-in supports as
        # well; forced on, so that a CPU run measures it too. transformers compiles it on a GPU only.
        for side, model in (("baseline", builtin), ("ours", ours)):
            kwargs = decoding_kwargs(model, static_cache=True)
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
                "settings": {
                    "attn_implementation": model.config.text_config._attn_implementation,
                    "cache": kwargs.get("cache_implementation", "dynamic"),
                    "compiled": settings.device == "cuda",  # transformers' rule: a static cache on a GPU
                    "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
                },
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


def pytorch_features() -> dict[str, bool]:
    """The PyTorch attention APIs this run could use, detected rather than assumed from the version."""
    varlen = attention_varlen.varlen_attn
    support = None if varlen is None else attention_varlen.varlen_support(varlen)
    return {
        "varlen_attn": support is not None,
        "varlen_attn_enable_gqa": support is not None and support.enable_gqa,
        "flex_attention": importlib.util.find_spec("torch.nn.attention.flex_attention") is not None,
    }


def environment() -> str:
    """One line for a log: the versions in use, where transformers is imported from, and the PyTorch features."""
    names = ("torch", "transformers", "trl", "datasets", "peft", "accelerate")
    versions = ", ".join(f"{name} {metadata.version(name)}" for name in names)
    return f"{versions}; transformers from {Path(transformers.__file__).parent}; {pytorch_features()}"


def run_case(name: str, settings: Settings) -> dict[str, dict]:
    """The results of case `name`, by row name (`generate` gives one row per batch size, `generate-bN` one)."""
    if name == "generate":
        return run_generation_case(settings)
    if name.startswith("generate-b"):
        return run_generation_case(settings, (int(name.removeprefix("generate-b")),))
    return {name: run_training_case(name, settings)}


def write_results(output: Path, run: dict[str, Any], cases: dict[str, dict], drop: tuple[str, ...] = ()) -> dict:
    """Merges `cases` into `output`'s results.json (dropping the rows `drop`), and rewrites it and results.md."""
    merged = merge_results(output / "results.json", run, cases, drop=drop)
    output.mkdir(parents=True, exist_ok=True)
    (output / "results.json").write_text(json.dumps(merged, indent=2) + "\n")
    (output / "results.md").write_text(markdown_table(merged))
    return merged


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny widths at the real lengths: a CPU run in minutes")
    parser.add_argument(
        "--cases", default="stage1,lora,stage2,generate,next-lora", help="comma-separated subset to run"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--steps", type=int, help="timed training steps per side (default 10; 4 with --small)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 3; 1 with --small)")
    parser.add_argument("--batch-size", type=int, help="per-device batch of every training case (default: recipe's)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per side, alternating; the best one counts")
    parser.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, if not a known GPU")
    parser.add_argument(
        "--deadline",
        type=float,
        help="epoch seconds by which each training side stops stepping, sharing the time left equally (default: none)",
    )
    parser.add_argument(
        "--ours-args", default="", help="extra `llava train` flags for ours ('--padding_free_batches false')"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cases = args.cases.split(",")
    known = [*TRAINING_CASES, "generate", *(f"generate-b{batch_size}" for batch_size in GENERATION_BATCHES)]
    unknown = set(cases) - set(known)
    if unknown:
        raise SystemExit(f"Unknown cases {sorted(unknown)}: choose among {known}.")
    run = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "mode": "small" if args.small else "full",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__},
        "features": pytorch_features(),
        "ours_args": args.ours_args,
    }
    merged = {}
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
            deadline=args.deadline,
        )
        for name in cases:
            print(f"[benchmark] {name} ...", flush=True)
            # Written first, so that a case whose process is killed (time limit, a crash of the device) says so.
            started = datetime.now(timezone.utc).strftime("%H:%M:%S UTC")
            write_results(args.output, run, {name: {"error": f"started {started}; killed before it finished"}})
            start = time.perf_counter()
            try:
                results = run_case(name, settings)
            except Exception as error:  # recorded, and the next case runs
                traceback.print_exc()
                results = {name: {"error": f"{type(error).__name__}: {error}"}}
            for result in results.values():
                result["wall_seconds"] = time.perf_counter() - start
            print(f"[benchmark] {name}: {time.perf_counter() - start:.0f} s", flush=True)
            merged = write_results(args.output, run, results, drop=(name,))
            free_memory()
    print(markdown_table(merged))
    return merged


if __name__ == "__main__":
    main()
