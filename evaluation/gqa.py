"""GQA (testdev balanced), scored as the original's `scripts/convert_gqa_for_eval.py` followed by GQA's official
`eval.py --tier testdev_balanced` (with the edit LLaVA's docs link, which lets it run without scene graphs and
choices): the figure of LLaVA-1.5's table is the accuracy in percent (63.3 for LLaVA-1.5-13B).

`--annotations` is GQA's `testdev_balanced_questions.json` (`{question_id: {"answer", "isBalanced", "types": {...}}}`).
The rules of the two scripts, kept:
- a prediction is the answer's `text` with its trailing periods stripped, then lowercased (`"Yes."` -> `"yes"`; but
  `"Yes. "` keeps its period); nothing else is normalised, and it counts only when it equals the annotation's answer;
- of two answers to one question the later counts; an answer to a question the annotation file lacks is ignored;
  every question marked `isBalanced` must have an answer (the ids are compared as they are written: an answer's
  `question_id` must be the annotation's key, a string);
- accuracy is over the balanced questions; `parts` also has the eval.py's binary and open accuracies (open:
  structural type `query`) and its accuracy per structural and per semantic type, in percent with counts.
Validity, plausibility, consistency, grounding and distribution, which eval.py prints beside them, are not computed:
without the choices file the first two are 0 there, and LLaVA-1.5 reports only the accuracy.
"""

from collections import defaultdict
from pathlib import Path

from .results import VQA_LOADER_ANSWERING, BenchmarkError, read_json

NAME = "gqa"

# scripts/v1_5/eval/gqa.sh answers llava_gqa_testdev_balanced.jsonl with llava/eval/model_vqa_loader.py.
ANSWERING = VQA_LOADER_ANSWERING


def prediction(text: str) -> str:
    """An answer's text as convert_gqa_for_eval.py hands it to GQA's eval.py."""
    return text.rstrip(".").lower()


def _accuracy(scores: list[float]) -> dict:
    return {"questions": len(scores), "accuracy": 100 * sum(scores) / len(scores) if scores else 0.0}


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    **options,
) -> dict:
    """GQA's accuracy in percent over the balanced questions of `annotations` (see the module docstring)."""
    if annotations is None:
        raise BenchmarkError("GQA needs --annotations: GQA's testdev_balanced_questions.json.")
    gqa_questions = read_json(annotations, "GQA question file")
    if not isinstance(gqa_questions, dict):
        raise BenchmarkError(
            f"GQA question file {str(annotations)!r} is not an object of questions by id: pass "
            "testdev_balanced_questions.json."
        )
    predictions = {answer["question_id"]: prediction(answer["text"]) for answer in answers}
    balanced = {}
    for question_id, question in gqa_questions.items():
        if not (isinstance(question, dict) and "isBalanced" in question):
            raise BenchmarkError(f"GQA question {question_id!r} in {str(annotations)!r} has no 'isBalanced'.")
        if question["isBalanced"]:
            balanced[question_id] = question
    unanswered = [question_id for question_id in balanced if question_id not in predictions]
    if unanswered:
        raise BenchmarkError(
            f"The answer file has no answer to {len(unanswered)} of the {len(balanced)} balanced questions of "
            f"{str(annotations)!r} (first: {unanswered[0]!r}); GQA's eval.py needs them all."
        )

    scores, per_answer_type = [], defaultdict(list)
    per_type = {"structural": defaultdict(list), "semantic": defaultdict(list)}
    for question_id, question in balanced.items():
        if not ({"answer", "types"} <= question.keys() and {"structural", "semantic"} <= question["types"].keys()):
            raise BenchmarkError(
                f"GQA question {question_id!r} in {str(annotations)!r} lacks 'answer' or 'types' (structural, "
                "semantic)."
            )
        correct = float(predictions[question_id] == question["answer"])
        scores.append(correct)
        structural = question["types"]["structural"]
        per_answer_type["open" if structural == "query" else "binary"].append(correct)
        per_type["structural"][structural].append(correct)
        per_type["semantic"][question["types"]["semantic"]].append(correct)
    if not scores:
        raise BenchmarkError(f"GQA question file {str(annotations)!r} has no balanced question.")
    parts = {kind: _accuracy(per_answer_type[kind]) for kind in ("binary", "open")}
    for kind, groups in per_type.items():
        parts[kind] = {group: _accuracy(groups[group]) for group in sorted(groups)}
    return {"score": _accuracy(scores)["accuracy"], "parts": parts, "submission": None}


__all__ = ["ANSWERING", "NAME", "prediction", "score"]
