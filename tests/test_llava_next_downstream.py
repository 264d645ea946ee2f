"""A LLaVA-NeXT (1.6) checkpoint in the downstream commands: `llava predict` (batched, left-padded, images of
different sizes and so different token counts in one batch, a batch without images), `llava chat --prompt` with and
without an image, and `llava info`.

The reference is the model's own `generate()` on each question alone, with inputs built by the processor from the
original's vicuna_v1 prompt (`tests/conftest.py`), independently of the commands' code."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from command_line.main import main as llava
from tests.conftest import random_image, vicuna_v1_get_prompt

MAX_NEW_TOKENS = 8
# Sizes (width, height) whose grids differ on the tiny tower's pinpoints, so the first batch of two mixes image token
# counts; the last question, alone in its batch, has no image (a NeXT processor cannot count tokens of no image).
SIZES = {"wide.png": (64, 20), "tall.png": (13, 47)}
QUESTIONS = [
    {"question_id": 0, "image": "wide.png", "text": "What is the colour of the square?"},
    {"question_id": 1, "image": "tall.png", "text": "Where is the blue circle? Answer with one word."},
    {"question_id": 2, "text": "How many shapes are there?"},
]


@pytest.fixture(scope="module")
def question_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("questions")
    (root / "images").mkdir()
    for seed, (name, (width, height)) in enumerate(SIZES.items()):
        random_image(seed, size=(height, width)).save(root / "images" / name)
    (root / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in QUESTIONS))
    return root


def reference_answer(
    checkpoint: str, image: Image.Image | None, text: str, max_new_tokens: int = MAX_NEW_TOKENS
) -> str:
    """The greedy answer of `generate()` on one question alone: no padding, the original's vicuna_v1 prompt."""
    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    question = ("<image>\n" if image else "") + text
    prompt = processor.tokenizer.bos_token + vicuna_v1_get_prompt([("USER", question), ("ASSISTANT", None)])
    if image is None:  # the original tokenizes a prompt without <image> as a plain text (`tokenizer_image_token`)
        inputs = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    else:
        inputs = processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


@pytest.fixture(scope="module")
def reference(next_checkpoint, question_folder) -> list[str]:
    processor = AutoProcessor.from_pretrained(next_checkpoint)
    counts = {processor.num_image_tokens(size[::-1]) for size in SIZES.values()}
    assert len(counts) == len(SIZES), "the images must expand to different token counts, or padding says little"
    answers = []
    for question in QUESTIONS:
        image = question.get("image") and Image.open(question_folder / "images" / question["image"]).convert("RGB")
        answers.append(reference_answer(next_checkpoint, image, question["text"]))
    assert len(set(answers)) > 1, "the reference answers must differ, or the comparison says little"
    return answers


def test_predict_answers_a_next_checkpoint_in_batches_as_generate_alone(
    next_checkpoint, question_folder, reference, tmp_path
):
    output = tmp_path / "answers.jsonl"
    llava(
        ["predict", next_checkpoint, "--questions", str(question_folder / "questions.jsonl")]
        + ["--image-folder", str(question_folder / "images"), "--output", str(output)]
        + ["--max-new-tokens", str(MAX_NEW_TOKENS), "--batch-size", "2", "--device", "cpu"]
    )
    answers = [json.loads(line) for line in output.read_text().splitlines()]
    assert [answer["question_id"] for answer in answers] == [0, 1, 2]
    assert [answer["text"] for answer in answers] == reference


@pytest.mark.parametrize("index", [1, 2], ids=["image", "text-only"])
def test_chat_prompt_answers_a_next_checkpoint_as_generate(next_checkpoint, question_folder, reference, capsys, index):
    question = QUESTIONS[index]
    image = ["--image", str(question_folder / "images" / question["image"])] if "image" in question else []
    llava(["chat", next_checkpoint, *image, "--prompt", question["text"]]
          + ["--max-new-tokens", str(MAX_NEW_TOKENS), "--device", "cpu"])  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1] == reference[index]


def test_info_describes_a_next_checkpoint_and_its_tiling(next_checkpoint, capsys):
    llava(["info", next_checkpoint])
    out = capsys.readouterr().out
    config = json.loads((Path(next_checkpoint) / "config.json").read_text())
    assert "model type" in out and "llava_next_plugin" in out
    assert "tiling" in out and str(config["image_grid_pinpoints"]) in out
