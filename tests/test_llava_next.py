"""LLaVA-NeXT (1.6): AnyRes grids, token counts and pixels against the original's behaviour
(`tests/original_llava_next.py`), conversion of original and llava-hf 1.6 checkpoints, logits of a converted tiny
checkpoint against the original's forward written out, the llava-hf export in transformers' built-in LlavaNext, and
the Auto classes with remote code."""

import itertools
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

from modeling_llava import (
    LlavaNextPluginConfig,
    LlavaNextPluginForConditionalGeneration,
    LlavaNextPluginProcessor,
)
from modeling_llava.anyres import anyres_layout, pinpoints_from_original
from modeling_llava.convert_checkpoint import convert
from tests import original_llava_next as original
from tests.conftest import GREEDY, QUESTION, random_image
from tests.original_llava import save_original
from tests.test_loading import assert_remote_code_loads_identically, remote_code_pythons
from tests.tiny_backbones import save_tiny_vision

# LLaVA-1.6's real sizes: CLIP ViT-L/14 at 336 px, 24 x 24 features per tile.
TILE, SIDE = 336, 24
# The tiny tower's (30 px tiles, 5 x 5 features): LLaVA-1.6's pinpoints scaled to it, (width, height) as the original.
TINY_PINPOINTS = [[30, 60], [60, 30], [60, 60], [90, 30], [30, 90]]
PROMPT = "USER: <image>\nWhat is the colour of the square? <image>\nAnd here? ASSISTANT:"


def test_grid_and_token_count_equal_the_originals_on_many_sizes():
    pinpoints = pinpoints_from_original(original.PINPOINTS_1_6)
    sizes = itertools.product(range(1, 1500, 23), range(1, 1500, 31))
    for width, height in sizes:
        layout = anyres_layout((height, width), pinpoints, TILE, SIDE)
        columns, rows = original.grid((width, height), original.PINPOINTS_1_6, TILE)
        assert layout.grid == (rows, columns), (width, height)
        assert layout.num_tokens == original.token_count((width, height), original.PINPOINTS_1_6, TILE, SIDE)


# Sizes (width, height) where the pinpoint order or transformers' rounding changes the count, with the original's
# counts: two tied grids broken by list order (300x200), the unpadded extent 14.99... truncated (55x176, 352x110).
@pytest.mark.parametrize("size", [(300, 200), (200, 300), (55, 176), (352, 110), (88, 99), (205, 984), (1, 1)])
def test_listed_sizes_count_as_in_the_original(size):
    expected = original.token_count(size, original.PINPOINTS_1_6, TILE, SIDE)
    pinpoints = pinpoints_from_original(original.PINPOINTS_1_6)
    assert anyres_layout(size[::-1], pinpoints, TILE, SIDE).num_tokens == expected


def test_the_two_documented_deviations_of_transformers_are_followed_as_the_original():
    # Hand-computed: 300x200 fits a 1x2 grid (columns x rows) in the original; 55 wide and 176 high keeps
    # int(55 * 48 / 176) = int(14.999...) = 14 columns, cut (24 - 14) // 2 = 5 from each side: 576 + 48 * 15.
    assert original.token_count((300, 200), original.PINPOINTS_1_6, TILE, SIDE) == 976
    assert original.token_count((55, 176), original.PINPOINTS_1_6, TILE, SIDE) == 1296
    pinpoints = pinpoints_from_original(original.PINPOINTS_1_6)
    assert anyres_layout((200, 300), pinpoints, TILE, SIDE).num_tokens == 976
    assert anyres_layout((176, 55), pinpoints, TILE, SIDE).num_tokens == 1296


def real_size_processor(tokenizer_folder: str) -> LlavaNextPluginProcessor:
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": TILE},
        crop_size={"height": TILE, "width": TILE},
        image_grid_pinpoints=pinpoints_from_original(original.PINPOINTS_1_6),
    )
    from modeling_llava.processing_llava_plugin import tokenizer_with_image_token

    return LlavaNextPluginProcessor(images, tokenizer_with_image_token(tokenizer_folder), image_seq_length=SIDE**2)


def test_processor_tiles_pixels_sizes_and_ids_as_the_original(checkpoints):
    processor = real_size_processor(checkpoints["llama"])
    clip = CLIPImageProcessorPil(size={"shortest_edge": TILE}, crop_size={"height": TILE, "width": TILE})
    images = [random_image(1, (300, 200)), random_image(2, (55, 176)), random_image(3, (1000, 333))]
    for image in images:
        inputs = processor(images=image, text="<image>\nHi", return_tensors="pt")
        expected = torch.stack(
            [
                clip(tile, return_tensors="pt")["pixel_values"][0]
                for tile in original.tiles(image, original.PINPOINTS_1_6, TILE)
            ]
        )
        assert torch.equal(inputs["pixel_values"][0], expected), image.size
        assert inputs["image_sizes"][0].tolist() == [image.height, image.width]
        count = original.token_count(image.size, original.PINPOINTS_1_6, TILE, SIDE)
        assert (inputs["input_ids"] == processor.image_token_id).sum() == count

    # Two images of different sizes in one prompt: each <image> becomes its own image's count, in order.
    inputs = processor(images=images[:2], text=PROMPT)
    ids = inputs["input_ids"][0]
    runs = [len(list(group)) for key, group in itertools.groupby(ids) if key == processor.image_token_id]
    assert runs == [original.token_count(image.size, original.PINPOINTS_1_6, TILE, SIDE) for image in images[:2]]
    assert processor.encode_prompt(PROMPT, image_sizes=[(300, 200), (55, 176)])[0] == ids
    with pytest.raises(ValueError, match="image_sizes"):
        processor.encode_prompt(PROMPT)


def save_original_next(folder: Path, checkpoints, tmp_path: Path, model_type: str = "llava_llama", **fields) -> Path:
    """A tiny LLaVA-1.6 checkpoint as the original's trainer writes it: its own (fine-tuned) tower inside,
    `image_newline`, and the anyres fields. `model_type`: `llava_llama` (Vicuna, Yi) or `llava_mistral`."""
    tower = CLIPVisionModel.from_pretrained(save_tiny_vision(tmp_path / "tuned-tower", "clip", seed=7))
    save_original(folder, checkpoints, "mlp2x_gelu", tower=tower, pad=False, model_type=model_type)
    torch.manual_seed(3)
    save_file({"model.image_newline": torch.randn(32)}, folder / "newline.safetensors")
    config = json.loads((folder / "config.json").read_text())
    config |= {
        "image_aspect_ratio": "anyres",
        "mm_patch_merge_type": "spatial_unpad",
        "image_grid_pinpoints": TINY_PINPOINTS,
        **fields,
    }
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def original_next_logits(folder: Path, clip: str, images: list[Image.Image], ids: torch.Tensor, image_id: int):
    """The original 1.6's forward written out: every tile through the checkpoint's tower (layer -2, CLS dropped) and
    mm_projector, merged per image (`merged_features`), spliced where the prompt has each image's tokens."""
    config = json.loads((folder / "config.json").read_text())
    weights = {}
    for file in sorted(folder.glob("*.safetensors")):
        weights.update(load_file(file))
    text_fields = {k: v for k, v in config.items() if not k.startswith("mm_") and k != "image_grid_pinpoints"}
    llm = LlamaForCausalLM(LlamaConfig(**text_fields)).eval()
    language = {k: v for k, v in weights.items() if not k.startswith(("model.mm_", "model.vision_", "model.image_"))}
    llm.load_state_dict({k: v for k, v in language.items() if "inv_freq" not in k})
    tower = CLIPVisionModel.from_pretrained(clip).eval()
    # The original saved CLIP's weights as its transformers named them, `vision_model.*`; today's CLIPVisionModel
    # holds them without that level.
    prefix = "model.vision_tower.vision_tower.vision_model."
    tower_weights = {k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}
    tower.load_state_dict({k: v for k, v in tower_weights.items() if "position_ids" not in k})
    projector = nn.Sequential(nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 32))
    projector.load_state_dict({k.removeprefix("model.mm_projector."): v for k, v in weights.items() if "mm_proj" in k})
    clip_images = CLIPImageProcessorPil(size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30})
    text = llm.get_input_embeddings()(ids.masked_fill(ids == image_id, 0))  # image positions are replaced
    pieces, start = [], 0
    with torch.no_grad():
        for image in images:
            tiles = [
                clip_images(t, return_tensors="pt")["pixel_values"][0]
                for t in original.tiles(image, TINY_PINPOINTS, 30)
            ]
            features = projector(tower(torch.stack(tiles), output_hidden_states=True).hidden_states[-2][:, 1:])
            merged = original.merged_features(features, image.size, TINY_PINPOINTS, 30, weights["model.image_newline"])
            position = start + int((ids[start:] == image_id).nonzero()[0])
            assert (ids[position : position + len(merged)] == image_id).all() and ids[
                position + len(merged)
            ] != image_id
            pieces += [text[start:position], merged]
            start = position + len(merged)
        return llm(inputs_embeds=torch.cat(pieces + [text[start:]])[None]).logits


IMAGES = [(13, 47), (64, 20), (58, 61)]  # random_image sizes, (height, width): wide, tall, near-square


# A Mistral without sliding window computes as a Llama of the same weights, so one reference serves both.
@pytest.mark.parametrize("model_type", ["llava_llama", "llava_mistral"])
def test_converted_original_checkpoint_gives_the_originals_logits(tmp_path, checkpoints, model_type):
    source = save_original_next(tmp_path / "original", checkpoints, tmp_path, model_type=model_type)
    converted = convert(source, tmp_path / "converted")
    model = AutoModelForImageTextToText.from_pretrained(converted).eval()
    processor = AutoProcessor.from_pretrained(converted)
    assert type(model) is LlavaNextPluginForConditionalGeneration and type(processor) is LlavaNextPluginProcessor
    assert model.config.text_config.model_type == model_type.removeprefix("llava_")
    assert model.config.image_grid_pinpoints == [[h, w] for w, h in TINY_PINPOINTS]  # (height, width)
    images = [random_image(seed, size) for seed, size in enumerate(IMAGES)]
    for image in images:  # one per grid shape: (1 x 3), (2 x 1) columns x rows, (2 x 2)
        inputs = processor(images=image, text="<image>\nWhat is it?", return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits
        expected = original_next_logits(
            source, checkpoints["clip"], [image], inputs["input_ids"][0], model.config.image_token_id
        )
        # The converted vocabulary has one more row, the <image> token the original never had.
        torch.testing.assert_close(logits[..., : expected.shape[-1]], expected, atol=1e-4, rtol=0)
        assert torch.equal(logits[..., : expected.shape[-1]].argmax(-1), expected.argmax(-1))
    inputs = processor(images=images[:2], text=PROMPT, return_tensors="pt")  # two sizes in one prompt
    with torch.no_grad():
        logits = model(**inputs).logits
    expected = original_next_logits(
        source, checkpoints["clip"], images[:2], inputs["input_ids"][0], model.config.image_token_id
    )
    torch.testing.assert_close(logits[..., : expected.shape[-1]], expected, atol=1e-4, rtol=0)
    assert torch.equal(logits[..., : expected.shape[-1]].argmax(-1), expected.argmax(-1))


def test_export_to_llava_hf_loads_in_the_built_in_llava_next_with_equal_logits(tmp_path, checkpoints):
    source = save_original_next(tmp_path / "original", checkpoints, tmp_path)
    plugin = convert(source, tmp_path / "plugin")
    exported = convert(source, tmp_path / "hf", to="llava-hf")
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "llava_next" and "auto_map" not in config and not list(exported.glob("*.py"))
    hf_model = LlavaNextForConditionalGeneration.from_pretrained(exported).eval()
    hf_processor = AutoProcessor.from_pretrained(exported)
    assert type(hf_processor) is LlavaNextProcessor
    model = LlavaNextPluginForConditionalGeneration.from_pretrained(plugin).eval()
    processor = LlavaNextPluginProcessor.from_pretrained(plugin)
    for seed, size in enumerate(IMAGES):
        image = random_image(seed, size)
        ours = processor(images=image, text="<image>\nWhat is it?", return_tensors="pt")
        theirs = hf_processor(images=image, text="<image>\nWhat is it?", return_tensors="pt")
        assert torch.equal(ours["pixel_values"], theirs["pixel_values"])
        assert torch.equal(ours["input_ids"], theirs["input_ids"]), size
        with torch.no_grad():
            torch.testing.assert_close(hf_model(**theirs).logits, model(**ours).logits, atol=1e-5, rtol=0)

    # And back: the export converts to the plugin with the same weights and pinpoints.
    again = LlavaNextPluginForConditionalGeneration.from_pretrained(convert(exported, tmp_path / "again"))
    assert again.config.image_grid_pinpoints == model.config.image_grid_pinpoints
    for name, tensor in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name


def test_llava_hf_release_converts_with_the_originals_grids_when_asked(tmp_path, checkpoints, capsys):
    """llava-hf's 1.6 releases hold the original's (width, height) pinpoint list unchanged, which transformers reads
    as (height, width): `--original-grids` reads it as the original does, the default as the built-in does."""
    from command_line.main import main as llava
    from tests.conftest import refused

    source = save_original_next(tmp_path / "original", checkpoints, tmp_path)
    release = convert(source, tmp_path / "release", to="llava-hf")
    for name in ("config.json", "preprocessor_config.json", "processor_config.json"):
        path = release / name
        if path.is_file():  # the list copied as the release's conversion script copied it
            settings = json.loads(path.read_text())
            for holder in (settings, settings.get("image_processor", {})):
                if "image_grid_pinpoints" in holder:
                    holder["image_grid_pinpoints"] = TINY_PINPOINTS
            path.write_text(json.dumps(settings))
    assert AutoConfig.from_pretrained(release).image_grid_pinpoints == TINY_PINPOINTS

    llava(["convert", str(release), str(tmp_path / "original-grids"), "--original-grids"])
    as_original = LlavaNextPluginProcessor.from_pretrained(tmp_path / "original-grids")
    as_served = LlavaNextPluginProcessor.from_pretrained(convert(release, tmp_path / "as-served"))
    config = AutoConfig.from_pretrained(tmp_path / "original-grids")
    assert config.image_grid_pinpoints == pinpoints_from_original(TINY_PINPOINTS)
    served_differs = []
    for width, height in itertools.product(range(1, 41), range(1, 41)):
        expected = original.token_count((width, height), TINY_PINPOINTS, 30, 5)
        assert as_original.num_image_tokens((height, width)) == expected, (width, height)
        served_differs += [as_served.num_image_tokens((height, width)) != expected]
    assert any(served_differs)  # the ties the flag exists for: e.g. 30 x 20 px, both grids 2 tiles

    message = refused(capsys, ["convert", str(source), str(tmp_path / "out"), "--original-grids"])
    assert "--original-grids" in message and "llava_next" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"image_aspect_ratio": "anyres_max_9"}, "image_aspect_ratio='anyres_max_9'"),
        ({"image_aspect_ratio": "highres"}, "image_aspect_ratio='highres'"),
        ({"image_aspect_ratio": "crop_split"}, "image_aspect_ratio='crop_split'"),
        ({"mm_patch_merge_type": "flat"}, "mm_patch_merge_type='flat'"),
        ({"mm_patch_merge_type": "spatial"}, "mm_patch_merge_type='spatial'"),
        ({"s2": True, "s2_scales": "336,672,1008"}, "s2=True"),
    ],
)
def test_unsupported_1_6_variants_are_refused_by_field_and_value(tmp_path, checkpoints, capsys, fields, named):
    from tests.conftest import refused

    source = save_original_next(tmp_path / "original", checkpoints, tmp_path, **fields)
    message = refused(capsys, ["convert", str(source), str(tmp_path / "out")])
    assert named in message


def tiny_next_checkpoint(folder: Path, checkpoints) -> str:
    torch.manual_seed(0)
    processor = LlavaNextPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])
    vision = AutoConfig.from_pretrained(checkpoints["clip"]).vision_config
    text = AutoConfig.from_pretrained(checkpoints["llama"])
    text.vocab_size = len(processor.tokenizer)
    config = LlavaNextPluginConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        image_grid_pinpoints=processor.image_processor.image_grid_pinpoints,
    )
    LlavaNextPluginForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


@pytest.mark.parametrize("python", remote_code_pythons())
def test_auto_classes_and_remote_code_load_the_next_model(tmp_path, checkpoints, python):
    folder = tiny_next_checkpoint(tmp_path / "next", checkpoints)
    assert type(AutoModelForImageTextToText.from_pretrained(folder)) is LlavaNextPluginForConditionalGeneration
    assert type(AutoProcessor.from_pretrained(folder)) is LlavaNextPluginProcessor
    files = {path.name for path in Path(folder).iterdir()}
    assert {"configuration_llava_next_plugin.py", "modeling_llava_next_plugin.py", "anyres.py"} <= files
    image_path = tmp_path / "image.png"
    # Both sides above the tile, so every resize only shrinks: Pillow 13 (the oldest transformers' environment)
    # resizes otherwise than 12.3 where one side grows and the other shrinks.
    random_image(3, (40, 52)).save(image_path)
    assert_remote_code_loads_identically(python, folder, image_path, tmp_path)


PACKING_CASES = {
    # The tiny tower on many sizes, and CLIP-336's geometry (24 x 24 features a tile, LLaVA-1.6's pinpoints) on the
    # sizes where transformers' rounding keeps other features than the original.
    "tiny": (30, 6, TINY_PINPOINTS, list(itertools.product(range(1, 200, 7), range(1, 200, 11)))),
    "clip-336": (TILE, 14, original.PINPOINTS_1_6, [(55, 176), (352, 110), (88, 99), (205, 984), (300, 200)]),
}


@pytest.mark.parametrize("case", PACKING_CASES.values(), ids=PACKING_CASES.keys())
def test_model_packs_tile_features_as_the_original_merges_them(checkpoints, case):
    tile, patch, pinpoints, sizes = case
    vision = AutoConfig.from_pretrained(checkpoints["clip"]).vision_config
    vision.image_size, vision.patch_size = tile, patch
    config = LlavaNextPluginConfig(
        vision_config=vision,
        text_config=AutoConfig.from_pretrained(checkpoints["llama"]),
        image_grid_pinpoints=pinpoints_from_original(pinpoints),
    )
    model = LlavaNextPluginForConditionalGeneration(config).eval()
    newline = model.model.image_newline.detach()
    side = tile // patch
    torch.manual_seed(0)
    for width, height in sizes:
        columns, rows = original.grid((width, height), pinpoints, tile)
        features = torch.randn(columns * rows + 1, side * side, 32)
        packed, lengths = model.model.pack_image_features(
            [features], torch.tensor([[height, width]]), "default", newline
        )
        expected = original.merged_features(features, (width, height), pinpoints, tile, newline)
        assert torch.equal(packed[0], expected), (width, height)
        assert lengths.tolist() == [original.token_count((width, height), pinpoints, tile, side)]


def test_length_measurement_counts_each_image_as_the_processor_expands_it(checkpoints):
    from processing.lengths import sample_length, tokenization_key

    processor = LlavaNextPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])
    user = [{"type": "image"}, {"type": "text", "text": "What is it?"}, {"type": "image"}]
    row = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "A square."}]}
    images = [random_image(0, (13, 47)), random_image(1, (64, 20))]
    text = processor.apply_chat_template(row["messages"], tokenize=False)
    ids = processor(images=images, text=text, add_special_tokens=False)["input_ids"][0]
    assert sample_length(row, processor, image_sizes=[(13, 47), (64, 20)]) == len(ids)
    assert sample_length(row, processor, image_sizes=[(64, 20), (13, 47)]) == len(ids)  # counts add up either way
    assert sample_length(row, processor, image_sizes=[(13, 47), (13, 47)]) != len(ids)  # a (1 x 3) and a (2 x 2) grid

    other = LlavaNextPluginProcessor.from_backbones(
        checkpoints["clip"], checkpoints["llama"], image_grid_pinpoints=[[30, 30], [60, 60]]
    )
    assert tokenization_key(other, None) != tokenization_key(processor, None)  # tiling is in the cache key


def test_pipeline_generates_what_generate_does(tmp_path, checkpoints):
    from transformers import pipeline

    folder = tiny_next_checkpoint(tmp_path / "next", checkpoints)
    image = random_image(4, (13, 47))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, QUESTION[0]["content"][1]]}]
    reply = pipeline("image-text-to-text", model=folder)(text=messages, generate_kwargs=GREEDY)[0]
    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    )
    assert (inputs["input_ids"] == processor.image_token_id).sum() == processor.num_image_tokens((13, 47))
    new_tokens = model.generate(**inputs, **GREEDY)[0, inputs["input_ids"].shape[1] :]
    assert reply["generated_text"][-1]["content"] == processor.decode(new_tokens, skip_special_tokens=True)


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"image_seq_length": 577}, "image_seq_length=577 disagrees"),
        ({"vision_feature_select_strategy": "full"}, "gives 577 features per tile"),  # CLIP's CLS kept
        ({"image_grid_pinpoints": [[300, 672]]}, r"image_grid_pinpoints \[\[300, 672\]\]"),
        ({"projector_type": "mlp2x_relu"}, "Unknown projector_type 'mlp2x_relu'"),
    ],
)
def test_config_refuses_what_would_fail_inside_the_forward(fields, named):
    with pytest.raises(ValueError, match=named):
        LlavaNextPluginConfig(**fields)
