"""`llava generate-data`: symbolic contexts from COCO annotations, the shipped prompts, reply parsing and validation,
a resumable run against a scripted teacher behind a real loopback server, a local teacher model, and stage-1 data."""

import json
import random
from pathlib import Path

import pytest

from command_line.main import main as llava
from processing.llava_data import read_records
from tests.openai_server import ScriptedServer
from tests.tiny_backbones import save_tiny_language_model
from trainers.generate_data import (
    KINDS,
    InstructionDataError,
    load_prompt,
    load_prompt_folder,
    parse_reply,
    read_coco,
    symbolic_context,
    teacher_messages,
    validate_record,
)

ORIGINAL_PROMPTS = Path(__file__).parent / "fixtures" / "original_prompts"  # files of the original's folder
IMAGES = [  # out of id order on purpose: records come out by image id
    {"id": 3, "file_name": "000000000003.jpg", "width": 500, "height": 400},
    {"id": 1, "file_name": "000000000001.jpg", "width": 640, "height": 480},
    {"id": 2, "file_name": "000000000002.jpg", "width": 320, "height": 320},
    {"id": 4, "file_name": "000000000004.jpg", "width": 320, "height": 320},  # no captions
]
CAPTIONS = [
    {"id": 10, "image_id": 1, "caption": "A man walks a dog."},
    {"id": 11, "image_id": 1, "caption": " A person with a dog in a park. "},
    {"id": 12, "image_id": 2, "caption": "A red bus."},
    {"id": 13, "image_id": 3, "caption": "A cat sleeps."},
]
OBJECTS = [
    {"id": 20, "image_id": 1, "category_id": 1, "bbox": [64, 48, 256, 192]},
    {"id": 21, "image_id": 1, "category_id": 18, "bbox": [608, 400, 80, 100]},  # runs past the edge: clipped
    {"id": 22, "image_id": 3, "category_id": 17, "bbox": [0, 0, 250, 100]},
]
CATEGORIES = [{"id": 1, "name": "person"}, {"id": 17, "name": "cat"}, {"id": 18, "name": "dog"}]
GOOD_CONVERSATION = (
    "Question: What animal is with the man?\nAnswer: A dog.\n"
    "Question: Where are they?\nAnswer: In a park,\nin the sun."
)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("coco")
    (root / "captions.json").write_text(json.dumps({"images": IMAGES, "annotations": CAPTIONS}))
    instances = {"images": IMAGES, "annotations": OBJECTS, "categories": CATEGORIES}
    (root / "instances.json").write_text(json.dumps(instances))
    (root / "images").mkdir()
    for image in IMAGES:
        (root / "images" / image["file_name"]).write_bytes(b"")  # the training reader checks that files exist
    return root


def scripted_teacher(body: dict) -> str:
    context = body["messages"][-1]["content"]
    if context.startswith("A man walks a dog."):
        return GOOD_CONVERSATION
    if context.startswith("A red bus."):
        return "Sure! Here is the conversation.\nQuestion: What is red?\nAnswer: The bus."
    return "Question: Is the cat awake?\nAnswer: No, it is asleep."


def command(kind: str, coco: Path, output: Path, *teacher: str) -> list[str]:
    files = ["--captions", str(coco / "captions.json"), "--instances", str(coco / "instances.json")]
    return [
        "generate-data",
        kind,
        *files,
        "--output",
        str(output),
        "--teacher-cache",
        str(output.parent / "c"),
        *teacher,
    ]


def test_the_symbolic_context_holds_captions_then_normalised_boxes(coco):
    images = read_coco(coco / "captions.json", coco / "instances.json")
    assert [image.id for image in images] == ["1", "2", "3", "4"]
    assert symbolic_context(images[0]) == (
        "A man walks a dog.\nA person with a dog in a park.\n\n"
        "person: [0.100, 0.100, 0.500, 0.500]\n"  # (64, 48) + (256, 192) in a 640 x 480 image
        "dog: [0.950, 0.833, 1.000, 1.000]"
    )
    assert symbolic_context(images[1]) == "A red bus."  # no objects: captions alone


def test_an_annotation_of_an_unknown_image_is_named(coco, tmp_path):
    captions = {"images": IMAGES, "annotations": [*CAPTIONS, {"id": 99, "image_id": 7, "caption": "?"}]}
    (tmp_path / "captions.json").write_text(json.dumps(captions))
    with pytest.raises(InstructionDataError, match=r"captions.json': caption 99 is of image 7"):
        read_coco(tmp_path / "captions.json")


@pytest.mark.parametrize("kind", KINDS)
def test_the_shipped_few_shot_examples_parse_as_their_type(kind):
    prompt = load_prompt(kind)
    messages = teacher_messages(prompt, "A context.")
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * len(prompt["examples"]) + ["user"]
    for example in prompt["examples"]:
        pairs = parse_reply(kind, example["response"], prompt, random.Random(0))
        assert pairs and all(question and answer for question, answer in pairs)
    assert bool(prompt.get("questions")) == (kind == "detail")


@pytest.mark.parametrize(
    "kind, reply, problem",
    [
        ("conversation", "Here you go.\nQuestion: a?\nAnswer: b.", "does not start with 'Question:'"),
        ("conversation", "Question: a?\nQuestion: b?\nAnswer: c.", r"turns are \['Question', 'Question', 'Answer'\]"),
        ("conversation", "Question: a?", r"turns are \['Question'\]"),
        ("conversation", "no labels at all", "does not start with 'Question:'"),
        ("complex", "Question: a?\nAnswer: b.\nQuestion: c?\nAnswer: d.", "must hold one question and answer, not 2"),
    ],
)
def test_replies_that_are_not_question_answer_pairs_are_rejected(kind, reply, problem):
    with pytest.raises(InstructionDataError, match=problem):
        parse_reply(kind, reply, load_prompt(kind), random.Random(0))


def record(*turns: tuple[str, str]) -> dict:
    return {"id": "r", "image": "x.jpg", "conversations": [{"from": who, "value": text} for who, text in turns]}


@pytest.mark.parametrize(
    "bad, problem",
    [
        (record(("human", "<image>\nq?"), ("human", "a.")), "turn 1 is from 'human' where 'gpt' was due"),
        (record(("human", "<image>\n"), ("gpt", "a.")), r"turn 0 \(human\) is empty"),
        (record(("human", "<image>\nq?"), ("gpt", " ")), r"turn 1 \(gpt\) is empty"),
        (record(("human", "q?"), ("gpt", "a.")), "<image> must open the first human turn"),
        (
            record(("human", "<image>\nq?"), ("gpt", "<image> a.")),
            "<image> must open the first human turn and appear nowhere else",
        ),
        (record(("human", "<image>\nq?")), "1 turns"),
    ],
)
def test_invalid_records_are_refused_with_the_reason(bad, problem):
    with pytest.raises(InstructionDataError, match=f"Record 'r': {problem}"):
        validate_record(bad)


def test_a_run_resumes_after_teacher_failures_and_a_torn_line(coco, tmp_path, capsys):
    output = tmp_path / "llava_conversation.json"
    progress = Path(f"{output}.progress.jsonl")
    with ScriptedServer(scripted_teacher) as server:
        teacher = ["--teacher-url", server.url, "--teacher-model", "teacher-1", "--teacher-retries", "0"]
        # One worker, so images are asked in id order; image 3's reply is broken JSON: a teacher error.
        server.script("answer", "answer", "malformed")
        with pytest.raises(SystemExit) as exit:
            llava(command("conversation", coco, output, *teacher, "--teacher-workers", "1"))
        assert exit.value.code == 1
        report = capsys.readouterr().out
        assert "failed 1 (teacher errors)" in report and "is not written yet" in report
        assert not output.exists()  # a partial run never looks complete
        assert [json.loads(line)["image_id"] for line in progress.read_text().splitlines()] == ["1", "2", "4"]

        system, *examples, context = server.requests[0]["messages"]
        assert system == {"role": "system", "content": load_prompt("conversation")["system"]}
        assert len(examples) == 2 * len(load_prompt("conversation")["examples"])
        assert context["content"].startswith("A man walks a dog.\n")

        with progress.open("a") as handle:  # a crash in the middle of writing a line
            handle.write('{"image_id": "3", "kind": "conver')
        llava(command("conversation", coco, output, *teacher, "--teacher-workers", "4"))
        assert len(server.requests) == 4  # only image 3 was asked again
        assert "3 of them done by an earlier run" in capsys.readouterr().out

        records = json.loads(output.read_text())
        assert [r["id"] for r in records] == ["1-conversation", "3-conversation"]
        assert records[0]["conversations"] == [
            {"from": "human", "value": "<image>\nWhat animal is with the man?"},
            {"from": "gpt", "value": "A dog."},
            {"from": "human", "value": "Where are they?"},
            {"from": "gpt", "value": "In a park,\nin the sun."},
        ]
        rejected = json.loads(Path(f"{output}.rejected.json").read_text())
        assert [(r["image_id"], r["rejected"]) for r in rejected] == [
            ("2", "the reply does not start with 'Question:' but with 'Sure! Here is the conversation.'"),
            ("4", "the image has no captions"),
        ]
        assert rejected[0]["reply"].startswith("Sure!")
        rows = read_records(output, coco / "images")  # what training reads
        assert [row["images"] for row in rows] == [
            [str(coco / "images/000000000001.jpg")],
            [str(coco / "images/000000000003.jpg")],
        ]

        llava(command("conversation", coco, output, *teacher))  # nothing left to do: no call at all
        assert len(server.requests) == 4
        assert json.loads(output.read_text()) == records


def test_detail_records_ask_a_listed_question_drawn_by_the_seed(coco, tmp_path):
    with ScriptedServer(lambda body: "A calm scene.") as server:
        teacher = ["--teacher-url", server.url, "--teacher-model", "t", "--limit", "3"]
        llava(command("detail", coco, tmp_path / "a.json", *teacher))
        llava(command("detail", coco, tmp_path / "b.json", *teacher))
    first, second = (json.loads((tmp_path / name).read_text()) for name in ("a.json", "b.json"))
    assert first == second and len(first) == 3
    questions = load_prompt("detail")["questions"]
    for generated in first:
        question, answer = (turn["value"] for turn in generated["conversations"])
        assert question.removeprefix("<image>\n") in questions and answer == "A calm scene."


def test_a_local_teacher_model_runs_and_its_unusable_replies_are_rejected(coco, tokenizer, tmp_path, capsys):
    model = save_tiny_language_model(tmp_path / "teacher", tokenizer)
    teacher = ["--teacher-model", str(model), "--teacher-max-tokens", "6", "--teacher-temperature", "0"]
    llava(command("complex", coco, tmp_path / "complex.json", *teacher))
    assert json.loads((tmp_path / "complex.json").read_text()) == []
    rejected = json.loads((tmp_path / "complex.json.rejected.json").read_text())
    assert [r["image_id"] for r in rejected] == ["1", "2", "3", "4"]
    assert all(isinstance(r["reply"], str) for r in rejected[:3])  # the model's words are kept for inspection
    assert "rejected 4" in capsys.readouterr().out


def test_stage1_expansion_pairs_a_caption_with_a_brief_instruction(coco, tmp_path):
    files = ["--captions", str(coco / "captions.json")]
    llava(["generate-data", "stage1", *files, "--output", str(tmp_path / "a.json"), "--seed", "3"])
    llava(["generate-data", "stage1", *files, "--output", str(tmp_path / "b.json"), "--seed", "3"])
    records = json.loads((tmp_path / "a.json").read_text())
    assert records == json.loads((tmp_path / "b.json").read_text())
    captions = {str(c["image_id"]): [] for c in CAPTIONS}
    for caption in CAPTIONS:
        captions[str(caption["image_id"])].append(caption["caption"].strip())
    assert [r["id"] for r in records] == ["1", "2", "3"]
    for generated in records:
        question, answer = (turn["value"] for turn in generated["conversations"])
        assert question.removeprefix("<image>\n") in load_prompt("stage1")["questions"]
        assert answer in captions[generated["id"]]
    assert json.loads((tmp_path / "a.json.rejected.json").read_text())[0]["image_id"] == "4"
    assert len(read_records(tmp_path / "a.json", coco / "images")) == 3


def original_file(kind_folder: str, name: str) -> str:
    return (ORIGINAL_PROMPTS / kind_folder / name).read_text()


def test_the_original_prompt_folder_gives_the_papers_messages_in_file_order(coco):
    """As the paper's prompt-construction table: the system message, then per few-shot example a user message (its
    caps file) and an assistant message (its conv file), in the order of their numbers, then the image's context."""
    images = read_coco(coco / "captions.json", coco / "instances.json")
    prompt = load_prompt_folder(ORIGINAL_PROMPTS, "complex")
    context = symbolic_context(images[0], prompt["boxes"], prompt["rounded"])
    # Numbers as in the original's caps files and caps_boxes_coco2014_val_80.jsonl: round(v, 3), printed by Python.
    assert context == (
        "A man walks a dog.\nA person with a dog in a park.\n\n"
        "person: [0.1, 0.1, 0.5, 0.5]\ndog: [0.95, 0.833, 1.0, 1.0]"
    )
    folder = "complex_reasoning"
    expected = [{"role": "system", "content": original_file(folder, "system_message.txt")}]
    for number in ("000", "001", "002"):
        expected += [
            {"role": "user", "content": original_file(folder, f"{number}_caps.txt")},
            {"role": "assistant", "content": original_file(folder, f"{number}_conv.txt")},
        ]
    expected.append({"role": "user", "content": context})
    assert teacher_messages(prompt, context) == expected
    assert expected[1]["content"].startswith("A man wearing multiple neck ties making a goofy face.")


def test_the_original_conversation_prompt_asks_with_the_captions_alone(coco):
    """Its examples (and its system message, "five sentences") hold no boxes: nor does the query."""
    images = read_coco(coco / "captions.json", coco / "instances.json")
    prompt = load_prompt_folder(ORIGINAL_PROMPTS, "conversation")
    assert symbolic_context(images[0], prompt["boxes"], prompt["rounded"]) == (
        "A man walks a dog.\nA person with a dog in a park."
    )
    assert load_prompt_folder(ORIGINAL_PROMPTS, "detail")["boxes"]


def test_replies_in_the_original_format_parse_without_the_separators():
    prompt = load_prompt_folder(ORIGINAL_PROMPTS, "conversation")
    pairs = parse_reply("conversation", prompt["examples"][0]["response"], prompt, random.Random(0))
    assert len(pairs) == 4
    assert pairs[0] == ("What color is the fire hydrant in the image?", "The fire hydrant in the image is red.")
    assert pairs[3][1].startswith("The image suggests") and pairs[3][1].endswith("residents and infrastructure.")
    complex_prompt = load_prompt_folder(ORIGINAL_PROMPTS, "complex")
    ((question, answer),) = parse_reply("complex", complex_prompt["examples"][0]["response"], prompt, random.Random(0))
    assert question == "What is unusual about this photo?" and "===" not in answer


def test_a_prompt_folder_with_an_unpaired_or_missing_file_is_named(tmp_path):
    with pytest.raises(InstructionDataError, match=r"conversation/system_message.txt' does not exist"):
        load_prompt_folder(tmp_path, "conversation")
    (tmp_path / "complex_reasoning").mkdir()
    (tmp_path / "complex_reasoning" / "system_message.txt").write_text("S")
    (tmp_path / "complex_reasoning" / "000_caps.txt").write_text("c")
    with pytest.raises(InstructionDataError, match=r"000_caps.txt' has no conv file beside it"):
        load_prompt_folder(tmp_path, "complex")


def test_generate_data_sends_the_original_prompts_with_prompts(coco, tmp_path):
    reply = "Question:\nWhat is the man doing?\n===\nAnswer:\nWalking his dog."
    with ScriptedServer(lambda body: reply) as server:
        teacher = ["--teacher-url", server.url, "--teacher-model", "t", "--limit", "1"]
        output = tmp_path / "complex.json"
        llava([*command("complex", coco, output, *teacher), "--prompts", str(ORIGINAL_PROMPTS)])
    (request,) = server.requests
    assert request["messages"][0]["content"] == original_file("complex_reasoning", "system_message.txt")
    assert len(request["messages"]) == 1 + 2 * 3 + 1
    assert json.loads(output.read_text())[0]["conversations"] == [
        {"from": "human", "value": "<image>\nWhat is the man doing?"},
        {"from": "gpt", "value": "Walking his dog."},
    ]
