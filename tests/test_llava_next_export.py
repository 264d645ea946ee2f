"""`llava convert NEXT_CHECKPOINT OUT --to llava-hf` of a checkpoint in this plugin's LLaVA-NeXT format (as training
and `save_pretrained` write it, several chat templates included): transformers' built-in LlavaNext and AutoProcessor
load it without the package, with this plugin's pixels, ids, logits and greedy tokens, in this transformers and in
the oldest one a checkpoint's files support; its weights carry the names of released llava-hf 1.6 checkpoints.

(The export of an original 1.6 checkpoint is tested in `tests/test_llava_next.py`.)
"""

import json
import subprocess
import textwrap

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration, LlavaNextProcessor

from command_line.main import main as llava
from modeling_llava import LlavaNextPluginForConditionalGeneration, LlavaNextPluginProcessor
from tests.conftest import BLOCK_THE_PACKAGE, random_image
from tests.test_convert import LLAVA_HF_RELEASED, saved_weight_names
from tests.test_loading import remote_code_pythons

# (height, width): grids of one, two and three tiles of the tiny tower, where transformers' rounding of the unpadded
# size keeps what the original's truncation keeps (`anyres` module docstring).
SIZES = [(40, 52), (20, 64), (47, 13)]
PROMPT = "USER: <image>\nWhat is it? ASSISTANT:"
GREEDY = {"max_new_tokens": 6, "do_sample": False}

# Loads the export with transformers' built-in classes only, in a process that cannot import this package.
BUILT_IN_SCRIPT = (
    BLOCK_THE_PACKAGE
    + """
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

folder, image_path, prompt, out = sys.argv[1:]
model = LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
processor = AutoProcessor.from_pretrained(folder)
inputs = processor(images=Image.open(image_path), text=prompt, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
    tokens = model.generate(**inputs, max_new_tokens=6, do_sample=False)
save_file({"logits": logits.contiguous(), "tokens": tokens.contiguous(), "input_ids": inputs["input_ids"]}, out)
"""
)


@pytest.fixture(scope="module")
def exported(next_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "hf"
    llava(["convert", next_checkpoint, str(out), "--to", "llava-hf"])
    return out


def test_export_loads_in_the_built_in_llava_next_with_equal_outputs(next_checkpoint, exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llava_next" and "auto_map" not in config and not list(exported.glob("*.py"))
    hf_model = LlavaNextForConditionalGeneration.from_pretrained(exported).eval()
    hf_processor = AutoProcessor.from_pretrained(exported)
    assert type(hf_processor) is LlavaNextProcessor
    model = LlavaNextPluginForConditionalGeneration.from_pretrained(next_checkpoint).eval()
    processor = LlavaNextPluginProcessor.from_pretrained(next_checkpoint)
    assert hf_model.config.image_grid_pinpoints == model.config.image_grid_pinpoints
    images = [random_image(seed, size) for seed, size in enumerate(SIZES)]
    assert len({processor.num_image_tokens(size) for size in SIZES}) == len(SIZES)
    cases = [(image, PROMPT) for image in images] + [(images[1:], "USER: <image>\n<image>\nWhich? ASSISTANT:")]
    for image, prompt in cases:
        ours = processor(images=image, text=prompt, return_tensors="pt")
        theirs = hf_processor(images=image, text=prompt, return_tensors="pt")
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
        assert torch.equal(ours["image_sizes"], theirs["image_sizes"])
        assert torch.equal(ours["input_ids"], theirs["input_ids"])
        with torch.no_grad():
            torch.testing.assert_close(hf_model(**theirs).logits, model(**ours).logits, atol=1e-5, rtol=0)
            assert torch.equal(hf_model.generate(**theirs, **GREEDY), model.generate(**ours, **GREEDY))


@pytest.mark.parametrize("python", remote_code_pythons())
def test_export_loads_in_a_process_without_the_package(next_checkpoint, exported, tmp_path, python):
    image_path = tmp_path / "image.png"
    random_image(3, SIZES[0]).save(image_path)  # both sides above the tile: Pillow versions resize it alike
    script = tmp_path / "built_in.py"
    script.write_text(textwrap.dedent(BUILT_IN_SCRIPT))
    out = tmp_path / "out.safetensors"
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [python, str(script), str(exported), str(image_path), PROMPT, str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    theirs = load_file(out)
    model = LlavaNextPluginForConditionalGeneration.from_pretrained(next_checkpoint).eval()
    processor = LlavaNextPluginProcessor.from_pretrained(next_checkpoint)
    ours = processor(images=Image.open(image_path), text=PROMPT, return_tensors="pt")
    assert torch.equal(theirs["input_ids"], ours["input_ids"])
    with torch.no_grad():
        torch.testing.assert_close(theirs["logits"], model(**ours).logits, atol=1e-5, rtol=0)
        assert torch.equal(theirs["tokens"], model.generate(**ours, **GREEDY))


def test_export_writes_the_weight_names_of_released_llava_hf_1_6_checkpoints(exported):
    """llava-hf/llava-v1.6-vicuna-7b-hf's names (its CLIP tower under `vision_tower.vision_model`, `image_newline` at
    the top), which vLLM's LlavaNextForConditionalGeneration loads as they are."""
    names = saved_weight_names(exported)
    assert "image_newline" in names
    assert all(name.startswith(LLAVA_HF_RELEASED) for name in names - {"image_newline"}), sorted(names)[:5]


def test_export_carries_the_conversation_template_alone(next_checkpoint, exported):
    conversation = AutoProcessor.from_pretrained(next_checkpoint).chat_template["default"]
    assert AutoProcessor.from_pretrained(exported).chat_template == conversation
    assert not (exported / "additional_chat_templates").exists()
