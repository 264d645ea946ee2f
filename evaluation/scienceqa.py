"""`llava eval scienceqa`: multiple-choice accuracy on ScienceQA, overall and in the columns of the LLaVA paper.

Data: the ScienceQA release (`DIR/problems.json`, `DIR/pid_splits.json`, images at `DIR/images/<split>/<pid>/` or
`DIR/<split>/<pid>/`), or LLaVA's converted question file (`llava_test_CQM-A.json`, a list of `{"id", "image",
"conversations"}`) with the release's `problems.json` and `pid_splits.json` beside it. The prompt is LLaVA's
(`CQM-A` conversion plus its single-prediction instruction): `Context: <hint or N/A>\\nQuestion: ...\\nOptions: (A)
... (B) ...\\nAnswer with the option's letter from the given choices directly.`, the image first when the problem has
one, in the checkpoint's chat template; answers come from batched greedy generation, the images decoded as training
decodes them. An image path that leads outside the image folders (`../`, an absolute path) is refused unless
`--allow-images-outside-folder`.

Paper mode (the default) scores as the original release does, so the number stands beside the paper's: greedy
answers of up to 1024 new tokens (LLaVA-1.5's `sqa.sh`), read by `eval_science_qa.py`'s rules only (the whole answer
is a letter A-E; or it starts with `X. `; or `The answer is X` followed by one character occurs exactly once), a
letter past the problem's choices or an unreadable answer counting wrong; columns as ScienceQA's own scorer
(`tools/evaluate_acc.py`) defines them: subject NAT / SOC / LAN; context TXT (a non-empty hint, whitespace
included), IMG (an image), NO (neither), so a problem with both counts in TXT and in IMG; grades G1-6 / G7-12;
Average over all. `--lenient` adds a separately labelled result read by a tolerant parser (`(A)`, `A.`,
`Answer: A`, `the answer is (A)`, ...); every answer paper mode could not read is listed.

`OUTPUT/scienceqa_results.json` (written whole at the end, never half) holds:
- `scoring`: `"paper"`; `accuracy`: correct / questions, a fraction in [0, 1]; `num_questions`; `split`; `model`;
- `columns`: `{"NAT": fraction, ..., "Average": fraction}` for every column that has questions; `column_counts`;
- `unparseable`: `[{"pid", "output"}]`; `predictions`: `[{"pid", "output", "choice", "answer", "correct"}]`
  (`choice` and `answer` are letters, `choice` null when unreadable);
- `model_index`: `[EvalResult kwargs]` for `huggingface_hub.EvalResult` (task, dataset "ScienceQA", metric
  "accuracy", value in percent as the paper reports it);
- with `--lenient`: `lenient`, the same scores read by the tolerant parser.
"""

import argparse
import json
import re
import string
import uuid
from dataclasses import dataclass
from pathlib import Path

from hub_cards.model_card import refresh_card_after_eval
from processing.conversation import user_message
from processing.generation import add_decoding_arguments, generate_greedy, load_llava
from processing.llava_data import outside_folder

RESULTS_NAME = "scienceqa_results.json"
LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."
COLUMNS = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Average")
# eval_science_qa.py's options, a list: its tests are membership in it ("AB" is no option), never substring tests.
# ScienceQA problems have at most five choices.
PAPER_OPTIONS = ("A", "B", "C", "D", "E")
# Verbatim from eval_science_qa.py: the "." is any one character, and it must be there.
_PAPER_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
SUBJECTS = {"natural science": "NAT", "social science": "SOC", "language science": "LAN"}

# The letter stays upper case, so that "a" in prose never counts. Leading: "A", "(A)", "A.", "A. text", "(A) text",
# "A\ntext", "Answer: A"; else one letter in "The answer is A." (a reply that names two has no answer).
_LEADING_LETTER = re.compile(r"^(?:Answer:\s*)?\(?([A-Z])(?:\)?\.?$|[.)]\s|\)?\.?\n)")
_THE_ANSWER_IS = re.compile(r"[Tt]he answer is:?\s*\(?([A-Z])\b")


class ScienceQAError(ValueError):
    """Data that cannot be evaluated; the message names the file or problem and what is wrong."""


@dataclass
class Problem:
    """One question as the model sees it (`prompt`, `image`) and as it is scored (`answer`, `columns`)."""

    pid: str
    prompt: str
    image: Path | None
    num_choices: int
    answer: int
    columns: tuple[str, ...]


def build_prompt(problem: dict) -> str:
    """LLaVA's ScienceQA question text (`CQM-A` format + the single-prediction instruction), without the image."""
    context = problem.get("hint", "").strip() or "N/A"
    options = " ".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(problem["choices"]))
    # The original conversion collapses double spaces once and strips, so the prompts match it byte for byte.
    text = f"Context: {context}\nQuestion: {problem['question']}\nOptions: {options}\n".replace("  ", " ").strip()
    return f"{text}\n{INSTRUCTION}"


def problem_columns(problem: dict) -> tuple[str, ...]:
    """The paper's columns a problem counts in, as ScienceQA's scorer decides them: a hint (any non-empty string, even
    whitespace, which the prompt shows as N/A) and an image count in both TXT and IMG; NO is neither."""
    has_text, has_image = bool(problem.get("hint")), bool(problem.get("image"))
    grade = int(problem["grade"].removeprefix("grade"))
    columns = [SUBJECTS[problem["subject"]]]
    if has_text:
        columns.append("TXT")
    if has_image:
        columns.append("IMG")
    if not (has_text or has_image):
        columns.append("NO")
    return (*columns, "G1-6" if grade <= 6 else "G7-12", "Average")


def paper_choice(output: str, num_choices: int) -> int | None:
    """The option index as the original's `eval_science_qa.py` reads it from the stripped answer, else None."""
    text = output.strip()
    if text in PAPER_OPTIONS:
        letter = text
    elif len(text) >= 3 and text[0] in PAPER_OPTIONS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _PAPER_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None  # two matches fail even when they agree
    return PAPER_OPTIONS.index(letter) if letter and letter in PAPER_OPTIONS[:num_choices] else None


def lenient_choice(output: str, num_choices: int) -> int | None:
    """The option index an answer names by a tolerant reading (`--lenient`), or None."""
    text = output.strip()
    match = _LEADING_LETTER.match(text)
    if match:
        letter = match.group(1)
    else:
        letters = set(_THE_ANSWER_IS.findall(text))
        if len(letters) != 1:
            return None
        letter = letters.pop()
    index = LETTERS.index(letter)
    return index if index < num_choices else None


def _read_json(path: Path):
    if not path.is_file():
        raise ScienceQAError(f"{str(path)!r} does not exist: expected the ScienceQA release layout there.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ScienceQAError(f"{str(path)!r} is not valid JSON: {error}") from error


def _image_path(root: Path, split: str, relative: str, pid: str, allow_outside: bool) -> Path:
    folders = [root / "images" / split, root / split]
    if not allow_outside and all(outside_folder(relative, folder) for folder in folders):
        raise ScienceQAError(
            f"Problem {pid!r}: image {relative!r} lies outside the image folder {str(folders[0])!r}; allow that with "
            "--allow-images-outside-folder."
        )
    candidates = [folder / relative for folder in folders]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ScienceQAError(
        f"Problem {pid!r} has an image, but neither {' nor '.join(repr(str(c)) for c in candidates)} exists."
    )


def _check(pid: str, problem: dict) -> None:
    if not isinstance(problem.get("choices"), list) or not isinstance(problem.get("answer"), int):
        raise ScienceQAError(f"Problem {pid!r} needs 'choices' (a list) and 'answer' (an index into it).")
    if problem.get("subject") not in SUBJECTS or not re.fullmatch(r"grade([1-9]|1[0-2])", str(problem.get("grade"))):
        raise ScienceQAError(
            f"Problem {pid!r}: subject {problem.get('subject')!r} / grade {problem.get('grade')!r} is not one of "
            f"{sorted(SUBJECTS)} / grade1..grade12."
        )
    if not 0 <= problem["answer"] < len(problem["choices"]) <= len(LETTERS):
        raise ScienceQAError(
            f"Problem {pid!r}: answer index {problem['answer']} is not one of its {len(problem['choices'])} choices."
        )


def load_problems(data: str | Path, split: str = "test", allow_outside: bool = False) -> list[Problem]:
    """The problems of `split` in a release folder, or those of a LLaVA question file with the release beside it.

    An image path leading outside the image folders is refused unless `allow_outside`."""
    data = Path(data)
    if not data.exists():
        raise ScienceQAError(
            f"{str(data)!r} does not exist: give the ScienceQA release folder or LLaVA's question file."
        )
    root = data if data.is_dir() else data.parent
    problems = _read_json(root / "problems.json")
    if data.is_dir():
        splits = _read_json(root / "pid_splits.json")
        if split not in splits:
            raise ScienceQAError(f"{str(root / 'pid_splits.json')!r} has no split {split!r}; it has {sorted(splits)}.")
        records = [{"id": pid} for pid in splits[split]]
    else:
        records = _read_json(data)
    loaded = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or "id" not in record:
            raise ScienceQAError(f"{str(data)!r}: question #{index} has no 'id' (a pid of problems.json).")
        pid = str(record["id"])
        if pid not in problems:
            raise ScienceQAError(f"Problem {pid!r} is not in {str(root / 'problems.json')!r}.")
        problem = problems[pid]
        _check(pid, problem)
        if "conversations" in record:  # LLaVA's file: its own prompt text, the instruction added as its eval does
            prompt = _first_value(data, pid, record["conversations"]).replace("<image>", "").strip()
            prompt = prompt if prompt.endswith(INSTRUCTION) else f"{prompt}\n{INSTRUCTION}"
            image = record.get("image")
        else:
            prompt = build_prompt(problem)
            image = f"{pid}/{problem['image']}" if problem.get("image") else None
        image_path = _image_path(root, split, str(image), pid, allow_outside) if image else None
        loaded.append(
            Problem(pid, prompt, image_path, len(problem["choices"]), problem["answer"], problem_columns(problem))
        )
    return loaded


def _first_value(path: Path, pid: str, conversations) -> str:
    first = conversations[0] if isinstance(conversations, list) and conversations else None
    if not isinstance(first, dict) or not isinstance(first.get("value"), str):
        raise ScienceQAError(f"{str(path)!r}: question {pid!r} has no first turn with a 'value' (the question text).")
    return first["value"]


def score(problems: list[Problem], outputs: list[str], read_choice=paper_choice) -> dict:
    """Accuracy overall and per column, with every prediction and the unreadable ones listed."""
    if len(problems) != len(outputs):
        raise ValueError(f"Got {len(outputs)} outputs for {len(problems)} problems.")
    predictions, correct = [], dict.fromkeys(COLUMNS, 0)
    counts = dict.fromkeys(COLUMNS, 0)
    for problem, output in zip(problems, outputs, strict=True):
        choice = read_choice(output, problem.num_choices)
        hit = choice == problem.answer
        for column in problem.columns:
            counts[column] += 1
            correct[column] += hit
        predictions.append(
            {
                "pid": problem.pid,
                "output": output,
                "choice": None if choice is None else LETTERS[choice],
                "answer": LETTERS[problem.answer],
                "correct": hit,
            }
        )
    total = len(predictions)
    return {
        "accuracy": sum(p["correct"] for p in predictions) / total if total else 0.0,
        "columns": {column: correct[column] / counts[column] for column in COLUMNS if counts[column]},
        "column_counts": counts,
        "num_questions": total,
        "unparseable": [{"pid": p["pid"], "output": p["output"]} for p in predictions if p["choice"] is None],
        "predictions": predictions,
    }


def model_index(accuracy: float, split: str) -> list[dict]:
    """`huggingface_hub.EvalResult` keyword arguments for the model card's `model-index`."""
    return [
        {
            "task_type": "visual-question-answering",
            "dataset_type": "derek-thomas/ScienceQA",
            "dataset_name": "ScienceQA",
            "dataset_split": split,
            "metric_type": "accuracy",
            "metric_value": round(100 * accuracy, 2),
        }
    ]


def evaluate(
    model_path: str,
    data: str | Path,
    output_dir: str | Path,
    split: str = "test",
    batch_size: int = 8,
    max_new_tokens: int = 1024,
    device: str | None = None,
    static_cache: bool | None = None,
    lenient: bool = False,
    allow_images_outside_folder: bool = False,
    dtype: str = "auto",
    quantization: str | None = None,
    template: str | None = None,
) -> dict:
    """Answers every problem of `split` with the checkpoint, scores them and writes `OUTPUT/scienceqa_results.json`."""
    problems = load_problems(data, split, allow_images_outside_folder)
    model, processor = load_llava(model_path, device, dtype=dtype, quantization=quantization, template=template)
    conversations = [[user_message(problem.prompt, images=int(problem.image is not None))] for problem in problems]
    outputs = generate_greedy(
        model,
        processor,
        conversations,
        [p.image for p in problems],
        batch_size,
        max_new_tokens,
        desc="ScienceQA",
        static_cache=static_cache,
        ids=[problem.pid for problem in problems],
    )
    results = {"model": str(model_path), "split": split, "scoring": "paper", **score(problems, outputs)}
    results["model_index"] = model_index(results["accuracy"], split)
    if lenient:
        results["lenient"] = {k: v for k, v in score(problems, outputs, lenient_choice).items() if k != "predictions"}
    output = Path(output_dir) / RESULTS_NAME
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{output.name}.{uuid.uuid4().hex}.tmp")  # unique per writer
    staging.write_text(json.dumps(results, indent=2, ensure_ascii=False))
    staging.replace(output)
    return results


def print_report(results: dict, path: Path) -> None:
    print(
        f"ScienceQA {results['split']} (paper mode): {100 * results['accuracy']:.2f}% of "
        f"{results['num_questions']} questions"
    )
    print("  ".join(f"{column} {100 * value:.2f}" for column, value in results["columns"].items()))
    unparseable = [item["pid"] for item in results["unparseable"]]
    if unparseable:
        listed = ", ".join(unparseable[:20]) + (" ..." if len(unparseable) > 20 else "")
        print(f"{len(unparseable)} answers paper mode could not read (counted wrong; all in the results): {listed}")
    if "lenient" in results:
        print(f"Lenient reading (not the paper's scoring): {100 * results['lenient']['accuracy']:.2f}%")
    print(f"Written to {path}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="LLaVA checkpoint (folder or Hub id)")
    parser.add_argument("--data", required=True, help="ScienceQA release folder, or LLaVA's converted question file")
    parser.add_argument("--split", default="test", help="split of pid_splits.json (and the image folder's name)")
    parser.add_argument("--output-dir", help=f"where {RESULTS_NAME} goes (default: the model folder, for its card)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=1024, help="default: the original evaluation's 1024")
    parser.add_argument("--lenient", action="store_true", help="also score with a tolerant parser (labelled apart)")
    parser.add_argument("--overwrite-card", action="store_true", help="regenerate a model card edited by hand")
    parser.add_argument(
        "--allow-images-outside-folder", action="store_true", help="read image paths that lead outside the folders"
    )
    add_decoding_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    if args.output_dir is None and not Path(args.model).is_dir():
        raise ScienceQAError(f"{args.model!r} is not a local folder: say where the results go with --output-dir.")
    output_dir = args.output_dir or args.model
    results = evaluate(
        args.model,
        args.data,
        output_dir,
        args.split,
        args.batch_size,
        args.max_new_tokens,
        args.device,
        args.static_cache,
        args.lenient,
        args.allow_images_outside_folder,
        dtype=args.dtype,
        quantization=args.quantization,
        template=args.template,
    )
    print_report(results, Path(output_dir) / RESULTS_NAME)
    print(refresh_card_after_eval(output_dir, args.overwrite_card))


__all__ = [
    "Problem",
    "ScienceQAError",
    "build_prompt",
    "evaluate",
    "lenient_choice",
    "load_problems",
    "paper_choice",
    "score",
]
