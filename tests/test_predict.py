"""`llava predict`: batched greedy answers equal to transformers' `generate` on each question alone, unpadded, with the
original's vicuna_v1 prompt; the three question layouts asked alike; the original's answer-line shape; resuming from a
killed run; seeded sampling; and every user mistake as one line and exit status 2."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from command_line.main import main as llava
from evaluation.predict import model_name, predict
from tests.conftest import random_image, refused, vicuna_v1_get_prompt

MAX_NEW_TOKENS = 8
# Different lengths, and questions without an image among those with one, so that batches are left-padded and mixed.
QUESTIONS = [
    {"question_id": 0, "image": "0.png", "text": "What is the colour of the square?"},
    {"question_id": 1, "text": "How many shapes are there?"},
    {"question_id": "two", "image": "1.png", "text": "Where is the blue circle? Answer with one word of the image."},
    {"question_id": 3, "image": "2.png", "text": "Where?"},
    {"question_id": 4, "text": "A green triangle on the right and a yellow star below it. What is the colour of it?"},
    {"question_id": 5, "image": "0.png", "text": "How many shapes are there?"},
    {"question_id": 6, "image": "1.png", "text": "The square is red. Where is the blue circle at the top left?"},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def question_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    (root / "images").mkdir()
    for seed in range(3):
        random_image(seed, size=(40 + 6 * seed, 52)).save(root / "images" / f"{seed}.png")
    write_jsonl(root / "questions.jsonl", QUESTIONS)
    return root


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(checkpoint: str, folder: Path, output: Path, *extra: str, questions: str = "questions.jsonl") -> list[dict]:
    """`llava predict` through the command line, as a user runs it; the answer lines."""
    llava(
        ["predict", checkpoint, "--questions", str(folder / questions), "--image-folder", str(folder / "images")]
        + ["--output", str(output), "--max-new-tokens", str(MAX_NEW_TOKENS), *extra]
    )
    return lines(output)


@pytest.fixture(scope="module")
def reference(llava_checkpoint, question_folder) -> list[str]:
    """Each question's greedy answer from transformers' `generate` on it alone (no padding), prompted as the original's
    model_vqa_loader.py prompts it: vicuna_v1's `get_prompt` of `<image>\\n` + text, after the BOS."""
    model = AutoModelForImageTextToText.from_pretrained(llava_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(llava_checkpoint)
    answers = []
    for question in QUESTIONS:
        image = question.get("image")
        text = ("<image>\n" if image else "") + question["text"]
        prompt = processor.tokenizer.bos_token + vicuna_v1_get_prompt([("USER", text), ("ASSISTANT", None)])
        pixels = Image.open(question_folder / "images" / image).convert("RGB") if image else None
        inputs = processor(images=pixels, text=prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            tokens = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        answers.append(processor.decode(tokens[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    assert len(set(answers)) > 1, "the reference answers must differ, or the comparison says little"
    return answers


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batched_answers_equal_generate_on_each_question_alone(
    llava_checkpoint, question_folder, reference, tmp_path, batch_size, capsys
):
    answers = run(llava_checkpoint, question_folder, tmp_path / "answers.jsonl", "--batch-size", str(batch_size))
    assert [answer["text"] for answer in answers] == reference
    assert "question" in capsys.readouterr().err  # the progress bar counts questions (its rate: questions/s)


def test_answer_lines_have_the_original_model_vqa_shape(llava_checkpoint, question_folder, tmp_path):
    answers = run(llava_checkpoint, question_folder, tmp_path / "out" / "answers.jsonl")
    keys = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
    assert [list(answer) for answer in answers] == [keys] * len(QUESTIONS)
    assert [answer["question_id"] for answer in answers] == [question["question_id"] for question in QUESTIONS]
    assert [answer["prompt"] for answer in answers] == [question["text"] for question in QUESTIONS]
    assert {answer["model_id"] for answer in answers} == {"tiny-llava"}  # the checkpoint folder's name
    assert all(answer["metadata"] == {} for answer in answers)
    answer_ids = [answer["answer_id"] for answer in answers]
    assert len(set(answer_ids)) == len(QUESTIONS) and all(len(bytes.fromhex(id_)) == 16 for id_ in answer_ids)


def test_llava_json_and_trl_rows_are_asked_as_the_question_jsonl(llava_checkpoint, question_folder, reference):
    """The first human turn is the question (an answer turn after it is ignored); images in the layout of each."""
    llava_records, trl_rows = [], []
    for question in QUESTIONS:
        marker = "<image>\n" if "image" in question else ""
        image = {"image": question["image"]} if "image" in question else {}
        turns = [{"from": "human", "value": marker + question["text"]}, {"from": "gpt", "value": "Ignored."}]
        llava_records.append({"id": question["question_id"], "conversations": turns, **image})
        messages = [{"role": "user", "content": question["text"]}, {"role": "assistant", "content": "Ignored."}]
        trl_rows.append({"id": question["question_id"], "messages": messages, "images": list(image.values())})
    (question_folder / "llava.json").write_text(json.dumps(llava_records))
    write_jsonl(question_folder / "trl.jsonl", trl_rows)
    for name in ("llava.json", "trl.jsonl"):
        output = question_folder / f"answers-{name}.jsonl"
        answers = run(llava_checkpoint, question_folder, output, questions=name)
        assert [answer["text"] for answer in answers] == reference, name
        assert [answer["question_id"] for answer in answers] == [question["question_id"] for question in QUESTIONS]
    prompts = [answer["prompt"] for answer in lines(question_folder / "answers-llava.json.jsonl")]
    assert prompts == [record["conversations"][0]["value"] for record in llava_records]  # as model_vqa_science's


def test_a_killed_run_is_resumed_and_its_cut_line_answered_again(llava_checkpoint, question_folder, tmp_path):
    complete = run(llava_checkpoint, question_folder, tmp_path / "complete.jsonl", "--batch-size", "2")
    output = tmp_path / "answers.jsonl"
    kept = "".join(json.dumps(answer) + "\n" for answer in complete[:3])
    output.write_text(kept + json.dumps(complete[3])[:25])  # killed while writing the fourth line
    resumed = run(llava_checkpoint, question_folder, output, "--batch-size", "2")
    assert resumed[:3] == complete[:3]  # kept as they were, answer ids included
    assert [answer["question_id"] for answer in resumed] == [question["question_id"] for question in QUESTIONS]
    assert [answer["text"] for answer in resumed] == [answer["text"] for answer in complete]


def test_a_complete_answer_file_is_left_as_it_is_without_loading_the_model(
    llava_checkpoint, question_folder, tmp_path
):
    output = tmp_path / "answers.jsonl"
    run(llava_checkpoint, question_folder, output)
    before = output.read_bytes()
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    questions, images = question_folder / "questions.jsonl", question_folder / "images"
    assert predict(str(not_a_model), questions, output, images, progress=False) == 0
    assert output.read_bytes() == before


def test_seeded_sampling_gives_the_same_answers_on_a_rerun(llava_checkpoint, question_folder, reference, tmp_path):
    sampling = ("--temperature", "1.0", "--top-p", "0.95", "--batch-size", "3")
    first = run(llava_checkpoint, question_folder, tmp_path / "first.jsonl", *sampling, "--seed", "7")
    second = run(llava_checkpoint, question_folder, tmp_path / "second.jsonl", *sampling, "--seed", "7")
    assert [answer["text"] for answer in first] == [answer["text"] for answer in second]
    # A tiny random model's next-token distribution is nearly flat: sampled answers are not the greedy ones.
    assert [answer["text"] for answer in first] != reference


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/home/user/llava-v1.5-13b/", "llava-v1.5-13b"),
        ("liuhaotian/llava-v1.5-7b", "llava-v1.5-7b"),
        ("runs/llava-lora/checkpoint-500", "llava-lora_checkpoint-500"),
    ],
)
def test_model_id_is_named_as_the_originals_get_model_name_from_path(path, name):
    assert model_name(path) == name


def mistake(folder: Path, name: str, rows: list | str | None) -> list[str]:
    """The command line of a question file `name` holding `rows` (a string: that text; None: no file)."""
    if isinstance(rows, str):
        (folder / name).write_text(rows)
    elif rows is not None:
        write_jsonl(folder / name, rows)
    return ["--questions", str(folder / name), "--output", str(folder / "answers.jsonl")]


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        (None, "does not exist"),
        ('{"question_id": 1, "text": "A?"}\n{"question_id": 2,\n', "line 2 is not valid JSON"),
        ([{"question_id": 1, "image": "0.png"}], "Question 1: 'text' must be the question"),
        ([{"id": "a", "text": "Where?"}], "Record 'a' has neither 'conversations' nor 'messages'"),
        ([{"question_id": 1, "image": "../0.png", "text": "Where?"}], "lies outside the image folder"),
        ([{"question_id": 1, "image": "9.png", "text": "Where?"}], "does not exist"),
        (
            [{"question_id": 1, "text": "A?"}, {"question_id": 1, "text": "A?"}],
            "holds question 1 twice with the same text",
        ),
        ([{"messages": [{"role": "user", "content": "Which?"}], "images": ["0.png", "1.png"]}], "one image"),
    ],
    ids=[
        "missing-file",
        "not-json",
        "no-text",
        "no-question",
        "outside-folder",
        "missing-image",
        "duplicate-id",
        "two-images",
    ],
)
def test_a_bad_question_file_is_one_line_and_exit_status_2(question_folder, tmp_path, capsys, rows, expected):
    (tmp_path / "images").mkdir()
    for image in (question_folder / "images").iterdir():
        (tmp_path / "images" / image.name).write_bytes(image.read_bytes())
    command = ["predict", "unused", *mistake(tmp_path, "questions.jsonl", rows)]
    assert expected in refused(capsys, [*command, "--image-folder", str(tmp_path / "images")])


def test_an_image_outside_the_folder_is_read_when_allowed(llava_checkpoint, question_folder, tmp_path):
    (tmp_path / "images").mkdir()
    random_image(0).save(tmp_path / "outside.png")
    write_jsonl(tmp_path / "questions.jsonl", [{"question_id": 1, "image": "../outside.png", "text": "Where?"}])
    answers = run(llava_checkpoint, tmp_path, tmp_path / "answers.jsonl", "--allow-images-outside-folder")
    assert [answer["question_id"] for answer in answers] == [1]


def test_a_folder_that_is_not_a_checkpoint_is_one_line_and_exit_status_2(question_folder, tmp_path, capsys):
    command = ["predict", str(tmp_path), "--questions", str(question_folder / "questions.jsonl")]
    command += ["--image-folder", str(question_folder / "images"), "--output", str(tmp_path / "answers.jsonl")]
    assert str(tmp_path) in refused(capsys, command)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"question_id": "elsewhere", "text": "Yes."}\n',
            "answers question 'elsewhere', which is not in the question",
        ),
        ('{"question_id": 1, "text": "Yes."}\nYes.\n{"question_id": 3, "text": "No."}\n', "line 2 is not an answer"),
    ],
    ids=["other-questions", "not-an-answer-line"],
)
def test_an_answer_file_that_is_not_this_files_is_one_line_and_exit_status_2(
    question_folder, tmp_path, capsys, text, expected
):
    output = tmp_path / "answers.jsonl"
    output.write_text(text)
    command = ["predict", "unused", "--questions", str(question_folder / "questions.jsonl"), "--output", str(output)]
    command += ["--image-folder", str(question_folder / "images")]
    assert expected in refused(capsys, command)
    assert output.read_text() == text  # left as it was
