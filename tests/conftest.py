"""Shared by the tests: session fixtures (a tokenizer trained here, tiny backbone checkpoints, a tiny LLaVA built from
them, a SentencePiece-only Llama, training data) and the helpers more than one test module uses (the original's
vicuna_v1 prompt, training arguments, the reference outputs of a checkpoint, the remote-code loader script, an image
as a data URL).

Nothing is downloaded. Sizes follow transformers' ModelTester (width 32, 2 layers, 30 px images in 6 px patches).
"""

import base64
import errno
import io
import json
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import sentencepiece
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, LlamaConfig, LlamaForCausalLM

import modeling_llava  # noqa: F401  (registers the Auto classes)
from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from modeling_llava.chat_templates import VICUNA_V1_SYSTEM
from tests.tiny_backbones import TINY_TEXT, save_tiny_language_model, save_tiny_vision
from trainers.demo.tokenizer import train_tokenizer
from trainers.train import main, parse

CORPUS = [
    VICUNA_V1_SYSTEM,
    "USER: What is the colour of the square? ASSISTANT: The square is red.",
    "USER: Where is the blue circle? ASSISTANT: The blue circle is at the top left of the image.",
    "A green triangle on the right and a yellow star below it.\n",
    "How many shapes are there? There are three shapes.",
]


@pytest.fixture(autouse=True, scope="session")
def datasets_cache(tmp_path_factory) -> Path:
    """datasets' cache, and the measured lengths kept in it, in a folder of this test session (subprocesses too)."""
    folder = tmp_path_factory.mktemp("datasets_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("HF_DATASETS_CACHE", str(folder))
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", folder)
    yield folder
    patch.undo()


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


def sentencepiece_bpe(corpus: list[str], vocab_size: int) -> bytes:
    """A SentencePiece BPE model (its serialized proto) trained on `corpus`, with Llama's settings."""
    proto = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=proto,
        model_type="bpe",
        vocab_size=vocab_size,
        byte_fallback=True,  # as Llama's: 256 byte pieces, so no text falls back to <unk>
        normalization_rule_name="identity",  # as Llama's: text is not normalised, spaces not collapsed
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return proto.getvalue()


@pytest.fixture(scope="session")
def sentencepiece_llama(tmp_path_factory) -> tuple[str, sentencepiece.SentencePieceProcessor]:
    """A tiny Llama whose tokenizer is only `tokenizer.model` + `tokenizer_config.json`, as the original LLaVA and
    many Vicuna checkpoints ship it, and the SentencePiece model itself as the reference."""
    folder = tmp_path_factory.mktemp("sentencepiece-llama")
    proto = io.BytesIO(sentencepiece_bpe(CORPUS * 4, vocab_size=400))
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


@pytest.fixture(scope="session")
def next_checkpoint(tmp_path_factory, checkpoints) -> str:
    """A saved tiny LLaVA-NeXT (CLIP + Llama, AnyRes tiles) with its processor, shared by the downstream tests."""
    from tests.test_llava_next import tiny_next_checkpoint  # a test module that imports this one

    return tiny_next_checkpoint(tmp_path_factory.mktemp("next") / "tiny-next", checkpoints)


@pytest.fixture(scope="session")
def loaded(llava_checkpoint) -> tuple[LlavaPluginForConditionalGeneration, LlavaPluginProcessor]:
    """The session's tiny LLaVA, loaded once in eval mode, with its processor (the chat and serve tests share it)."""
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint).eval()
    return model, LlavaPluginProcessor.from_pretrained(llava_checkpoint)


@pytest.fixture(scope="session")
def lora_adapter(tmp_path_factory, llava_checkpoint) -> Path:
    """A LoRA adapter (r 4, alpha 8) on the session's tiny LLaVA, saved as PEFT saves it."""
    from peft import get_peft_model

    from trainers.stages import lora_config

    folder = tmp_path_factory.mktemp("lora") / "adapter"
    model = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint)
    get_peft_model(model, lora_config(model, r=4, alpha=8, dropout=0.0)).save_pretrained(folder)
    return folder


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


@pytest.fixture(scope="session")
def stage1_data(train_data) -> dict[str, str]:
    """`train_data`'s images with stage-1 records: each one question with its image and one answer, all the `plain`
    template renders (the original's `preprocess_plain` asserts that shape)."""
    records = [record for record in json.loads(Path(train_data["data_path"]).read_text()) if "image" in record]
    for record in records:
        record["conversations"] = record["conversations"][:2]
    path = Path(train_data["data_path"]).with_name("stage1.json")
    path.write_text(json.dumps(records))
    return {**train_data, "data_path": str(path)}


def turn(role: str, *parts: str | dict) -> dict:
    return {"role": role, "content": [{"type": "text", "text": p} if isinstance(p, str) else p for p in parts]}


IMAGE_ITEM = {"type": "image"}


ORIGINAL_VICUNA_V1_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


def run_args(checkpoints, train_data, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--vision_tower", checkpoints["clip"], "--language_model", checkpoints["llama"],
        "--data_path", train_data["data_path"], "--image_folder", train_data["image_folder"],
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "2", "--max_steps", "2",
        "--learning_rate", "1e-2", "--bf16", "false", "--gradient_checkpointing", "false",
        "--report_to", "none", "--logging_steps", "1", "--max_length", "200", "--save_strategy", "no",
        *extra,
    ]  # fmt: skip


# A small adapter for the LoRA stages, whose recipe defaults are the 7B's (r 128).
TINY_LORA = ["--lora_r", "4", "--lora_alpha", "8"]


def train(stage: str, args: list[str]):
    torch.manual_seed(0)
    return main(*parse([stage, *args, *(TINY_LORA if stage in ("lora", "qlora") else [])]))


QUESTION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is the colour of the square?"}]}
]


GREEDY = {"max_new_tokens": 8, "do_sample": False}


def reference_outputs(checkpoint: str, image_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and greedy tokens of the checkpoint loaded with this package installed."""
    from PIL import Image

    model = AutoModelForImageTextToText.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits, model.generate(**inputs, **GREEDY)


# The opening of every script that must run without this package: none of its packages can be imported.
BLOCK_THE_PACKAGE = """
import importlib.abc, sys

class BlockProject(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {
            "modeling_llava", "processing", "hub_cards", "trainers", "evaluation", "serving", "command_line"
        }:
            raise ImportError(f"{name} is blocked: this process must not see the llava-plugin package")

sys.meta_path.insert(0, BlockProject())
"""

REMOTE_SCRIPT = (
    BLOCK_THE_PACKAGE
    + """
import json

try:
    import modeling_llava  # noqa: F401
except ImportError:
    pass
else:
    sys.exit("the package is importable, so this would not test remote code")

import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoModelForImageTextToText, AutoProcessor

checkpoint, image_path, question, greedy, out = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
prompt = processor.apply_chat_template(json.loads(question), add_generation_prompt=True)
inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
    tokens = model.generate(**inputs, **json.loads(greedy))
save_file({"logits": logits.contiguous(), "tokens": tokens.contiguous()}, out)
"""
)


Q1, A1 = "What is the colour of the square?", "The square is red."


Q2, A2 = "Where is the blue circle?", "The blue circle is at the top left of the image."


Q3, A3 = "How many shapes are there?", "There are three shapes."


CAPTION = "A red square and a blue circle."  # not in the tokenizer corpus, so "\n" stays its own token


def vicuna_v1_get_prompt(messages: list[tuple[str, str | None]], system: str = ORIGINAL_VICUNA_V1_SYSTEM) -> str:
    """The original `Conversation.get_prompt()` for `SeparatorStyle.TWO` with conv_vicuna_v1's separators."""
    seps = [" ", "</s>"]
    ret = system + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2] if message else role + ":"
    return ret


def expand_image_ids(ids: list[int], image_token_id: int, n: int) -> list[int]:
    """The ids of the unexpanded text with each image token repeated `n` times."""
    return [token for i in ids for token in ([i] * n if i == image_token_id else [i])]


def unmasked_text(processor: LlavaPluginProcessor, ids: list[int], mask: list[int]) -> str:
    """The text of the tokens under the mask. Joining tokens keeps each word's leading space (Metaspace's `▁`),
    which `decode` strips from the first token."""
    tokens = processor.tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask, strict=True) if m])
    return "".join(tokens).replace("▁", " ")


# Different lengths, a text-only sample between two image samples, and a sample with two images, so that a wrong
# splice order, a boundary leak or a misplaced position restart would all change the numbers.
EXAMPLES = [
    {
        "messages": [
            turn("user", IMAGE_ITEM, "What is the colour of the square?"),
            turn("assistant", "The square is red."),
            turn("user", "Where is the blue circle?"),
            turn("assistant", "The blue circle is at the top left of the image."),
        ],
        "images": [random_image(0)],
    },
    {"messages": [turn("user", "How many shapes are there?"), turn("assistant", "There are three.")], "images": []},
    {
        "messages": [turn("user", IMAGE_ITEM, IMAGE_ITEM, "Which one is green?"), turn("assistant", "The triangle.")],
        "images": [random_image(1), random_image(2, size=(30, 30))],
    },
    {"messages": [turn("user", IMAGE_ITEM, "Where?"), turn("assistant", "Left.")], "images": [random_image(3)]},
]


def data_url(image: Image.Image) -> str:
    """`image` as a PNG data URL, as an OpenAI client sends an image."""
    png = io.BytesIO()
    image.save(png, format="PNG")
    return "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()


def refused(capsys, argv: list[str]) -> str:
    """Runs `llava ARGV` in this process, which must stop on a user's mistake as every command does: exit status 2
    and no traceback, the error one line on stderr starting `llava COMMAND`, after any progress bar. Returns it."""
    from command_line.main import main as llava

    capsys.readouterr()  # only what this command writes
    with pytest.raises(SystemExit) as exit_info:
        llava(argv)
    err = capsys.readouterr().err
    message = err.strip().splitlines()[-1] if err.strip() else ""  # splitlines also ends a progress bar's \r
    assert exit_info.value.code == 2, err
    assert message.startswith(f"llava {argv[0]}") and "Traceback" not in err, err
    return message


def fill_the_disk(monkeypatch, folder):
    """Writes into `folder` find no space left: the staging file is created, then nothing fits in it (ENOSPC)."""
    write_text = Path.write_text

    def full(path: Path, *args, **kwargs):
        if path.parent == folder:
            path.touch()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
