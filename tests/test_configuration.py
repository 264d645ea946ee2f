"""LlavaPluginConfig: defaults, derived image sequence length, and the errors that bad combinations raise."""

import pytest
import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    CLIPVisionConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    SiglipVisionConfig,
)

from modeling_llava import LlavaPluginConfig
from tests.tiny_backbones import TINY_TEXT, TINY_VISION


def test_defaults_are_llava_1_5():
    config = LlavaPluginConfig()
    assert config.vision_config.model_type == "clip_vision_model"
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (336, 14)
    assert config.text_config.model_type == "llama"
    assert config.projector_type == "mlp2x_gelu"
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.image_seq_length == 576  # (336 / 14)^2 patches, CLS dropped


@pytest.mark.parametrize(
    ("vision_config", "strategy", "expected"),
    [
        (CLIPVisionConfig(**TINY_VISION), "default", 25),  # (30 / 6)^2 patches; CLS dropped
        (CLIPVisionConfig(**TINY_VISION), "full", 26),  # CLS kept
        (SiglipVisionConfig(**TINY_VISION), "full", 25),  # SigLIP has no CLS
    ],
)
def test_image_seq_length_is_derived(vision_config, strategy, expected):
    config = LlavaPluginConfig(
        vision_config=vision_config, text_config=LlamaConfig(**TINY_TEXT), vision_feature_select_strategy=strategy
    )
    assert config.image_seq_length == expected


def test_dicts_and_config_objects_give_the_same_config():
    from_dicts = LlavaPluginConfig(
        vision_config={"model_type": "clip_vision_model", **TINY_VISION},
        text_config={"model_type": "qwen2", **TINY_TEXT},
        projector_type="linear",
    )
    from_objects = LlavaPluginConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION), text_config=Qwen2Config(**TINY_TEXT), projector_type="linear"
    )
    assert from_dicts.to_dict() == from_objects.to_dict()
    assert isinstance(from_dicts.text_config, Qwen2Config)


def test_save_and_load_round_trip(tmp_path):
    config = LlavaPluginConfig(
        vision_config=CLIPVisionConfig(**TINY_VISION),
        text_config=LlamaConfig(**TINY_TEXT),
        projector_type="mlp3x_gelu",
        vision_feature_layer=[-2, -1],
        image_token_id=7,
    )
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is LlavaPluginConfig
    assert {**loaded.to_dict(), "_name_or_path": ""} == config.to_dict()
    assert loaded.image_token_index == 7  # the built-in Llava's name for the same field


def _config(**kwargs) -> LlavaPluginConfig:
    kwargs.setdefault("vision_config", CLIPVisionConfig(**TINY_VISION))
    kwargs.setdefault("text_config", LlamaConfig(**TINY_TEXT))
    return LlavaPluginConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"projector_type": "mlp2x_relu"}, "Unknown projector_type 'mlp2x_relu'"),
        ({"projector_type": "mlp0x_gelu"}, "Unknown projector_type 'mlp0x_gelu'"),
        ({"projector_type": "identity", "text_config": LlamaConfig(**{**TINY_TEXT, "hidden_size": 64})}, "as wide"),
        ({"vision_feature_layer": -4}, "out of range"),
        ({"vision_feature_layer": []}, "out of range"),
        ({"image_seq_length": 576}, "disagrees with the vision tower, which gives 25"),
        ({"vision_config": SiglipVisionConfig(**TINY_VISION)}, "has none"),
    ],
)
def test_invalid_values_raise_value_error_at_config_time(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


def test_identity_projector_accepts_equal_widths():
    config = _config(
        projector_type="identity",
        vision_feature_layer=[-2, -1],
        text_config=LlamaConfig(**{**TINY_TEXT, "hidden_size": 64}),
    )
    assert config.num_vision_feature_layers == 2


class NoHiddenStatesConfig(PreTrainedConfig):
    model_type = "no_hidden_states_vision"
    hidden_size: int = 32
    num_hidden_layers: int = 2
    image_size: int = 30
    patch_size: int = 6


class NoHiddenStatesModel(PreTrainedModel):
    """A vision model that only ever returns its last output: no layer can be selected from it."""

    config_class = NoHiddenStatesConfig

    def __init__(self, config):
        super().__init__(config)
        self.proj = nn.Linear(3, config.hidden_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values.flatten(2).transpose(1, 2))


def test_vision_model_without_hidden_states_is_rejected():
    AutoConfig.register(NoHiddenStatesConfig.model_type, NoHiddenStatesConfig, exist_ok=True)
    AutoModel.register(NoHiddenStatesConfig, NoHiddenStatesModel, exist_ok=True)
    with pytest.raises(ValueError, match="NoHiddenStatesModel cannot return hidden states"):
        _config(vision_config=NoHiddenStatesConfig())
