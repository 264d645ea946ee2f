"""Training LLaVA-NeXT (1.6): built from backbones, each stage's freezing, lengths, batches, recipes, LoRA."""

import json
import re

import pytest
import torch
from datasets import Dataset
from peft import PeftModel
from PIL import ExifTags, Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, CLIPModel

from modeling_llava import (
    CHAT_TEMPLATES,
    LlavaNextPluginForConditionalGeneration,
    LlavaNextPluginProcessor,
    LlavaPluginForConditionalGeneration,
)
from modeling_llava.anyres import anyres_layout
from modeling_llava.attention_varlen import VARLEN_ATTENTION, sequence_boundaries
from modeling_llava.modeling_llava_plugin import LlavaPluginMultiModalProjector
from processing.adapters import build_base, load_adapter
from processing.collator import LlavaDataCollator
from processing.data_checks import check_images
from processing.lengths import measure_lengths
from processing.padding_free import LlavaPaddingFreeCollator
from tests.conftest import CONVERSATION, EXAMPLES, QUESTION, random_image, run_args, train
from tests.test_training import changed, starting_model
from trainers.merge_lora import merge_lora
from trainers.train import SetupError, build_trainer, check_arguments, parse

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


# The shared EXAMPLES (a text-only sample, one with two images) with images of four grids: 1x3, 3x1, 1x2 for the
# 30-pixel square, 2x2 for 40 x 52, each plus its base tile; tiles per sample vary from 0 to 7.
NEXT_IMAGES = [
    [random_image(0, (20, 80))],
    [],
    [random_image(1, (80, 20)), random_image(2, (30, 30))],
    [random_image(3)],
]
NEXT_EXAMPLES = [{**example, "images": images} for example, images in zip(EXAMPLES, NEXT_IMAGES, strict=True)]


@pytest.fixture(scope="module")
def next_model(checkpoints) -> LlavaNextPluginForConditionalGeneration:
    torch.manual_seed(0)
    model = LlavaNextPluginForConditionalGeneration.from_backbones(checkpoints["clip"], checkpoints["llama"])
    return model.float().eval()


@pytest.fixture(scope="module")
def next_processor(checkpoints) -> LlavaNextPluginProcessor:
    return LlavaNextPluginProcessor.from_backbones(checkpoints["clip"], checkpoints["llama"])


def collate(collator_class: type, processor, examples: list[dict]) -> dict:
    collator = collator_class(processor=processor, assistant_only_loss=True, chat_template=CHAT_TEMPLATES["vicuna_v1"])
    return collator([dict(example) for example in examples])


def per_token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The causal LM's loss of each label token of one sequence (`logits` `(length, vocab)`, `labels` `(length,)`)."""
    return torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="none")


@pytest.mark.parametrize("attn_implementation", ["sdpa", VARLEN_ATTENTION])
def test_padded_and_padding_free_next_batches_equal_each_sample_alone(next_model, next_processor, attn_implementation):
    next_model.set_attn_implementation(attn_implementation)
    padded = collate(LlavaDataCollator, next_processor, NEXT_EXAMPLES)
    row = collate(LlavaPaddingFreeCollator, next_processor, NEXT_EXAMPLES)
    assert padded["pixel_values"].dim() == 5  # (images, most tiles, channels, height, width)
    tiles = [
        anyres_layout(size, TINY_PINPOINTS, 30, 5).num_tiles
        for example in NEXT_EXAMPLES
        for size in [image.size[::-1] for image in example["images"]]
    ]
    assert tiles == [4, 4, 3, 5] and padded["pixel_values"].shape[1] == max(tiles)  # grids differ in the batch
    assert torch.equal(row["image_sizes"], padded["image_sizes"])

    with torch.no_grad():
        padded_logits = next_model(**padded).logits
        row_logits = next_model(**row).logits[0]
    keep = padded["attention_mask"].bool()
    starts = row["cu_seq_lens_q"].tolist()
    for index, example in enumerate(NEXT_EXAMPLES):
        alone = collate(LlavaDataCollator, next_processor, [example])
        with torch.no_grad():
            logits = next_model(**alone).logits[0]
        labels = alone["labels"][0]
        in_row = row_logits[starts[index] : starts[index + 1]]
        torch.testing.assert_close(padded_logits[index][keep[index]], logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(in_row, logits, atol=1e-5, rtol=1e-4)
        expected = per_token_losses(logits, labels)
        torch.testing.assert_close(per_token_losses(padded_logits[index][keep[index]], labels), expected)
        torch.testing.assert_close(per_token_losses(in_row, labels), expected)


def test_lengths_count_next_images_by_their_oriented_size(next_processor, tmp_path):
    """`measure_lengths` gives the collator's own length, with each image's size read from its header: a JPEG
    stored 20 x 80 with EXIF orientation 6 (turned a quarter) is shown 80 x 20, and a 1x3 grid is not a 3x1 one."""
    turned = random_image(5, (20, 80))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    turned.save(tmp_path / "turned.jpg", exif=exif)
    random_image(6, (20, 80)).save(tmp_path / "wide.png")
    rows = [
        {"id": "turned", "messages": NEXT_EXAMPLES[3]["messages"], "images": [str(tmp_path / "turned.jpg")]},
        {"id": "wide", "messages": NEXT_EXAMPLES[3]["messages"], "images": [str(tmp_path / "wide.png")]},
        {"id": "text", **NEXT_EXAMPLES[1]},
    ]
    problems = []
    checked = check_images(Dataset.from_list(rows), problems, max_pixels=None)
    assert problems == [] and list(checked["image_sizes"]) == [[[80, 20]], [[20, 80]], []]
    measured = measure_lengths(checked, next_processor, CHAT_TEMPLATES["vicuna_v1"], cache=False)
    unchecked = measure_lengths(Dataset.from_list(rows), next_processor, CHAT_TEMPLATES["vicuna_v1"], cache=False)
    collated = [collate(LlavaDataCollator, next_processor, [row])["input_ids"].shape[1] for row in rows]
    assert list(measured["length"]) == list(unchecked["length"]) == collated
    assert collated[0] != collated[1]
    decoded = Dataset.from_list([{**row, "images": [Image.open(row["images"][0])]} for row in rows[:2]])
    assert list(measure_lengths(decoded, next_processor, CHAT_TEMPLATES["vicuna_v1"], cache=False)["length"]) == [
        collate(LlavaDataCollator, next_processor, [row])["input_ids"].shape[1] for row in decoded
    ]


def test_sequence_boundaries_start_at_the_first_token():
    """A row's first sample starts at 0 whether or not its positions restart there (a sample run alone)."""
    assert sequence_boundaries(torch.tensor([[0, 1, 2, 0, 1]]), 5, "cpu").tolist() == [0, 3, 5]
    assert sequence_boundaries(torch.tensor([[0, 1, 2, 3]]), 4, "cpu").tolist() == [0, 4]


@pytest.fixture(scope="module")
def next_data(tmp_path_factory) -> dict[str, str]:
    """LLaVA JSON of images of different grids (a JPEG turned by its EXIF among them) and a text-only record; with
    `stage1`, the same images as one question and answer each (what the plain template renders)."""
    root = tmp_path_factory.mktemp("next_data")
    sizes = [(20, 80), (80, 20), (30, 30), (40, 52), (60, 45), (20, 80)]
    records, captions = [], []
    for index, size in enumerate(sizes):
        name = f"{index}.png" if index else "0.jpg"
        if index:
            random_image(index, size).save(root / name)
        else:  # stored 20 x 80, shown 80 x 20
            exif = Image.Exif()
            exif[ExifTags.Base.Orientation] = 6
            random_image(index, size).save(root / name, exif=exif)
        records.append({"id": f"sample-{index}", "image": name, "conversations": CONVERSATION})
        captions.append({"id": f"sample-{index}", "image": name, "conversations": CONVERSATION[:2]})
    records.append({"id": "text-only", "conversations": [{"from": "human", "value": "Hi?"}, CONVERSATION[1]]})
    (root / "data.json").write_text(json.dumps(records))
    (root / "stage1.json").write_text(json.dumps(captions))
    return {"data_path": str(root / "data.json"), "stage1": str(root / "stage1.json"), "image_folder": str(root)}


def next_run_args(checkpoints, next_data, output_dir, stage: str, *extra: str) -> list[str]:
    data = {**next_data, "data_path": next_data["stage1"] if stage == "stage1" else next_data["data_path"]}
    args = run_args(checkpoints, data, output_dir, "--anyres", "true", "--max_length", "400", *extra)
    return [stage, *args]


def start_and_trained(checkpoints, next_data, tmp_path, stage: str, *extra: str):
    """The state the run starts from (rebuilt with its seed), the trainer after two steps, and the saved model."""
    args = next_run_args(checkpoints, next_data, tmp_path, stage, *extra)
    before = {name: weight.clone() for name, weight in starting_model(stage, args[1:]).state_dict().items()}
    trainer = train(stage, args[1:])
    return before, trainer


@pytest.mark.parametrize(
    ("stage", "extra", "trained"),
    [
        ("stage1", [], {"multi_modal_projector"}),
        ("stage2", [], {"multi_modal_projector", "language_model", "lm_head", "image_newline"}),
        (
            "stage2",
            ["--train_vision_tower", "true", "--vision_tower_lr", "2e-3"],
            {"multi_modal_projector", "language_model", "lm_head", "image_newline", "vision_tower"},
        ),
    ],
    ids=["stage1", "stage2", "stage2-tower"],
)
def test_next_stages_train_exactly_their_parts_and_reload(checkpoints, next_data, tmp_path, stage, extra, trained):
    before, trainer = start_and_trained(checkpoints, next_data, tmp_path, stage, *extra)
    assert trainer.state.global_step == 2
    model = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    assert type(model) is LlavaNextPluginForConditionalGeneration
    assert model.config.model_type == "llava_next_plugin" and model.config.image_grid_pinpoints == TINY_PINPOINTS
    after = model.state_dict()
    parts = ("multi_modal_projector", "language_model", "lm_head", "image_newline", "vision_tower")
    for part in parts:
        moved = changed(before, after, f"model.{part}" if part != "lm_head" else part)
        if part == "vision_tower" and part in trained:
            # The layers up to the feature layer (-2, so the first of two) train; the rest never reach the loss.
            on_the_way = {name for name in moved if re.search(r"embeddings|pre_layrnorm|encoder\.layers\.0\.", name)}
            assert on_the_way and {name for name, move in moved.items() if move} == on_the_way
        else:
            assert all(moved.values()) if part in trained else not any(moved.values()), part
    # Frozen towers equal the CLIP checkpoint on disk, bit for bit.
    if "vision_tower" not in trained:
        for name, weight in CLIPModel.from_pretrained(checkpoints["clip"]).vision_model.state_dict().items():
            assert torch.equal(after[f"model.vision_tower.{name}"], weight), name

    if "vision_tower" in trained:  # its own optimizer group, at vision_tower_lr
        names = {id(parameter): name for name, parameter in trainer.model.named_parameters()}
        by_rate: dict[float, set[str]] = {}
        for group in trainer.optimizer.param_groups:
            by_rate.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
        tower = {name for name, p in trainer.model.named_parameters() if p.requires_grad and "vision_tower" in name}
        assert set(by_rate) == {2e-3, 1e-2} and by_rate[2e-3] == tower
        assert tower == on_the_way

    processor = AutoProcessor.from_pretrained(tmp_path)
    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=random_image(9, (70, 25)), text=prompt, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert tokens.shape == (1, inputs["input_ids"].shape[1] + 3)


@pytest.mark.parametrize("stage", ["stage1", "lora"])
def test_the_tower_is_trained_in_stage2_only(checkpoints, next_data, tmp_path, stage):
    with pytest.raises(SetupError, match=f"stage {stage} cannot train the vision tower"):
        check_arguments(*parse(next_run_args(checkpoints, next_data, tmp_path, stage, "--train_vision_tower", "true")))
    with pytest.raises(SetupError, match="vision_tower_lr: 2e-06"):
        check_arguments(*parse(next_run_args(checkpoints, next_data, tmp_path, "stage2", "--vision_tower_lr", "2e-6")))


def test_a_next_lora_run_reloads_unmerged_and_merges_to_the_same_logits(checkpoints, next_data, tmp_path):
    before, trainer = start_and_trained(checkpoints, next_data, tmp_path / "lora", "lora")
    trained = trainer.model.eval()
    after = {name.removeprefix("base_model.model."): weight for name, weight in trained.state_dict().items()}
    assert torch.equal(after["model.image_newline"], before["model.image_newline"])  # as LLaVA-NeXT's LoRA leaves it

    adapter, processor = load_adapter(tmp_path / "lora")
    assert isinstance(adapter, PeftModel) and type(adapter.get_base_model()) is LlavaNextPluginForConditionalGeneration
    merged = AutoModelForImageTextToText.from_pretrained(merge_lora(tmp_path / "lora", tmp_path / "merged")).eval()
    assert type(merged) is LlavaNextPluginForConditionalGeneration

    prompt = processor.apply_chat_template(QUESTION, add_generation_prompt=True)
    inputs = processor(images=random_image(11, (25, 70)), text=prompt, return_tensors="pt")
    with torch.no_grad():
        expected = trained(**inputs).logits
        torch.testing.assert_close(adapter(**inputs).logits, expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(merged(**inputs).logits, expected, atol=1e-5, rtol=1e-5)


ON_CPU = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 recipes on a CPU need use_cpu
# Facts of LLaVA-VL/LLaVA-NeXT's scripts/train/pretrain_clip.sh (stage 1) and direct_finetune_clip.sh (stage 2), and
# for the LoRA values, of LLaVA-1.5's scripts/v1_5/finetune_lora.sh.
NEXT_SCRIPTS = {
    "stage1": {
        "learning_rate": 1e-3,
        "per_device_train_batch_size": 16,
        "anyres": False,  # no --image_aspect_ratio: "square"
        "train_vision_tower": False,  # --mm_tunable_parts="mm_mlp_adapter"
        "template": "plain",
    },
    "stage2": {
        "learning_rate": 1e-5,
        "per_device_train_batch_size": 4,
        "anyres": True,
        "train_vision_tower": True,  # --mm_tunable_parts="mm_vision_tower,mm_mlp_adapter,mm_language_model"
        "vision_tower_lr": 2e-6,
        "group_by_modality_length": True,
        "dataloader_drop_last": True,
        "save_steps": 3000,
        "pretrain_projector": "checkpoints/llava-next-7b-pretrain",
    },
    "lora": {
        "learning_rate": 2e-4,
        "projector_lr": 2e-5,
        "lora_r": 128,
        "lora_alpha": 256,
        "anyres": True,
        "train_vision_tower": False,
        "group_by_modality_length": True,
        "pretrain_projector": "checkpoints/llava-next-7b-pretrain",
    },
}
# direct_finetune_clip.sh's --image_grid_pinpoints, copied as written: (width, height) pairs.
SCRIPT_PINPOINTS = [(336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008)]


@pytest.mark.parametrize("stage", NEXT_SCRIPTS)
def test_next_recipes_hold_the_published_scripts_settings(stage):
    script_args, training_args, model_args = parse(["--config", f"llava-next-7b-{stage}", *ON_CPU])
    check_arguments(script_args, training_args, model_args)
    fields = {**vars(script_args), **vars(model_args), **training_args.to_dict()}
    for key, value in {**NEXT_SCRIPTS[stage], "stage": stage, "assistant_only_loss": True}.items():
        assert fields[key] == value, key
    assert script_args.vision_tower == "openai/clip-vit-large-patch14-336"
    assert (script_args.projector_type, script_args.vision_feature_layer) == ("mlp2x_gelu", -2)
    assert (training_args.gradient_accumulation_steps, training_args.num_train_epochs) == (1, 1)
    assert (training_args.warmup_steps, training_args.weight_decay, training_args.lr_scheduler_type) == (
        0.03,
        0,
        "cosine",
    )
    assert training_args.bf16 and training_args.gradient_checkpointing
    if script_args.anyres:  # the script's (width, height) pairs, each swapped: every image gets the script's grid
        assert script_args.image_grid_pinpoints == [[height, width] for width, height in SCRIPT_PINPOINTS]


def test_the_next_stage2_recipe_is_honoured(checkpoints, next_data, tmp_path):
    """The recipe on the tiny backbones (tiles of 30 pixels, fp32 on a CPU): a LLaVA-NeXT whose tower trains at its
    own rate beside the LLM, in padding-free batches grouped by modality and length."""
    data = ["--data_path", next_data["data_path"], "--image_folder", next_data["image_folder"]]
    overrides = [
        *["--vision_tower", checkpoints["clip"], "--language_model", checkpoints["llama"], "--pretrain_projector", ""],
        *["--image_grid_pinpoints", json.dumps(TINY_PINPOINTS), "--output_dir", str(tmp_path), "--max_length", "400"],
        *["--dtype", "float32", "--bf16", "false", "--gradient_checkpointing", "false", *data],
    ]
    trainer, _ = build_trainer(*parse(["--config", "llava-next-7b-stage2", *ON_CPU, *overrides]))
    model = trainer.model
    assert type(model) is LlavaNextPluginForConditionalGeneration
    assert model.config.image_grid_pinpoints == TINY_PINPOINTS
    frozen = {name for name, parameter in model.named_parameters() if not parameter.requires_grad}
    # Only what lies past the feature layer (-2): the tower's last layer and final norm.
    assert frozen and all(re.match(r"model\.vision_tower\..*(encoder\.layers\.1\.|post_layernorm)", n) for n in frozen)
    assert model.model.image_newline.requires_grad
    assert isinstance(trainer.data_collator, LlavaPaddingFreeCollator) and trainer.group_by_modality_length
    trainer.create_optimizer()
    rates = {group["lr"] for group in trainer.optimizer.param_groups}
    tower = {id(parameter) for parameter in model.model.vision_tower.parameters()}
    for group in trainer.optimizer.param_groups:
        in_tower = {id(parameter) in tower for parameter in group["params"]}
        assert in_tower == {group["lr"] == 2e-6}, group["lr"]
    assert rates == {2e-6, 1e-5}


def test_llava_plan_refuses_a_next_recipe_rather_than_sizing_it_as_llava_1_5():
    from trainers.plan import plan

    with pytest.raises(SetupError, match="LLaVA-1.5 runs only"):
        plan(*parse(["--config", "llava-next-7b-stage2", *ON_CPU]))
