"""Building from backbones, the Auto classes, `pipeline`, and remote-code loading without this package."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPModel,
    SiglipVisionModel,
    pipeline,
)

from modeling_llava import (
    LlavaPluginConfig,
    LlavaPluginForConditionalGeneration,
    LlavaPluginModel,
    LlavaPluginProcessor,
)
from tests.conftest import GREEDY, QUESTION, REMOTE_SCRIPT, random_image, reference_outputs

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_from_backbones_keeps_both_backbones_and_adds_the_image_token(checkpoints, tokenizer, text):
    model = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints[text])
    clip = CLIPModel.from_pretrained(checkpoints["clip"])
    language_model = AutoModelForCausalLM.from_pretrained(checkpoints[text])
    ours = model.state_dict()

    for name, weight in clip.vision_model.state_dict().items():  # the vision tower of the full CLIP checkpoint
        assert torch.equal(ours[f"model.vision_tower.{name}"], weight), name
    embed_name = "embed_tokens.weight"
    for name, weight in language_model.model.state_dict().items():
        if name != embed_name:
            assert torch.equal(ours[f"model.language_model.{name}"], weight), name

    # New rows (<image>, and a pad token where the tokenizer class adds one) start at the mean of the old rows,
    # as the original LLaVA initialises new tokens.
    processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], checkpoints[text])
    old = language_model.get_input_embeddings().weight
    new = model.get_input_embeddings().weight
    assert new.shape[0] == len(processor.tokenizer) == model.config.text_config.vocab_size > old.shape[0]
    assert torch.equal(new[: len(old)], old)
    torch.testing.assert_close(new[len(old) :], old.mean(dim=0).expand(len(new) - len(old), -1))
    assert torch.equal(model.lm_head.weight[: len(old)], language_model.lm_head.weight)

    assert model.config.image_token_id == processor.image_token_id == len(processor.tokenizer) - 1
    assert processor.tokenizer.convert_ids_to_tokens(model.config.image_token_id) == "<image>"
    assert model.config.image_seq_length == processor.image_seq_length == 25
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == processor.tokenizer.pad_token_id is not None


SENTENCE = "What is the colour of the square? Zebra 42!"


def test_a_tokenizer_model_only_llm_loads_and_tokenizes_as_sentencepiece(checkpoints, sentencepiece_llama):
    text, spm = sentencepiece_llama
    assert sorted(path.name for path in Path(text).glob("tokenizer*")) == ["tokenizer.model", "tokenizer_config.json"]
    processor = LlavaPluginProcessor.from_backbones(checkpoints["clip"], text)
    model = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], text)

    assert processor.tokenizer(SENTENCE)["input_ids"] == [spm.bos_id()] + spm.encode(SENTENCE)
    assert model.config.image_token_id == processor.image_token_id == spm.vocab_size()  # one new row: <image>
    assert model.get_input_embeddings().num_embeddings == spm.vocab_size() + 1

    inputs = processor(images=random_image(0), text="<image>\n" + SENTENCE, return_tensors="pt")
    assert (inputs["input_ids"] == processor.image_token_id).sum() == model.config.image_seq_length
    tokens = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert tokens.shape == (1, inputs["input_ids"].shape[1] + 4)


def test_from_backbones_with_siglip_keeps_every_patch(checkpoints):
    model = LlavaPluginForConditionalGeneration.from_backbones(
        checkpoints["siglip"], checkpoints["llama"], projector_type="linear"
    )
    siglip = SiglipVisionModel.from_pretrained(checkpoints["siglip"])
    assert model.config.vision_feature_select_strategy == "full"  # SigLIP has no CLS to drop
    assert model.config.image_seq_length == 25
    assert sorted(name for name, _ in model.model.multi_modal_projector.named_parameters()) == [
        "linear_1.bias",
        "linear_1.weight",
    ]
    for name, weight in siglip.state_dict().items():
        assert torch.equal(model.state_dict()[f"model.vision_tower.{name}"], weight), name


def test_from_backbones_loads_in_the_requested_dtype(checkpoints):
    model = LlavaPluginForConditionalGeneration.from_backbones(
        checkpoints["clip"], checkpoints["llama"], dtype=torch.bfloat16
    )
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def test_auto_classes_load_the_plugin(llava_checkpoint):
    assert type(AutoConfig.from_pretrained(llava_checkpoint)) is LlavaPluginConfig
    assert type(AutoModel.from_pretrained(llava_checkpoint)) is LlavaPluginModel
    assert type(AutoModelForImageTextToText.from_pretrained(llava_checkpoint)) is LlavaPluginForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(llava_checkpoint)) is LlavaPluginProcessor


def test_checkpoint_ships_its_code_and_auto_map(llava_checkpoint):
    files = {path.name for path in Path(llava_checkpoint).iterdir()}
    assert {"configuration_llava_plugin.py", "modeling_llava_plugin.py", "processing_llava_plugin.py"} <= files
    assert {"chat_templates.py", "prompt_tokenization.py"} <= files  # imported by the processor, so copied with it
    auto_map = json.loads((Path(llava_checkpoint) / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageTextToText"] == "modeling_llava_plugin.LlavaPluginForConditionalGeneration"
    processor_config = json.loads((Path(llava_checkpoint) / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_llava_plugin.LlavaPluginProcessor"


def remote_code_pythons() -> list:
    """This interpreter, and one with the oldest transformers that a checkpoint's files must load on.

    `make test` builds the second from `constraints-remote-code.txt` and names it in LLAVA_REMOTE_CODE_PYTHON.
    """
    floor = os.environ.get("LLAVA_REMOTE_CODE_PYTHON")
    skip = pytest.mark.skip(reason="LLAVA_REMOTE_CODE_PYTHON is not set: `make test` builds that interpreter")
    return [
        pytest.param(sys.executable, id="this-transformers"),
        pytest.param(floor, id="oldest-transformers", marks=[pytest.mark.slow] + ([] if floor else [skip])),
    ]


def pinned_version(constraints: Path, package: str) -> str:
    pins = dict(line.split("==") for line in constraints.read_text().split() if "==" in line)
    return pins[package]


@pytest.mark.parametrize("python", remote_code_pythons())
def test_trust_remote_code_loads_identically_without_the_package(llava_checkpoint, tmp_path, python):
    """A checkpoint saved here loads in a process that cannot import this package, with this interpreter's
    transformers and with the oldest one supported for remote code: same logits and greedy tokens."""
    if python != sys.executable:
        version = subprocess.run(
            [python, "-c", "import transformers; print(transformers.__version__)"], capture_output=True, text=True
        ).stdout.strip()
        assert version == pinned_version(REPO / "constraints-remote-code.txt", "transformers")
    image_path = tmp_path / "image.png"
    random_image(3).save(image_path)
    assert_remote_code_loads_identically(python, llava_checkpoint, image_path, tmp_path)


def assert_remote_code_loads_identically(python: str, checkpoint: str, image_path: Path, tmp_path: Path) -> None:
    """`checkpoint` loaded by `python` with `trust_remote_code=True` in a process that cannot import this package gives
    the logits and greedy tokens it gives here, on the image at `image_path`."""
    out = tmp_path / "remote.safetensors"
    script = tmp_path / "remote.py"
    script.write_text(textwrap.dedent(REMOTE_SCRIPT))
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [python, str(script), checkpoint, str(image_path), json.dumps(QUESTION), json.dumps(GREEDY), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = load_file(out)
    logits, tokens = reference_outputs(checkpoint, image_path)
    torch.testing.assert_close(remote["logits"], logits, atol=1e-5, rtol=0)
    assert torch.equal(remote["tokens"], tokens)


def test_pipeline_generates_what_generate_does(llava_checkpoint):
    image = random_image(4)
    pipe = pipeline("image-text-to-text", model=llava_checkpoint)
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, QUESTION[0]["content"][1]]}]
    reply = pipe(text=messages, generate_kwargs=GREEDY)[0]["generated_text"][-1]

    model = AutoModelForImageTextToText.from_pretrained(llava_checkpoint).eval()
    processor = AutoProcessor.from_pretrained(llava_checkpoint)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    new_tokens = model.generate(**inputs, **GREEDY)[0, inputs["input_ids"].shape[1] :]
    assert reply["role"] == "assistant"
    assert reply["content"] == processor.decode(new_tokens, skip_special_tokens=True)
    assert len(new_tokens) == GREEDY["max_new_tokens"]  # an untrained model does not stop early here
