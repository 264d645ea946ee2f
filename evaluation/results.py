"""What every benchmark of `llava eval` shares: reading an answer file in the original's shape, and writing
`OUTPUT/<benchmark>_results.json` in one shape.

An answer file is JSON lines as the original's `model_vqa*.py` write them (`question_id`, `prompt`, `text`,
`answer_id`, `model_id`, `metadata`; MMBench's adds its own keys). It may come from `llava predict`, from the original
repository, from another engine or machine: scoring reads it only through `read_answers`, so every benchmark refuses a
broken line the same way, naming the file and the line.

The results file holds `benchmark`, `score` (the figure of LLaVA-1.5's table in its units, or `None` where a server
or a GPT-4 grader scores the upload file), `parts` (per category or split, with counts), `submission` (the upload
file's path, where there is one) and whatever else the benchmark adds. It is written beside its place and renamed
into it, so a stopped run never leaves a half-written file looking complete.

`VQA_LOADER_ANSWERING` is how the original answers the question files of most benchmarks (the `ANSWERING` spec of
those modules): with `llava/eval/model_vqa_loader.py`, as their `scripts/v1_5/eval/<benchmark>.sh` run it.
"""

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# scripts/v1_5/eval/{pope,textvqa,gqa,vqav2,vizwiz}.sh run llava/eval/model_vqa_loader.py with --temperature 0 and
# --conv-mode vicuna_v1 and nothing else.
VQA_LOADER_ANSWERING = {
    "max_new_tokens": 128,  # model_vqa_loader.py's default; the scripts set none
    "template": "vicuna_v1",  # --conv-mode vicuna_v1
    # The question files' texts already end in their instruction ("\nAnswer the question using a single word or
    # phrase.", VizWiz's "\nWhen the provided information is insufficient, respond with 'Unanswerable'." before it).
    "suffix": None,
    "single_pred_prompt": False,  # model_vqa_loader.py has no such option
}


class BenchmarkError(ValueError):
    """A benchmark's input (answer file, question file, annotations) is missing or not what the original reads."""


def read_json_lines(path: str | Path, kind: str, fields: tuple[str, ...] = ()) -> list[dict]:
    """The JSON lines of `path` (`kind` names the file in messages: "Answer file", "POPE label file"), each checked to
    be an object holding `fields`. Blank lines are skipped; anything else stops with the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{kind} {str(path)!r} does not exist.")
    records = []
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise BenchmarkError(f"{kind} {str(path)!r} line {number} is not JSON: {error}") from None
            missing = [field for field in fields if not isinstance(record, dict) or field not in record]
            if missing:
                named = ", ".join(map(repr, missing))
                raise BenchmarkError(f"{kind} {str(path)!r} line {number} has no {named}.")
            records.append(record)
    return records


def read_answers(path: str | Path, fields: tuple[str, ...] = ("question_id", "text")) -> list[dict]:
    """The answer lines of `path`, each checked to hold `fields`. Blank lines are skipped; anything else that is not a
    JSON object with those fields stops with the file and line number."""
    return read_json_lines(path, "Answer file", fields)


def read_json(path: str | Path, kind: str) -> Any:
    """The JSON document of `path`, a benchmark's annotation file (`kind` names it in messages)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"{kind} {str(path)!r} does not exist.")
    try:
        with path.open(encoding="utf-8") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BenchmarkError(f"{kind} {str(path)!r} is not JSON: {error}") from None


def upload_path(
    output_dir: str | Path, benchmark: str, answers: list[dict], suffix: str = ".json", experiment: str | None = None
) -> Path:
    """Where a benchmark's upload file goes: `OUTPUT/answers_upload/<benchmark>/<model>.json`, named as the original's
    convert scripts name it, after the checkpoint (the answers' `model_id`, as `model_vqa*.py` write it). Answers
    with no single `model_id` name it after the benchmark; `experiment` names it outright."""
    name = experiment or experiment_name(answers, benchmark)
    return Path(output_dir) / "answers_upload" / benchmark / f"{name}{suffix}"


def experiment_name(answers: list[dict], default: str) -> str:
    """The name the original gives an upload file: its scripts name the answer file after the checkpoint and the upload
    file after the answer file (`answers_upload/.../llava-v1.5-13b.xlsx`), so here after the answer lines' one
    `model_id` (the checkpoint's name). `default` where the lines name no single model, or one that is no file name."""
    names = {answer.get("model_id") if isinstance(answer.get("model_id"), str) else None for answer in answers}
    name = names.pop() if len(names) == 1 else None
    if isinstance(name, str) and name.strip(".") and not {"/", "\\", "\0"} & set(name):
        return name
    return default


def write_whole(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Has `write(staging_path)` write a file that is then renamed to `path`: never half a file at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    try:
        write(staging)
        staging.replace(path)
    finally:
        staging.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, value: Any) -> Path:
    """Writes `value` as JSON to `path`, whole."""
    text = json.dumps(value, indent=2, ensure_ascii=False) + "\n"
    return write_whole(path, lambda staging: staging.write_text(text, encoding="utf-8"))


def results_path(output_dir: str | Path, benchmark: str) -> Path:
    """`OUTPUT/<benchmark>_results.json`, with `-` in the benchmark's name written `_` (`mmbench_cn_results.json`)."""
    return Path(output_dir) / f"{benchmark.replace('-', '_')}_results.json"


def write_results(
    output_dir: str | Path,
    benchmark: str,
    score: float | None,
    parts: dict,
    submission: str | Path | None = None,
    **extra: Any,
) -> Path:
    """Writes a benchmark's results file whole and returns its path."""
    results = {
        "benchmark": benchmark,
        "score": score,
        "parts": parts,
        "submission": None if submission is None else str(submission),
        **extra,
    }
    return write_json(results_path(output_dir, benchmark), results)


__all__ = [
    "VQA_LOADER_ANSWERING",
    "BenchmarkError",
    "experiment_name",
    "read_answers",
    "read_json",
    "read_json_lines",
    "results_path",
    "upload_path",
    "write_json",
    "write_results",
    "write_whole",
]
