"""MME: the perception sum of LLaVA-1.5's table (1531.3 for LLaVA-1.5-13B), scored as the original scores it.

The original scores an answer file in two steps, both reproduced here rule for rule: `convert_answer_to_mme.py`
(LLaVA commit 32cebc38, `playground/data/eval/MME/`) finds each answer's ground truth in the
`MME_Benchmark_release_version` folder and writes one `image<TAB>question<TAB>truth<TAB>answer` line per answer into a
file per category, and MME's own `eval_tool/calculation.py` reads those files back. What follows from that:

- the question is the answer's `prompt`, with LLaVA's "Answer the question using a single word or phrase." removed
  and MME's " Please answer yes or no." put back (two spaces before it where only that is in MME's sheet);
- an answer is read lower-cased, with the line's newline still on it: "yes" if its first four characters hold "yes",
  else "no" if they hold "no" ("Not sure" reads no, " yes" yes, "  yes" and "I think yes" neither: "other", wrong);
- acc+ pairs the lines two by two in the answer file's order (MME asks two questions per image, one after the other);
  a category scores (acc + acc+) x 100, perception sums ten categories, cognition four;
- an answer holding a tab, or a line break (also a lone carriage return), breaks the line it is written on: the
  original then stops, and so does `score`, naming the answer.

One departure, where the original stops without a number: a category whose every answer is "other" makes
calculation.py's unused precision/recall fail on an empty list; here that category scores its acc and acc+, both 0.
"""

import io
from collections import defaultdict
from pathlib import Path

from evaluation.results import BenchmarkError

NAME = "mme"
# scripts/v1_5/eval/mme.sh: llava/eval/model_vqa_loader.py, --conv-mode vicuna_v1, --temperature 0.
ANSWERING = {
    "max_new_tokens": 128,  # model_vqa_loader.py's default; mme.sh passes none
    "template": "vicuna_v1",
    "suffix": None,  # llava_mme.jsonl's questions end in "Answer the question using a single word or phrase."
    "single_pred_prompt": False,
}
# calculation.py's eval_type_dict, in its order (the order of its sums).
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork", "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
_SHORT_ANSWER = "Answer the question using a single word or phrase."
_YES_OR_NO = " Please answer yes or no."


def read_ground_truth(folder: Path) -> dict[tuple[str, str, str], str]:
    """`{(category, sheet, question): "Yes" | "No"}` from MME's release folder, as `get_gt` reads it: a category
    folder with `images/` keeps its sheets in `questions_answers_YN/`, any other holds them beside its images; each
    sheet (`<image name>.txt`) has one `question<TAB>answer` line per question."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(
            f"MME annotations {str(folder)!r} is not a folder; give --annotations the MME_Benchmark_release_version "
            "folder."
        )
    truth = {}
    for category in sorted(path for path in folder.iterdir() if path.is_dir()):
        sheets = category / "questions_answers_YN" if (category / "images").exists() else category
        if not sheets.is_dir():
            raise BenchmarkError(f"MME category {str(category)!r} has images/ but no questions_answers_YN/ folder.")
        for sheet in sorted(sheets.glob("*.txt")):
            with sheet.open(encoding="utf-8") as file:
                for number, line in enumerate(file, 1):
                    fields = line.strip().split("\t")
                    if len(fields) != 2:
                        raise BenchmarkError(f"MME sheet {str(sheet)!r} line {number} is not 'question<TAB>answer'.")
                    truth[category.name, sheet.name, fields[0]] = fields[1]
    if not truth:
        raise BenchmarkError(f"MME annotations {str(folder)!r} holds no question sheets; is it MME's release folder?")
    return truth


def result_lines(answers: list[dict], truth: dict[tuple[str, str, str], str]) -> dict[str, str]:
    """Each category's file as convert_answer_to_mme.py writes it (`eval_tool/answers/<experiment>/<category>.txt`)."""
    files = defaultdict(list)
    for number, answer in enumerate(answers, 1):
        question_id, prompt, text = answer.get("question_id"), answer.get("prompt"), answer.get("text")
        if not all(isinstance(value, str) for value in (question_id, prompt, text)):
            raise BenchmarkError(
                f"MME answer {number} ({question_id!r}) needs a string question_id ('category/.../image'), prompt "
                "and text."
            )
        category = question_id.split("/")[0]
        sheet = question_id.split("/")[-1].split(".")[0] + ".txt"
        if _SHORT_ANSWER in prompt:
            prompt = prompt.replace(_SHORT_ANSWER, "").strip()
        if _YES_OR_NO.strip() not in prompt:
            prompt += _YES_OR_NO
            if (category, sheet, prompt) not in truth:
                prompt = prompt.replace(_YES_OR_NO, " " + _YES_OR_NO)
        if (category, sheet, prompt) not in truth:
            raise BenchmarkError(
                f"MME answer {number} ({question_id!r}): the question {prompt!r} is not in sheet {category}/{sheet} "
                "of the annotations; was the answer file made from llava_mme.jsonl?"
            )
        files[category].append("\t".join((sheet, prompt, truth[category, sheet, prompt], text)) + "\n")
    return {category: "".join(lines) for category, lines in files.items()}


def read_answer(answer: str) -> str:
    """calculation.py's `parse_pred_ans` on a lower-cased answer field (its line's newline included)."""
    if answer in ("yes", "no"):
        return answer
    return "yes" if "yes" in answer[:4] else "no" if "no" in answer[:4] else "other"


def score_category(category: str, text: str) -> dict:
    """One category's acc, acc+ and score from its result file's text, as calculation.py reads the file."""
    lines = io.StringIO(text, newline=None).readlines()  # open(..., "r"): universal newlines, "\r" ends a line too
    if not lines or len(lines) % 2:
        raise BenchmarkError(
            f"MME category {category!r} has {len(lines)} result lines; calculation.py pairs two questions per image "
            "(is an answer missing, or does one hold a line break?)."
        )
    correct = paired = other = 0
    for first in range(0, len(lines), 2):
        both = 0
        for line in lines[first : first + 2]:
            fields = line.split("\t")
            if len(fields) != 4:
                raise BenchmarkError(
                    f"MME category {category!r}: the result line {line!r} has {len(fields)} tab-separated fields, not "
                    "4; an answer holding a tab or a line break stops calculation.py too."
                )
            truth, answer = fields[2].lower(), read_answer(fields[3].lower())
            if truth not in ("yes", "no"):
                raise BenchmarkError(f"MME category {category!r}: ground truth {fields[2]!r} is neither yes nor no.")
            both += truth == answer
            other += answer == "other"
        correct += both
        paired += both == 2
    acc, acc_plus = correct / len(lines), paired / (len(lines) // 2)
    return {
        "score": acc * 100 + acc_plus * 100,
        "acc": acc * 100,
        "acc_plus": acc_plus * 100,
        "questions": len(lines),
        "images": len(lines) // 2,
        "other": other,
    }


def score(
    answers: list[dict], *, output_dir: Path, annotations: Path | None = None, questions: Path | None = None, **options
) -> dict:
    """MME's perception sum (the table's figure) with every category and the cognition sum in `parts`. `annotations`
    is the `MME_Benchmark_release_version` folder. Nothing is uploaded: MME is scored here."""
    if annotations is None:
        raise BenchmarkError("MME needs --annotations: the MME_Benchmark_release_version folder (its answer sheets).")
    files = result_lines(answers, read_ground_truth(Path(annotations)))
    parts = {}
    for kind, categories in (("perception", PERCEPTION), ("cognition", COGNITION)):
        missing = [category for category in categories if category not in files]
        if missing:
            raise BenchmarkError(
                f"MME answers hold no answer for {', '.join(missing)}; calculation.py scores all 14 categories."
            )
        scores = {category: score_category(category, files[category]) for category in categories}
        total = 0
        for category in categories:  # calculation.py's order of addition, so the float sum is its sum
            total += scores[category]["score"]
        parts[kind] = {"score": total, "categories": scores}
    return {"score": parts["perception"]["score"], "parts": parts, "submission": None}


__all__ = ["ANSWERING", "COGNITION", "NAME", "PERCEPTION", "read_ground_truth", "result_lines", "score"]
