"""Measuring sample lengths at LLaVA-665K scale: cached per dataset and tokenization, parallel, and never opening an
image; a Hub dataset's images stay undecoded until a dataloader worker batches them."""

import json

import pytest
from datasets import Dataset
from PIL import Image

import processing.lengths
from modeling_llava.chat_templates import CHAT_TEMPLATES
from processing.collator import LlavaDataCollator
from processing.lengths import lengths_cache_dir, measure_lengths, sample_length
from processing.llava_data import PARALLEL_FROM_ROWS, convert_dataset, processes_for, read_records, rows_to_dataset
from tests.conftest import random_image, run_args, train

VICUNA = CHAT_TEMPLATES["vicuna_v1"]


@pytest.fixture
def rows(train_data) -> list[dict]:
    return read_records(train_data["data_path"], train_data["image_folder"], progress=False)


@pytest.fixture
def counted(monkeypatch, tmp_path) -> list[int]:
    """How many samples `measure_lengths` tokenized (in this process), with a lengths cache of this test's own."""
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", tmp_path / "datasets_cache")
    calls = []

    def counting(row, processor, chat_template=None, image_sizes=None):
        calls.append(1)
        return sample_length(row, processor, chat_template, image_sizes)

    monkeypatch.setattr(processing.lengths, "sample_length", counting)
    return calls


@pytest.fixture
def opened(monkeypatch) -> list[str]:
    """Every image PIL opens."""
    calls = []
    original = Image.open

    def recording(file, *args, **kwargs):
        calls.append(str(file))
        return original(file, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording)
    return calls


def test_lengths_are_the_sample_lengths_and_the_modality(processor, rows):
    measured = measure_lengths(Dataset.from_list(rows), processor, VICUNA, cache=False)
    assert list(measured["length"]) == [sample_length(row, processor, VICUNA) for row in rows]
    assert list(measured["has_images"]) == [bool(row["images"]) for row in rows] == [True] * 8 + [False]
    assert list(measured["id"]) == [row["id"] for row in rows]  # the rows themselves unchanged


def test_a_second_measurement_of_the_same_rows_reads_the_cache(processor, rows, counted):
    first = measure_lengths(Dataset.from_list(rows), processor, VICUNA)
    assert len(counted) == len(rows) and len(list(lengths_cache_dir().glob("lengths-*.arrow"))) >= 1
    again = measure_lengths(Dataset.from_list(rows), processor, VICUNA)  # a new start: the same rows, rebuilt
    assert len(counted) == len(rows)
    assert list(again["length"]) == list(first["length"])


@pytest.mark.parametrize("change", ["template", "one-answer", "image-tokens"])
def test_anything_a_length_depends_on_measures_again(processor, rows, counted, change, monkeypatch):
    first = measure_lengths(Dataset.from_list(rows), processor, VICUNA)
    assert len(counted) == len(rows)
    template, changed_rows = VICUNA, [dict(row) for row in rows]
    if change == "template":
        template = CHAT_TEMPLATES["plain"]
    elif change == "one-answer":
        answer = changed_rows[3]["messages"][1]
        changed_rows[3]["messages"] = [rows[3]["messages"][0], {**answer, "content": [{"type": "text", "text": "x"}]}]
    else:
        monkeypatch.setattr(processor, "image_seq_length", processor.image_seq_length + 1)
    again = measure_lengths(Dataset.from_list(changed_rows), processor, template)
    assert len(counted) == 2 * len(rows)
    assert list(again["length"]) != list(first["length"])


@pytest.mark.slow
def test_parallel_measurement_equals_one_process(processor, rows):
    one = measure_lengths(Dataset.from_list(rows * 4), processor, VICUNA, cache=False)
    two = measure_lengths(Dataset.from_list(rows * 4), processor, VICUNA, num_proc=2, cache=False)
    assert list(two["length"]) == list(one["length"]) and list(two["has_images"]) == list(one["has_images"])


def hub_rows(count: int) -> list[dict]:
    return [
        {"messages": [{"role": "user", "content": "What is it?"}, {"role": "assistant", "content": f"Shape {i}."}],
         "images": [random_image(i)]}
        for i in range(count)
    ]  # fmt: skip


def test_a_hub_dataset_is_checked_and_measured_without_decoding_an_image(processor, opened):
    dataset = Dataset.from_list(hub_rows(4))  # an Image column, as a Hub dataset has
    opened.clear()
    measured = measure_lengths(convert_dataset(dataset), processor, VICUNA, cache=False)
    assert opened == [] and len(measured) == 4
    assert not measured.features["images"].feature.decode  # read as bytes, decoded by the collator
    rendered = processor.apply_chat_template(measured[0]["messages"], tokenize=False)
    assert rendered.count(processor.image_token) == 1


def test_llava_train_reads_a_local_hub_dataset_lazily(checkpoints, train_data, tmp_path, opened, monkeypatch):
    collated = []
    original = LlavaDataCollator.torch_call

    def recording(self, examples):
        collated.extend(image["path"] or "bytes" for example in examples for image in example["images"])
        return original(self, examples)

    monkeypatch.setattr(LlavaDataCollator, "torch_call", recording)
    folder = tmp_path / "hub"
    folder.mkdir()
    Dataset.from_list(hub_rows(4)).to_parquet(folder / "train.parquet")
    args = run_args(checkpoints, train_data, tmp_path / "run", "--dataloader_num_workers", "0")
    args = [arg for arg in args if arg not in ("--data_path", train_data["data_path"])]
    args += ["--dataset_name", str(folder), "--max_steps", "1", "--per_device_train_batch_size", "2"]
    opened.clear()
    trainer = train("stage2", args)
    assert trainer.state.global_step == 1
    # Before training, the data check reads each image's header once (4 images, none decoded); after it, only the
    # collator opens images, each of a batch it builds (accelerate reads one batch ahead).
    assert len(opened) == 4 + len(collated) and len(collated) >= 2
    assert json.loads((tmp_path / "run" / "llava_run.json").read_text())["sources"]["dataset_name"] == str(folder)


def test_dataset_num_proc_is_honoured(checkpoints, train_data, tmp_path):
    """`dataset_num_proc` sets the processes that check and measure the data (TRL's field, no longer refused)."""
    from trainers.train import check_arguments, parse

    args = run_args(checkpoints, train_data, tmp_path, "--dataset_num_proc", "2")
    script, training, model = parse(["stage2", *args])
    check_arguments(script, training, model)
    assert training.dataset_num_proc == 2


def test_processes_for_large_data_default_to_the_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert processes_for(PARALLEL_FROM_ROWS, None) == 8 and processes_for(PARALLEL_FROM_ROWS - 1, None) is None
    assert processes_for(100, 2) == 2 and processes_for(3, 2) is None and processes_for(100, 1) is None


def test_rows_become_the_dataset_from_list_builds_chunk_by_chunk(rows):
    """One row a chunk: a text-only chunk first (no image type yet), then image rows, and a row with an extra key."""
    mixed = [rows[-1], *rows[:3]]
    mixed[2] = {**mixed[2], "messages": [{**mixed[2]["messages"][0], "name": "asker"}, *mixed[2]["messages"][1:]]}
    expected = Dataset.from_list(mixed)
    built = rows_to_dataset(list(mixed), chunk=1)
    assert built.features == expected.features and list(built) == list(expected)
    # The same rows the same way, the same fingerprint (a new start finds the lengths cache by it).
    again = list(mixed)
    assert rows_to_dataset(again, chunk=1)._fingerprint == built._fingerprint
    assert again == []  # the rows were released as they went into Arrow
