"""The paper's prompt formats against the original LLaVA's code: `v0` (training as `preprocess` with
`_add_speaker_and_signal` / `_mask_targets`, answering as `conv_vicuna_v0.get_prompt()`) and `llava_v1` (the
original's `conv_llava_v1`), for legacy, non-legacy and no-key Llama tokenizers, with `<image>` moved to the start of
its turn or kept where the data wrote it; `--template` at inference; a run trained with a template answers in it.

The reference is `tests/original_llava.py`, on SentencePiece itself. Its tokenizer here is built to read `###` as
Llama's does, which `_mask_targets`' arithmetic relies on: a newline is a byte piece that merges with nothing, `###`
at the start of a text is the one piece `▁###`, and after a newline it is `##` + `#`.
"""

import asyncio
import json
import shutil

import pytest
import sentencepiece
import torch
from datasets import Dataset
from sentencepiece import sentencepiece_model_pb2
from transformers import BatchFeature

from modeling_llava import CHAT_TEMPLATES, LlavaPluginProcessor, chat_template, use_template
from processing.collator import LlavaDataCollator
from processing.conversation import answer_text, stop_arguments, user_message
from processing.generation import load_llava
from processing.lengths import sample_length
from processing.llava_data import read_records
from processing.padding_free import LlavaPaddingFreeCollator
from serving.worker import _END, Job, _AnswerStreamer
from tests.conftest import CORPUS, random_image, run_args, sentencepiece_bpe, train
from tests.original_llava import HUMAN_SYSTEM, IGNORE, OriginalLlava
from tests.test_original_tokenization import LEGACY_MODES, ORIGINAL_READS, RECORDS, unpadded

V0_CORPUS = [
    HUMAN_SYSTEM + "\n\n### Human: What is the colour of the square?\n### Assistant: The square is red.\n### ",
    "### Human: Where is the blue circle?\n### Assistant: The blue circle is at the top left of the image.\n### ",
]


@pytest.fixture(scope="module")
def v0_tokenizer(tmp_path_factory) -> tuple[str, bytes]:
    """A SentencePiece Llama tokenizer (folder, model proto) that reads `###` and newlines as Llama's does (see the
    module docstring): trained on the test corpus, then without the pieces that hold a newline or a bare `###`, and
    with `▁###` (and the pieces BPE merges on the way to it)."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(sentencepiece_bpe((CORPUS + V0_CORPUS) * 4, vocab_size=450))
    kept = [piece for piece in model.pieces if "\n" not in piece.piece and piece.piece != "###"]
    del model.pieces[:]
    model.pieces.extend(kept)
    lowest, names = min(piece.score for piece in kept), {piece.piece for piece in kept}
    for steps, merged in enumerate(name for name in ("##", "▁#", "▁##", "▁###") if name not in names):
        model.pieces.add(piece=merged, score=lowest - 1 - steps)  # each merge on the way to `▁###`
    folder = tmp_path_factory.mktemp("v0-llama")
    (folder / "tokenizer.model").write_bytes(model.SerializeToString())
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"add_bos_token": True, "add_eos_token": False}))
    return str(folder), model.SerializeToString()


def test_the_tokenizer_reads_hashes_as_llamas_does(v0_tokenizer):
    spm = sentencepiece.SentencePieceProcessor(model_proto=v0_tokenizer[1])
    assert spm.encode("### Human", out_type=str) == ["▁###", "▁Human"]
    assert spm.encode("red.\n### Human", out_type=str)[-4:] == ["<0x0A>", "##", "#", "▁Human"]


@pytest.fixture(scope="module")
def setups(tmp_path_factory, checkpoints, v0_tokenizer) -> dict:
    """Per legacy mode: a processor on the tokenizer above and its reference."""
    folder, proto = v0_tokenizer
    result = {}
    for mode, legacy in LEGACY_MODES.items():
        copy = tmp_path_factory.mktemp(mode)
        shutil.copy(f"{folder}/tokenizer.model", copy)
        config = json.loads(open(f"{folder}/tokenizer_config.json").read())
        (copy / "tokenizer_config.json").write_text(
            json.dumps(config | ({} if legacy is None else {"legacy": legacy}))
        )
        processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], str(copy))
        reference = OriginalLlava(proto, ORIGINAL_READS[mode], processor.image_token_id, processor.image_seq_length)
        result[mode] = (processor, reference)
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """The records of the vicuna_v1 tests (`RECORDS`), as a LLaVA JSON and its image folder."""
    root = tmp_path_factory.mktemp("paper-data")
    (root / "images").mkdir()
    for index, name in enumerate(("a.png", "b.png")):
        random_image(index).save(root / "images" / name)
    (root / "data.json").write_text(json.dumps([{"id": name, **record} for name, record in RECORDS.items()]))
    return {"data_path": str(root / "data.json"), "image_folder": str(root / "images")}


def row_of(data: dict, name: str, in_place: bool) -> dict:
    return next(row for row in read_records(**data, image_in_place=in_place) if row["id"] == name)


def collate(processor, rows: list[dict], template: str, padding_free: bool = False) -> dict:
    """Rows through `Dataset.from_list` and the training collator with the Jinja `template`, as `llava train` does."""
    collator_class = LlavaPaddingFreeCollator if padding_free else LlavaDataCollator
    collator = collator_class(processor=processor, assistant_only_loss=True, chat_template=template)
    return collator(list(Dataset.from_list(rows)))


@pytest.mark.parametrize("in_place", [False, True], ids=["image-moved", "image-in-place"])
@pytest.mark.parametrize("mode", LEGACY_MODES)
@pytest.mark.parametrize("name", RECORDS)
def test_v0_training_ids_and_labels_are_the_originals(setups, data, mode, name, in_place):
    processor, original = setups[mode]
    expected = original.v0_training(RECORDS[name]["conversations"], image_in_place=in_place)
    row = row_of(data, name, in_place)
    assert unpadded(collate(processor, [row], chat_template("v0", in_place)), 0) == expected
    assert sample_length(row, processor, chat_template("v0", in_place)) == len(expected[0])


@pytest.mark.parametrize("mode", LEGACY_MODES)
def test_v0_padding_free_rows_hold_the_same_ids_and_labels(setups, data, mode):
    processor, original = setups[mode]
    rows = [row_of(data, name, True) for name in RECORDS]
    batch = collate(processor, rows, chat_template("v0", True), padding_free=True)
    bounds = batch["cu_seq_lens_q"].tolist()
    for index, name in enumerate(RECORDS):
        ids, labels = original.v0_training(RECORDS[name]["conversations"], image_in_place=True)
        start, end = bounds[index], bounds[index + 1]
        assert batch["input_ids"][0, start:end].tolist() == ids
        assert batch["labels"][0, start:end].tolist() == [IGNORE] + labels[1:]


@pytest.mark.parametrize("mode", LEGACY_MODES)
@pytest.mark.parametrize("name", RECORDS)
def test_llava_v1_training_ids_and_labels_are_the_originals(setups, data, mode, name):
    processor, original = setups[mode]
    expected = original.encode(original.vicuna_v1_segments(RECORDS[name]["conversations"], False, HUMAN_SYSTEM))
    assert unpadded(collate(processor, [row_of(data, name, False)], CHAT_TEMPLATES["llava_v1"]), 0) == expected


@pytest.mark.parametrize("mode", LEGACY_MODES)
@pytest.mark.parametrize("name", ["multi-turn", "image-at-end", "text-only", "two-images", "empty-user-turn"])
def test_v0_and_llava_v1_answering_prompts_are_the_originals(setups, data, mode, name):
    """What `--template v0` / `llava_v1` feed the model: `conv_vicuna_v0.get_prompt()` (the example exchange first)
    and `conv_llava_v1.get_prompt()`, tokenized by `tokenizer_image_token`."""
    processor, original = setups[mode]
    row = row_of(data, name, False)
    history = row["messages"][:-1]
    conversations = RECORDS[name]["conversations"][:-1]
    expected = {
        "v0": original.v0_prompt(conversations),
        "llava_v1": "".join(text for text, _ in original.vicuna_v1_segments(conversations, True, HUMAN_SYSTEM)),
    }
    images = [random_image(index) for index, _ in enumerate(row["images"])] or None
    for template, prompt in expected.items():
        rendered = processor.apply_chat_template(
            history, chat_template=CHAT_TEMPLATES[template], add_generation_prompt=True
        )
        assert rendered == "<s>" + prompt
        assert processor(images=images, text=rendered)["input_ids"] == [original.tokenizer_image_token(prompt)]


def test_v0_answers_end_at_its_stop_string(setups):
    """The original stops a v0 answer at `###` (`KeywordsStoppingCriteria`) and cuts it off; vicuna_v1's end at EOS."""
    processor, _ = setups["legacy-true"]
    assert stop_arguments(processor) == {}
    assert answer_text(processor, " It is red.\n### Human") == "It is red.\n### Human"
    v0 = LlavaPluginProcessor(processor.image_processor, processor.tokenizer, processor.image_seq_length)
    use_template(v0, "v0")
    assert stop_arguments(v0)["stop_strings"] == ["###"]
    assert answer_text(v0, " It is red.\n### Human") == "It is red."
    assert answer_text(v0, " It is red.\n##", partial=True) == "It is red."  # maybe the start of `###`: held back


def test_template_flag_overrides_the_checkpoints_chat_template(llava_checkpoint):
    """`load_llava(..., template=)`, what `llava chat/serve/eval/predict --template` call: the prompt is the named
    template's, whatever the checkpoint saved."""
    _, own = load_llava(llava_checkpoint, "cpu")
    _, v0 = load_llava(llava_checkpoint, "cpu", template="v0")
    messages = [user_message("What is the colour of the square?", images=1)]
    prompt = v0.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt.startswith(f"<s>{HUMAN_SYSTEM}###Human: What are the key differences between renewable")
    assert prompt.endswith("###Human: <image>\nWhat is the colour of the square?###Assistant:")
    assert own.apply_chat_template(messages, add_generation_prompt=True).endswith(
        "USER: <image>\nWhat is the colour of the square? ASSISTANT:"
    )


def test_a_run_trained_with_a_template_answers_in_it(checkpoints, train_data, tmp_path):
    """`template: v0` renders the data and becomes the saved processor's default; `image_in_place` keeps `<image>`
    where the record wrote it."""
    args = run_args(checkpoints, train_data, tmp_path, "--template", "v0", "--image_in_place", "true")
    trainer = train("stage2", args)
    saved = LlavaPluginProcessor.from_pretrained(tmp_path)
    assert saved.chat_template["default"] == CHAT_TEMPLATES["v0"]
    assert trainer.data_collator.chat_template == chat_template("v0", image_in_place=True)


def test_a_streamed_v0_answer_never_shows_its_stop_string(setups):
    """`llava serve` streams a v0 answer token by token: the pieces add up to the answer without `###`, even while
    `##` may still become it."""
    processor, _ = setups["legacy-true"]
    v0 = LlavaPluginProcessor(processor.image_processor, processor.tokenizer, processor.image_seq_length)
    use_template(v0, "v0")
    tokens = v0.tokenizer("It is red.\n### Human", add_special_tokens=False)["input_ids"]

    async def stream() -> tuple[list[str], str]:
        job = Job(BatchFeature({"input_ids": torch.zeros(1, 3, dtype=torch.long)}), {}, None)
        streamer = _AnswerStreamer(v0, job)
        streamer.put(torch.zeros(1, 3))  # the prompt, as generate() puts it first
        for token in tokens:
            streamer.put(torch.tensor([token]))
        streamer.finish(answer_text(v0, v0.decode(tokens)))
        job._emit(_END)
        return [piece async for piece in job.pieces()], job.text

    pieces, answer = asyncio.run(stream())
    assert answer == "It is red." and "".join(pieces) == answer
