"""VizWiz (test), whose accuracy EvalAI's server computes: this writes the upload file as the original's
`scripts/convert_vizwiz_for_submission.py` writes it, and has no score of its own (LLaVA-1.5-13B: 53.6 on test-dev).

`--annotations` is LLaVA's VizWiz question file, `llava_test.jsonl` (`question_id`, `image`). The upload file is a
JSON list, in that file's order, of `{"image": <its image file name>, "answer": <the answer through the VQA
normaliser>}`, written as Python's `json.dump` writes it (one line, no final newline). The original has no rule of its
own for unanswerable questions: the question file asks the model to answer "Unanswerable", and the normaliser
lowercases it to the server's `unanswerable`. Every question must be answered; of two answers to one question the later
counts. It goes to `OUTPUT/answers_upload/vizwiz/<model_id>.json`, named after the checkpoint as the original's is.
"""

import json
from pathlib import Path

from .results import VQA_LOADER_ANSWERING, BenchmarkError, read_json_lines, upload_path
from .vqa_answer_processing import normalize_answer

NAME = "vizwiz"

# scripts/v1_5/eval/vizwiz.sh answers llava_test.jsonl with llava/eval/model_vqa_loader.py.
ANSWERING = VQA_LOADER_ANSWERING


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    **options,
) -> dict:
    """Writes VizWiz's upload file; `score` is None (EvalAI scores it), `parts` counts the questions and the answers
    that say the question is unanswerable."""
    if annotations is None:
        raise BenchmarkError("VizWiz needs --annotations: LLaVA's VizWiz question file, llava_test.jsonl.")
    test_questions = read_json_lines(annotations, "VizWiz question file", ("question_id", "image"))
    texts = {answer["question_id"]: answer["text"] for answer in answers}
    upload = []
    for question in test_questions:
        if question["question_id"] not in texts:
            raise BenchmarkError(
                f"The answer file has no answer to VizWiz question {question['question_id']!r} of "
                f"{str(annotations)!r}; the upload file needs every question answered."
            )
        upload.append({"image": question["image"], "answer": normalize_answer(texts[question["question_id"]])})
    path = upload_path(output_dir, NAME, answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(upload), encoding="utf-8")
    unanswerable = sum(entry["answer"] == "unanswerable" for entry in upload)
    return {
        "score": None,
        "parts": {"test": {"questions": len(upload), "unanswerable": unanswerable}},
        "submission": path,
    }


__all__ = ["ANSWERING", "NAME", "score"]
