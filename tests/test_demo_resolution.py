"""`llava demo --resolution`: the detail world against its pixels, what each preprocessing feeds the model of the mark,
and a small run in which AnyRes answers where the mark is and a single tile cannot.

Scenes are read back from the pixels with a reference written here (the dot is the one exact world colour, the mark
every other pixel off the background grey), and the mark's trace in the pixel values is measured against the same
image with those pixels painted grey, not with the world's drawing code.
"""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

from modeling_llava import LlavaNextPluginProcessor, LlavaPluginProcessor
from trainers.demo.backbones import pretrain_language_model, pretrain_vision_tower
from trainers.demo.detail import DETAIL_KINDS, GREY, IMAGE_SIZE, write_detail_world
from trainers.demo.evaluate import answer_questions
from trainers.demo.resolution import PINPOINTS, run_resolution
from trainers.demo.world import COLOURS, write_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_detail_world(tmp_path_factory.mktemp("detail"), num_train=40, num_heldout=20)


def load(path):
    return json.loads(path.read_text())


def pixels_of(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def scene_from_pixels(pixels: np.ndarray) -> tuple[str, str]:
    """(the mark's quadrant, the dot's colour) read from the pixels alone."""
    colours = {rgb: name for name, rgb in COLOURS.items()}
    exact = [colours.get(tuple(int(v) for v in pixel)) for pixel in pixels.reshape(-1, 3)]
    named = [name for name in exact if name]
    dot = max(set(named), key=named.count)
    is_dot = (pixels == COLOURS[dot]).all(axis=-1)
    ys, xs = np.nonzero((pixels != GREY).any(axis=-1) & ~is_dot)
    vertical = "top" if ys.max() < IMAGE_SIZE / 2 else "bottom" if ys.min() >= IMAGE_SIZE / 2 else None
    horizontal = "left" if xs.max() < IMAGE_SIZE / 2 else "right" if xs.min() >= IMAGE_SIZE / 2 else None
    assert vertical and horizontal, "the mark straddles the middle"
    return f"{vertical} {horizontal}", dot


def without_mark(pixels: np.ndarray) -> np.ndarray:
    """The image with every pixel that is not the dot's painted the background grey."""
    _, dot = scene_from_pixels(pixels)
    return np.where((pixels == COLOURS[dot]).all(axis=-1, keepdims=True), pixels, GREY).astype(np.uint8)


def test_answers_describe_the_pixels(world):
    for record in load(world.heldout):
        mark, dot = scene_from_pixels(pixels_of(world.image_folder / record["image"]))
        expected = {"mark": f"It is at the {mark}.", "dot": f"The dot is {dot}."}[record["kind"]]
        assert record["conversations"][1]["value"] == expected, record["id"]
    for record in load(world.stage2):
        mark, dot = scene_from_pixels(pixels_of(world.image_folder / record["image"]))
        answers = {turn["value"] for turn in record["conversations"][1::2]}
        assert answers == {f"It is at the {mark}.", f"The dot is {dot}."}, record["id"]
        assert record["conversations"][0]["value"].startswith("<image>\n"), record["id"]
    assert {record["kind"] for record in load(world.heldout)} == set(DETAIL_KINDS)


def test_heldout_images_are_new_and_every_quadrant_and_colour_occurs(world):
    training = {pixels_of(world.image_folder / r["image"]).tobytes() for r in load(world.stage2)}
    heldout = {r["image"] for r in load(world.heldout)}
    assert not {pixels_of(world.image_folder / image).tobytes() for image in heldout} & training
    scenes = [scene_from_pixels(pixels_of(world.image_folder / image)) for image in heldout]
    assert {mark for mark, _ in scenes} == {"top left", "top right", "bottom left", "bottom right"}
    assert {dot for _, dot in scenes} == set(COLOURS)


@pytest.fixture(scope="module")
def processors(tmp_path_factory):
    """LLaVA-1.5's and LLaVA-NeXT's processors on a demo tower (32 px tiles), as `llava train` builds them."""
    root = tmp_path_factory.mktemp("backbones")
    shapes = write_world(root / "world", num_train=40, num_heldout=5)
    vision, _ = pretrain_vision_tower(shapes, root / "clip", steps=1, progress=False)
    text, _ = pretrain_language_model(shapes, root / "llama", steps=1, progress=False)
    return {
        "single_tile": LlavaPluginProcessor.from_backbones(str(vision), str(text)),
        "anyres": LlavaNextPluginProcessor.from_backbones(str(vision), str(text), PINPOINTS),
    }


def grey_levels(image_processor, pixels: np.ndarray) -> np.ndarray:
    """The pixel values an image processor makes of `pixels`, back in grey levels (x std x 255)."""
    values = image_processor(Image.fromarray(pixels), return_tensors="np")["pixel_values"][0]
    return values * np.asarray(image_processor.image_std).reshape(3, 1, 1) * 255


def test_one_tile_hides_the_mark_and_anyres_tiles_show_it(world, processors):
    single, anyres = processors["single_tile"].image_processor, processors["anyres"].image_processor
    for image, _ in {(r["image"], 0) for r in load(world.heldout)}:
        pixels = pixels_of(world.image_folder / image)
        plain = without_mark(pixels)
        assert np.abs(pixels.astype(int) - plain).max() >= 120, image  # at full resolution, a strong mark
        hidden = np.abs(grey_levels(single, pixels) - grey_levels(single, plain))
        assert grey_levels(single, pixels).shape == (3, 32, 32)
        assert hidden.max() <= 1.5, image  # one tile: the mark moves no value by more than rounding
        tiles = np.abs(grey_levels(anyres, pixels) - grey_levels(anyres, plain))
        assert tiles.shape == (5, 3, 32, 32)  # the base tile, then 2 x 2 tiles at the image's own resolution
        assert tiles[0].max() <= 1.5 and tiles[1:].max() >= 100, image


@pytest.mark.slow
def test_anyres_finds_the_mark_that_a_single_tile_cannot(tmp_path):
    """The full comparison (about 3.5 minutes on 2 cores): the same recipe, data, steps, seed and backbones; held-out
    accuracy from the models' own answers. Smaller runs did not learn the mark: AnyRes learns it late (the loss sits
    near 0.09, the mark at chance, for some 100 steps first), and 160 steps on 400 images or 256 steps on 500 images
    with backbones pretrained 100 steps left it at chance (25.0% and 27.5%)."""
    results = run_resolution(tmp_path)
    chance, mark = results["chance"]["mark"], results["accuracy_mark"]
    assert chance == 0.25  # 100 held-out images, 25 per quadrant
    assert mark["anyres"] >= 0.9 and mark["single_tile"] <= chance + 0.15, results["accuracy_mark"]
    assert min(results["accuracy_dot"].values()) >= 0.9, results["accuracy_dot"]  # both see the coarse dot
    assert (
        results["mark_signal_grey_levels"]["single_tile"] <= 1.5 < 100 <= results["mark_signal_grey_levels"]["anyres"]
    )
    # The accuracies are the models' answers: ask the AnyRes model again, here, and compare with the pixels.
    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "anyres").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "anyres")
    records = [r for r in load(tmp_path / "detail" / "heldout.json") if r["kind"] == "mark"][:8]
    images = [tmp_path / "detail" / "images" / r["image"] for r in records]
    answers = answer_questions(model, processor, images, ["Where is the checkered mark?"] * 8, progress=False)
    truth = [f"It is at the {scene_from_pixels(pixels_of(image))[0]}." for image in images]
    hits = sum(answer == reference for answer, reference in zip(answers, truth, strict=True))
    assert hits >= 7, list(zip(answers, truth, strict=True))
