"""SEED-Bench: the accuracy `scripts/convert_seed_for_submission.py` prints (LLaVA-1.5-13B: 61.6), and its upload file.

An answer is right when its text equals the question's answer letter exactly (`"A"`; `"A."` or `"a"` is wrong). The
answers are looked up as the original looks them up: by the question's id made an integer where it can be
(`"101669"` -> 101669), else as written, so an answer file whose ids are the strings `"101669"` finds none of them
(LLaVA's question file has integer ids). A question without an answer counts wrong. The figure is the accuracy over
all questions in percent ("Total accuracy"); `parts` has each question type's (the original prints them with two
decimals) and the image and video questions' apart.

The upload file (`<experiment>.jsonl`, as the original's `answers_upload/llava-v1.5-13b.jsonl`) has one line
`{"question_id": <the id as SEED-Bench.json writes it>, "prediction": <answer text>}` per question of
SEED-Bench.json, in its order; the answer is found by the id as written, else as an integer.

Three departures where the original stops without finishing: a question type whose answered questions are all
wrong (the original's count for it is never set) scores 0 here; annotations without image or without video
questions (the original divides by their count, 0) give that split's accuracy as None; and with a question
unanswered, the original prints its accuracies and then fails writing the upload file: here the accuracies are
returned, with no upload file, and `parts["unanswered"]` counts the questions that stop it.
"""

import json
from pathlib import Path
from typing import Any

from evaluation.results import BenchmarkError, upload_path, write_whole

NAME = "seed"
# scripts/v1_5/eval/seed.sh: llava/eval/model_vqa_loader.py, --conv-mode vicuna_v1, --temperature 0.
ANSWERING = {
    "max_new_tokens": 128,  # model_vqa_loader.py's default; seed.sh passes none
    "template": "vicuna_v1",
    "suffix": None,  # llava-seed-bench.jsonl's questions end in the single-prediction instruction already
    "single_pred_prompt": False,
}


def read_annotations(path: str | Path) -> dict:
    """SEED-Bench.json: `questions` (each with `question_id`, `question_type_id`, `data_type`, `answer`) and
    `question_type` (`{name: id}`)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise BenchmarkError(f"SEED annotations {str(path)!r} cannot be read as JSON: {error}") from None
    fields = ("question_id", "question_type_id", "data_type", "answer")
    if not isinstance(data, dict) or not isinstance(data.get("question_type"), dict):
        raise BenchmarkError(f"SEED annotations {str(path)!r} has no 'question_type' map; give SEED-Bench.json.")
    for number, question in enumerate(data.get("questions") or [None]):
        if not isinstance(question, dict) or any(name not in question for name in fields):
            raise BenchmarkError(
                f"SEED annotations {str(path)!r}: question {number} lacks one of {', '.join(fields)}; "
                "give SEED-Bench.json."
            )
    return data


def _lookup_id(question_id: Any) -> Any:
    try:
        return int(question_id)
    except (TypeError, ValueError):
        return question_id


def accuracy(data: dict, results: dict, data_type: str | None = None) -> dict:
    """`eval_single`: per question type (by id, in id order) and in total, over the questions of `data_type` (all
    where None)."""
    counts, correct = {}, {}
    for question in data["questions"]:
        if data_type is not None and question["data_type"] != data_type:
            continue
        kind = question["question_type_id"]
        counts[kind] = counts.get(kind, 0) + 1
        answer = results.get(_lookup_id(question["question_id"]))
        correct[kind] = correct.get(kind, 0) + (answer is not None and answer["text"] == question["answer"])
    names = {kind: name for name, kind in data["question_type"].items()}
    types = {
        names.get(kind, str(kind)): {
            "accuracy": correct[kind] / counts[kind] * 100,
            "correct": correct[kind],
            "questions": counts[kind],
        }
        for kind in sorted(counts)
    }
    total = sum(counts.values())
    return {
        "accuracy": sum(correct.values()) / total * 100 if total else None,
        "correct": sum(correct.values()),
        "questions": total,
        "types": types,
    }


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    experiment: str | None = None,
    **options,
) -> dict:
    """SEED's total accuracy in percent, with each type's and the image/video split in `parts`, and the upload file
    (`<experiment>.jsonl`, default: the answers' model_id). `annotations` is SEED-Bench.json."""
    if annotations is None:
        raise BenchmarkError("SEED needs --annotations: SEED-Bench.json (its answers and question types).")
    data = read_annotations(annotations)
    results = {answer["question_id"]: answer for answer in answers}
    overall = accuracy(data, results)
    parts = {**overall, "image": accuracy(data, results, "image"), "video": accuracy(data, results, "video")}
    lines = []
    for question in data["questions"]:
        question_id = question["question_id"]
        result = results.get(question_id, results.get(_lookup_id(question_id)))
        if result is not None:
            lines.append(json.dumps({"question_id": question_id, "prediction": result["text"]}) + "\n")
    parts["unanswered"] = len(data["questions"]) - len(lines)
    submission = None
    if not parts["unanswered"]:
        submission = upload_path(output_dir, NAME, answers, ".jsonl", experiment)
        write_whole(submission, lambda staging: staging.write_text("".join(lines), encoding="utf-8"))
    return {"score": overall["accuracy"], "parts": parts, "submission": submission}


__all__ = ["ANSWERING", "NAME", "accuracy", "read_annotations", "score"]
