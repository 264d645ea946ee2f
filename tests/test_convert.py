"""`llava convert`: original LLaVA and llava-hf checkpoints in, this plugin's and llava-hf out, with equal logits.

The tests build tiny checkpoints of each format themselves, the original's in its own key layout and config fields.
References: an original-LLaVA checkpoint is run by a reimplementation of the original's forward written here from
plain Llama / CLIP / nn.Sequential modules (features of `mm_vision_select_layer`, CLS dropped, spliced at the -200
sentinel) on ids from the original's preprocessing (`tests/original_llava.py`, on SentencePiece); a llava-hf
checkpoint by transformers' built-in `LlavaForConditionalGeneration`; pixels by CLIP's own image processor, after the
original's `expand2square` where the checkpoint pads.
"""

import json
import os
import stat
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import (
    AutoProcessor,
    AutoTokenizer,
    CLIPImageProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
)

from command_line.main import main as llava
from modeling_llava import CHAT_TEMPLATES, LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from modeling_llava.convert_checkpoint import atomic_folder, checkpoint_format, convert, detect_format
from modeling_llava.processing_llava_plugin import tokenizer_with_image_token
from tests.conftest import random_image
from tests.original_llava import OriginalLlava, save_original

SENTINEL = -200  # the original's IMAGE_TOKEN_INDEX
PROMPT = "USER: What is the colour of the square? ASSISTANT:"


# Prefixes of the weight names in llava-hf's released checkpoints (1.5 and 1.6 alike), which vLLM loads as they are.
LLAVA_HF_RELEASED = (
    "language_model.model.",
    "language_model.lm_head.",
    "multi_modal_projector.",
    "vision_tower.vision_model.",
)


def saved_weight_names(folder: Path) -> set[str]:
    """Every tensor name in a folder's safetensors files, as written (no loader's renaming)."""
    names = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as weights:
            names |= set(weights.keys())
    return names


def original_reference_logits(folder: Path, clip: str, pixel_values: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """The original LLaVA's forward, written out: the tower's `mm_vision_select_layer` without CLS, mm_projector,
    splice at -200.

    The tower is the checkpoint's own where it holds one, else the one at `clip`."""
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(file))
    for file in sorted(folder.glob("pytorch_model*.bin")):
        weights.update(torch.load(file, weights_only=True))
    llm = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items() if not k.startswith("mm_")})).eval()
    tower = CLIPVisionModel.from_pretrained(clip).eval()
    prefix = "model.vision_tower.vision_tower.vision_model."
    embedded = {k.removeprefix(prefix): v.float() for k, v in weights.items() if k.startswith(prefix)}
    if embedded:
        names = set(tower.state_dict())
        tower.load_state_dict(
            {(k if k in names else f"vision_model.{k}"): v for k, v in embedded.items() if "position_ids" not in k}
        )
    language = {k: v.float() for k, v in weights.items() if "mm_projector" not in k and "vision_tower" not in k}
    llm.load_state_dict({k: v for k, v in language.items() if "inv_freq" not in k})
    if config["mm_projector_type"] == "linear":
        projector = nn.Linear(32, llm.config.hidden_size)
    else:
        projector = nn.Sequential(nn.Linear(32, llm.config.hidden_size), nn.GELU(), nn.Linear(32, 32))
    projector.load_state_dict(
        {k.removeprefix("model.mm_projector."): v.float() for k, v in weights.items() if "mm_" in k}
    )
    with torch.no_grad():
        features = tower(pixel_values, output_hidden_states=True).hidden_states[config["mm_vision_select_layer"]]
        features = features[:, 1:]
        position = ids.index(SENTINEL)
        text = llm.get_input_embeddings()(torch.tensor([ids[:position] + ids[position + 1 :]]))
        embeds = torch.cat([text[:, :position], projector(features), text[:, position:]], dim=1)
        return llm(inputs_embeds=embeds).logits


def expand2square(image: Image.Image, mean: list[float]) -> Image.Image:
    side = max(image.size)
    square = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in mean))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square


# The original's release configs: v1 (`llava`, linear projector, last layer, .bin shards), LLaVA-1.5 (`llava` too:
# the class was renamed `llava_llama` only in 1.6) and 1.6's `llava_llama` / `llava_mistral`. A tokenizer config
# without `legacy` (saved before the key existed) is read as legacy, as the original's transformers read it.
ORIGINAL_LAYOUTS = {
    "v1-linear-last-layer-bin-no-legacy-key": {
        "projector_type": "linear", "select_layer": -1, "pad": False, "safetensors": False, "model_type": "llava",
        "legacy": None,
    },
    "v1.5-mlp-pad": {"projector_type": "mlp2x_gelu", "select_layer": -2, "pad": True, "model_type": "llava"},
    "v1.5-tower-in-checkpoint": {
        "projector_type": "mlp2x_gelu", "select_layer": -2, "pad": True, "tower": True, "model_type": "llava",
    },
    "v1.6-llava-llama": {"projector_type": "mlp2x_gelu", "select_layer": -2, "pad": True, "model_type": "llava_llama"},
    "v1.6-llava-mistral": {
        "projector_type": "mlp2x_gelu", "select_layer": -2, "pad": True, "model_type": "llava_mistral",
    },
}  # fmt: skip


@pytest.mark.parametrize("layout", ORIGINAL_LAYOUTS.values(), ids=ORIGINAL_LAYOUTS.keys())
def test_original_layouts_convert_end_to_end(tmp_path, checkpoints, sentencepiece_llama, layout):
    """A two-turn conversation through the original (its preprocessing, on SentencePiece, into its forward) and
    through the converted plugin's own processor and model: equal ids, logits and greedy tokens. The Llama ships
    `tokenizer.model` only and reads non-legacy, as LLaVA-1.5's does (`"legacy": false`), unless its config has no
    key; the text after the first answer's `</s>` tells the two apart.

    A `llava_mistral` checkpoint here holds the same Llama weights: Mistral's architecture is Llama's with a sliding
    window, which a text this short never reaches, so the original's Llama forward is its reference too."""
    text, spm = sentencepiece_llama
    layout = dict(layout)
    tower = None
    if layout.pop("tower", False):
        torch.manual_seed(7)
        tower = CLIPVisionModel(CLIPVisionModel.from_pretrained(checkpoints["clip"]).config)
    legacy = layout.pop("legacy", False)
    source = save_original(tmp_path / "original", checkpoints, text=text, tower=tower, **layout)
    if legacy is None:
        tokenizer_config = json.loads((source / "tokenizer_config.json").read_text())
        del tokenizer_config["legacy"]
        (source / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    assert detect_format(source) == "original"
    convert(source, tmp_path / "plugin")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "plugin")

    question, answer, follow_up = "What is the colour of the square?", "The square is red.", "Where is it?"
    original = OriginalLlava(
        spm.serialized_model_proto(), legacy=legacy is None, image_token_id=SENTINEL, image_seq_length=1
    )
    turns = [("human", f"{question}\n<image>"), ("gpt", answer), ("human", follow_up)]
    segments = original.vicuna_v1_segments([{"from": role, "value": value} for role, value in turns], True)
    original_ids = original.tokenizer_image_token("".join(part for part, _ in segments))

    image = random_image(3, size=(40, 52))
    clip_processor = CLIPImageProcessor.from_pretrained(checkpoints["clip"])
    square = expand2square(image, clip_processor.image_mean) if layout["pad"] else image
    pixel_values = clip_processor(square, return_tensors="pt")["pixel_values"]
    messages = [
        {"role": "user", "content": [{"type": "text", "text": question}, {"type": "image"}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
        {"role": "user", "content": [{"type": "text", "text": follow_up}]},
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    torch.testing.assert_close(inputs["pixel_values"], pixel_values, atol=1e-6, rtol=0)
    image_run = [model.config.image_token_id] * model.config.image_seq_length
    position = original_ids.index(SENTINEL)
    assert inputs["input_ids"][0].tolist() == original_ids[:position] + image_run + original_ids[position + 1 :]

    greedy = []
    with torch.no_grad():
        logits = model(**inputs).logits
        for _ in range(4):
            reference = original_reference_logits(source, checkpoints["clip"], pixel_values, original_ids + greedy)
            greedy.append(int(reference[0, -1].argmax()))
        generated = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    reference = original_reference_logits(source, checkpoints["clip"], pixel_values, original_ids)
    torch.testing.assert_close(logits[..., : reference.shape[-1]], reference, atol=1e-4, rtol=1e-4)
    assert generated[0, inputs["input_ids"].shape[1] :].tolist() == greedy


# The fields LLaVA-1.5's code (v1.1.0) writes into the config of every checkpoint it trains, besides the LLM's own.
ORIGINAL_V15_FIELDS = {
    "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "mm_projector_type": "mlp2x_gelu",
    "mm_hidden_size": 1024,
    "mm_vision_select_layer": -2,
    "mm_vision_select_feature": "patch",
    "mm_use_im_start_end": False,
    "mm_use_im_patch_token": False,
    "image_aspect_ratio": "pad",
    "hidden_size": 4096,
}


@pytest.mark.parametrize("model_type", ["llava", "llava_llama", "llava_mistral", "llava_mpt"])
def test_an_original_config_is_known_by_its_mm_fields_whatever_its_model_type(model_type):
    assert checkpoint_format({"model_type": model_type, **ORIGINAL_V15_FIELDS}) == "original"


def test_llava_hf_and_plugin_configs_are_known_by_their_sub_configs_and_model_type():
    sub_configs = {"vision_config": {"model_type": "clip_vision_model"}, "text_config": {"model_type": "llama"}}
    assert checkpoint_format({"model_type": "llava", **sub_configs}) == "llava-hf"
    assert checkpoint_format({"model_type": "llava_plugin", **sub_configs}) == "plugin"
    assert checkpoint_format({"model_type": "llava_next", **sub_configs}) == "llava-hf"  # LLaVA-NeXT's
    assert checkpoint_format({"model_type": "llava_next_plugin", **sub_configs}) == "plugin"
    for config in ({"model_type": "llava"}, {"model_type": "llava_next"}):
        with pytest.raises(ValueError, match="neither the original LLaVA's mm_vision_tower / mm_hidden_size"):
            checkpoint_format(config, "SRC/config.json")


def test_an_original_checkpoint_of_a_language_model_not_mapped_is_named(tmp_path, checkpoints):
    """The original's MPT models keep MosaicML's own weight layout (`transformer.*`), which is not mapped here."""
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu", model_type="llava_mpt")
    with pytest.raises(ValueError, match="original LLaVA checkpoint with model_type 'llava_mpt'"):
        convert(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_original_checkpoint_with_a_tokenizer_model_only_converts(tmp_path, checkpoints, sentencepiece_llama):
    text, spm = sentencepiece_llama
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu", text=text)
    assert sorted(path.name for path in source.glob("tokenizer*")) == ["tokenizer.model", "tokenizer_config.json"]
    convert(source, tmp_path / "plugin")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "plugin")
    assert processor.tokenizer(PROMPT)["input_ids"] == [spm.bos_id()] + spm.encode(PROMPT)
    assert model.config.image_token_id == processor.image_token_id == spm.vocab_size()
    inputs = processor(images=random_image(2), text="<image>\n" + PROMPT, return_tensors="pt")
    assert model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False).shape[1] == (
        inputs["input_ids"].shape[1] + 3
    )


def test_original_settings_and_shards_and_dtype_carry_over(tmp_path, checkpoints):
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu", dtype=torch.bfloat16)
    assert len(list(source.glob("*.safetensors"))) > 1
    convert(source, tmp_path / "plugin")
    files = sorted((tmp_path / "plugin").glob("*.safetensors"))
    assert len(files) > 1 and (tmp_path / "plugin" / "model.safetensors.index.json").is_file()
    for file in files:
        with safe_open(file, framework="pt") as handle:
            assert {handle.get_slice(name).get_dtype() for name in handle.keys()} == {"BF16"}, file
    processor = LlavaPluginProcessor.from_pretrained(tmp_path / "plugin")
    assert processor.image_processor.do_pad  # image_aspect_ratio=pad
    assert processor.chat_template["default"] == CHAT_TEMPLATES["vicuna_v1"]


def test_an_offline_vision_tower_replaces_the_named_one(tmp_path, checkpoints):
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu", vision=str(tmp_path / "not-here"))
    with pytest.raises(OSError, match="pass --vision-tower"):
        convert(source, tmp_path / "failed")
    assert not (tmp_path / "failed").exists()
    convert(source, tmp_path / "plugin", vision_tower=checkpoints["clip"])
    assert detect_format(tmp_path / "plugin") == "plugin"


def save_llava_hf(folder: Path, checkpoints) -> Path:
    """A tiny llava-hf checkpoint: transformers' built-in model and processor, random weights."""
    tokenizer = tokenizer_with_image_token(checkpoints["llama"])
    clip = json.loads((Path(checkpoints["clip"]) / "config.json").read_text())["vision_config"]
    text = LlamaForCausalLM.from_pretrained(checkpoints["llama"]).config.to_dict() | {"vocab_size": len(tokenizer)}
    config = LlavaConfig(
        vision_config=clip | {"model_type": "clip_vision_model"},
        text_config=text,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        image_seq_length=25,
    )
    torch.manual_seed(2)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    LlavaProcessor(
        image_processor=CLIPImageProcessor.from_pretrained(checkpoints["clip"]),
        tokenizer=tokenizer,
        patch_size=6,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template="{% for m in messages %}{{ m.role | upper }}: {{ m.content }} {% endfor %}ASSISTANT:",
    ).save_pretrained(folder)
    return folder


def assert_same_outputs(model_a, processor_a, model_b, processor_b) -> None:
    image = random_image(5, size=(36, 48))
    inputs_a = processor_a(images=image, text="<image>\n" + PROMPT, return_tensors="pt")
    inputs_b = processor_b(images=image, text="<image>\n" + PROMPT, return_tensors="pt")
    assert torch.equal(inputs_a["input_ids"], inputs_b["input_ids"])
    torch.testing.assert_close(inputs_a["pixel_values"], inputs_b["pixel_values"], atol=1e-6, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(model_a(**inputs_a).logits, model_b(**inputs_b).logits, atol=1e-5, rtol=1e-5)
        greedy = {"max_new_tokens": 6, "do_sample": False}
        assert torch.equal(model_a.generate(**inputs_a, **greedy), model_b.generate(**inputs_b, **greedy))


def test_llava_hf_checkpoint_converts_with_equal_outputs(tmp_path, checkpoints):
    source = save_llava_hf(tmp_path / "hf", checkpoints)
    assert detect_format(source) == "llava-hf"
    convert(source, tmp_path / "plugin")
    model = LlavaPluginForConditionalGeneration.from_pretrained(tmp_path / "plugin").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "plugin")
    assert isinstance(processor, LlavaPluginProcessor)
    assert processor.chat_template["default"].startswith("{% for m in messages %}")  # the source's prompt format
    reference = LlavaForConditionalGeneration.from_pretrained(source).eval()
    assert_same_outputs(model, processor, reference, AutoProcessor.from_pretrained(source))


def test_export_to_llava_hf_loads_in_transformers_alone(tmp_path, llava_checkpoint):
    convert(llava_checkpoint, tmp_path / "hf", to="llava-hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["model_type"] == "llava" and "auto_map" not in config
    assert not list((tmp_path / "hf").glob("*.py"))  # nothing of this package travels with it
    exported = LlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    exported_processor = AutoProcessor.from_pretrained(tmp_path / "hf")
    assert type(exported_processor) is LlavaProcessor
    ours = LlavaPluginForConditionalGeneration.from_pretrained(llava_checkpoint).eval()
    assert_same_outputs(exported, exported_processor, ours, AutoProcessor.from_pretrained(llava_checkpoint))


def test_export_writes_the_weight_names_of_released_llava_hf_checkpoints(tmp_path, llava_checkpoint):
    """vLLM's LlavaForConditionalGeneration reads the names llava-hf/llava-1.5-7b-hf holds (its CLIP tower under
    `vision_tower.vision_model`); an export under transformers 5's in-memory names (`model.vision_tower.embeddings.*`)
    stopped vLLM 0.32 with "There is no module or parameter named 'vision_tower.embeddings'"."""
    names = saved_weight_names(convert(llava_checkpoint, tmp_path / "hf", to="llava-hf"))
    assert names and all(name.startswith(LLAVA_HF_RELEASED) for name in names), sorted(names)[:5]
    assert {
        "language_model.lm_head.weight",
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.self_attn.q_proj.weight",
        "multi_modal_projector.linear_2.bias",
        "vision_tower.vision_model.embeddings.patch_embedding.weight",
        "vision_tower.vision_model.encoder.layers.0.self_attn.k_proj.weight",
        "vision_tower.vision_model.post_layernorm.weight",
    } <= names


def test_export_carries_the_conversation_template_alone(tmp_path, llava_checkpoint):
    """A tokenizer saved with several templates (`plain` beside the default) loads them as a dict, which stopped vLLM
    0.32's chat rendering with "TypeError: unhashable type: 'dict'"; serving needs the conversation's only."""
    convert(llava_checkpoint, tmp_path / "hf", to="llava-hf")
    conversation = AutoProcessor.from_pretrained(llava_checkpoint).chat_template["default"]
    assert not (tmp_path / "hf" / "additional_chat_templates").exists()
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == conversation
    assert AutoProcessor.from_pretrained(tmp_path / "hf").chat_template == conversation


def test_export_refuses_projectors_the_builtin_cannot_hold(tmp_path, checkpoints):
    source = save_original(tmp_path / "original", checkpoints, "linear")
    with pytest.raises(ValueError, match="projector_type 'linear' cannot be expressed"):
        convert(source, tmp_path / "hf", to="llava-hf")
    assert not (tmp_path / "hf").exists()


def test_a_failed_write_leaves_no_destination(tmp_path, llava_checkpoint, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LlavaPluginProcessor, "save_pretrained", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        convert(llava_checkpoint, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither out nor a partial folder beside it


def test_unknown_formats_and_unsupported_features_are_named(tmp_path, checkpoints):
    with pytest.raises(ValueError, match="model_type 'llama'"):
        convert(checkpoints["llama"], tmp_path / "out")
    source = save_original(tmp_path / "original", checkpoints, "mlp2x_gelu")
    config = json.loads((source / "config.json").read_text()) | {"image_aspect_ratio": "anyres_max_9"}
    (source / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="image_aspect_ratio='anyres_max_9'"):
        convert(source, tmp_path / "out")


def test_a_killed_writes_staging_is_cleaned_and_outputs_follow_the_umask(tmp_path):
    stale = tmp_path / ".out.partial-killed"  # what a conversion killed half-way left behind
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"torn")
    old = os.umask(0o027)
    try:
        with atomic_folder(tmp_path / "out") as staging:
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(old)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750


def test_llava_convert_takes_the_papers_templates(tmp_path, checkpoints):
    """A LLaVA v1 checkpoint of the paper's code converts with its training's prompt format: `--template v0`."""
    source = save_original(tmp_path / "v1", checkpoints, "linear", select_layer=-1, pad=False, model_type="llava")
    llava(["convert", str(source), str(tmp_path / "plugin"), "--template", "v0"])
    processor = LlavaPluginProcessor.from_pretrained(tmp_path / "plugin")
    assert processor.chat_template["default"] == CHAT_TEMPLATES["v0"]
    assert processor.chat_template["llava_v1"] == CHAT_TEMPLATES["llava_v1"]  # the others by name
