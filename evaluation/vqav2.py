"""VQAv2 (test-dev 2015), whose accuracy EvalAI's server computes: this writes the upload file as the original's
`scripts/convert_vqav2_for_submission.py` writes it, and has no score of its own (LLaVA-1.5-13B: 80.0 on test-dev).

`--annotations` is LLaVA's question file of the whole test2015 split, `llava_vqav2_mscoco_test2015.jsonl`, since the
server wants an answer to every test2015 question although LLaVA answers only test-dev's. The upload file is a JSON
list, in that file's order, of `{"question_id": ..., "answer": <the answer through the VQA normaliser>}`, with `""`
for every question the answer file does not answer, written as Python's `json.dump` writes it (one line, no final
newline); of two answers to one question the later counts, and answers to questions outside the file are left out.
It goes to `OUTPUT/answers_upload/vqav2/<model_id>.json`, named after the checkpoint as the original's is.
"""

import json
from pathlib import Path

from .results import VQA_LOADER_ANSWERING, BenchmarkError, read_json_lines, upload_path
from .vqa_answer_processing import normalize_answer

NAME = "vqav2"

# scripts/v1_5/eval/vqav2.sh answers llava_vqav2_mscoco_test-dev2015.jsonl with llava/eval/model_vqa_loader.py.
ANSWERING = VQA_LOADER_ANSWERING


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    **options,
) -> dict:
    """Writes VQAv2's upload file; `score` is None (EvalAI scores it), `parts` counts the test2015 questions, those
    answered and those left empty."""
    if annotations is None:
        raise BenchmarkError(
            "VQAv2 needs --annotations: LLaVA's question file of the whole test2015 split, "
            "llava_vqav2_mscoco_test2015.jsonl."
        )
    test_questions = read_json_lines(annotations, "VQAv2 test2015 question file", ("question_id",))
    texts = {answer["question_id"]: answer["text"] for answer in answers}
    upload = [
        {
            "question_id": question["question_id"],
            "answer": normalize_answer(texts[question["question_id"]]) if question["question_id"] in texts else "",
        }
        for question in test_questions
    ]
    path = upload_path(output_dir, NAME, answers)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(upload), encoding="utf-8")
    answered = sum(question["question_id"] in texts for question in test_questions)
    return {
        "score": None,
        "parts": {"test2015": {"questions": len(upload), "answered": answered, "empty": len(upload) - answered}},
        "submission": path,
    }


__all__ = ["ANSWERING", "NAME", "score"]
