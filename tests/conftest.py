"""Session fixtures: a tokenizer trained here, tiny backbone checkpoints and a tiny LLaVA built from them.

Nothing is downloaded. Sizes follow transformers' ModelTester (width 32, 2 layers, 30 px images in 6 px patches).
"""

import io
import json

import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

import modeling_llava  # noqa: F401  (registers the Auto classes)
from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from modeling_llava.chat_templates import VICUNA_V1_SYSTEM
from trainers.tiny_backbones import TINY_TEXT, save_tiny_language_model, save_tiny_vision, train_tokenizer

CORPUS = [
    VICUNA_V1_SYSTEM,
    "USER: What is the colour of the square? ASSISTANT: The square is red.",
    "USER: Where is the blue circle? ASSISTANT: The blue circle is at the top left of the image.",
    "A green triangle on the right and a yellow star below it.\n",
    "How many shapes are there? There are three shapes.",
]


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(CORPUS * 4, vocab_size=300)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, tokenizer):
    """Paths of tiny backbone checkpoints: `clip` (a full CLIPModel), `siglip`, `llama`, `qwen2`."""
    root = tmp_path_factory.mktemp("backbones")
    return {
        "clip": str(save_tiny_vision(root / "clip", "clip")),
        "siglip": str(save_tiny_vision(root / "siglip", "siglip")),
        "llama": str(save_tiny_language_model(root / "llama", tokenizer, "llama")),
        "qwen2": str(save_tiny_language_model(root / "qwen2", tokenizer, "qwen2")),
    }


@pytest.fixture(scope="session")
def sentencepiece_llama(tmp_path_factory) -> tuple[str, sentencepiece.SentencePieceProcessor]:
    """A tiny Llama whose tokenizer is only `tokenizer.model` + `tokenizer_config.json`, as the original LLaVA and
    many Vicuna checkpoints ship it, and the SentencePiece model itself as the reference."""
    folder = tmp_path_factory.mktemp("sentencepiece-llama")
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 4),
        model_writer=proto,
        model_type="bpe",
        vocab_size=400,
        byte_fallback=True,  # as Llama's: 256 byte pieces, so no text falls back to <unk>
        normalization_rule_name="identity",  # as Llama's: text is not normalised, spaces not collapsed
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    tokenizer_config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>"}
    tokenizer_config |= {"unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    spm = sentencepiece.SentencePieceProcessor(model_proto=proto.getvalue())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=spm.vocab_size(), bos_token_id=1, eos_token_id=2, **TINY_TEXT)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder), spm


@pytest.fixture(scope="session")
def processor(checkpoints):
    return LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])


@pytest.fixture(scope="session")
def llava_checkpoint(tmp_path_factory, checkpoints, processor):
    """A saved LLaVA (CLIP + Llama, mlp2x_gelu) with its processor: what `from_pretrained` users start from."""
    torch.manual_seed(0)
    model = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"])
    path = tmp_path_factory.mktemp("llava") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def random_image(seed: int, size: tuple[int, int] = (40, 52)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8))


CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat is the colour of the square?"},
    {"from": "gpt", "value": "The square is red."},
    {"from": "human", "value": "Where is the blue circle?"},
    {"from": "gpt", "value": "The blue circle is at the top left of the image."},
]


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> dict[str, str]:
    """Eight image conversations and one text-only record, in LLaVA JSON, with their image folder."""
    root = tmp_path_factory.mktemp("train_data")
    (root / "images").mkdir()
    records = []
    for index in range(8):
        random_image(index).save(root / "images" / f"{index}.png")
        records.append({"id": f"sample-{index}", "image": f"{index}.png", "conversations": CONVERSATION})
    records.append({"id": "text-only", "conversations": CONVERSATION[:2]})
    records[-1]["conversations"] = [{"from": "human", "value": "How many shapes are there?"}, CONVERSATION[1]]
    (root / "data.json").write_text(json.dumps(records))
    return {"data_path": str(root / "data.json"), "image_folder": str(root / "images")}
