"""The demo's synthetic world and its pretrained stand-ins: files, wordings, pixels, CLIP pooling, checkpoints.

Scenes are checked against the pixels with a reference written here (dominant colour, bounding box, fill ratio), not
with the world's own drawing code. Pretraining runs a few steps on a small world, once per module (about 2 s).
"""

import hashlib
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPModel, PreTrainedTokenizerFast

from modeling_llava import LlavaPluginForConditionalGeneration, LlavaPluginProcessor
from processing.collator import LlavaDataCollator
from processing.llava_data import read_records
from trainers.demo.backbones import (
    caption_retrieval_accuracy,
    pretrain_language_model,
    pretrain_vision_tower,
)
from trainers.demo.world import (
    BACKGROUND,
    COLOURS,
    QUESTION_KINDS,
    SCENES,
    TASK_KIND,
    Scene,
    blank_image,
    heldout_scenes,
    world_texts,
    write_task,
    write_world,
)

SMALL = {"num_train": 120, "num_heldout": 20}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), **SMALL)


@pytest.fixture(scope="module")
def backbones(tmp_path_factory, world):
    """Checkpoints and losses of a few steps of each pretraining."""
    root = tmp_path_factory.mktemp("backbones")
    vision, vision_losses = pretrain_vision_tower(world, root / "clip", steps=12, batch_size=32, progress=False)
    text, text_losses = pretrain_language_model(world, root / "llama", steps=12, batch_size=16, progress=False)
    return {"vision": vision, "vision_losses": vision_losses, "text": text, "text_losses": text_losses}


def load(path):
    return json.loads(path.read_text())


def pixel_fingerprint(path) -> str:
    with Image.open(path) as image:
        return hashlib.sha1(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


def scene_from_pixels(path) -> Scene:
    """The scene an image shows, read from its pixels alone."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    shape_mask = (pixels != BACKGROUND).any(axis=-1)
    values, counts = np.unique(pixels[shape_mask], axis=0, return_counts=True)
    colour = {rgb: name for name, rgb in COLOURS.items()}[tuple(int(v) for v in values[counts.argmax()])]
    ys, xs = np.nonzero(shape_mask)
    height, width = shape_mask.shape
    box_x, box_y = (xs.min() + xs.max() + 1) / 2 / width, (ys.min() + ys.max() + 1) / 2 / height
    if abs(box_x - 0.5) < 0.125 and abs(box_y - 0.5) < 0.125:
        position = "center"
    else:
        position = f"{'top' if box_y < 0.5 else 'bottom'} {'left' if box_x < 0.5 else 'right'}"
    # Share of the bounding box the shape fills: 1 for a square, pi/4 for a circle, 1/2 for a triangle.
    fill = shape_mask.sum() / ((np.ptp(xs) + 1) * (np.ptp(ys) + 1))
    shape = "square" if fill > 0.95 else "circle" if fill > 0.68 else "triangle"
    return Scene(colour, shape, position)


def test_write_world_is_deterministic_for_a_seed_and_differs_for_another(tmp_path):
    def contents(root):
        return {path.relative_to(root): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}

    first = write_world(tmp_path / "a", num_train=30, num_heldout=5, seed=0)
    again = write_world(tmp_path / "b", num_train=30, num_heldout=5, seed=0)
    other = write_world(tmp_path / "c", num_train=30, num_heldout=5, seed=1)
    assert contents(first.root) == contents(again.root)
    for name in ("stage1.json", "stage2.json", "heldout.json", "images/train_00000.png"):
        assert (first.root / name).read_bytes() != (other.root / name).read_bytes(), name


def test_world_files_pass_read_records(world):
    num_train, num_heldout = SMALL["num_train"], SMALL["num_heldout"]
    stage1 = read_records(world.stage1, world.image_folder)
    stage2 = read_records(world.stage2, world.image_folder)
    heldout = read_records(world.heldout, world.image_folder)
    assert len(stage1) == num_train and len(heldout) == 3 * num_heldout
    assert num_train < len(stage2) <= 1.1 * num_train
    assert {row["images"][0] for row in stage1} == {row["images"][0] for row in stage2 if row["images"]}


def test_heldout_images_are_not_training_images(tmp_path):
    # 300 training images of 75 scenes with a few dozen drawings each: some held-out draws repeat a training image
    # unless they are drawn again.
    world = write_world(tmp_path, num_train=300, num_heldout=75)
    training = {pixel_fingerprint(world.image_folder / record["image"]) for record in load(world.stage1)}
    heldout = {pixel_fingerprint(world.image_folder / image) for image, _ in heldout_scenes(world)}
    assert len(heldout) > 1 and not heldout & training


def test_stage2_opens_with_the_image_and_mixes_in_text_only_records(world):
    records = load(world.stage2)
    with_image = [record for record in records if "image" in record]
    text_only = [record for record in records if "image" not in record]
    for record in with_image:
        turns = record["conversations"]
        assert turns[0]["from"] == "human" and turns[0]["value"].startswith("<image>\n")
        assert sum(turn["value"].count("<image>") for turn in turns) == 1
        questions = [turn["value"].removeprefix("<image>\n") for turn in turns[::2]]
        assert 2 <= len(questions) <= 3 and len(set(questions)) == len(questions)
    assert text_only and all("<image>" not in turn["value"] for r in text_only for turn in r["conversations"])
    assert 0.02 <= len(text_only) / len(records) <= 0.08


def test_heldout_answers_describe_the_pixels(world):
    records = load(world.heldout)
    for record in records:
        scene = scene_from_pixels(world.image_folder / record["image"])
        questions = dict(zip(QUESTION_KINDS, scene.questions(), strict=True))
        assert record["conversations"][0]["value"] == "<image>\n" + questions[record["kind"]][0], record["id"]
        assert record["conversations"][1]["value"] == questions[record["kind"]][1], record["id"]
    assert {record["kind"] for record in records} == set(QUESTION_KINDS)


def test_stage1_captions_describe_the_pixels(world):
    for record in load(world.stage1):
        scene = scene_from_pixels(world.image_folder / record["image"])
        assert record["conversations"][1]["value"] == scene.caption(), record["id"]


def test_blank_image_has_no_shape():
    assert (np.asarray(blank_image()) == BACKGROUND).all()


def test_captions_and_answers_round_trip():
    captions = set()
    for scene in SCENES:
        colour, shape, position = re.fullmatch(r"A (\w+) (\w+) at the ([a-z ]+)\.", scene.caption()).groups()
        assert Scene(colour, shape, position) == scene
        answers = [answer for _, answer in scene.questions()]
        assert re.fullmatch(r"The shape is (\w+)\.", answers[0]).group(1) == scene.colour
        assert re.fullmatch(r"It is an? (\w+)\.", answers[1]).group(1) == scene.shape
        assert re.fullmatch(r"It is at the ([a-z ]+)\.", answers[2]).group(1) == scene.position
        captions.add(scene.caption())
    assert len(captions) == len(SCENES) == 75


def test_heldout_scenes_read_back_the_drawn_scenes(world):
    for image, scene in heldout_scenes(world):
        assert scene == scene_from_pixels(world.image_folder / image)


SIDE_QUESTION = "Is the shape on the left or on the right?"


def side_from_pixels(path) -> str | None:
    """The side of the picture the shape's bounding box lies in, from the pixels alone; None where it straddles the
    middle column (the world's center position)."""
    with Image.open(path) as image:
        xs = np.nonzero((np.asarray(image.convert("RGB")) != BACKGROUND).any(axis=-1))[1]
        width = image.width
    return "left" if xs.max() < width / 2 else "right" if xs.min() >= width / 2 else None


def test_task_answers_the_side_the_pixels_show_and_keeps_old_questions_beside_it(world):
    write_task(world, num_train=60, seed=0)
    train, heldout = load(world.task_train), load(world.task_heldout)
    assert len(train) == 60 and len({record["image"] for record in train}) == 60
    for record in train:
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and "<image>" not in turns[2]["value"], record["id"]
        answers = {
            turns[0]["value"].removeprefix("<image>\n"): turns[1]["value"],
            turns[2]["value"]: turns[3]["value"],
        }
        path = world.image_folder / record["image"]
        assert answers.pop(SIDE_QUESTION) == f"It is on the {side_from_pixels(path)}.", record["id"]
        # The other turn is one of the old questions, answered as stage 2 answers it.
        assert set(answers.items()) <= set(scene_from_pixels(path).questions()), record["id"]
    sided = [image for image, _ in heldout_scenes(world) if side_from_pixels(world.image_folder / image)]
    assert [record["image"] for record in heldout] == sided  # every held-out image with the shape on a side, once
    for record in heldout:
        side = side_from_pixels(world.image_folder / record["image"])
        assert record["kind"] == TASK_KIND and record["conversations"][0]["value"] == "<image>\n" + SIDE_QUESTION
        assert record["conversations"][1]["value"] == f"It is on the {side}.", record["id"]


def test_no_stage_before_the_task_asks_the_side_question(world):
    write_task(world, num_train=60, seed=0)
    earlier = world.stage1.read_text() + world.stage2.read_text() + "".join(world_texts(world))
    assert "left or on the right" not in earlier and "It is on the" not in earlier
    assert "left or on the right" in world.task_train.read_text()


def test_task_refuses_more_samples_than_sided_training_images(world):
    with pytest.raises(ValueError, match=r"asks about 1000 training images, but .*stage1.json has \d+ with the shape"):
        write_task(world, num_train=1000)


def test_world_texts_render_records_as_training_does(world, processor):
    """Each training record as the processor renders it for its stage, image marker left out or captioned."""
    texts = set(world_texts(world))
    bos = processor.tokenizer.bos_token
    stage1 = read_records(world.stage1, world.image_folder)
    captions = {row["images"][0]: row["messages"][1]["content"][0]["text"] for row in stage1}
    for path, template, marker in ((world.stage1, "plain", "<image>"), (world.stage2, None, "<image>\n")):
        for row in read_records(path, world.image_folder)[:10]:
            rendered = processor.apply_chat_template(row["messages"], chat_template=template, tokenize=False)
            assert rendered.startswith(bos) and rendered.count(marker) == 1
            assert rendered.removeprefix(bos).replace(marker, "") in texts
            assert rendered.removeprefix(bos).replace(marker, captions[row["images"][0]] + "\n") in texts


def test_world_texts_leave_out_the_heldout_set(tmp_path):
    world = write_world(tmp_path, num_train=30, num_heldout=5)
    texts = world_texts(world)
    world.heldout.write_text(json.dumps([{"id": "x", "conversations": [{"from": "human", "value": "Unseen?"}]}]))
    assert world_texts(world) == texts


def test_the_demo_clip_ends_every_caption_with_the_eos_it_pools_at(backbones):
    """The demo's side of CLIP's text pooling: captions end with the EOS, and its id is not 2, the id for which
    transformers' CLIP falls back to the legacy argmax-of-ids pooling (which would pick a word here)."""
    model = CLIPModel.from_pretrained(backbones["vision"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(backbones["vision"])
    captions = tokenizer([scene.caption() for scene in SCENES[:8]], padding=True, return_tensors="pt")
    eos_positions = (captions["attention_mask"].sum(dim=1) - 1).tolist()
    assert all(captions["input_ids"][row, eos] == tokenizer.eos_token_id for row, eos in enumerate(eos_positions))
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id != 2
    assert captions["input_ids"].argmax(dim=1).tolist() != eos_positions  # the legacy pooling would land elsewhere


def test_vision_pretraining_lowers_the_loss_and_saves_a_clip(backbones, world):
    losses = backbones["vision_losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0]
    accuracy = caption_retrieval_accuracy(backbones["vision"], world)
    assert set(accuracy) == {"overall", *QUESTION_KINDS}
    assert all(0 <= accuracy["overall"] <= accuracy[kind] <= 1 for kind in QUESTION_KINDS)


def test_language_pretraining_lowers_the_loss_and_saves_a_causal_lm(backbones):
    losses = backbones["text_losses"]
    assert len(losses) == 12 and np.mean(losses[-3:]) < losses[0]
    tokenizer = AutoTokenizer.from_pretrained(backbones["text"])
    model = AutoModelForCausalLM.from_pretrained(backbones["text"])
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("</s>")
    assert tokenizer.convert_ids_to_tokens(tokenizer("It is a circle.")["input_ids"])[0] == "<s>"


def test_llava_builds_from_the_pretrained_backbones_and_trains_on_the_world(backbones, world):
    vision, text = str(backbones["vision"]), str(backbones["text"])
    model = LlavaPluginForConditionalGeneration.from_backbones(vision, text)
    processor = LlavaPluginProcessor.from_backbones(vision, text)
    assert model.config.image_seq_length == processor.image_seq_length == 16  # 32 px in 8 px patches, CLS dropped
    clip = CLIPModel.from_pretrained(vision)
    for name, weight in clip.vision_model.state_dict().items():
        assert torch.equal(model.state_dict()[f"model.vision_tower.{name}"], weight), name
    rows = read_records(world.stage2, world.image_folder)[:2]
    batch = LlavaDataCollator(processor, assistant_only_loss=True)(rows)
    assert torch.isfinite(model(**batch).loss)
