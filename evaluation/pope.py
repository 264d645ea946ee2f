"""POPE (object hallucination), scored as the original's `llava/eval/eval_pope.py`: the figure of LLaVA-1.5's table is
the mean F1 of its three COCO categories (adversarial, popular, random) x 100 (85.9 for LLaVA-1.5-13B, with the labels
of AoiDragon/POPE commit e3e3926, which LLaVA's docs link; its later labels give other numbers).

`--annotations` is the folder of `coco_pope_<category>.json` label files (JSON lines, each with a `label`), and nothing
else, as the original asserts; `--questions` is the question file (`llava_pope_test.jsonl`), which gives each
`question_id` its category. The original's rules, kept:
- an answer is read as "no" when its first sentence (the text before the first `.`), its commas deleted and split on
  single spaces, has the word `No`, `not` or `no`; anything else is "yes" (`NO`, `Not`, `No\\n` included);
- a label is "no" when it is exactly `no`, "yes" otherwise;
- the answers of a category, in the answer file's order, are paired with its label lines by position, not by id,
  and the pairs stop at the shorter of the two (both counts are in `parts`); the yes ratio is over all the category's
  answers. An answer file in the question file's order, as `model_vqa_loader.py` writes it, pairs each answer with
  its own label.

Where the original divides by zero (no "yes" answer, or no "yes" label, in a category) it stops; here that precision,
recall or F1 is 0.
"""

from pathlib import Path

from .results import VQA_LOADER_ANSWERING, BenchmarkError, read_json_lines

NAME = "pope"

# scripts/v1_5/eval/pope.sh answers llava_pope_test.jsonl with llava/eval/model_vqa_loader.py.
ANSWERING = VQA_LOADER_ANSWERING

LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"
NO_WORDS = frozenset({"No", "not", "no"})


def reads_no(text: str) -> bool:
    """Whether the original's `eval_pope.py` reads the answer `text` as "no"."""
    first_sentence = text.split(".")[0].replace(",", "")
    return not NO_WORDS.isdisjoint(first_sentence.split(" "))


def _label_files(annotations: Path) -> dict[str, Path]:
    """The label file of each category in the folder, refusing anything else there as the original does."""
    if not annotations.is_dir():
        raise BenchmarkError(
            f"POPE annotations {str(annotations)!r} is not a folder: pass the folder of coco_pope_*.json label files."
        )
    files = {}
    for path in sorted(annotations.iterdir()):
        if not (path.name.startswith(LABEL_PREFIX) and path.name.endswith(LABEL_SUFFIX)):
            raise BenchmarkError(
                f"POPE annotations folder {str(annotations)!r} holds {path.name!r}: it must hold only "
                f"{LABEL_PREFIX}<category>{LABEL_SUFFIX} label files, as eval_pope.py reads every file there."
            )
        files[path.name[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]] = path
    if not files:
        raise BenchmarkError(f"POPE annotations folder {str(annotations)!r} holds no coco_pope_*.json label file.")
    return files


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def _category_scores(says_yes: list[bool], labels: list[dict]) -> dict:
    """The original's counts and rates for one category's answers (read as yes/no) against its label lines."""
    # Paired by position, the shorter list deciding, as the original's zip.
    pairs = list(zip(says_yes, (label["label"] != "no" for label in labels), strict=False))
    tp = sum(answer and label for answer, label in pairs)
    fp = sum(answer and not label for answer, label in pairs)
    tn = sum(not answer and not label for answer, label in pairs)
    fn = sum(not answer and label for answer, label in pairs)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return {
        "answers": len(says_yes),
        "labels": len(labels),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "accuracy": _ratio(tp + tn, len(pairs)),
        "precision": precision,
        "recall": recall,
        "f1": _ratio(2 * precision * recall, precision + recall),
        "yes_ratio": sum(says_yes) / len(says_yes),
    }


def score(
    answers: list[dict],
    *,
    output_dir: Path,
    annotations: Path | None = None,
    questions: Path | None = None,
    **options,
) -> dict:
    """POPE's mean F1 x 100 over the categories of the `annotations` folder; `parts` has each category's counts and
    rates (fractions, as eval_pope.py prints them). See the module docstring for the original's rules."""
    if annotations is None or questions is None:
        raise BenchmarkError(
            "POPE needs --annotations (the folder of coco_pope_*.json label files) and --questions (the question "
            "file, llava_pope_test.jsonl, which gives each answer its category)."
        )
    label_files = _label_files(Path(annotations))
    category_of = {
        question["question_id"]: question["category"]
        for question in read_json_lines(questions, "POPE question file", ("question_id", "category"))
    }
    for answer in answers:
        if answer["question_id"] not in category_of:
            raise BenchmarkError(
                f"Answer to question {answer['question_id']!r} has no question in {str(questions)!r}: pass the "
                "question file the answers were made from."
            )
    parts = {}
    for category, path in label_files.items():
        in_category = [answer for answer in answers if category_of[answer["question_id"]] == category]
        if not in_category:
            raise BenchmarkError(
                f"The answer file has no answer of POPE category {category!r} (label file {str(path)!r}); "
                "answer the whole question file, or leave that label file out of the folder."
            )
        says_yes = [not reads_no(answer["text"]) for answer in in_category]
        parts[category] = _category_scores(says_yes, read_json_lines(path, "POPE label file", ("label",)))
    mean_f1 = sum(part["f1"] for part in parts.values()) / len(parts)
    return {"score": 100 * mean_f1, "parts": parts, "submission": None}


__all__ = ["ANSWERING", "NAME", "reads_no", "score"]
