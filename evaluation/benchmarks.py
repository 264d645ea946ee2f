"""The benchmarks of LLaVA-1.5's table, and how `llava eval BENCHMARK` runs any of them: answer its question file with
a checkpoint (or take an answer file from anywhere), then score it.

Each benchmark is a module of this folder named in `BENCHMARKS`, imported only when it runs, with what it differs in:

    NAME: str            the benchmark's name
    ANSWERING: dict      how the original answers its question file (its scripts/v1_5/eval/<bench>.sh and the
                         llava/eval/model_vqa*.py it calls): "template" (the conversation template, vicuna_v1),
                         "max_new_tokens", "suffix" (text the script appends to each question on its own line, as
                         `qs + '\\n' + suffix`; None where the question file holds it), "single_pred_prompt", ...
    score(answers, *, output_dir, annotations=None, questions=None, **options) -> {"score", "parts", "submission"}
    read_questions(questions, image_folder, **options) -> [Question]     optional: a question file of its own layout
    answer_extras(question) -> dict                                         optional: keys of its answer lines

`Layout` says where the benchmark lies in the original's `eval.zip` (`playground/data/eval/`, as
`scripts/v1_5/eval/*.sh` read it), for `llava eval suite`. ScienceQA and LLaVA-Bench keep their own subcommands
(`own_command`): their modules define their flags.

With a checkpoint, the questions are answered by `llava predict`'s engine (`evaluation.predict.answer_file`: batched,
greedy, images decoded and padded as the checkpoint's processor says, as the original's `process_images`) into
`OUTPUT/<benchmark>_answers.jsonl`, resumably and across processes under a launcher; the answers are then scored by
the module and written to `OUTPUT/<benchmark>_results.json` (`evaluation.results`).
"""

import argparse
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from hub_cards.model_card import refresh_card_after_eval

from .predict import Question, check_unique, model_name
from .results import BenchmarkError, read_answers, results_path, write_results
from .sharding import process_share


@dataclass(frozen=True)
class Layout:
    """Where a benchmark lies in `eval.zip` (paths relative to its `playground/data/eval`): the first of `folders`
    that holds `questions`, and in that folder its `images` and its `annotations` (what the original's scoring reads;
    None where there is none: a server or a GPT-4 grader scores the upload file)."""

    folders: tuple[str, ...]
    questions: str
    images: str | None
    annotations: str | None


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of `llava eval`: its subcommand `name`, the `module` that answers and scores it, its `layout` in
    eval.zip, and fixed `options` of that module (MMBench-CN is the MMBench module with `language="cn"`)."""

    name: str
    module: str
    help: str
    layout: Layout
    options: dict[str, Any] = field(default_factory=dict)  # passed to the module's score and read_questions
    own_command: bool = False


# In the order of LLaVA-1.5's table. The layouts are those of scripts/v1_5/eval/*.sh; where docs/Evaluation.md says
# to unpack elsewhere than the script reads (MMBench-CN under mmbench/, MM-Vet as mmvet/), both are looked in.
BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "vqav2",
            "evaluation.vqav2",
            "VQAv2 test-dev: the upload file of the evaluation server",
            Layout(
                ("vqav2",), "llava_vqav2_mscoco_test-dev2015.jsonl", "test2015", "llava_vqav2_mscoco_test2015.jsonl"
            ),
        ),
        Benchmark(
            "gqa",
            "evaluation.gqa",
            "GQA testdev balanced accuracy",
            Layout(
                ("gqa",), "llava_gqa_testdev_balanced.jsonl", "data/images", "data/testdev_balanced_questions.json"
            ),
        ),
        Benchmark(
            "vizwiz",
            "evaluation.vizwiz",
            "VizWiz test: the upload file of the evaluation server",
            Layout(("vizwiz",), "llava_test.jsonl", "test", "llava_test.jsonl"),
        ),
        Benchmark(
            "scienceqa",
            "evaluation.scienceqa",
            "multiple-choice accuracy on ScienceQA",
            Layout(("scienceqa",), "llava_test_CQM-A.json", "images/test", "problems.json"),
            own_command=True,
        ),
        Benchmark(
            "textvqa",
            "evaluation.textvqa",
            "TextVQA val accuracy",
            Layout(("textvqa",), "llava_textvqa_val_v051_ocr.jsonl", "train_images", "TextVQA_0.5.1_val.json"),
        ),
        Benchmark(
            "pope",
            "evaluation.pope",
            "POPE: mean F1 of its three categories",
            Layout(("pope",), "llava_pope_test.jsonl", "val2014", "coco"),
        ),
        Benchmark(
            "mme",
            "evaluation.mme",
            "MME perception score",
            Layout(("MME",), "llava_mme.jsonl", "MME_Benchmark_release_version", "MME_Benchmark_release_version"),
        ),
        Benchmark(
            "mmbench",
            "evaluation.mmbench",
            "MMBench dev: the upload file of the evaluation server",
            Layout(("mmbench",), "mmbench_dev_20230712.tsv", None, "mmbench_dev_20230712.tsv"),
        ),
        Benchmark(
            "mmbench-cn",
            "evaluation.mmbench",
            "MMBench-CN dev: the upload file of the evaluation server",
            Layout(("mmbench_cn", "mmbench"), "mmbench_dev_cn_20231003.tsv", None, "mmbench_dev_cn_20231003.tsv"),
            options={"language": "cn"},
        ),
        Benchmark(
            "seed",
            "evaluation.seed",
            "SEED-Bench accuracy",
            Layout(("seed_bench",), "llava-seed-bench.jsonl", ".", "SEED-Bench.json"),
        ),
        Benchmark(
            "llava-bench",
            "evaluation.llava_bench",
            "relative score from a judge model",
            Layout(("llava-bench-in-the-wild",), "questions.jsonl", "images", "context.jsonl"),
            own_command=True,
        ),
        Benchmark(
            "mm-vet",
            "evaluation.mm_vet",
            "MM-Vet: the file its GPT-4 grader reads",
            Layout(("mm-vet", "mmvet"), "llava-mm-vet.jsonl", "images", None),
        ),
    )
}


def benchmark_module(benchmark: Benchmark) -> ModuleType:
    """The benchmark's module, imported now; a module not there yet is a `BenchmarkError`, not an ImportError."""
    try:
        module = importlib.import_module(benchmark.module)
    except ModuleNotFoundError as error:
        if error.name != benchmark.module:  # a dependency of the module is missing: say which
            raise
        raise BenchmarkError(f"{benchmark.name} is not available in this installation ({benchmark.module}).") from None
    missing = [name for name in ("ANSWERING", "score") if not hasattr(module, name) and not benchmark.own_command]
    if missing:
        raise BenchmarkError(f"{benchmark.module} defines no {' or '.join(missing)}: it cannot be run by llava eval.")
    return module


def with_suffix(question: Question, suffix: str) -> None:
    """Puts `suffix` on a line of its own after the question's text, as the original's scripts append it
    (`qs + '\\n' + suffix`); a question whose text already ends with it is left as it is."""
    line = suffix.removeprefix("\n")
    content = question.messages[-1]["content"]
    if isinstance(content, str):
        if not content.endswith(line):
            question.messages[-1]["content"] = f"{content}\n{line}"
        return
    texts = [item for item in content if item.get("type") == "text"]
    if texts and not texts[-1]["text"].endswith(line):
        texts[-1]["text"] = f"{texts[-1]['text']}\n{line}"


def read_benchmark_questions(
    benchmark: Benchmark,
    module: ModuleType,
    questions: str | Path,
    image_folder: str | Path | None,
    allow_outside: bool = False,
) -> list[Question]:
    """The benchmark's questions as its script asks them: read by its own reader or `llava predict`'s, the script's
    suffix appended, its extra answer keys attached."""
    from .predict import read_questions

    if hasattr(module, "read_questions"):
        folder = None if image_folder is None else Path(image_folder)
        loaded = module.read_questions(Path(questions), folder, **benchmark.options)
        check_unique(loaded, questions)
    else:
        loaded = read_questions(questions, image_folder, allow_outside)
    suffix = module.ANSWERING.get("suffix")
    for question in loaded:
        if suffix:
            with_suffix(question, suffix)
        if hasattr(module, "answer_extras"):
            question.extras = module.answer_extras(question)
    return loaded


def answers_path(output_dir: str | Path, benchmark: str) -> Path:
    """`OUTPUT/<benchmark>_answers.jsonl`, `-` written `_` as in the results file's name."""
    return Path(output_dir) / f"{benchmark.replace('-', '_')}_answers.jsonl"


def answer(
    benchmark: Benchmark,
    questions: list[Question],
    output: Path,
    load,
    model_id: str,
    batch_size: int = 8,
    static_cache: bool | None = None,
    progress: bool = True,
) -> int:
    """Answers the benchmark's questions into `output` with its ANSWERING settings (greedy, its template and
    `max_new_tokens`), resumably; `load()` gives the model and processor when there is something to answer."""
    from modeling_llava.chat_templates import CHAT_TEMPLATES, use_template

    from .predict import answer_file

    settings = benchmark_module(benchmark).ANSWERING
    if settings.get("template") and settings["template"] not in CHAT_TEMPLATES:
        known = ", ".join(CHAT_TEMPLATES)
        raise BenchmarkError(f"{benchmark.module} answers with template {settings['template']!r}; known: {known}.")

    def load_with_template():
        model, processor = load()
        if settings.get("template"):  # the original's --conv-mode, whatever template the checkpoint was saved with
            use_template(processor, settings["template"])
        return model, processor

    return answer_file(
        questions,
        output,
        load_with_template,
        model_id,
        batch_size,
        settings["max_new_tokens"],
        static_cache=static_cache,
        progress=progress,
        desc=benchmark.name,
    )


def score(
    benchmark: Benchmark,
    answers: str | Path,
    output_dir: str | Path,
    annotations: str | Path | None = None,
    questions: str | Path | None = None,
) -> dict:
    """Scores an answer file with the benchmark's module and writes `OUTPUT/<benchmark>_results.json`; returns the
    results as written."""
    module = benchmark_module(benchmark)
    lines = read_answers(answers)
    scored = module.score(
        lines,
        output_dir=Path(output_dir),
        annotations=None if annotations is None else Path(annotations),
        questions=None if questions is None else Path(questions),
        **benchmark.options,
    )
    extra = {key: value for key, value in scored.items() if key not in ("score", "parts", "submission")}
    submission = scored.get("submission")
    write_results(
        output_dir, benchmark.name, scored["score"], scored["parts"], submission, answers=str(answers), **extra
    )
    return {
        "benchmark": benchmark.name,
        "score": scored["score"],
        "parts": scored["parts"],
        "submission": None if submission is None else str(submission),
        "answers": str(answers),
        **extra,
    }


def describe(results: dict) -> str:
    """A benchmark's result in one line: its score, or where its upload file is."""
    if results["score"] is None:
        where = results.get("submission")
        told = f"scored by its server or grader; upload {where}" if where else "no score"
        return f"{results['benchmark']}: {told}"
    return f"{results['benchmark']}: {results['score']:.2f}"


def add_arguments(parser: argparse.ArgumentParser, benchmark: Benchmark) -> None:
    """The flags of `llava eval BENCHMARK`, the same for every benchmark of `BENCHMARKS` without its own command."""
    from processing.generation import add_decoding_arguments

    parser.description = (
        f"{benchmark.help}. Give a CHECKPOINT to answer the question file (resumably, into "
        f"OUTPUT/{answers_path('', benchmark.name).name}) and score it, or --answers to score an answer file in the "
        "original's model_vqa shape from anywhere."
    )
    parser.add_argument("checkpoint", nargs="?", help="a checkpoint folder, LoRA folder or Hub id (or --answers)")
    parser.add_argument("--answers", help="an answer file to score instead of answering with a checkpoint")
    parser.add_argument("--questions", help="the benchmark's question file (as eval.zip holds it)")
    parser.add_argument("--image-folder", help="image paths of the question file are relative to it")
    parser.add_argument("--annotations", help="the file or folder the original's scoring script reads")
    parser.add_argument("--output-dir", help="where answers and results go (default: the checkpoint folder)")
    parser.add_argument("--batch-size", type=int, default=8, help="questions per batch (default: %(default)s)")
    parser.add_argument("--vision-tower", help="local copy of the tower an original checkpoint names")
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true", help="read image paths that lead outside the folder"
    )
    parser.add_argument("--overwrite-card", action="store_true", help="regenerate a model card edited by hand")
    add_decoding_arguments(parser)
    parser.set_defaults(run=run, spec=benchmark)


def checkpoint_loader(args: argparse.Namespace):
    """`load()` of `args.checkpoint` with the command's device and precision flags, on this process's device."""
    from processing.generation import load_llava

    from .sharding import process_device

    def load():
        return load_llava(
            args.checkpoint, process_device(args.device), args.vision_tower, args.dtype, args.quantization
        )

    return load


def run(args: argparse.Namespace) -> None:
    benchmark = args.spec
    if (args.checkpoint is None) == (args.answers is None):
        raise BenchmarkError("give either a CHECKPOINT to answer the questions with, or --answers FILE to score.")
    if args.batch_size < 1:
        raise BenchmarkError("--batch-size must be at least 1.")
    output_dir = args.output_dir
    if output_dir is None:
        if args.answers is not None or not Path(args.checkpoint).is_dir():
            raise BenchmarkError("say where the results go with --output-dir.")
        output_dir = args.checkpoint
    answers = args.answers
    if args.checkpoint is not None:
        if args.questions is None:
            raise BenchmarkError("answering needs the benchmark's question file: give --questions FILE.")
        module = benchmark_module(benchmark)
        questions = read_benchmark_questions(
            benchmark, module, args.questions, args.image_folder, args.allow_images_outside_folder
        )
        answers = answers_path(output_dir, benchmark.name)
        answer(
            benchmark,
            questions,
            answers,
            checkpoint_loader(args),
            model_name(args.checkpoint),
            args.batch_size,
            args.static_cache,
        )
    if process_share()[0] != 0:  # process 0 scores (the merged answers)
        return
    results = score(benchmark, answers, output_dir, args.annotations, args.questions)
    print(describe(results))
    print(f"Answers: {answers}. Results: {results_path(output_dir, benchmark.name)}")
    print(refresh_card_after_eval(output_dir, args.overwrite_card))


__all__ = [
    "BENCHMARKS",
    "Benchmark",
    "Layout",
    "add_arguments",
    "answer",
    "answers_path",
    "benchmark_module",
    "read_benchmark_questions",
    "score",
]
