"""Every image mode a training file may come in decodes to the RGB picture it shows, and bad images are named.

References are built by hand from the pixel values written (numpy), not from the code under test.
"""

import json

import numpy as np
import pytest
from PIL import Image

from processing.images import open_image, to_rgb
from processing.llava_data import DataError, read_records
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
