"""TextVQA (val, with OCR tokens in the prompt), scored as the original's `llava/eval/eval_textvqa.py` with the
`TextVQAAccuracyEvaluator` of its `m4c_evaluator.py`: the figure of LLaVA-1.5's table is the soft VQA accuracy in
percent (61.3 for LLaVA-1.5-13B).

`--annotations` is TextVQA's `TextVQA_0.5.1_val.json` (`{"data": [{"image_id", "question", "answers": [10], ...}]}`).
The original's rules, kept:
- an answer finds its annotation by (its `question_id`, which LLaVA's question file sets to the image id; the question
  read back from its `prompt`, lowercased) against (`image_id`, `question` lowercased); of two annotations with the
  same pair the later one counts;
- the question is read from the prompt in one of three layouts: `OCR tokens: ... Question: Q Short answer:`, three
  lines with a `Reference OCR token: ` line (the question is the other line at the top, LLaVA-1.5's is
  `Q\\nReference OCR token: ...\\nAnswer the question using a single word or phrase.`), or two lines (the first);
- the prediction and the ten human answers go through the VQA normaliser (`vqa_answer_processing`); a prediction
  scores the mean, over the ten ways of leaving one human answer out, of min(1, matching others / 3).
"""

import re
from collections import Counter
from pathlib import Path

from .results import VQA_LOADER_ANSWERING, BenchmarkError, read_json
from .vqa_answer_processing import normalize_answer

NAME = "textvqa"

# scripts/v1_5/eval/textvqa.sh answers llava_textvqa_val_v051_ocr.jsonl with llava/eval/model_vqa_loader.py.
ANSWERING = VQA_LOADER_ANSWERING

HUMAN_ANSWERS = 10  # TextVQA's answers per question; the original's evaluator asserts it
_OCR_TOKENS_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)


def prompt_question(prompt: str) -> str | None:
    """The question eval_textvqa.py reads back from an answer's `prompt`, lowercased (None in no known layout)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = _OCR_TOKENS_QUESTION.search(prompt)
        question = match and match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        question = None
    return None if question is None else question.lower()


def soft_accuracy(prediction: str, human_answers: list[str]) -> float:
    """The VQA accuracy of `prediction` against the ten human answers, both normalised (see the module docstring)."""
    predicted = normalize_answer(prediction)
    matches = Counter(normalize_answer(answer) for answer in human_answers)[predicted]
    # Leaving out one of the `matches` equal answers leaves matches - 1; leaving out any other leaves matches.
    left_one_out = matches * min(1.0, (matches - 1) / 3) + (len(human_answers) - matches) * min(1.0, matches / 3)
    return left_one_out / len(human_answers)


def _annotation_index(annotations: Path) -> dict[tuple, list[str]]:
    """(image id, lowercased question) -> the ten human answers, the later annotation winning as in the original."""
    document = read_json(annotations, "TextVQA annotation file")
    records = document.get("data") if isinstance(document, dict) else None
    if not isinstance(records, list):
        raise BenchmarkError(
            f"TextVQA annotation file {str(annotations)!r} has no 'data' list: pass TextVQA_0.5.1_val.json."
        )
    index = {}
    for number, record in enumerate(records):
        if not (isinstance(record, dict) and {"image_id", "question", "answers"} <= record.keys()):
            raise BenchmarkError(
                f"TextVQA annotation file {str(annotations)!r} record {number} lacks 'image_id', 'question' or "
                "'answers'."
            )
        index[(record["image_id"], record["question"].lower())] = record["answers"]
    return index


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    **options,
) -> dict:
    """TextVQA's accuracy in percent over the answers, each matched to its annotation as the module docstring says."""
    if annotations is None:
        raise BenchmarkError("TextVQA needs --annotations: TextVQA's TextVQA_0.5.1_val.json.")
    if not answers:
        raise BenchmarkError("The TextVQA answer file holds no answer.")
    index = _annotation_index(Path(annotations))
    scores = []
    for answer in answers:
        question_id = answer["question_id"]
        question = prompt_question(answer["prompt"]) if isinstance(answer.get("prompt"), str) else None
        if question is None:
            raise BenchmarkError(
                f"Answer to question {question_id!r}: its 'prompt' is in none of the layouts eval_textvqa.py reads "
                "(a 'Reference OCR token: ' line among three lines, 'OCR tokens: ... Question: ... Short answer:', "
                "or two lines)."
            )
        human_answers = index.get((question_id, question))
        if human_answers is None:
            raise BenchmarkError(
                f"Answer to question {question_id!r} ({question!r}) has no annotation with that image_id and "
                f"question in {str(annotations)!r}."
            )
        if len(human_answers) != HUMAN_ANSWERS:
            raise BenchmarkError(
                f"TextVQA annotation of image {question_id!r} ({question!r}) has {len(human_answers)} answers; "
                f"the original's evaluator needs {HUMAN_ANSWERS}."
            )
        scores.append(soft_accuracy(answer["text"], human_answers))
    accuracy = 100 * sum(scores) / len(scores)
    return {"score": accuracy, "parts": {"val": {"answers": len(scores), "accuracy": accuracy}}, "submission": None}


__all__ = ["ANSWERING", "NAME", "prompt_question", "score", "soft_accuracy"]
