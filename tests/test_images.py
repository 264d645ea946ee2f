"""Every image mode a file may come in decodes to the RGB picture it shows, alike wherever it reaches the model
(training, evaluation, the demo, chat, serve), and bad images are named.

References are built by hand from the pixel values written (numpy), not from the code under test.
"""

import asyncio
import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import serving.server
from processing.collator import LlavaDataCollator
from processing.conversation import user_message
from processing.generation import generate_greedy
from processing.images import decode_image, open_image, to_rgb
from processing.llava_data import DataError, read_records
from serving.page import build_page
from serving.server import ServeSettings, create_app
from serving.terminal import ChatSession
from serving.worker import GenerationWorker
from tests.conftest import CONVERSATION

GREY = (122, 116, 104)  # the processor's mean colour, x 255 (CLIP's mean)


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(to_rgb(image, GREY), dtype=np.int64)


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")  # a 16-bit PNG
    with Image.open(tmp_path / "deep.png") as image:
        decoded = rgb(image)
    expected = np.round(values / 257).astype(np.int64)
    assert decoded.shape == (2, 3, 3)
    assert np.array_equal(decoded[..., 0], expected) and np.array_equal(decoded[..., 2], expected)


def test_32_bit_integer_and_float_greyscale():
    ints = Image.fromarray(np.array([[0, 65535, 70000]], dtype=np.int32), "I")
    assert rgb(ints)[0, :, 0].tolist() == [0, 255, 255]  # read as 16-bit data, above it clipped
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert rgb(unit)[0, :, 0].tolist() == [0, 128, 255]  # [0, 1] floats are scaled
    wide = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32), "F")
    assert rgb(wide)[0, :, 0].tolist() == [0, 100, 255]  # otherwise read as 0-255, clipped


def test_transparency_is_composited_on_the_mean_colour():
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0] = [[255, 0, 0, 255], [255, 0, 0, 0], [0, 0, 255, 128]]
    decoded = rgb(Image.fromarray(rgba, "RGBA"))
    half = [round((0 * 128 + g * 127) / 255) for g in GREY[:2]] + [round((255 * 128 + GREY[2] * 127) / 255)]
    assert decoded[0, 0].tolist() == [255, 0, 0]
    assert decoded[0, 1].tolist() == list(GREY)  # fully transparent: the mean colour, not the stored red
    assert np.abs(decoded[0, 2] - half).max() <= 1
    la = Image.fromarray(np.array([[[200, 0]]], dtype=np.uint8), "LA")
    assert rgb(la)[0, 0].tolist() == list(GREY)
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 1  # palette entry 1 (green) is transparent
    assert rgb(palette)[0].tolist() == [[255, 0, 0], list(GREY)]


def test_cmyk_and_exif_orientation(tmp_path):
    cmyk = Image.new("CMYK", (1, 1), (0, 255, 255, 0))  # no black, full magenta and yellow: red
    assert rgb(cmyk)[0, 0].tolist() == [255, 0, 0]
    pixels = np.zeros((2, 3, 3), dtype=np.uint8)
    pixels[0, 0] = [255, 255, 255]  # a white top-left corner
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    with Image.open(tmp_path / "phone.jpg") as opened:
        decoded = rgb(opened)
    assert decoded.shape == (3, 2, 3)  # upright: the stored 2 x 3 becomes 3 x 2
    assert decoded[0, 1].min() > 200  # the white corner turns to the top right


def test_images_over_the_pixel_limit_name_the_record_and_file(tmp_path, monkeypatch):
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # as `llava train --max_image_pixels 500` sets it
    with pytest.raises(DataError, match=r"Record 'r7': image file '.*big.png' is larger than the pixel limit \(500"):
        open_image("r7", str(tmp_path / "big.png"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)
    assert open_image("r7", str(tmp_path / "big.png")).size == (40, 30)


@pytest.mark.parametrize("where", ["../outside.png", "ABSOLUTE"])
def test_image_paths_outside_the_image_folder_are_refused_unless_allowed(tmp_path, where):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    image = str(tmp_path / "outside.png") if where == "ABSOLUTE" else where
    (tmp_path / "data.json").write_text(json.dumps([{"id": "x", "image": image, "conversations": CONVERSATION}]))
    with pytest.raises(DataError, match=r"Record 'x': image .* lies outside the image folder"):
        read_records(tmp_path / "data.json", folder)
    [row] = read_records(tmp_path / "data.json", folder, allow_outside=True)
    assert row["images"] == [str(folder / image)]


def test_a_symlinked_dataset_folder_inside_the_image_folder_is_inside(tmp_path):
    """LLaVA's `playground/data/coco -> /mnt/coco` layout: judged by the path's text, the image is in the folder."""
    real = tmp_path / "mounted" / "coco"
    real.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(real / "1.png")
    folder = tmp_path / "playground"
    folder.mkdir()
    (folder / "coco").symlink_to(real, target_is_directory=True)
    (tmp_path / "data.json").write_text(
        json.dumps([{"id": "x", "image": "coco/1.png", "conversations": CONVERSATION}])
    )
    [row] = read_records(tmp_path / "data.json", folder)
    assert row["images"] == [str(folder / "coco" / "1.png")]
    (tmp_path / "escape.json").write_text(
        json.dumps([{"id": "y", "image": "coco/../../mounted/coco/1.png", "conversations": CONVERSATION}])
    )
    with pytest.raises(DataError, match=r"Record 'y': image .* lies outside the image folder"):
        read_records(tmp_path / "escape.json", folder)


# --- One decoder for every entry point: the same file gives the model the same pixel values wherever it comes in. ---

SIZE = (64, 32)  # width, height of every file below, as the model should see it


def hand_built(left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """A 64 x 32 RGB picture, `left` colour in the left half and `right` in the right, built from numbers alone."""
    pixels = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.uint8)
    pixels[:, : SIZE[0] // 2], pixels[:, SIZE[0] // 2 :] = left, right
    return Image.fromarray(pixels)


def mean_colour(processor) -> tuple[int, int, int]:
    """The processor's mean colour in 0-255, read from its image processor's config (the expected background)."""
    return tuple(round(255 * value) for value in processor.image_processor.image_mean)


@pytest.fixture(scope="module")
def hard_files(tmp_path_factory, processor) -> tuple[Path, dict[str, Image.Image | None]]:
    """A folder of files PIL's plain `convert("RGB")` gets wrong, and the RGB picture each shows, built by hand (None:
    no reference but the other entry points)."""
    folder = tmp_path_factory.mktemp("hard_images")
    grey = mean_colour(processor)
    ramp = np.tile(np.round(np.linspace(0, 65535, SIZE[0])).astype(np.uint16), (SIZE[1], 1))
    Image.fromarray(ramp).save(folder / "deep.png")  # 16-bit greyscale
    deep = Image.fromarray(np.round(ramp / 257).astype(np.uint8)).convert("RGB")

    rgba = np.zeros((SIZE[1], SIZE[0], 4), dtype=np.uint8)
    rgba[:, : SIZE[0] // 2] = (0, 0, 255, 255)  # opaque blue
    rgba[:, SIZE[0] // 2 :] = (255, 0, 0, 0)  # red hidden under alpha 0
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")

    stored = np.random.default_rng(0).integers(0, 256, size=(SIZE[0], SIZE[1], 3), dtype=np.uint8)  # 32 wide, 64 high
    phone = Image.fromarray(stored)
    exif = phone.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    phone.save(folder / "phone.jpg", exif=exif, quality=95)
    with Image.open(folder / "phone.jpg") as raw:  # the stored pixels, before any orientation is applied
        upright = Image.fromarray(np.rot90(np.asarray(raw.convert("RGB")), k=-1))

    palette = Image.new("P", SIZE)
    palette.putpalette([255, 0, 0, 0, 255, 0])
    palette.paste(1, (SIZE[0] // 2, 0, SIZE[0], SIZE[1]))  # right half: entry 1, which is transparent
    palette.save(folder / "palette.png", transparency=1)

    Image.new("CMYK", SIZE, (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    return folder, {
        "deep.png": deep,
        "alpha.png": hand_built((0, 0, 255), grey),
        "phone.jpg": upright,
        "palette.png": hand_built((255, 0, 0), grey),
        "cmyk.jpg": None,
    }


class PixelSpy:
    """Stands in for the model where only its inputs matter: records the pixel values and generates nothing."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.pixel_values = []

    def generate(self, input_ids, pixel_values=None, **kwargs):
        self.pixel_values.append(pixel_values)
        return input_ids


def through_the_collator(processor, path: Path) -> torch.Tensor:
    (path.parent / "data.json").write_text(
        json.dumps([{"id": "x", "image": path.name, "conversations": CONVERSATION}])
    )
    rows = read_records(path.parent / "data.json", path.parent, progress=False)
    return LlavaDataCollator(processor=processor, assistant_only_loss=True)(rows)["pixel_values"]


def through_generate_greedy(processor, path: Path) -> torch.Tensor:
    spy = PixelSpy()
    generate_greedy(spy, processor, [[user_message("Which?", images=1)]], [path], progress=False)
    return spy.pixel_values[0]


def through_llava_chat(processor, path: Path) -> torch.Tensor:
    spy = PixelSpy()
    session = ChatSession(spy, processor, max_new_tokens=1)
    session.set_image(path)
    session.ask("Which?")
    return spy.pixel_values[0]


@pytest.fixture(scope="module")
def served(loaded):
    """`llava serve --allow-local-files` in process: its API client, its page's answer function, and what the model
    was given (every `prompt_inputs` of its worker)."""
    pages, rendered = [], []
    patch = pytest.MonkeyPatch()
    patch.setattr(serving.server, "build_page", lambda *args: pages.append(build_page(*args)) or pages[-1])
    prompt_inputs = GenerationWorker.prompt_inputs
    patch.setattr(
        GenerationWorker, "prompt_inputs", lambda self, *a: rendered.append(prompt_inputs(self, *a)) or rendered[-1]
    )
    app = create_app(*loaded, "tiny", ServeSettings(allow_local_files=True))
    answer = next(function.fn for function in pages[0].fns.values() if function.api_name == "answer")
    with TestClient(app) as client:
        yield client, answer, rendered
    patch.undo()


def through_the_api(served, path: Path, url: str) -> torch.Tensor:
    client, _, rendered = served
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Which?"}]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    return rendered[-1]["pixel_values"]


def through_the_page(served, path: Path) -> torch.Tensor:
    _, answer, rendered = served

    async def ask() -> None:
        async for _ in answer([{"role": "user", "content": "Which?"}], str(path), 0.0, 1.0, 1):
            pass

    asyncio.run(ask())
    return rendered[-1]["pixel_values"]


@pytest.mark.parametrize("name", ["deep.png", "alpha.png", "phone.jpg", "palette.png", "cmyk.jpg"])
def test_every_entry_point_gives_the_model_the_same_pixels(name, hard_files, processor, served):
    """Training's collator, evaluation and the demo (`generate_greedy`), `llava chat`, and `llava serve`'s API (data
    URL and local path) and page all decode a file alike, and as the picture it shows (built by hand)."""
    folder, pictures = hard_files
    path = folder / name
    data = f"data:image/{path.suffix[1:]};base64," + base64.b64encode(path.read_bytes()).decode()
    seen = {
        "training collator": through_the_collator(processor, path),
        "generate_greedy (eval, demo)": through_generate_greedy(processor, path),
        "llava chat": through_llava_chat(processor, path),
        "serve API, data URL": through_the_api(served, path, data),
        "serve API, local path": through_the_api(served, path, str(path)),
        "serve page": through_the_page(served, path),
    }
    reference = seen.pop("training collator")
    assert reference.shape == (1, 3, 30, 30)
    for entry, pixel_values in seen.items():
        assert torch.equal(pixel_values, reference), entry
    if pictures[name] is not None:
        expected = processor.image_processor(images=[pictures[name]], return_tensors="pt")["pixel_values"]
        assert torch.equal(reference, expected)


def test_the_hard_files_decode_to_what_they_show(hard_files, processor):
    folder, _ = hard_files
    background = mean_colour(processor)
    deep = np.asarray(decode_image(folder / "deep.png", background), dtype=np.float64)
    assert deep.mean() == pytest.approx(127.5, abs=0.01)  # not 254: scaled to 8 bits, not clipped
    assert decode_image(folder / "phone.jpg", background).size == SIZE  # 64 x 32 upright, stored 32 x 64
    alpha = np.asarray(decode_image(folder / "alpha.png", background))
    assert tuple(alpha[0, -1]) == background  # the hidden red stays hidden
