"""`llava eval` with a LLaVA-NeXT (1.6) checkpoint: POPE through `llava eval suite` (batches of images whose tiles
and token counts differ) and ScienceQA through its own command (batches mixing image and text-only problems).

The reference for every answer is the model's own `generate()` on the question alone
(`tests.test_llava_next_downstream.reference_answer`, the original's vicuna_v1 prompt), and each score is counted by
hand from those answers, as the original's scripts count.
"""

import json
from pathlib import Path

import pytest
from PIL import Image

from command_line.main import main as llava
from evaluation.pope import NAME as POPE
from evaluation.results import VQA_LOADER_ANSWERING
from evaluation.scienceqa import INSTRUCTION
from tests.conftest import random_image
from tests.test_llava_next_downstream import reference_answer
from tests.test_scienceqa import PROBLEMS, release  # noqa: F401  (a tiny ScienceQA release folder)

# POPE questions (as llava_pope_test.jsonl holds them) on images of different sizes (height, width), one label each.
POPE_QUESTIONS = [
    ("random", (20, 64), "Is there a square in the image?", "yes"),
    ("popular", (47, 13), "Is there a circle in the image?", "no"),
    ("adversarial", (40, 52), "Is there a dog in the image?", "no"),
]
INSTRUCTION_LINE = "Answer the question using a single word or phrase."


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    """eval.zip's `pope/` folder: the question file, `val2014/` and `coco/coco_pope_<category>.json` labels."""
    folder = tmp_path_factory.mktemp("eval") / "pope"
    (folder / "val2014").mkdir(parents=True)
    (folder / "coco").mkdir()
    lines = []
    for index, (category, size, text, label) in enumerate(POPE_QUESTIONS):
        name = f"COCO_val2014_{index:012d}.jpg"
        random_image(30 + index, size).save(folder / "val2014" / name, quality=95)
        lines.append(
            {"question_id": index, "image": name, "text": f"{text}\n{INSTRUCTION_LINE}", "category": category}
        )
        (folder / "coco" / f"coco_pope_{category}.json").write_text(json.dumps({"label": label}) + "\n")
    (folder / "llava_pope_test.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder.parent


def test_suite_answers_pope_with_a_next_checkpoint_as_generate_alone(next_checkpoint, eval_dir, tmp_path):
    out = tmp_path / "out"
    llava(["eval", "suite", next_checkpoint, "--data", str(eval_dir), "--output-dir", str(out)]
          + ["--batch-size", "3", "--device", "cpu"])  # fmt: skip
    answers = [json.loads(line) for line in (out / "pope_answers.jsonl").read_text().splitlines()]
    max_new_tokens = VQA_LOADER_ANSWERING["max_new_tokens"]
    expected = []
    for index, (_, _, text, _) in enumerate(POPE_QUESTIONS):
        image = Image.open(eval_dir / "pope" / "val2014" / f"COCO_val2014_{index:012d}.jpg").convert("RGB")
        expected.append(reference_answer(next_checkpoint, image, f"{text}\n{INSTRUCTION_LINE}", max_new_tokens))
    assert len(set(expected)) > 1, "the reference answers must differ, or a crossed answer would not show"
    assert [answer["text"] for answer in answers] == expected
    # eval_pope.py by hand: "no" where the first sentence has the word No / not / no; one question per category, so
    # its F1 is 1 for a true positive and 0 otherwise.
    f1 = []
    for answer, (_, _, _, label) in zip(answers, POPE_QUESTIONS, strict=True):
        says_yes = not {"No", "not", "no"} & set(answer["text"].split(".")[0].replace(",", "").split(" "))
        f1.append(float(says_yes and label == "yes"))
    results = json.loads((out / f"{POPE}_results.json").read_text())
    assert results["score"] == pytest.approx(100 * sum(f1) / 3)


# The static KV cache is the GPU default (and the slower one on a CPU).
@pytest.mark.parametrize("cache", ["--no-static-cache", pytest.param("--static-cache", marks=pytest.mark.slow)])
def test_scienceqa_answers_a_next_checkpoint_as_generate_alone(next_checkpoint, release, tmp_path, cache):  # noqa: F811
    out = tmp_path / "out"
    llava(["eval", "scienceqa", next_checkpoint, "--data", str(release), "--output-dir", str(out)]
          + ["--batch-size", "3", "--max-new-tokens", "12", "--device", "cpu", cache])  # fmt: skip
    answers = [json.loads(line) for line in (out / "scienceqa_answers.jsonl").read_text().splitlines()]
    assert [answer["question_id"] for answer in answers] == list(PROBLEMS)
    expected = []
    for answer in answers:
        # model_vqa_science.py's question: the answer line's prompt (the release's text, `<image>\n` first where
        # there is an image) with the single-prediction instruction on its last line.
        text = answer["prompt"].removeprefix("<image>\n")
        assert text.endswith(f"\n{INSTRUCTION}")
        pid = answer["question_id"]
        image = None
        if PROBLEMS[pid]["image"]:
            folder = release / ("test" if pid == "p7" else "images/test") / pid
            image = Image.open(folder / PROBLEMS[pid]["image"]).convert("RGB")
        expected.append(reference_answer(next_checkpoint, image, text, 12))
    assert sum(problem["image"] is not None for problem in PROBLEMS.values()) not in (0, len(PROBLEMS))
    assert len(set(expected)) > 1, "the reference answers must differ, or a crossed answer would not show"
    assert [answer["text"] for answer in answers] == expected
