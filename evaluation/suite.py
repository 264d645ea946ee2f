"""`llava eval suite CHECKPOINT --data EVAL_DIR`: every benchmark of LLaVA-1.5's table that `eval.zip`'s layout
holds under EVAL_DIR (the original's `playground/data/eval`), answered and scored, then one table.

A loop over `evaluation.benchmarks.BENCHMARKS`: a benchmark whose question file is there is answered into
`OUTPUT/<benchmark>_answers.jsonl` (resumably: answered questions are skipped, and a benchmark whose results file is
there is not run again) and scored into `OUTPUT/<benchmark>_results.json`. One whose annotations are missing is
answered and reported as "answers only"; one whose data is wrong is reported with its error, and the others still
run; the checkpoint is loaded once, when the first question is to be answered. ScienceQA runs through its own
command; LLaVA-Bench needs a judge model, so it is named with the command that runs it.

The table at the end has one row per benchmark found: its score (in LLaVA-1.5's units) or what stands instead,
the number of answers, and the seconds this run spent on it.
"""

import argparse
import json
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from hub_cards.model_card import refresh_card_after_eval
from processing.llava_data import DataError

from .benchmarks import (
    BENCHMARKS,
    Benchmark,
    answer,
    answers_path,
    benchmark_module,
    checkpoint_loader,
    read_benchmark_questions,
    score,
)
from .predict import model_name
from .results import BenchmarkError, results_path
from .sharding import process_share


@dataclass
class Row:
    benchmark: str
    score: str
    answers: int | None
    seconds: float
    failed: bool = False


def find(root: Path, benchmark: Benchmark) -> Path | None:
    """The folder of EVAL_DIR that holds the benchmark's question file, if any."""
    for folder in benchmark.layout.folders:
        if (root / folder / benchmark.layout.questions).is_file():
            return root / folder
    return None


def shown(results: dict) -> str:
    """A results file's score as the table shows it."""
    if results.get("score") is not None:
        return f"{results['score']:.2f}"
    return f"submit {results['submission']}" if results.get("submission") else "no score"


def count_lines(path: Path) -> int | None:
    return sum(1 for line in path.open(encoding="utf-8") if line.strip()) if path.is_file() else None


def run_own_command(benchmark: Benchmark, folder: Path, args: argparse.Namespace, output_dir: Path) -> str:
    """ScienceQA through its own command, on the question file of eval.zip; LLaVA-Bench is only named (a judge)."""
    if benchmark.name != "scienceqa":
        return f"needs a judge: llava eval {benchmark.name} --help"
    parser = argparse.ArgumentParser(prog=f"llava eval {benchmark.name}")
    benchmark_module(benchmark).add_arguments(parser)
    argv = [args.checkpoint, "--data", str(folder / benchmark.layout.questions), "--output-dir", str(output_dir)]
    argv += ["--batch-size", str(args.batch_size), "--dtype", args.dtype]
    argv += [f"--load-in-{args.quantization}"] if args.quantization else []
    argv += ["--device", args.device] if args.device else []
    own = parser.parse_args(argv)
    own.run(own)
    return shown(json.loads(results_path(output_dir, benchmark.name).read_text()))


def run_one(benchmark: Benchmark, folder: Path, args: argparse.Namespace, output_dir: Path, load) -> str:
    """Answers and scores one benchmark found in `folder`; returns what the table shows as its score."""
    layout, rank = benchmark.layout, process_share()[0]
    if benchmark.own_command:
        return run_own_command(benchmark, folder, args, output_dir) if rank == 0 else ""
    module = benchmark_module(benchmark)
    questions_file = folder / layout.questions
    images = None if layout.images is None else folder / layout.images
    questions = read_benchmark_questions(benchmark, module, questions_file, images, args.allow_images_outside_folder)
    answers = answers_path(output_dir, benchmark.name)
    answer(benchmark, questions, answers, load, model_name(args.checkpoint), args.batch_size, args.static_cache)
    if rank != 0:  # process 0 scores the merged answers
        return ""
    annotations = None if layout.annotations is None else folder / layout.annotations
    if annotations is not None and not annotations.exists():
        return f"answers only: missing {folder.name}/{layout.annotations}"
    return shown(score(benchmark, answers, output_dir, annotations, questions_file))


def run_suite(args: argparse.Namespace) -> list[Row]:
    """Runs every benchmark found under `args.data`; returns the table's rows (process 0's; others' are empty)."""
    root, output_dir = Path(args.data), Path(args.output_dir)
    if not root.is_dir():
        raise BenchmarkError(f"{str(root)!r} is not a folder: give eval.zip's playground/data/eval folder as --data.")
    found = {name: find(root, benchmark) for name, benchmark in BENCHMARKS.items()}
    if not any(found.values()):
        names = ", ".join(f"{b.layout.folders[0]}/{b.layout.questions}" for b in BENCHMARKS.values())
        raise BenchmarkError(f"{str(root)!r} holds no benchmark of eval.zip's layout (looked for {names}).")
    load = cache(checkpoint_loader(args))  # once, for every benchmark
    rows = []
    for name, folder in found.items():
        if folder is None:
            continue
        start, done = time.perf_counter(), results_path(output_dir, name)
        answers = answers_path(output_dir, name)
        if done.is_file():  # written whole: this benchmark is complete
            rows.append(Row(name, shown(json.loads(done.read_text())), count_lines(answers), 0.0))
            continue
        try:
            shown_score, failed = run_one(BENCHMARKS[name], folder, args, output_dir, load), False
        except (BenchmarkError, DataError) as error:
            shown_score, failed = f"failed: {error}", True
        rows.append(Row(name, shown_score, count_lines(answers), time.perf_counter() - start, failed))
    missing = [name for name, folder in found.items() if folder is None]
    if missing and process_share()[0] == 0:
        print(f"Not in {root}: {', '.join(missing)}")
    return rows


def print_table(rows: list[Row]) -> None:
    header = ("benchmark", "score", "answers", "seconds")
    cells = [header] + [
        (row.benchmark, row.score, "-" if row.answers is None else str(row.answers), f"{row.seconds:.0f}")
        for row in rows
    ]
    widths = [max(len(cell[column]) for cell in cells) for column in range(3)]
    for cell in cells:
        print("  ".join(value.ljust(width) for value, width in zip(cell[:3], widths, strict=True)) + f"  {cell[3]:>7}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from processing.generation import add_decoding_arguments

    parser.description = (
        "Answer and score every benchmark of LLaVA-1.5's table found under EVAL_DIR (eval.zip unpacked: "
        "playground/data/eval), resumably, and print one table."
    )
    parser.add_argument("checkpoint", help="a checkpoint folder, LoRA folder or Hub id")
    parser.add_argument("--data", required=True, metavar="EVAL_DIR", help="eval.zip's playground/data/eval folder")
    parser.add_argument("--output-dir", required=True, help="where answer and results files go")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch (default: %(default)s)")
    parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true", help="read image paths that lead outside the folders"
    )
    add_decoding_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.batch_size < 1:
        raise BenchmarkError("--batch-size must be at least 1.")
    rows = run_suite(args)
    if process_share()[0] != 0:
        return
    print_table(rows)
    print(refresh_card_after_eval(args.output_dir))
    failed = [row.benchmark for row in rows if row.failed]
    if failed:
        raise BenchmarkError(f"{', '.join(failed)} failed (see the table); the others' results are written.")


__all__ = ["add_arguments", "run", "run_suite"]
