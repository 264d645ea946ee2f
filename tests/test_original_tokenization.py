"""Token ids and labels against the original LLaVA's preprocessing, for legacy, non-legacy and no-key Llama tokenizers.

The reference (`tests/original_llava.py`) is written from the original's description and runs on SentencePiece
itself. Every path that tokenizes is compared with it: the training collators (padded and padding-free), the
prompts that `llava chat`, `llava eval` and the pipeline build through the processor, `sample_length`, the
processor after saving and reloading, and a training run's saved checkpoint.

A tokenizer config without `legacy` is read as legacy: the original loaded its tokenizers with transformers 4.30.2
(v1.0.0), 4.31.0 (LLaVA-1.5) and 4.36-4.37 (1.6), whose slow `LlamaTokenizer` had no other behaviour before 4.31 and
defaulted to it, with a warning, from 4.31 on (transformers 5 defaults to non-legacy).
"""

import json
import shutil

import pytest
from datasets import Dataset
from transformers.testing_utils import CaptureLogger

from modeling_llava import (
    CHAT_TEMPLATES,
    LlavaPluginForConditionalGeneration,
    LlavaPluginProcessor,
    processing_llava_plugin,
)
from processing.collator import LlavaDataCollator
from processing.lengths import sample_length
from processing.llava_data import read_records
from processing.padding_free import LlavaPaddingFreeCollator
from tests.conftest import random_image, run_args, train
from tests.original_llava import IGNORE, OriginalLlava

LEGACY_MODES = {"legacy-true": True, "legacy-false": False, "no-legacy-key": None}
# How the original's transformers read each config: no key is legacy (see the module docstring).
ORIGINAL_READS = {"legacy-true": True, "legacy-false": False, "no-legacy-key": True}
Q1, A1 = "What is the colour of the square?", "The square is red."
Q2, A2 = "Where is the blue circle?", "The blue circle is at the top left of the image."
UNICODE = "Où est le cercle ẞ? 🟦 — «ça»"


def human(value: str) -> dict:
    return {"from": "human", "value": value}


def gpt(value: str) -> dict:
    return {"from": "gpt", "value": value}


RECORDS = {
    "multi-turn": {"image": "a.png", "conversations": [human(f"<image>\n{Q1}"), gpt(A1), human(Q2), gpt(A2)]},
    "image-at-end": {"image": "a.png", "conversations": [human(f"{Q1}\n<image>"), gpt(A1)]},
    "image-in-later-turn": {"image": "a.png", "conversations": [human(Q1), gpt(A1), human(f"<image> {Q2}"), gpt(A2)]},
    "text-only": {"conversations": [human(Q1), gpt(A1), human(Q2), gpt(A2)]},
    "two-images": {"image": ["a.png", "b.png"], "conversations": [human(f"<image> <image>\n{Q1}"), gpt(A1)]},
    "empty-answer": {"image": "a.png", "conversations": [human(f"<image>\n{Q1}"), gpt(""), human(Q2), gpt(A2)]},
    "empty-user-turn": {"image": "a.png", "conversations": [human("<image>"), gpt(A1), human(""), gpt(A2)]},
    "unicode-byte-fallback": {
        "image": "a.png",
        "conversations": [human(f"<image>\n{UNICODE}"), gpt(f"{A1} {UNICODE}")],
    },
    "special-token-text-in-answer": {
        "image": "a.png",
        "conversations": [human(f"<image>\n{Q1}"), gpt("It reads </s> and <s> and </s > here."), human(Q2), gpt(A2)],
    },
}
CAPTIONS = {
    "caption": {"image": "a.png", "conversations": [human("<image>\nDescribe it."), gpt("A red square, top left.")]},
    "unicode-caption": {"image": "a.png", "conversations": [human("Describe it.\n<image>"), gpt(UNICODE)]},
}


@pytest.fixture(scope="module")
def setups(tmp_path_factory, checkpoints, sentencepiece_llama) -> dict:
    """Per legacy mode: a processor built from the SentencePiece Llama's `tokenizer.model` and its reference."""
    text, _ = sentencepiece_llama
    proto = open(f"{text}/tokenizer.model", "rb").read()
    result = {}
    for name in LEGACY_MODES:
        folder = tmp_path_factory.mktemp(name)
        shutil.copy(f"{text}/tokenizer.model", folder)
        write_legacy(folder, text, name)
        processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], str(folder))
        reference = OriginalLlava(proto, ORIGINAL_READS[name], processor.image_token_id, processor.image_seq_length)
        result[name] = (processor, reference)
    return result


def write_legacy(folder, text: str, mode: str) -> None:
    """`text`'s tokenizer config into `folder`, with the `legacy` of `mode` (or none)."""
    config = json.loads(open(f"{text}/tokenizer_config.json").read())
    config.pop("legacy")
    if LEGACY_MODES[mode] is not None:
        config["legacy"] = LEGACY_MODES[mode]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("original-data")
    (root / "images").mkdir()
    random_image(0).save(root / "images" / "a.png")
    random_image(1).save(root / "images" / "b.png")
    records = [{"id": name, **record} for name, record in {**RECORDS, **CAPTIONS}.items()]
    (root / "data.json").write_text(json.dumps(records))
    return {"data_path": str(root / "data.json"), "image_folder": str(root / "images")}


def unpadded(batch: dict, index: int) -> tuple[list[int], list[int]]:
    keep = batch["attention_mask"][index].bool()
    return batch["input_ids"][index][keep].tolist(), batch["labels"][index][keep].tolist()


def collate(processor, rows: list[dict], template: str, padding_free: bool = False) -> dict:
    """Rows through `Dataset.from_list` and the training collator, as `trainers/train.py` builds them."""
    collator_class = LlavaPaddingFreeCollator if padding_free else LlavaDataCollator
    collator = collator_class(processor=processor, assistant_only_loss=True, chat_template=CHAT_TEMPLATES[template])
    return collator(list(Dataset.from_list(rows)))


@pytest.mark.parametrize("mode", LEGACY_MODES)
@pytest.mark.parametrize("name", RECORDS)
def test_vicuna_v1_training_ids_and_labels_are_the_originals(setups, data, mode, name):
    processor, original = setups[mode]
    row = next(row for row in read_records(**data) if row["id"] == name)
    expected_ids, expected_labels = original.encode(original.vicuna_v1_segments(RECORDS[name]["conversations"], False))
    prompt = original.vicuna_v1_segments(RECORDS[name]["conversations"], False)
    assert original.tokenizer_image_token("".join(text for text, _ in prompt)) == expected_ids  # the reference agrees

    ids, labels = unpadded(collate(processor, [row], "vicuna_v1"), 0)
    assert ids == expected_ids
    assert labels == expected_labels
    assert sample_length(row, processor) == len(expected_ids)


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_plain_training_ids_and_labels_are_the_originals(setups, data, mode):
    processor, original = setups[mode]
    rows = [row for row in read_records(**data) if row["id"] in CAPTIONS]
    batch = collate(processor, rows, "plain")
    for index, row in enumerate(rows):
        expected = original.encode(original.plain_segments(CAPTIONS[row["id"]]["conversations"]))
        assert unpadded(batch, index) == expected


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_padding_free_rows_hold_the_same_ids_and_labels(setups, data, mode):
    processor, original = setups[mode]
    rows = [row for row in read_records(**data) if row["id"] in RECORDS]
    batch = collate(processor, rows, "vicuna_v1", padding_free=True)
    bounds = batch["cu_seq_lens_q"].tolist()
    for index, row in enumerate(rows):
        ids, labels = original.encode(original.vicuna_v1_segments(RECORDS[row["id"]]["conversations"], False))
        start, end = bounds[index], bounds[index + 1]
        assert batch["input_ids"][0, start:end].tolist() == ids
        assert batch["labels"][0, start:end].tolist() == [IGNORE] + labels[1:]  # each sample's first label: none


@pytest.mark.parametrize("mode", LEGACY_MODES)
@pytest.mark.parametrize("name", ["multi-turn", "image-in-later-turn", "text-only", "two-images", "empty-user-turn"])
def test_inference_prompts_are_the_originals(setups, data, mode, name):
    """What `llava chat`, `llava eval` and the pipeline feed the model: the rendered prompt through the processor."""
    processor, original = setups[mode]
    row = next(row for row in read_records(**data) if row["id"] == name)
    history = row["messages"][:-1]  # ask the last question
    expected, _ = original.encode(original.vicuna_v1_segments(RECORDS[name]["conversations"][:-1], True))
    prompt = processor.apply_chat_template(history, add_generation_prompt=True)
    images = [random_image(index) for index, _ in enumerate(row["images"])] or None
    assert processor(images=images, text=prompt)["input_ids"] == [expected]
    assert processor(images=images, text=prompt, add_special_tokens=False)["input_ids"] == [expected]  # one BOS


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_ids_are_the_same_after_saving_and_reloading_the_processor(setups, tmp_path, mode):
    processor, original = setups[mode]
    prompt = "".join(text for text, _ in original.vicuna_v1_segments(RECORDS["multi-turn"]["conversations"], True))
    processor.save_pretrained(tmp_path / "once")
    LlavaPluginProcessor.from_pretrained(tmp_path / "once").save_pretrained(tmp_path / "twice")  # a re-saved copy
    reloaded = LlavaPluginProcessor.from_pretrained(tmp_path / "twice")
    assert reloaded.encode_prompt(prompt) == processor.encode_prompt(prompt)
    assert reloaded.encode_prompt(prompt)[0] == original.tokenizer_image_token(prompt)


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_a_saved_processor_writes_legacy_as_it_was_read(setups, tmp_path, mode):
    processor, _ = setups[mode]
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["legacy"] is ORIGINAL_READS[mode]


def test_from_backbones_reads_a_keyless_llama_tokenizer_as_legacy_and_says_so_once(
    tmp_path, checkpoints, sentencepiece_llama
):
    """The model and the processor each load the LLM's tokenizer; the log says the choice in one line, once."""
    text, spm = sentencepiece_llama
    shutil.copytree(text, tmp_path / "llm")
    write_legacy(tmp_path / "llm", text, "no-legacy-key")
    with CaptureLogger(processing_llava_plugin.logger) as captured:
        model = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], str(tmp_path / "llm"))
        processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], str(tmp_path / "llm"))
    lines = [line for line in captured.out.splitlines() if "`legacy`" in line]
    assert len(lines) == 1 and "legacy=True" in lines[0] and str(tmp_path / "llm") in lines[0]
    assert processor.tokenizer.legacy is True
    assert model.config.image_token_id == processor.image_token_id
    original = OriginalLlava(spm.serialized_model_proto(), True, processor.image_token_id, processor.image_seq_length)
    prompt = "".join(text for text, _ in original.vicuna_v1_segments(RECORDS["multi-turn"]["conversations"], True))
    assert processor.encode_prompt(prompt)[0] == original.tokenizer_image_token(prompt)


def test_training_from_a_keyless_llm_saves_what_it_trained_on(tmp_path, checkpoints, sentencepiece_llama, data):
    """A stage-2 run from backbones whose tokenizer has no key: its checkpoint says legacy, and reloads to the ids the
    original trains on."""
    text, spm = sentencepiece_llama
    shutil.copytree(text, tmp_path / "llm")
    write_legacy(tmp_path / "llm", text, "no-legacy-key")
    args = run_args({**checkpoints, "llama": str(tmp_path / "llm")}, data, tmp_path / "run", "--max_steps", "1")
    train("stage2", args)
    assert json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())["legacy"] is True
    processor = LlavaPluginProcessor.from_pretrained(tmp_path / "run")
    original = OriginalLlava(spm.serialized_model_proto(), True, processor.image_token_id, processor.image_seq_length)
    row = next(row for row in read_records(**data) if row["id"] == "multi-turn")
    ids, labels = unpadded(collate(processor, [row], "vicuna_v1"), 0)
    assert (ids, labels) == original.encode(original.vicuna_v1_segments(RECORDS["multi-turn"]["conversations"], False))
