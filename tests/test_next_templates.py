"""LLaVA-1.6's prompt formats and the language model's own: `mistral_instruct` and `chatml_direct` against the
original's rendering and LLaVA-NeXT's masking (`tests/original_templates.py`), token by token, on a Mistral-like
SentencePiece tokenizer and a Yi-like one with ChatML's special tokens; `template: backbone` on a Qwen2-style and a
Llama-3-style byte-level tokenizer carrying their public chat templates (as TRL ships them), against the answers
and end-of-turn tokens located in the tokenizer's own rendering, and against TRL's Llama-3 training template.

Where the original's arithmetic masks a whole sample (`tokenization mismatch`: an empty turn, an answer holding
`</s>` text, a multi-turn ChatML sample on a non-legacy tokenizer), the sample would not train there; here its
answers carry the loss, each with its end token, as in every other sample.
"""

import json
from pathlib import Path

import pytest
import trl
from datasets import Dataset
from sentencepiece import sentencepiece_model_pb2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from modeling_llava import CHAT_TEMPLATES, LlavaPluginProcessor, chat_template, use_template
from processing.collator import LlavaDataCollator
from processing.conversation import answer_text, stop_arguments, user_message
from processing.generation import load_llava
from processing.lengths import sample_length
from processing.llava_data import read_records
from processing.padding_free import LlavaPaddingFreeCollator
from tests.conftest import CORPUS, random_image, run_args, sentencepiece_bpe, train
from tests.original_llava import IGNORE, OriginalLlava
from tests.original_templates import (
    answer_segments,
    chatml_direct_prompt,
    mistral_instruct_prompt,
    preprocess_llama_2,
    preprocess_mpt,
)
from tests.test_original_tokenization import RECORDS, unpadded
from tests.tiny_backbones import save_tiny_language_model
from trainers.train import SetupError

CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>")
MISTRAL_CORPUS = [
    "[INST] What is the colour of the square? [/INST] The square is red. </s>[INST] Where is the blue circle? [/INST] "
    "The blue circle is at the top left of the image. </s>"
]
CHATML_CORPUS = [
    "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\nWhat is the colour of the square?<|im_end|>"
    "<|im_start|>assistant\nThe square is red.<|im_end|>"
]
TRL_TEMPLATES = Path(trl.__file__).parent / "chat_templates"


def sentencepiece_proto(corpus: list[str], user_defined: tuple[str, ...] = ()) -> bytes:
    """A SentencePiece BPE (Llama's settings) whose newline is a byte piece that merges with nothing, as Llama's and
    Mistral's: trained on `corpus`, then without the pieces holding a newline; `user_defined` pieces added (Yi's
    vocabulary holds ChatML's tokens)."""
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(sentencepiece_bpe(corpus * 4, vocab_size=450))
    kept = [piece for piece in model.pieces if "\n" not in piece.piece]
    del model.pieces[:]
    model.pieces.extend(kept)
    for piece in user_defined:
        model.pieces.add(piece=piece, score=0.0, type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
    return model.SerializeToString()


def sentencepiece_setup(folder: Path, clip: str, proto: bytes, legacy: bool, chatml: bool):
    """A processor on a SentencePiece Llama tokenizer in `folder` and the original's reference on the same model.
    `chatml`: Yi's shape (no BOS added, `<|im_start|>`/`<|im_end|>` special, `<|im_end|>` the EOS)."""
    folder.mkdir()
    (folder / "tokenizer.model").write_bytes(proto)
    config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    config |= {"add_bos_token": not chatml, "add_eos_token": False, "legacy": legacy}
    if chatml:
        config |= {"eos_token": "<|im_end|>", "extra_special_tokens": list(CHATML_SPECIALS)}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    processor = LlavaPluginProcessor.from_backbones(clip, str(folder))
    specials = {token: processor.tokenizer.convert_tokens_to_ids(token) for token in CHATML_SPECIALS} if chatml else {}
    reference = OriginalLlava(
        proto, legacy, processor.image_token_id, processor.image_seq_length, specials=specials, bos=not chatml
    )
    return processor, reference


@pytest.fixture(scope="module")
def setups(tmp_path_factory, checkpoints) -> dict:
    """(template, legacy) -> a processor and its reference: the Mistral-like and the Yi-like tokenizer, each read
    legacy and not."""
    root = tmp_path_factory.mktemp("next-templates")
    mistral = sentencepiece_proto(CORPUS + MISTRAL_CORPUS)
    chatml = sentencepiece_proto(CORPUS + CHATML_CORPUS, CHATML_SPECIALS)
    result = {}
    for legacy in (True, False):
        result["mistral_instruct", legacy] = sentencepiece_setup(
            root / f"mistral-{legacy}", checkpoints["clip"], mistral, legacy, chatml=False
        )
        result["chatml_direct", legacy] = sentencepiece_setup(
            root / f"yi-{legacy}", checkpoints["clip"], chatml, legacy, chatml=True
        )
    return result


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, str]:
    """The records of the vicuna_v1 tests (`RECORDS`), as a LLaVA JSON and its image folder."""
    root = tmp_path_factory.mktemp("next-data")
    (root / "images").mkdir()
    for index, name in enumerate(("a.png", "b.png")):
        random_image(index).save(root / "images" / name)
    (root / "data.json").write_text(json.dumps([{"id": name, **record} for name, record in RECORDS.items()]))
    return {"data_path": str(root / "data.json"), "image_folder": str(root / "images")}


def row_of(data: dict, name: str) -> dict:
    return next(row for row in read_records(**data) if row["id"] == name)


def collate(processor, rows: list[dict], template: str, padding_free: bool = False) -> dict:
    """Rows through `Dataset.from_list` and the training collator with the Jinja `template`, as `llava train` does."""
    collator_class = LlavaPaddingFreeCollator if padding_free else LlavaDataCollator
    collator = collator_class(processor=processor, assistant_only_loss=True, chat_template=template)
    return collator(list(Dataset.from_list(rows)))


ORIGINALS = {
    "mistral_instruct": (mistral_instruct_prompt, preprocess_llama_2),
    "chatml_direct": (chatml_direct_prompt, preprocess_mpt),
}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
@pytest.mark.parametrize("template", ORIGINALS)
@pytest.mark.parametrize("name", RECORDS)
def test_training_ids_and_labels_are_the_originals(setups, data, template, legacy, name):
    processor, original = setups[template, legacy]
    render, preprocess = ORIGINALS[template]
    conversations = RECORDS[name]["conversations"]
    expected_ids, expected_labels = preprocess(original, render(conversations))
    row = row_of(data, name)
    ids, labels = unpadded(collate(processor, [row], CHAT_TEMPLATES[template]), 0)
    assert ids == expected_ids
    assert sample_length(row, processor, CHAT_TEMPLATES[template]) == len(expected_ids)
    if any(label != IGNORE for label in expected_labels):
        assert labels == expected_labels
    else:  # the original's `tokenization mismatch` (see the module docstring): the answers carry the loss here
        answer_ids, answer_labels = original.encode(answer_segments(template, conversations))
        assert answer_ids == ids
        if (template, legacy, name) == ("mistral_instruct", True, "empty-user-turn"):
            # The second answer follows the first's `</s>` (the empty question writes nothing): a legacy tokenizer
            # opens it with a lone `▁`, a fresh text's prefix that is no character of the answer, so not supervised.
            prefix = ids.index(processor.tokenizer.eos_token_id) + 1
            assert processor.tokenizer.convert_ids_to_tokens(ids[prefix]) == "▁"
            answer_labels[prefix] = IGNORE
        assert labels == answer_labels


@pytest.mark.parametrize("template", ORIGINALS)
def test_padding_free_rows_hold_the_same_ids_and_labels(setups, data, template):
    processor, original = setups[template, True]
    render, preprocess = ORIGINALS[template]
    names = ["multi-turn", "text-only", "two-images", "image-at-end"]
    batch = collate(processor, [row_of(data, name) for name in names], CHAT_TEMPLATES[template], padding_free=True)
    bounds = batch["cu_seq_lens_q"].tolist()
    for index, name in enumerate(names):
        ids, labels = preprocess(original, render(RECORDS[name]["conversations"]))
        start, end = bounds[index], bounds[index + 1]
        assert batch["input_ids"][0, start:end].tolist() == ids
        assert batch["labels"][0, start:end].tolist() == [IGNORE] + labels[1:]


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "non-legacy"])
@pytest.mark.parametrize("template", ORIGINALS)
@pytest.mark.parametrize("name", ["multi-turn", "image-at-end", "text-only", "two-images", "empty-user-turn"])
def test_answering_prompts_are_the_originals(setups, data, template, legacy, name):
    """What `--template mistral_instruct` / `chatml_direct` feed the model: `get_prompt()` after an empty assistant
    turn, tokenized by `tokenizer_image_token`; with a system message, the original's with that system prompt."""
    processor, original = setups[template, legacy]
    render = ORIGINALS[template][0]
    history = row_of(data, name)["messages"][:-1]
    conversations = RECORDS[name]["conversations"][:-1]
    images = [random_image(index) for index, _ in enumerate(row_of(data, name)["images"])] or None
    bos = "<s>" if template == "mistral_instruct" else ""
    for system in (None, "Be brief."):
        messages = history if system is None else [{"role": "system", "content": system}, *history]
        rendered = processor.apply_chat_template(
            messages, chat_template=CHAT_TEMPLATES[template], add_generation_prompt=True
        )
        prompt = render(conversations, True, **({} if system is None else {"system": system}))
        assert rendered == bos + prompt
        assert processor(images=images, text=rendered, add_special_tokens=False)["input_ids"] == [
            original.tokenizer_image_token(prompt)
        ]


def test_chatml_direct_answers_end_at_im_end(setups):
    """A ChatML tokenizer's EOS need not be `<|im_end|>` (Yi's base one is `<|endoftext|>`): generation stops there
    too; mistral_instruct's answers end at its EOS, `</s>`."""
    processor, _ = setups["chatml_direct", True]
    chatml = LlavaPluginProcessor(processor.image_processor, processor.tokenizer, processor.image_seq_length)
    use_template(chatml, "chatml_direct")
    assert stop_arguments(chatml)["stop_strings"] == ["<|im_end|>"]
    assert answer_text(chatml, "It is red.<|im_end|><|im_start|>user") == "It is red."
    use_template(chatml, "mistral_instruct")
    assert stop_arguments(chatml) == {}


def test_template_flag_selects_the_new_templates(llava_checkpoint):
    """`load_llava(..., template=)`, what `llava chat/serve/eval/predict --template` call."""
    messages = [user_message("What is the colour of the square?", images=1)]
    _, mistral = load_llava(llava_checkpoint, "cpu", template="mistral_instruct")
    assert mistral.apply_chat_template(messages, add_generation_prompt=True) == (
        "<s>[INST] <image>\nWhat is the colour of the square? [/INST]"
    )
    _, chatml = load_llava(llava_checkpoint, "cpu", template="chatml_direct")
    assert chatml.apply_chat_template(messages, add_generation_prompt=True) == (
        "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\n"
        "What is the colour of the square?<|im_end|><|im_start|>assistant\n"
    )


# `template: backbone` ------------------------------------------------------------------------------------------------

QWEN2 = {
    "template": "qwen2_5.jinja",
    "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "bos": None,
    "eos": "<|im_end|>",
    "end_of_turn": "<|im_end|>\n",
}
LLAMA3 = {
    "template": "llama3.jinja",
    "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "bos": "<|begin_of_text|>",
    "eos": "<|eot_id|>",
    "end_of_turn": "<|eot_id|>",
}
BACKBONES = {"qwen2": QWEN2, "llama3": LLAMA3}


def byte_level_tokenizer(family: dict) -> PreTrainedTokenizerFast:
    """A byte-level BPE (Qwen2's and Llama-3's kind) with the family's special tokens and public chat template."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=family["specials"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=family["bos"], eos_token=family["eos"], pad_token=family["specials"][0]
    )
    fast.chat_template = (TRL_TEMPLATES / family["template"]).read_text()
    return fast


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, checkpoints) -> dict:
    """family -> (LLM folder: a tiny model with its tokenizer, the processor built from it)."""
    result = {}
    for name, family in BACKBONES.items():
        architecture = "qwen2" if name == "qwen2" else "llama"
        folder = tmp_path_factory.mktemp(name) / "llm"
        save_tiny_language_model(folder, byte_level_tokenizer(family), architecture)
        result[name] = (str(folder), LlavaPluginProcessor.from_backbones(checkpoints["clip"], str(folder)))
    return result


def as_text(row: dict) -> dict:
    """`row` with each message's content as text, each image as `<image>` at the start of its turn (LLaVA JSON's
    way): what a template that knows no list content (the public ones) renders."""
    messages = []
    for message in row["messages"]:
        texts = "".join(item["text"] for item in message["content"] if item["type"] == "text")
        images = sum(item["type"] == "image" for item in message["content"])
        messages.append({"role": message["role"], "content": ("<image>\n" * images + texts).strip("\n")})
    return {**row, "messages": messages}


def own_rendering(processor, family: dict, row: dict) -> tuple[list[int], list[int]]:
    """The reference: the tokenizer's own `apply_chat_template` of the conversation as text (each image as `<image>`
    at the start of its turn), each `<image>` token widened to its run, and as labels the tokens of each answer with
    its end of turn (`<|im_end|>\\n`, `<|eot_id|>`), located in that text."""
    tokenizer = processor.tokenizer
    messages = as_text(row)["messages"]
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans, cursor = [], 0
    for message in messages:
        if message["role"] == "assistant":
            answer = message["content"].strip() + family["end_of_turn"]
            start = text.index(answer, cursor)
            spans.append((start, start + len(answer)))
            cursor = start + len(answer)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = [], []
    for token, (begin, end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
        run = processor.image_seq_length if token == processor.image_token_id else 1
        supervised = token != processor.image_token_id and any(b <= begin and end <= e for b, e in spans)
        ids += [token] * run
        labels += [token if supervised else IGNORE] * run
    return ids, labels


@pytest.mark.parametrize("family", BACKBONES)
@pytest.mark.parametrize(
    "name", ["multi-turn", "image-in-later-turn", "text-only", "two-images", "unicode-byte-fallback"]
)
def test_backbone_template_ids_and_labels_are_the_language_models_own(backbones, data, family, name):
    _, processor = backbones[family]
    row = row_of(data, name)
    template = chat_template("backbone", tokenizer=processor.tokenizer)
    expected = own_rendering(processor, BACKBONES[family], row)
    assert unpadded(collate(processor, [row], template), 0) == expected
    assert sample_length(row, processor, template) == len(expected[0])


@pytest.mark.parametrize("name", ["multi-turn", "text-only", "image-in-later-turn"])
def test_backbone_llama3_masks_as_trls_llama3_training_template(backbones, data, name):
    """TRL's own training variant of the Llama-3 template puts the same tokens under the loss."""
    _, processor = backbones["llama3"]
    # Without images (text reaches the processor without them): the images' place is the other tests' concern.
    messages = [
        {**message, "content": message["content"].replace("<image>", "").strip()}
        for message in as_text(row_of(data, name))["messages"]
    ]

    def masked(template: str) -> tuple[list[int], list[int]]:
        out = processor.apply_chat_template(
            messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        return out["input_ids"][0], out["assistant_masks"][0]

    trls = masked((TRL_TEMPLATES / "llama3_training.jinja").read_text())
    assert masked(chat_template("backbone", tokenizer=processor.tokenizer)) == trls
    assert 1 in trls[1]


@pytest.mark.parametrize("family", BACKBONES)
def test_backbone_answering_prompt_is_the_language_models_own(backbones, family):
    _, processor = backbones[family]
    messages = [user_message("What is the colour of the square?", images=1)]
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is the colour of the square?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    template = chat_template("backbone", tokenizer=processor.tokenizer)
    assert processor.apply_chat_template(messages, chat_template=template, add_generation_prompt=True) == expected


def test_backbone_is_refused_in_one_line_where_it_cannot_be_cut(backbones, checkpoints):
    """A language model without a chat template, and one whose template rewrites earlier turns (Qwen3's drops past
    reasoning), cannot give the loss its answers: refused when the template is built, naming the tokenizer."""
    _, processor = backbones["qwen2"]
    no_template = LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])
    with pytest.raises(ValueError, match="has none: pick one of vicuna_v1"):
        chat_template("backbone", tokenizer=no_template.tokenizer)
    tokenizer = processor.tokenizer
    own = tokenizer.chat_template
    try:
        tokenizer.chat_template = (TRL_TEMPLATES / "qwen3.jinja").read_text()
        with pytest.raises(ValueError, match="renders earlier turns differently") as error:
            chat_template("backbone", tokenizer=tokenizer)
        assert "\n" not in str(error.value) and tokenizer.name_or_path in str(error.value)
    finally:
        tokenizer.chat_template = own


def test_a_run_trained_with_template_backbone_answers_in_the_language_models_format(
    checkpoints, train_data, backbones, tmp_path
):
    """`template: backbone` renders the data with the LLM's own template and becomes the saved processor's default;
    a language model without one is refused before training."""
    folder, processor = backbones["qwen2"]
    args = run_args({**checkpoints, "llama": folder}, train_data, tmp_path, "--template", "backbone")
    trainer = train("stage2", args)
    saved = LlavaPluginProcessor.from_pretrained(tmp_path)
    assert saved.chat_template["default"] == chat_template("backbone", tokenizer=processor.tokenizer)
    assert trainer.data_collator.chat_template == saved.chat_template["default"]
    _, answering = load_llava(tmp_path, "cpu", template="backbone")  # `--template backbone` on the trained run
    messages = [user_message("What is the colour of the square?", images=1)]
    expected = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": "<image>\nWhat is the colour of the square?"}],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert answering.apply_chat_template(messages, add_generation_prompt=True) == expected
    assert answering.chat_template["default"] == saved.chat_template["default"]  # the LLM's own, wrapped once
    with pytest.raises(SetupError, match="has none"):
        train("stage2", run_args(checkpoints, train_data, tmp_path / "refused", "--template", "backbone"))
