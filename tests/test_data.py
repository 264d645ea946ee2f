"""Training data, from files to batches: LLaVA JSON and TRL `messages` rows, loss masks, length and bad records.

Every expectation comes from outside the code under test: prompts from the original `Conversation.get_prompt()`
(`vicuna_v1_get_prompt`), token ids from tokenizing that prompt and repeating each image token, the loss text from
joining the unmasked tokens (`unmasked_text`), lengths from the collator's own output. Data and images are written
under `tmp_path`, and batches are built as `trainers/train.py` builds them: rows, `Dataset.from_list`, collator.
"""

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from datasets import Dataset
from PIL import Image

from modeling_llava.chat_templates import CHAT_TEMPLATES
from processing.collator import LlavaDataCollator
from processing.data_checks import DataProblems, check_images
from processing.lengths import drop_overflowing, measure_lengths, sample_length
from processing.llava_data import DataError, convert_dataset, read_records, rows_to_dataset
from tests.conftest import (
    A1,
    A2,
    A3,
    CAPTION,
    Q1,
    Q2,
    Q3,
    expand_image_ids,
    random_image,
    unmasked_text,
    vicuna_v1_get_prompt,
)

IGNORE = -100


def human(value: str) -> dict:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict:
    return {"from": "gpt", "value": value}


def write_images(folder: Path, names: list[str]) -> Path:
    folder.mkdir(exist_ok=True)
    for seed, name in enumerate(names):
        random_image(seed).save(folder / name)
    return folder


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def collate(processor, rows: list[dict] | Dataset, template: str = "vicuna_v1") -> dict:
    """Rows (through `Dataset.from_list`) or a dataset's rows through the collator, built as `trainers/train.py`
    builds it."""
    collator = LlavaDataCollator(processor=processor, assistant_only_loss=True, chat_template=CHAT_TEMPLATES[template])
    return collator(list(rows if isinstance(rows, Dataset) else Dataset.from_list(rows)))


def original_ids(processor, turns: list[tuple[str, str]]) -> list[int]:
    """The ids of the original vicuna_v1 prompt (BOS added by the tokenizer), each image token repeated."""
    ids = processor.tokenizer(vicuna_v1_get_prompt(turns)).input_ids
    return expand_image_ids(ids, processor.image_token_id, processor.image_seq_length)


# --- Reading LLaVA JSON -----------------------------------------------------------------------------------------

# Each record with the turns the original LLaVA trains on: `preprocess_multimodal` moves `<image>` to the start
# of the turn (stripping it); text without a marker is kept as written (the trailing "\n" below included).
LLAVA_RECORDS = {
    "multi-turn": (
        {
            "image": "a.png",
            "conversations": [human(f"<image>\n{Q1}"), gpt(A1), human(Q2), gpt(A2), human(Q3), gpt(A3)],
        },
        [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1), ("USER", Q2), ("ASSISTANT", A2)]
        + [("USER", Q3), ("ASSISTANT", A3)],
    ),
    "image-at-end": (
        {"image": "b.png", "conversations": [human(f"{Q1}\n<image>"), gpt(A1)]},
        [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1)],
    ),
    # The original's preprocess_multimodal moves the image to the start of the turn that wrote it.
    "image-in-later-turn": (
        {"image": "a.png", "conversations": [human(Q1), gpt(A1), human(f"{Q2} <image>"), gpt(A2)]},
        [("USER", Q1), ("ASSISTANT", A1), ("USER", f"<image>\n{Q2}"), ("ASSISTANT", A2)],
    ),
    "text-only": (
        {"conversations": [human(Q3), gpt(A3 + "\n")]},
        [("USER", Q3), ("ASSISTANT", A3 + "\n")],
    ),
}


@pytest.fixture
def llava_file(tmp_path) -> tuple[Path, Path]:
    """A LLaVA JSON file of every record in `LLAVA_RECORDS` (ids = their keys) and its image folder."""
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    records = [{"id": name, **record} for name, (record, _) in LLAVA_RECORDS.items()]
    return write_json(tmp_path / "llava.json", records), folder


def test_reading_n_good_records_gives_n_rows_in_order(llava_file):
    rows = read_records(*llava_file)
    assert [row["id"] for row in rows] == list(LLAVA_RECORDS)


@pytest.mark.parametrize("name", LLAVA_RECORDS)
def test_llava_record_renders_the_original_prompt(processor, llava_file, name):
    row = next(row for row in read_records(*llava_file) if row["id"] == name)
    expected = processor.tokenizer.bos_token + vicuna_v1_get_prompt(LLAVA_RECORDS[name][1])
    assert processor.apply_chat_template(row["messages"]) == expected


def test_image_paths_are_resolved_against_the_folder_and_not_opened(llava_file):
    data, folder = llava_file
    for name in ("a.png", "b.png"):  # garbage now: reading must not open them
        (folder / name).write_bytes(b"not an image")
    rows = read_records(data, folder)
    assert [row["images"] for row in rows] == [
        [str(folder / record.get("image"))] if "image" in record else [] for record, _ in LLAVA_RECORDS.values()
    ]


# --- TRL `messages` rows and Hub datasets ------------------------------------------------------------------------

ONE_TURN = [("USER", f"<image>\n{Q1}"), ("ASSISTANT", A1)]
MESSAGES_RECORDS = {
    # TRL's own format: no placeholder, the images go before the first user message.
    "string-content": [{"role": "user", "content": Q1}, {"role": "assistant", "content": A1}],
    "string-content-with-marker": [
        {"role": "user", "content": f"<image>\n{Q1}"},
        {"role": "assistant", "content": A1},
    ],
    "list-content": [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": Q1}]},
        {"role": "assistant", "content": [{"type": "text", "text": A1}]},
    ],
}


def hub_dataset(content: str) -> Dataset:
    """A Hub-style dataset of two rows: messages with `content` as in `MESSAGES_RECORDS`, decoded PIL images."""
    return Dataset.from_list([{"messages": MESSAGES_RECORDS[content], "images": [random_image(i)]} for i in (0, 1)])


@pytest.mark.parametrize("name", MESSAGES_RECORDS)
def test_messages_record_renders_the_original_prompt(processor, tmp_path, name):
    folder = write_images(tmp_path / "images", ["a.png"])
    record = {"id": name, "messages": MESSAGES_RECORDS[name], "images": "a.png"}  # one image, not in a list
    data = write_json(tmp_path / "messages.json", [record])
    (row,) = read_records(data, folder)
    assert row["images"] == [str(folder / "a.png")]
    expected = processor.tokenizer.bos_token + vicuna_v1_get_prompt(ONE_TURN)
    assert processor.apply_chat_template(row["messages"]) == expected


@pytest.mark.parametrize("content", ["string-content", "list-content"])
def test_hub_dataset_rows_render_the_original_prompt(processor, content):
    rows = convert_dataset(hub_dataset(content))
    assert [row["id"] for row in rows] == ["#0", "#1"]
    for index, row in enumerate(rows):
        (image,) = row["images"]  # the file's bytes, decoded only when the collator batches the sample
        assert set(image) == {"bytes", "path"}
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image["bytes"]))), random_image(index))
        rendered = processor.apply_chat_template(row["messages"])
        assert rendered == processor.tokenizer.bos_token + vicuna_v1_get_prompt(ONE_TURN)


@pytest.mark.parametrize("content", ["string-content", "list-content"])
def test_hub_dataset_images_reach_the_collator_decoded(processor, content):
    batch = collate(processor, convert_dataset(hub_dataset(content)))
    expected = processor.image_processor([random_image(0), random_image(1)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(batch["pixel_values"].numpy(), expected, atol=1e-6)


# --- Labels ------------------------------------------------------------------------------------------------------

# A three-turn record (the image in the first turn) and a shorter one, so that the batch pads the second.
LONG_TURNS = LLAVA_RECORDS["multi-turn"][1]
SHORT_TURNS = [("USER", f"<image>\n{Q2}"), ("ASSISTANT", A2)]
BATCH_TURNS = [LONG_TURNS, SHORT_TURNS]


@pytest.fixture
def vicuna_batch(processor, tmp_path) -> dict:
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    records = [
        {"id": "long", **LLAVA_RECORDS["multi-turn"][0]},
        {"id": "short", "image": "b.png", "conversations": [human(f"<image>\n{Q2}"), gpt(A2)]},
    ]
    return collate(processor, read_records(write_json(tmp_path / "llava.json", records), folder))


def test_vicuna_labels_are_the_answers_and_their_eos(processor, vicuna_batch):
    ids, labels = vicuna_batch["input_ids"].tolist(), vicuna_batch["labels"].tolist()
    # `unmasked_text` joins tokens, so each answer keeps the leading space that `decode` strips from its first token.
    texts = [unmasked_text(processor, i, [x != IGNORE for x in row]) for i, row in zip(ids, labels, strict=True)]
    assert texts == [f" {A1}</s> {A2}</s> {A3}</s>", f" {A2}</s>"]


def test_vicuna_batch_is_the_original_prompt_right_padded(processor, vicuna_batch):
    for ids, mask, turns in zip(vicuna_batch["input_ids"], vicuna_batch["attention_mask"], BATCH_TURNS, strict=True):
        expected = original_ids(processor, turns)
        assert ids[: len(expected)].tolist() == expected
        assert mask.tolist() == [1] * len(expected) + [0] * (len(ids) - len(expected))
    assert vicuna_batch["attention_mask"][1].eq(0).any()  # the short sample is padded


def test_vicuna_labels_are_the_original_answer_spans(processor, vicuna_batch):
    for labels, turns in zip(vicuna_batch["labels"].tolist(), BATCH_TURNS, strict=True):
        ids = original_ids(processor, turns)
        expected = [IGNORE] * len(labels)  # system prompt, user turns, images and padding
        for k, (role, _) in enumerate(turns):
            if role == "ASSISTANT":  # from after "ASSISTANT:" through "</s>", as the original's preprocess_v1 keeps
                start = len(original_ids(processor, turns[:k] + [("ASSISTANT", None)]))
                end = len(original_ids(processor, turns[: k + 1]))
                expected[start:end] = ids[start:end]
        assert labels == expected


def test_vicuna_labels_copy_input_ids_and_never_cover_images_or_padding(processor, vicuna_batch):
    ids, labels, mask = vicuna_batch["input_ids"], vicuna_batch["labels"], vicuna_batch["attention_mask"]
    kept = labels != IGNORE
    assert kept.any(dim=1).all()
    assert (labels[kept] == ids[kept]).all()
    assert (ids == processor.image_token_id).sum(dim=1).tolist() == [processor.image_seq_length] * 2
    assert (labels[ids == processor.image_token_id] == IGNORE).all()
    assert (mask == 0).any() and (labels[mask == 0] == IGNORE).all()


def test_pixel_values_hold_one_entry_per_image_in_order(processor, vicuna_batch):
    expected = processor.image_processor([random_image(0), random_image(1)], return_tensors="np")["pixel_values"]
    np.testing.assert_allclose(vicuna_batch["pixel_values"].numpy(), expected, atol=1e-6)


def test_plain_labels_are_the_caption_and_its_newline(processor, tmp_path):
    folder = write_images(tmp_path / "images", ["a.png"])
    # LCS-558K's records write the instruction first and `<image>` after it.
    record = {"id": "cap", "image": "a.png", "conversations": [human("Describe the image.\n<image>"), gpt(CAPTION)]}
    batch = collate(processor, read_records(write_json(tmp_path / "stage1.json", [record]), folder), "plain")
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    # preprocess_plain: `<image>` + caption + "\n", the labels ignoring everything up to and including the image.
    caption_ids = processor.tokenizer(CAPTION + "\n", add_special_tokens=False).input_ids
    image_tokens = [processor.image_token_id] * processor.image_seq_length
    assert ids == [processor.tokenizer.bos_token_id] + image_tokens + caption_ids
    assert labels == [IGNORE] * (1 + processor.image_seq_length) + caption_ids
    assert processor.tokenizer.decode([label for label in labels if label != IGNORE]) == CAPTION + "\n"


# --- Length ------------------------------------------------------------------------------------------------------

ROW_FORMATS = [*LLAVA_RECORDS, *MESSAGES_RECORDS, "hub-string-content", "hub-list-content"]


def read_row(tmp_path: Path, name: str) -> dict:
    """The row of the record called `name` in `LLAVA_RECORDS` or `MESSAGES_RECORDS` (`hub-` + name: a Hub row)."""
    if name.startswith("hub-"):
        return convert_dataset(hub_dataset(name.removeprefix("hub-")))[0]
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    if name in LLAVA_RECORDS:
        record = {"id": name, **LLAVA_RECORDS[name][0]}
    else:
        record = {"id": name, "messages": MESSAGES_RECORDS[name], "images": ["a.png"]}
    (row,) = read_records(write_json(tmp_path / "data.json", [record]), folder)
    return row


def collated_length(processor, row: dict, template: str = "vicuna_v1") -> int:
    return int(collate(processor, [row], template)["attention_mask"].sum())


@pytest.mark.parametrize("template", ["vicuna_v1", "plain"])
@pytest.mark.parametrize("name", ROW_FORMATS)
def test_sample_length_is_the_collated_length(processor, tmp_path, name, template):
    row = read_row(tmp_path, name)
    assert sample_length(row, processor, CHAT_TEMPLATES[template]) == collated_length(processor, row, template)


# Lengths in the collator's ids: text-only < image-at-end < two-images < multi-turn (asserted in the fixture).
TWO_IMAGES = {
    "id": "two-images",
    "image": ["a.png", "b.png"],
    "conversations": [human(f"<image>\n<image>\n{Q3}"), gpt(A3)],
}


@pytest.fixture
def rows_and_lengths(processor, tmp_path) -> tuple[Dataset, dict[str, int]]:
    """The four rows, measured (`measure_lengths`), and each one's collated length."""
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    records = [{"id": name, **LLAVA_RECORDS[name][0]} for name in ("multi-turn", "image-at-end", "text-only")]
    rows = read_records(write_json(tmp_path / "llava.json", [*records, TWO_IMAGES]), folder)
    lengths = {row["id"]: collated_length(processor, row) for row in rows}
    assert sorted(lengths, key=lengths.get) == ["text-only", "image-at-end", "two-images", "multi-turn"]
    return measure_lengths(Dataset.from_list(rows), processor, CHAT_TEMPLATES["vicuna_v1"], cache=False), lengths


@pytest.mark.parametrize("at", ["at-the-longest-kept", "just-under-the-dropped"])
def test_drop_overflowing_drops_only_the_long_sample_and_reports_its_length(processor, rows_and_lengths, at):
    rows, lengths = rows_and_lengths
    max_length = lengths["two-images"] if at == "at-the-longest-kept" else lengths["multi-turn"] - 1
    kept, report = drop_overflowing(rows, max_length)
    assert [row["id"] for row in kept] == ["image-at-end", "text-only", "two-images"]
    assert report.dropped == [{"id": "multi-turn", "length": lengths["multi-turn"]}]
    assert report.summary() == (
        f"1 samples longer than max_length={max_length} were dropped: multi-turn ({lengths['multi-turn']} tokens)"
    )


def test_on_overflow_error_raises_naming_the_sample(processor, rows_and_lengths):
    rows, lengths = rows_and_lengths
    with pytest.raises(DataError, match=rf"max_length={lengths['two-images']}: multi-turn \({lengths['multi-turn']}"):
        drop_overflowing(rows, lengths["two-images"], on_overflow="error")


def test_kept_samples_keep_every_image_token(processor, rows_and_lengths):
    rows, lengths = rows_and_lengths
    kept, _ = drop_overflowing(rows, lengths["two-images"])
    batch = collate(processor, kept)
    counts = (batch["input_ids"] == processor.image_token_id).sum(dim=1).tolist()
    assert counts == [processor.image_seq_length * len(row["images"]) for row in kept] == [25, 0, 50]
    assert len(batch["pixel_values"]) == 3


# --- Bad records -------------------------------------------------------------------------------------------------

GOOD = {"id": "good", "image": "a.png", "conversations": [human(f"<image>\n{Q1}"), gpt(A1)]}


def bad(**fields) -> str:
    """A data file of a good record, then the record `bad` with `fields` over a good one's."""
    return json.dumps([GOOD, {**GOOD, "id": "bad", **fields}])


# name: (data file, where it fails, the error's message)
BAD_FILES = {
    "missing-image": (bad(image="missing.png"), "read", r"Record 'bad': image file '.*missing\.png' does not exist"),
    # Found where it is opened, in the collator (a dataloader worker): reading never opens images.
    "corrupt-image": (
        bad(image="corrupt.png"),
        "collate",
        r"Record 'bad': image file '.*corrupt\.png' cannot be read",
    ),
    "more-markers-than-images": (
        bad(conversations=[human(f"<image>\n<image>\n{Q1}"), gpt(A1)]),
        "read",
        r"Record 'bad': 2 <image> placeholders in the text but 1 images",
    ),
    "marker-without-image": (
        json.dumps([GOOD, {"id": "bad", "conversations": [human(f"<image>\n{Q1}"), gpt(A1)]}]),
        "read",
        r"Record 'bad': 1 <image> placeholders in the text but 0 images",
    ),
    # The original LLaVA needs the marker too (`preprocess_plain` asserts it; `preprocess_v1` would train text-only).
    "image-without-marker": (
        bad(conversations=[human(Q1), gpt(A1)]),
        "read",
        r"Record 'bad': 0 <image> placeholders in the text but 1 images",
    ),
    "unknown-role": (
        bad(conversations=[human(f"<image>\n{Q1}"), {"from": "bot", "value": A1}]),
        "read",
        r"Record 'bad': turn 1 has unknown role 'bot'",
    ),
    "empty-conversation": (bad(conversations=[]), "read", r"Record 'bad': the conversation is empty"),
    "answer-before-question": (
        bad(conversations=[gpt(A1), human(f"<image>\n{Q1}"), gpt(A1)]),
        "read",
        r"Record 'bad': turn 0 is an answer before a question",
    ),
    "conversations-not-a-list": (
        bad(conversations=f"<image>\n{Q1}"),
        "read",
        r"Record 'bad': 'conversations' must be a list of turns",
    ),
    "turn-without-text": (
        bad(conversations=[human(f"<image>\n{Q1}"), {"from": "gpt"}]),
        "read",
        r"Record 'bad': turn 1 has no text",
    ),
    # A wrongly typed field names the record and the type found, not a TypeError from deep inside.
    "image-of-wrong-type": (
        bad(image=12345),
        "read",
        r"Record 'bad': 'image' must be an image path \(a string\) or a list of them, got int \(12345\)",
    ),
    "messages-images-of-wrong-type": (
        json.dumps([{"id": "bad", "messages": MESSAGES_RECORDS["string-content"], "images": [7]}]),
        "read",
        r"Record 'bad': 'images' must be an image path \(a string\) or a list of them, got int \(7\)",
    ),
    # `.` is the image folder itself: inside it, and not an image file.
    "image-is-the-folder": (bad(image="."), "read", r"Record 'bad': image '\.' is a folder \(.*\), not an image file"),
    "image-is-a-subfolder": (bad(image="sub/"), "read", r"Record 'bad': image 'sub/' is a folder"),
    "not-json": ('[{"id": "good",', "read", r"Data file '.*data\.json' is not valid JSON"),
    "a-dict-not-a-list": (json.dumps(GOOD), "read", r"Data file '.*data\.json' must hold a list of records, got dict"),
}


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_data_raises_a_data_error_naming_the_record_and_problem(processor, tmp_path, name):
    text, fails_at, message = BAD_FILES[name]
    folder = write_images(tmp_path / "images", ["a.png"])
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (folder / "sub").mkdir()
    data = tmp_path / "data.json"
    data.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        rows = read_records(data, folder)
        assert fails_at == "collate", "reading should have failed"
        assert [row["id"] for row in rows] == ["good", "bad"]
        collate(processor, rows)
    assert isinstance(error.value, ValueError)


def test_checking_and_measuring_the_data_show_progress_bars(processor, tmp_path, capsys):
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    records = [{"id": name, **LLAVA_RECORDS[name][0]} for name in ("multi-turn", "text-only")]
    rows = Dataset.from_list(read_records(write_json(tmp_path / "llava.json", records), folder))
    measure_lengths(rows, processor, CHAT_TEMPLATES["vicuna_v1"], cache=False)
    bars = capsys.readouterr().err
    assert "checking records:" in bars and "measuring sample lengths:" in bars and "0/2" in bars
    read_records(tmp_path / "llava.json", folder, progress=False)
    measure_lengths(rows, processor, CHAT_TEMPLATES["vicuna_v1"], progress=False, cache=False)
    assert capsys.readouterr().err == ""  # other ranks than the first stay quiet


# --- Every problem at once ---------------------------------------------------------------------------------------


def png_cut_short(path: Path) -> None:
    """A PNG whose last half is missing: its header reads, its pixel data does not."""
    buffer = io.BytesIO()
    random_image(3).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])


def checked(data: Path, folder: Path, num_proc: int | None = None) -> tuple[list[str], list[dict]]:
    """The ids of the rows left, and the problems found, reading and checking as `llava train` does."""
    problems = []
    rows = read_records(data, folder, problems=problems)
    dataset = check_images(rows_to_dataset(rows), problems, max_pixels=10_000, num_proc=num_proc)
    return list(dataset["id"]), problems


def test_every_bad_record_and_image_is_found_in_one_pass(tmp_path):
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    (folder / "not-an-image.png").write_bytes(b"GIF89a but nothing else")
    png_cut_short(folder / "cut.png")
    Image.new("RGB", (101, 100)).save(folder / "huge.png")  # 10,100 pixels: over the limit of 10,000
    record = {"conversations": [human(f"<image>\n{Q1}"), gpt(A1)]}
    records = [
        {"id": "good", "image": "a.png", **record},
        {"id": "missing-1", "image": "gone-1.png", **record},
        {"id": "unreadable", "image": "not-an-image.png", **record},
        {"id": "missing-2", "image": "gone-2.png", **record},
        {"id": "cut", "image": "cut.png", **record},
        {"id": "huge", "image": "huge.png", **record},
        {
            "id": "unknown-role",
            "image": "b.png",
            "conversations": [human(f"<image>\n{Q1}"), {"from": "bot", "value": A1}],
        },
        {"id": "shares-a-bad-file", "image": "cut.png", **record},
        {"id": "also-good", "image": "b.png", **record},
    ]
    kept, problems = checked(write_json(tmp_path / "data.json", records), folder)
    assert kept == ["good", "also-good"]
    found = sorted((problem["id"], problem["kind"]) for problem in problems)
    assert found == sorted(
        [
            ("missing-1", "missing image"),
            ("missing-2", "missing image"),
            ("unreadable", "unreadable image"),
            ("cut", "unreadable image"),
            ("shares-a-bad-file", "unreadable image"),
            ("huge", "image over the pixel limit"),
            ("unknown-role", "bad record"),
        ]
    )
    for problem in problems:
        assert problem["problem"].startswith(f"Record {problem['id']!r}: ")
    images = {problem["id"]: problem.get("image") for problem in problems}
    assert images["cut"] == images["shares-a-bad-file"] == str(folder / "cut.png")


def test_the_summary_counts_problems_by_kind_and_names_the_list(tmp_path):
    entries = [{"id": f"r{i}", "kind": "missing image", "problem": f"Record 'r{i}': gone."} for i in range(7)]
    entries.append({"id": "x", "kind": "bad record", "problem": "Record 'x': no answer."})
    problems = DataProblems("data.json", 20, entries)
    summary = problems.summary(tmp_path / "data_problems.json")
    assert summary.splitlines()[0] == (
        "8 of 20 records in 'data.json' cannot be trained on (7 missing image, 1 bad record):"
    )
    assert summary.splitlines()[1:7] == [f"  Record 'r{i}': gone." for i in range(5)] + ["  ... and 3 more"]
    assert summary.splitlines()[-1].endswith(str(tmp_path / "data_problems.json"))
    problems.write(tmp_path / "data_problems.json")
    written = json.loads((tmp_path / "data_problems.json").read_text())
    assert written == {"data": "data.json", "records": 20, "problems": entries}


def test_image_headers_are_checked_in_processes_with_a_progress_bar(tmp_path, capsys):
    names = [f"{index}.png" for index in range(6)]
    folder = write_images(tmp_path / "images", names)
    (folder / "5.png").write_bytes(b"not an image")
    records = [{"id": name, "image": name, "conversations": [human(f"<image>\n{Q1}"), gpt(A1)]} for name in names]
    kept, problems = checked(write_json(tmp_path / "data.json", records), folder, num_proc=2)
    assert kept == names[:5] and [(p["id"], p["kind"]) for p in problems] == [("5.png", "unreadable image")]
    bars = capsys.readouterr().err
    assert "checking images (num_proc=2)" in bars and "6/6" in bars


def test_a_hub_datasets_own_images_are_checked(tmp_path):
    buffer = io.BytesIO()
    random_image(0).save(buffer, format="PNG")
    turns = MESSAGES_RECORDS["list-content"]
    rows = [{"messages": turns, "images": [{"bytes": data, "path": None}]} for data in (buffer.getvalue(), b"junk")]
    dataset = Dataset.from_list(rows).cast_column("images", datasets.List(datasets.Image()))
    problems = []
    converted = check_images(convert_dataset(dataset, problems=problems), problems, max_pixels=None)
    assert list(converted["id"]) == ["#0"]
    assert [(p["id"], p["kind"]) for p in problems] == [("#1", "unreadable image")]


def test_a_hub_datasets_bad_records_are_listed_and_left_out():
    """Bad records fill the whole first batch of `datasets.map` (1,000 rows): the good ones after it still convert."""
    good = {"messages": MESSAGES_RECORDS["string-content"], "images": []}
    bad_turns = [{"role": "assistant", "content": A1}, {"role": "user", "content": Q1}]
    bad = [{"id": f"bad-{index}", "messages": bad_turns, "images": []} for index in range(1000)]
    problems = []
    converted = convert_dataset(Dataset.from_list([*bad, good | {"id": "good"}]), problems=problems)
    assert list(converted["id"]) == ["good"]
    assert converted[0]["messages"] == convert_dataset(Dataset.from_list([good]))[0]["messages"]
    assert [(p["id"], p["kind"]) for p in problems] == [(row["id"], "bad record") for row in bad]


def test_jsonl_problems_give_the_files_line(tmp_path):
    record = {"messages": MESSAGES_RECORDS["string-content"]}
    lines = [json.dumps({"id": "one", **record}), "", json.dumps({"id": "cut", **record})[:40]]
    lines += [json.dumps({"id": "four", "messages": []}), json.dumps({"id": "five", **record})]
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl', line 3, is not valid JSON \(column 41: "):
        read_records(data)
    problems = []
    assert [row["id"] for row in read_records(data, problems=problems)] == ["one", "five"]
    assert [(p.get("id"), p["line"], p["kind"]) for p in problems] == [
        (None, 3, "bad line"),
        ("four", 4, "bad record"),
    ]


def original_plain_accepts(conversations: list[dict]) -> bool:
    """The assertions of the original's `preprocess_plain` (llava/train/train.py): 2 turns, `<image>` in the first."""
    return len(conversations) == 2 and "<image>" in conversations[0]["value"]


STAGE1_RECORDS = {
    "caption": {"image": "a.png", "conversations": [human(f"<image>\n{Q1}"), gpt(CAPTION)]},
    "multi-turn": LLAVA_RECORDS["multi-turn"][0],
    "image-in-later-turn": LLAVA_RECORDS["image-in-later-turn"][0],
    "text-only": LLAVA_RECORDS["text-only"][0],
}


def test_stage1_data_holds_one_exchange_with_one_image_as_the_original_asserts(tmp_path):
    folder = write_images(tmp_path / "images", ["a.png", "b.png"])
    records = [{"id": name, **record} for name, record in STAGE1_RECORDS.items()]
    data = write_json(tmp_path / "stage1.json", records)
    problems = []
    kept = [row["id"] for row in read_records(data, folder, problems=problems, single_exchange=True)]
    assert kept == [name for name, record in STAGE1_RECORDS.items() if original_plain_accepts(record["conversations"])]
    assert {p["id"]: p["kind"] for p in problems} == {
        name: "not stage-1 data" for name in STAGE1_RECORDS if name not in kept
    }
    assert "this record has 3 answers and 1 images" in next(p["problem"] for p in problems if p["id"] == "multi-turn")
    assert len(read_records(data, folder)) == len(records)  # stage 2 trains on all of them
