"""ScienceQA's release folder turned into LLaVA's records: `llava data scienceqa`, and the question layouts
`llava eval scienceqa` asks.

A release folder holds `problems.json` (pid -> problem: `question`, `choices`, `answer` (an index), `hint`, `image`
(a file name in `<split>/<pid>/`, or null), `lecture`, `solution`, `subject`, `grade`, ...) and `pid_splits.json`
(split -> pids). Two text layouts are built from a problem, each equal to a file of the original LLaVA repository:

- the paper's prompt formats (`QCM-LEPA`, `QCM-LEA`, `CQM-A`, ...: `INPUT-OUTPUT`, the letters naming the parts in
  order: Question, Context, Multiple choices, Lecture, Explanation (the solution), Answer; `LEPA` is the paper's
  `LECTURE: ... SOLUTION: ... ### ANSWER: X.`), as `scripts/convert_sqa_to_llava.py convert_to_llava` writes them
  with `scripts/convert_sqa_to_llava_base_prompt.py` (commits 82bc69e and 9ccab83, April and August 2023): the
  training records of the paper's ScienceQA fine-tuning. Their quirks are kept, since a model trained on them learned
  them: double spaces collapsed once and the text stripped; the `Question: ` / `Answer: ` labels removed everywhere
  in a text that starts with them; `BECAUSE:` removed everywhere in a text that ends with an empty one; literal `\\n`
  in lectures and solutions read as line breaks; `AL` and `AE` showing the solution and the lecture, the other way
  round from their names (likewise `AEL`); `<image>` after the question; the image as `<pid>/<file name>`.
- LLaVA-1.5's evaluation layout, as `eval.zip`'s `llava_test_CQM-A.json` (the file LLaVA-1.5's 71.6 was measured
  on) lays out every one of its 4241 test questions: `<image>` first for an image problem, `Context: <hint>` only when
  the hint is not blank, the question, then one `A. choice` line per choice; double spaces collapsed once, stripped.
  The rule was derived from that file (no script for it was released) and checked against the problems it comes from.
"""

import argparse
import itertools
import json
import posixpath
import string
from pathlib import Path

# The original's `options`: a problem has at most five choices.
LETTERS = string.ascii_uppercase[:5]

# convert_sqa_to_llava_base_prompt.py's `create_one_example_chatbot`, one entry per branch of its if-chains.
INPUT_LAYOUTS = {
    "CQM": "Context: {context}\nQuestion: {question}\nOptions: {choices}\n",
    "QCM": "Question: {question}\nContext: {context}\nOptions: {choices}\n",
    "QCML": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture}\n",
    "QCME": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {solution}\n",
    "QCMLE": "Question: {question}\nContext: {context}\nOptions: {choices}\nBECAUSE: {lecture} {solution}\n",
    "QCLM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture}\nOptions: {choices}\n",
    "QCEM": "Question: {question}\nContext: {context}\nBECAUSE: {solution}\nOptions: {choices}\n",
    "QCLEM": "Question: {question}\nContext: {context}\nBECAUSE: {lecture} {solution}\nOptions: {choices}\n",
}
OUTPUT_LAYOUTS = {
    "A": "Answer: The answer is {answer}.",
    # The original's labels: AL shows the solution, AE the lecture, AEL the solution first.
    "AL": "Answer: The answer is {answer}. BECAUSE: {solution}",
    "AE": "Answer: The answer is {answer}. BECAUSE: {lecture}",
    "ALE": "Answer: The answer is {answer}. BECAUSE: {lecture} {solution}",
    "AEL": "Answer: The answer is {answer}. BECAUSE: {solution} {lecture}",
    "LA": "Answer: {lecture} The answer is {answer}.",
    "EA": "Answer: {solution} The answer is {answer}.",
    "LEA": "Answer: {lecture} {solution} The answer is {answer}.",
    "ELA": "Answer: {solution} {lecture} The answer is {answer}.",
    "LEPA": None,  # built by `_lepa`: its parts appear only when not blank
}
PROMPT_FORMATS = tuple(f"{i}-{o}" for i, o in itertools.product(INPUT_LAYOUTS, OUTPUT_LAYOUTS))


class ScienceQAError(ValueError):
    """A release folder or problem that cannot be converted or evaluated; the message names the file or problem."""


def _read_json(path: Path):
    if not path.is_file():
        raise ScienceQAError(f"{str(path)!r} does not exist: expected the ScienceQA release layout there.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScienceQAError(f"{str(path)!r} is not valid JSON: {error}") from error


def read_release(folder: str | Path, split: str) -> tuple[dict[str, dict], list[str]]:
    """`problems.json` and the pids of `split` in `pid_splits.json` (each once, in the file's order) of a release."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ScienceQAError(
            f"{str(folder)!r} is not a folder: give the ScienceQA release folder (problems.json ...)."
        )
    problems = _read_json(folder / "problems.json")
    splits = _read_json(folder / "pid_splits.json")
    if not isinstance(problems, dict) or not isinstance(splits, dict):
        raise ScienceQAError(f"{str(folder)!r}: problems.json and pid_splits.json must each hold a JSON object.")
    if split not in splits:
        raise ScienceQAError(f"{str(folder / 'pid_splits.json')!r} has no split {split!r}; it has {sorted(splits)}.")
    pids = list(dict.fromkeys(str(pid) for pid in splits[split]))  # the original keeps one record per pid
    missing = [pid for pid in pids if pid not in problems]
    if missing:
        raise ScienceQAError(
            f"{str(folder / 'problems.json')!r} has no problem {missing[0]!r} of split {split!r} "
            f"({len(missing)} missing): problems.json and pid_splits.json come from different releases."
        )
    for pid in pids:
        check_problem(pid, problems[pid])
    return problems, pids


def check_problem(pid: str, problem: dict) -> None:
    """Refuses a problem without what both layouts read, naming it."""
    text_fields = ("question", "hint")
    if not isinstance(problem, dict) or any(not isinstance(problem.get(field), str) for field in text_fields):
        raise ScienceQAError(f"Problem {pid!r} needs 'question' and 'hint' as strings (the hint may be empty).")
    choices, answer = problem.get("choices"), problem.get("answer")
    if not isinstance(choices, list) or not all(isinstance(choice, str) for choice in choices):
        raise ScienceQAError(f"Problem {pid!r} needs 'choices', a list of strings.")
    if not 1 <= len(choices) <= len(LETTERS):
        raise ScienceQAError(f"Problem {pid!r} has {len(choices)} choices; ScienceQA's letters go from A to E.")
    if not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ScienceQAError(f"Problem {pid!r}: answer {answer!r} is not the index of one of its choices.")
    if problem.get("image") is not None and not isinstance(problem["image"], str):
        raise ScienceQAError(f"Problem {pid!r}: 'image' must be a file name or null, got {problem['image']!r}.")


def _explanation(text: str) -> str:
    # The base-prompt module writes line breaks as "\\n" for GPT-3 and the chatbot builder turns every "\\n" back
    # into a line break, so a literal backslash-n in the release becomes one too.
    return text.replace("\n", "\\n").replace("\\n", "\n")


def _lepa(lecture: str, solution: str, answer: str) -> str:
    output = f"LECTURE: {lecture}\n" if lecture.strip() else ""
    output += f"SOLUTION: {solution}\n" if solution.strip() else ""
    return f"{output}###\nANSWER: {answer}."


def base_prompt(problem: dict, prompt_format: str) -> tuple[str, str]:
    """The question and answer texts of `problem` in a paper prompt format, as `create_one_example_chatbot` builds
    them for training (the answer always written, the image caption never used)."""
    input_layout, output_layout = prompt_format.split("-")
    parts = {
        "question": problem["question"],
        "context": problem["hint"].strip() or "N/A",
        "choices": " ".join(f"({LETTERS[i]}) {choice}" for i, choice in enumerate(problem["choices"])),
        "answer": LETTERS[problem["answer"]],
        "lecture": _explanation(problem.get("lecture") or ""),
        "solution": _explanation(problem.get("solution") or ""),
    }
    question = INPUT_LAYOUTS[input_layout].format(**parts)
    if output_layout == "LEPA":
        answer = _lepa(parts["lecture"], parts["solution"], parts["answer"])
    else:
        answer = OUTPUT_LAYOUTS[output_layout].format(**parts)
    question, answer = question.replace("  ", " ").strip(), answer.replace("  ", " ").strip()
    # An empty trailing "BECAUSE:" goes, and with it every other "BECAUSE:" of the text.
    if question.endswith("BECAUSE:"):
        question = question.replace("BECAUSE:", "").strip()
    if answer.endswith("BECAUSE:"):
        answer = answer.replace("BECAUSE:", "").strip()
    return question, answer


def llava_record(pid: str, problem: dict, prompt_format: str) -> dict:
    """One record of `convert_to_llava`'s file: `id`, `image` (`<pid>/<file name>`, image problems only) and the
    human/gpt `conversations`, `<image>` on the question's last line."""
    question, answer = base_prompt(problem, prompt_format)
    # convert_to_llava drops the labels with str.replace: every occurrence, not only the leading one.
    if question.startswith("Question: "):
        question = question.replace("Question: ", "")
    if answer.startswith("Answer: "):
        answer = answer.replace("Answer: ", "")
    if problem.get("image") is None:
        return {"id": pid, "conversations": [_turn("human", question), _turn("gpt", answer)]}
    return {
        "id": pid,
        "image": posixpath.join(pid, problem["image"]),
        "conversations": [_turn("human", f"{question}\n<image>"), _turn("gpt", answer)],
    }


def llava15_question(problem: dict) -> str:
    """The question as `llava_test_CQM-A.json` (LLaVA-1.5's evaluation file) writes it, `<image>` line included."""
    hint = problem["hint"].strip()
    lines = [f"Context: {hint}"] if hint else []
    lines += [problem["question"], *(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(problem["choices"]))]
    text = "\n".join(lines).replace("  ", " ").strip()
    return text if problem.get("image") is None else f"<image>\n{text}"


def _turn(speaker: str, value: str) -> dict:
    return {"from": speaker, "value": value}


def convert(folder: str | Path, split: str, prompt_format: str) -> list[dict]:
    """The records `convert_to_llava(folder, split, prompt_format)` writes, in `pid_splits.json`'s order."""
    if prompt_format not in PROMPT_FORMATS:
        raise ScienceQAError(
            f"Unknown prompt format {prompt_format!r}: the original's are INPUT-OUTPUT with INPUT one of "
            f"{', '.join(INPUT_LAYOUTS)} and OUTPUT one of {', '.join(OUTPUT_LAYOUTS)} (the paper's: QCM-LEPA)."
        )
    problems, pids = read_release(folder, split)
    return [llava_record(pid, problems[pid], prompt_format) for pid in pids]


def write_records(records: list[dict], output: str | Path) -> Path:
    """Writes the records as the original's `json.dump(..., indent=2)` does (ASCII escapes, no final newline), so the
    file equals its `llava_<split>_<format>.json` byte for byte; written beside its place and renamed into it."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f"{output.name}.tmp")
    staging.write_text(json.dumps(records, indent=2), encoding="utf-8")
    staging.replace(output)
    return output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="the ScienceQA release folder (problems.json, pid_splits.json)")
    parser.add_argument("--split", required=True, help="a split of pid_splits.json: train, val, test, minitrain, ...")
    parser.add_argument(
        "--prompt-format",
        default="QCM-LEA",
        metavar="FORMAT",
        help="INPUT-OUTPUT as the original's converter names them: QCM-LEPA (the paper's), QCM-LEA (the August 2023 "
        "default, and ours), QCM-A, CQM-A, the answer-first QCM-ALE ... (default: %(default)s)",
    )
    parser.add_argument("--output", required=True, metavar="FILE", help="the LLaVA JSON file to write")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    records = convert(args.folder, args.split, args.prompt_format)
    with_image = sum("image" in record for record in records)
    path = write_records(records, args.output)
    print(
        f"{len(records)} {args.split} problems ({with_image} with an image) in {args.prompt_format} written to {path}"
    )


__all__ = [
    "PROMPT_FORMATS",
    "ScienceQAError",
    "base_prompt",
    "check_problem",
    "convert",
    "llava15_question",
    "llava_record",
    "read_release",
    "write_records",
]
