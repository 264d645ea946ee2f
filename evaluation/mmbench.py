"""MMBench and MMBench-CN: questions asked as the original asks them, and the upload file its server scores.

MMBench's answers are checked on its server, so `score` reports no figure: it writes the spreadsheet that
`scripts/convert_mmbench_for_submission.py` writes (`<experiment>.xlsx`, as the original's `answers_upload/`), which
the server scores (LLaVA-1.5-13B: 67.7 on the dev split, 63.6 on MMBench-CN's). Its content is the question file's
table less the columns `hint`, `category`, `source`, `image`, `comment` and `l2-category`, with a `prediction` column
inserted as the seventh (after `index`, `question`, `A`-`D`): the answer whose `question_id` equals the row's `index`
(the last one, where several do; empty where none does).

The question file is MMBench's tsv, read by pandas as the original reads it (so a cell "None", "NA" or "nan" is
empty). `read_questions` builds each question as `llava/eval/model_vqa_mmbench.py` does with the flags of
`scripts/v1_5/eval/mmbench.sh` / `mmbench_cn.sh` (`--single-pred-prompt`, `--lang cn` for MMBench-CN, one round):
`[hint\\n]question\\nA. option\\nB. option...`, options read from A to D up to the first empty one (or one that
reads "none"), the image (base64 in the tsv) first, and the single-prediction instruction on its own last line. The
answer line's `prompt` is the question without the instruction, as the original writes it.
"""

import base64
import binascii
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from evaluation.predict import Question
from evaluation.results import BenchmarkError, upload_path, write_whole

NAME = "mmbench"
OPTIONS = ("A", "B", "C", "D")  # model_vqa_mmbench.py's all_options
# model_vqa_mmbench.py's --single-pred-prompt line, by --lang ("cn" for MMBench-CN, anything else English).
SINGLE_PREDICTION = {
    "en": "Answer with the option's letter from the given choices directly.",
    "cn": "请直接回答选项字母。",
}
# scripts/v1_5/eval/mmbench.sh and mmbench_cn.sh: llava/eval/model_vqa_mmbench.py, --conv-mode vicuna_v1,
# --temperature 0, --single-pred-prompt, no --all-rounds.
ANSWERING = {
    "max_new_tokens": 1024,  # model_vqa_mmbench.py's generate() call
    "template": "vicuna_v1",
    "suffix": None,  # the single-prediction line depends on the language: read_questions appends it
    "single_pred_prompt": True,
    "all_rounds": False,
}
# What convert_mmbench_for_submission.py drops from the question table before it inserts the predictions.
DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN = 6


@dataclass
class MMBenchQuestion(Question):
    """A question of MMBench's tsv, with the options the answer line records."""

    options: list[str] = field(default_factory=list)


def read_table(path: str | Path) -> pd.DataFrame:
    """MMBench's tsv as the original reads it (`pd.read_table` with pandas' defaults)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"MMBench question file {str(path)!r} does not exist; give MMBench's tsv.")
    try:
        return pd.read_table(path)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as error:
        raise BenchmarkError(f"MMBench question file {str(path)!r} is not a tsv pandas can read: {error}") from None


def _is_none(value: Any) -> bool:
    """model_vqa_mmbench.py's `is_none`: missing, NaN, or the text "nan" / "none" in any case."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and value.lower() in ("nan", "none"))
    )


def _text(path: Path, row: dict, column: str) -> str:
    value = row[column]
    if not isinstance(value, str):  # the original's string concatenation fails on it
        raise BenchmarkError(f"MMBench question file {str(path)!r}, index {row['index']!r}: {column} is {value!r}.")
    return value


def read_questions(
    questions: str | Path, image_folder: str | Path | None = None, *, language: str = "en", **options
) -> list[MMBenchQuestion]:
    """The questions of MMBench's tsv in its order, asked as model_vqa_mmbench.py asks them (see the module
    docstring). `image_folder` is unused: the images are in the tsv."""
    if language not in SINGLE_PREDICTION:
        raise BenchmarkError(f"MMBench language {language!r}: use 'en' or 'cn'.")
    path = Path(questions)
    table = read_table(path)
    missing = [column for column in ("index", "question", "hint", "image", *OPTIONS) if column not in table]
    if missing:
        raise BenchmarkError(f"MMBench question file {str(path)!r} has no column {', '.join(missing)}.")
    read = []
    for row in table.to_dict("records"):
        choices = []
        for letter in OPTIONS:
            if _is_none(row[letter]):
                break
            choices.append(_text(path, row, letter))
        prompt = _text(path, row, "question")
        if not _is_none(row["hint"]):
            prompt = _text(path, row, "hint") + "\n" + prompt
        for letter, choice in zip(OPTIONS, choices, strict=False):  # the options end at the first empty one
            prompt += f"\n{letter}. {choice}"
        try:
            image = base64.b64decode(_text(path, row, "image"))  # as load_image_from_base64 decodes
        except binascii.Error as error:
            raise BenchmarkError(
                f"MMBench question file {str(path)!r}, index {row['index']!r}: image: {error}"
            ) from None
        content = [{"type": "image"}, {"type": "text", "text": prompt + "\n" + SINGLE_PREDICTION[language]}]
        messages = [{"role": "user", "content": content}]
        read.append(MMBenchQuestion(row["index"], prompt, messages, {"bytes": image, "path": None}, options=choices))
    return read


def answer_extras(question: MMBenchQuestion) -> dict:
    """The keys model_vqa_mmbench.py adds to an answer line (its one round: the options in the file's order)."""
    return {"round_id": 0, "options": question.options, "option_char": list(OPTIONS[: len(question.options)])}


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    experiment: str | None = None,
    language: str = "en",
    **options,
) -> dict:
    """Writes the upload spreadsheet (`<experiment>.xlsx`, default: the answers' model_id) from MMBench's tsv (the
    `annotations`; the question file stands in for it where none is given). The server scores it: no figure here."""
    source = annotations if annotations is not None else questions
    if source is None:
        raise BenchmarkError("MMBench needs --annotations: the tsv the answers were made from.")
    table = read_table(source)
    missing = [column for column in ("index", *DROPPED_COLUMNS) if column not in table]
    if missing:
        raise BenchmarkError(f"MMBench tsv {str(source)!r} has no column {', '.join(missing)}.")
    upload = table.drop(columns=list(DROPPED_COLUMNS))
    if len(upload.columns) < PREDICTION_COLUMN:
        raise BenchmarkError(
            f"MMBench tsv {str(source)!r} keeps {len(upload.columns)} columns, too few to put the predictions 7th."
        )
    predictions = {answer["question_id"]: answer["text"] for answer in answers}
    upload.insert(PREDICTION_COLUMN, "prediction", table["index"].map(predictions))
    path = upload_path(output_dir, NAME if language == "en" else f"{NAME}-{language}", answers, ".xlsx", experiment)
    try:
        write_whole(path, lambda staging: upload.to_excel(staging, index=False, engine="openpyxl"))
    except ImportError:
        raise BenchmarkError("MMBench's upload file needs openpyxl: pip install 'llava-plugin[eval]'.") from None
    answered = int(upload["prediction"].notna().sum())
    parts = {"questions": len(upload), "answered": answered, "unanswered": len(upload) - answered}
    return {"score": None, "parts": parts, "submission": path}


__all__ = ["ANSWERING", "NAME", "MMBenchQuestion", "answer_extras", "read_questions", "read_table", "score"]
