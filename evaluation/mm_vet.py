"""MM-Vet: the results file its GPT-4 grader reads, written as `scripts/convert_mmvet_for_eval.py` writes it.

MM-Vet is scored by its grader (`mm-vet_evaluator`, GPT-4; LLaVA-1.5-13B: 36.1), so `score` reports no figure. The
file is one JSON object `{"v1_<question_id>": answer text}` in the answer file's order (a repeated id keeps its first
place and its last text), indented by 2, non-ASCII escaped, without a final newline: `json.dump(..., indent=2)`.
Its name is `<experiment>.json`, as the original's `mm-vet/results/llava-v1.5-13b.json`.
"""

import json
from pathlib import Path

from evaluation.results import upload_path, write_whole

NAME = "mm-vet"
# scripts/v1_5/eval/mmvet.sh: llava/eval/model_vqa.py, --conv-mode vicuna_v1, --temperature 0.
ANSWERING = {
    "max_new_tokens": 1024,  # model_vqa.py's generate() call
    "template": "vicuna_v1",
    "suffix": None,  # llava-mm-vet.jsonl's questions are asked as written, with no instruction added
    "single_pred_prompt": False,
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
    """Writes `<experiment>.json` (default: the answers' model_id) for MM-Vet's grader; no figure here."""
    results = {f"v1_{answer['question_id']}": answer["text"] for answer in answers}
    path = upload_path(output_dir, NAME, answers, ".json", experiment)
    write_whole(path, lambda staging: staging.write_text(json.dumps(results, indent=2), encoding="utf-8"))
    return {"score": None, "parts": {"answers": len(results)}, "submission": path}


__all__ = ["ANSWERING", "NAME", "score"]
