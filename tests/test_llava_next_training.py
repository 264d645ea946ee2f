"""Training LLaVA-NeXT (1.6): built from backbones, each stage's freezing, lengths, batches, recipes, LoRA."""

import pytest
import torch
from transformers import AutoModelForCausalLM, CLIPModel

from modeling_llava import (
    LlavaNextPluginForConditionalGeneration,
    LlavaNextPluginProcessor,
    LlavaPluginForConditionalGeneration,
)
from modeling_llava.modeling_llava_plugin import LlavaPluginMultiModalProjector
from processing.adapters import build_base
from tests.conftest import QUESTION, random_image

# LLaVA-1.6's pinpoints ((height, width): 2x1, 1x2, 2x2, 1x3, 3x1 tiles of 336) for the tiny tower's 30-pixel tiles.
TINY_PINPOINTS = [[60, 30], [30, 60], [60, 60], [30, 90], [90, 30]]


def test_from_backbones_builds_a_next_model_around_both_backbones(checkpoints):
    torch.manual_seed(0)
    model = LlavaNextPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"])
    clip = CLIPModel.from_pretrained(checkpoints["clip"])
    language_model = AutoModelForCausalLM.from_pretrained(checkpoints["llama"])
    ours = model.state_dict()
    for name, weight in clip.vision_model.state_dict().items():
        assert torch.equal(ours[f"model.vision_tower.{name}"], weight), name
    for name, weight in language_model.model.state_dict().items():
        if name != "embed_tokens.weight":  # grown by the <image> row
            assert torch.equal(ours[f"model.language_model.{name}"], weight), name

    assert model.config.image_grid_pinpoints == TINY_PINPOINTS
    assert model.config.model_type == "llava_next_plugin"
    # The projector is LLaVA-1.5's from the same seed; image_newline is real and drawn right after it as LLaVA-NeXT's
    # llava_arch.py draws it, randn(hidden) / sqrt(hidden).
    torch.manual_seed(0)
    plain = LlavaPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"])
    projector = model.model.multi_modal_projector.state_dict()
    for name, weight in plain.model.multi_modal_projector.state_dict().items():
        assert torch.equal(projector[name], weight), name
    torch.manual_seed(0)
    LlavaPluginMultiModalProjector(model.config).apply(model._init_weights)
    expected = torch.randn(32) / 32**0.5
    assert torch.equal(model.model.image_newline.detach(), expected)
    assert model.model.image_newline.requires_grad

    processor = LlavaNextPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])
    assert model.config.image_token_id == processor.image_token_id
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=random_image(0, (20, 80)), text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, inputs["input_ids"].shape[1] + 3)


def test_build_base_builds_next_from_backbones_and_reloads_it_as_saved(checkpoints, tmp_path):
    pinpoints = [[30, 60], [60, 60]]
    model, processor = build_base(
        vision_tower=checkpoints["clip"],
        language_model=checkpoints["llama"],
        anyres=True,
        image_grid_pinpoints=pinpoints,
    )
    assert isinstance(model, LlavaNextPluginForConditionalGeneration)
    assert isinstance(processor, LlavaNextPluginProcessor)
    assert model.config.image_grid_pinpoints == processor.image_processor.image_grid_pinpoints == pinpoints
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    reloaded, reprocessor = build_base(str(tmp_path), anyres=True)
    assert isinstance(reloaded, LlavaNextPluginForConditionalGeneration)
    assert isinstance(reprocessor, LlavaNextPluginProcessor)
    for name, weight in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], weight), name


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"anyres": True, "pad_to_square": True}, "pad_to_square"),
        ({"image_grid_pinpoints": [[30, 60]]}, "set anyres"),
    ],
)
def test_build_base_refuses_tiling_settings_it_cannot_honour(checkpoints, fields, named):
    with pytest.raises(ValueError, match=named):
        build_base(vision_tower=checkpoints["clip"], language_model=checkpoints["llama"], **fields)


def test_a_checkpoint_keeps_its_own_tiling(llava_checkpoint):
    with pytest.raises(ValueError, match="LLaVA-1.5 checkpoint"):
        build_base(llava_checkpoint, anyres=True)
