"""LlavaPluginForConditionalGeneration against independent references.

The main reference is transformers' built-in `LlavaForConditionalGeneration` with the same weights (it implements
LLaVA-1.5 exactly); the language model alone, per-sample runs and hand-computed projections cover the rest.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedModel,
    Qwen2Config,
    SiglipVisionConfig,
)

from modeling_llava import LlavaPluginConfig, LlavaPluginForConditionalGeneration, LlavaPluginModel
from processing.generation import decoding_kwargs
from tests.tiny_backbones import TINY_TEXT, TINY_VISION

VOCAB_SIZE = 99
IMAGE_TOKEN_ID = 98
PAD_TOKEN_ID = 0
VISION_CONFIGS = {"clip": CLIPVisionConfig, "siglip": SiglipVisionConfig}
TEXT_CONFIGS = {"llama": LlamaConfig, "qwen2": Qwen2Config}


class LlavaPluginModelTester:
    """Tiny configs and inputs in the manner of transformers' ModelTester."""

    def __init__(self, vision: str = "clip", text: str = "llama", **config_kwargs):
        self.vision, self.text = vision, text
        self.config_kwargs = config_kwargs
        if vision == "siglip":
            self.config_kwargs.setdefault("vision_feature_select_strategy", "full")

    def sub_configs(self) -> dict:
        return {
            "vision_config": VISION_CONFIGS[self.vision](**TINY_VISION),
            "text_config": TEXT_CONFIGS[self.text](vocab_size=VOCAB_SIZE, pad_token_id=PAD_TOKEN_ID, **TINY_TEXT),
        }

    def get_config(self) -> LlavaPluginConfig:
        return LlavaPluginConfig(**self.sub_configs(), image_token_id=IMAGE_TOKEN_ID, **self.config_kwargs)

    def get_builtin_config(self) -> LlavaConfig:
        kwargs = {k: v for k, v in self.config_kwargs.items() if k != "projector_type"}
        config = self.get_config()
        return LlavaConfig(
            **self.sub_configs(), image_token_index=IMAGE_TOKEN_ID, image_seq_length=config.image_seq_length, **kwargs
        )

    def prepare_inputs(self, images_per_sample: tuple[int, ...] = (1, 1), text_length: int = 6, seed: int = 0):
        """Samples of BOS, `n` image-token runs and random text; one random image per run."""
        generator = torch.Generator().manual_seed(seed)
        seq = self.get_config().image_seq_length
        rows = []
        for num_images in images_per_sample:
            text = torch.randint(3, IMAGE_TOKEN_ID, (text_length,), generator=generator).tolist()
            rows.append([1] + [IMAGE_TOKEN_ID] * seq * num_images + text)
        width = max(map(len, rows))
        input_ids = torch.tensor([[PAD_TOKEN_ID] * (width - len(row)) + row for row in rows])  # left padding
        attention_mask = (input_ids != PAD_TOKEN_ID).long()
        pixel_values = torch.randn(sum(images_per_sample), 3, 30, 30, generator=generator)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}


def models_with_shared_weights(tester: LlavaPluginModelTester, attn_implementation: str = "sdpa"):
    torch.manual_seed(0)
    builtin = LlavaForConditionalGeneration(tester.get_builtin_config()).eval()
    ours = LlavaPluginForConditionalGeneration(tester.get_config()).eval()
    ours.load_state_dict(builtin.state_dict(), strict=True)  # 1:1 weight names, nothing missing or extra
    return builtin, ours


def test_state_dict_names_match_builtin_llava():
    builtin, ours = models_with_shared_weights(LlavaPluginModelTester())
    assert list(ours.state_dict()) == list(builtin.state_dict())


PARITY_CASES = {
    "clip-llama": LlavaPluginModelTester(),
    "clip-full-multilayer": LlavaPluginModelTester(
        vision_feature_select_strategy="full", vision_feature_layer=[-3, -1]
    ),
    "siglip-llama": LlavaPluginModelTester("siglip"),
    "clip-qwen2": LlavaPluginModelTester(text="qwen2"),
}


@pytest.mark.parametrize("tester", PARITY_CASES.values(), ids=PARITY_CASES.keys())
def test_logits_equal_builtin_llava(tester):
    builtin, ours = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs(images_per_sample=(2, 1))  # several images in one sample, left padding
    with torch.no_grad():
        expected, actual = builtin(**inputs), ours(**inputs)
    torch.testing.assert_close(actual.logits, expected.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(actual.image_hidden_states, expected.image_hidden_states, atol=1e-5, rtol=0)


def test_loss_equals_builtin_llava():
    tester = LlavaPluginModelTester()
    builtin, ours = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, -100)
    torch.testing.assert_close(ours(**inputs, labels=labels).loss, builtin(**inputs, labels=labels).loss)


@pytest.mark.parametrize("tester", [PARITY_CASES["clip-llama"], PARITY_CASES["clip-qwen2"]], ids=["llama", "qwen2"])
def test_greedy_generation_is_token_identical_to_builtin(tester):
    builtin, ours = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs(images_per_sample=(1, 2))
    kwargs = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": PAD_TOKEN_ID}
    assert torch.equal(ours.generate(**inputs, **kwargs), builtin.generate(**inputs, **kwargs))


def test_generation_with_kv_cache_equals_without():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs()
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": PAD_TOKEN_ID}
    assert torch.equal(
        model.generate(**inputs, **kwargs, use_cache=True), model.generate(**inputs, **kwargs, use_cache=False)
    )


@pytest.mark.parametrize("images_per_sample", [(1, 2), (0, 1)], ids=["images", "text-only-and-image"])
def test_static_cache_generation_is_token_identical_to_builtin_plain_generate(images_per_sample):
    """The fast decoding `llava eval` uses on a GPU (`decoding_kwargs`) against the built-in model's plain generate."""
    tester = LlavaPluginModelTester()
    builtin, ours = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs(images_per_sample=images_per_sample)  # left-padded: the samples differ in length
    kwargs = {"max_new_tokens": 12, "min_new_tokens": 12, "do_sample": False, "pad_token_id": PAD_TOKEN_ID}
    fast = decoding_kwargs(ours, static_cache=True)
    assert fast == {"cache_implementation": "static"} and decoding_kwargs(ours) == {}  # on a CPU: off by default
    assert torch.equal(ours.generate(**inputs, **kwargs, **fast), builtin.generate(**inputs, **kwargs))


def test_batched_left_padded_generation_equals_one_by_one():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    kwargs = {"max_new_tokens": 10, "do_sample": False, "pad_token_id": PAD_TOKEN_ID}
    batch = tester.prepare_inputs(images_per_sample=(2, 1))  # the second sample is 25 tokens shorter: left-padded
    batched = model.generate(**batch, **kwargs)[:, batch["input_ids"].shape[1] :]
    for index, (start, end) in enumerate([(0, 2), (2, 3)]):
        mask = batch["attention_mask"][index].bool()
        single = {
            "input_ids": batch["input_ids"][index][mask][None],
            "pixel_values": batch["pixel_values"][start:end],
        }
        alone = model.generate(**single, **kwargs)[0, single["input_ids"].shape[1] :]
        assert torch.equal(batched[index], alone)


def test_several_images_per_sample_equal_running_each_sample_alone():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    batch = tester.prepare_inputs(images_per_sample=(2, 1), text_length=5)
    with torch.no_grad():
        batched = model(**batch).logits
        for index, (start, end) in enumerate([(0, 2), (2, 3)]):
            mask = batch["attention_mask"][index].bool()
            alone = model(
                input_ids=batch["input_ids"][index][mask][None], pixel_values=batch["pixel_values"][start:end]
            )
            torch.testing.assert_close(batched[index][mask], alone.logits[0], atol=1e-5, rtol=0)


def test_text_only_input_equals_the_language_model_alone(tmp_path):
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    # The same LLM as a plain causal LM: decoder weights plus the LLaVA head.
    state = {f"model.{k}": v for k, v in model.model.language_model.state_dict().items()}
    state["lm_head.weight"] = model.lm_head.weight
    language_model = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    language_model.load_state_dict(state, strict=True)
    input_ids = torch.randint(3, IMAGE_TOKEN_ID, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=input_ids).logits, language_model(input_ids=input_ids).logits)


def test_inputs_embeds_path_equals_input_ids_path():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs()
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    with torch.no_grad():
        from_ids = model(**inputs).logits
        from_embeds = model(
            inputs_embeds=embeds, attention_mask=inputs["attention_mask"], pixel_values=inputs["pixel_values"]
        ).logits
    torch.testing.assert_close(from_embeds, from_ids)


def test_sdpa_and_eager_attention_agree():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs()
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(**inputs).logits
        model.set_attn_implementation("eager")
        eager = model(**inputs).logits
    assert model.config.text_config._attn_implementation == "eager"
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=0)


def test_gradient_checkpointing_gives_the_same_gradients():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs()
    labels = inputs["input_ids"].masked_fill(inputs["input_ids"] == IMAGE_TOKEN_ID, -100)

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.train()
        model(**inputs, labels=labels).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}

    plain = gradients()
    model.activation_checkpointing_enable()
    assert model.model.language_model.gradient_checkpointing
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and any("multi_modal_projector" in name for name in plain)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["default", "full"])
def test_get_image_features_selects_the_layer_and_projects(strategy):
    tester = LlavaPluginModelTester(vision_feature_select_strategy=strategy)
    _, model = models_with_shared_weights(tester)
    pixel_values = tester.prepare_inputs()["pixel_values"]
    with torch.no_grad():
        features = model.get_image_features(pixel_values).pooler_output
        hidden = model.model.vision_tower(pixel_values, output_hidden_states=True).hidden_states[-2]
        hidden = hidden[:, 1:] if strategy == "default" else hidden
        projector = model.model.multi_modal_projector
        expected = projector.linear_2(F.gelu(projector.linear_1(hidden)))
    assert len(features) == 2 and features[0].shape == (model.config.image_seq_length, TINY_TEXT["hidden_size"])
    torch.testing.assert_close(torch.stack(features), expected)


@pytest.mark.parametrize(
    ("projector_type", "layers"),
    [
        ("linear", ["linear_1"]),
        ("mlp2x_gelu", ["linear_1", "linear_2"]),
        ("mlp3x_gelu", ["linear_1", "linear_2", "linear_3"]),
        ("identity", []),
    ],
)
def test_projector_types(projector_type, layers):
    tester = LlavaPluginModelTester(projector_type=projector_type)
    if projector_type == "identity":
        tester.config_kwargs["vision_feature_layer"] = -1  # widths already match: 32 = 32
    model = LlavaPluginForConditionalGeneration(tester.get_config()).eval()
    projector = model.model.multi_modal_projector
    assert sorted({name.split(".")[0] for name, _ in projector.named_parameters()}) == layers
    for parameter in projector.parameters():  # unit scale, so that exact GELU differs visibly from its tanh form
        torch.nn.init.normal_(parameter)
    features = torch.randn(2, 25, TINY_VISION["hidden_size"])
    expected = features
    for index, name in enumerate(layers):  # x -> linear_1 -> gelu -> linear_2 -> gelu -> linear_3 ...
        expected = F.gelu(expected) if index else expected
        expected = F.linear(expected, getattr(projector, name).weight, getattr(projector, name).bias)
    torch.testing.assert_close(projector(features), expected)


def test_mismatched_image_tokens_name_the_sample_and_both_counts():
    tester = LlavaPluginModelTester()
    _, model = models_with_shared_weights(tester)
    inputs = tester.prepare_inputs(images_per_sample=(1, 1))
    inputs["input_ids"][1, -2] = IMAGE_TOKEN_ID  # sample 1 now has 26 image tokens for a 25-token image
    with pytest.raises(ValueError, match=r"in sample 1: it has 26 image tokens .* multiple of 25"):
        model(**inputs)
    inputs = tester.prepare_inputs(images_per_sample=(1, 1))
    inputs["pixel_values"] = inputs["pixel_values"][:1]  # one image for two samples
    with pytest.raises(ValueError, match=r"in sample 1: it has 25 image tokens .* but 0 image features are left"):
        model(**inputs)
    inputs = tester.prepare_inputs(images_per_sample=(1, 1))
    inputs["pixel_values"] = torch.cat([inputs["pixel_values"]] * 2)  # four images for two samples
    with pytest.raises(ValueError, match=r"100 image features but 50 image tokens in the batch"):
        model(**inputs)


def test_save_and_reload_uses_safetensors_only(tmp_path):
    tester = LlavaPluginModelTester(projector_type="linear")
    model = LlavaPluginForConditionalGeneration(tester.get_config()).eval()
    model.save_pretrained(tmp_path)
    weights = sorted(p.name for p in tmp_path.iterdir() if p.suffix in {".safetensors", ".bin", ".pt", ".pth"})
    assert weights == ["model.safetensors"]
    reloaded = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path, use_safetensors=True).eval()
    inputs = tester.prepare_inputs()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).logits, model(**inputs).logits, atol=0, rtol=0)


@pytest.mark.parametrize("model_class", [LlavaPluginModel, LlavaPluginForConditionalGeneration])
def test_missing_weights_get_the_initialisation_of_their_sub_model(model_class, monkeypatch):
    """Weights a checkpoint lacks are initialised as a freshly built model initialises them, CLIP's attention and MLP
    scales included (transformers' `test_can_init_all_missing_weights`): every module's init is seeded alike."""
    initialize = PreTrainedModel._initialize_weights

    def seeded(*args, **kwargs):
        torch.manual_seed(0)
        initialize(*args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "_initialize_weights", seeded)
    config = LlavaPluginModelTester().get_config()
    built = model_class(copy.deepcopy(config)).state_dict()
    loaded = model_class.from_pretrained(None, config=copy.deepcopy(config), state_dict={}).state_dict()
    assert loaded.keys() == built.keys()
    assert [name for name in built if not torch.equal(built[name], loaded[name])] == []
