"""Decoding an image (a training sample's, or one sent to `llava chat`/`serve`) into the RGB picture the model should
see, whatever the file's mode.

`PIL.Image.convert("RGB")` alone gets several real files wrong: a 16-bit PNG clips to almost white, transparent
pixels take whatever colour the file stored under them, and a phone photo ignores its EXIF rotation. Each mode is
decided here, once:

- EXIF orientation is applied first.
- 16-bit integer modes (`I;16*`) and 32-bit integer `I` are read as 16-bit data (PNG's deep greyscale) and scaled
  to 8 bits (value / 257); `I` values outside 0-65535 are clipped.
- Float `F`: values in [0, 1] are scaled by 255, otherwise read as 0-255; then clipped.
- Transparency (`RGBA`, `LA`, `PA`, palette or greyscale with a transparent colour) is composited onto `background`,
  the processor's mean colour, the same colour LLaVA-1.5 pads images with.
- Everything else (`1`, `L`, `P`, `CMYK`, `YCbCr`, `RGB`, ...) goes through PIL's own conversion to RGB.

A file larger than PIL's pixel limit (`PIL.Image.MAX_IMAGE_PIXELS`, set by `llava train --max_image_pixels`) is an
error that names the record and the file, not a warning or a crash in a dataloader worker. `image_problem` finds
such files, and files that are not images, before training, from their headers alone.
"""

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from modeling_llava.processing_llava_plugin import LlavaPluginProcessor

from .llava_data import DataError

DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# EXIF orientations that turn the picture a quarter (transposed, 270, transversed, 90): its sides swap.
QUARTER_TURNS = (5, 6, 7, 8)


def to_rgb(image: Image.Image, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """The RGB picture of `image` (see the module docstring for each mode)."""
    image = ImageOps.exif_transpose(image)
    if image.mode in DEEP_MODES:
        values = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(np.round(values / 257), 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255 if values.size and values.max() <= 1 else values
        return Image.fromarray(np.clip(np.round(values), 0, 255).astype(np.uint8), "L").convert("RGB")
    transparent = image.mode in ("RGBA", "LA", "PA", "RGBa")
    if transparent or (image.mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def image_background(processor: LlavaPluginProcessor) -> tuple[int, int, int]:
    """The colour transparent pixels become: the processor's mean colour, the colour LLaVA-1.5 pads images with."""
    mean = getattr(processor.image_processor, "image_mean", None) or (0, 0, 0)
    return tuple(round(255 * value) for value in mean)


@contextlib.contextmanager
def _opened(file: str | os.PathLike | IO[bytes], max_pixels: int | None) -> Iterator[Image.Image]:
    """`Image.open(file)`, its header read and its size checked; errors raised while it is open become
    `Image.DecompressionBombError` past the pixel limit and `OSError` for anything that is not a whole image."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as opened:
                if max_pixels is not None and opened.width * opened.height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"{opened.width}x{opened.height} = {opened.width * opened.height:,} pixels, "
                        f"more than the limit of {max_pixels:,}"
                    )
                yield opened
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from warning
        except (SyntaxError, ValueError, EOFError) as error:  # what some of PIL's decoders raise on corrupt data
            raise OSError(str(error)) from error


def decode_image(
    file: str | os.PathLike | IO[bytes], background: tuple[int, int, int], max_pixels: int | None = None
) -> Image.Image:
    """The RGB picture in `file` (a path or a binary stream), transparent pixels on `background`.

    Raises `Image.DecompressionBombError` past `max_pixels` or PIL's `MAX_IMAGE_PIXELS` (read from the header, before
    any pixel is decoded; PIL itself only warns below twice its limit, here the limit is the limit) and `OSError` for
    anything that is not a whole image.
    """
    with _opened(file, max_pixels) as opened:
        opened.load()  # a truncated file fails here, not later in the processor
        return to_rgb(opened, background)


def _file_and_name(image: str | os.PathLike | dict[str, Any]) -> tuple[str | IO[bytes] | None, str]:
    """What PIL opens for a path or an undecoded `datasets.Image` value (`{"bytes", "path"}`), and its name."""
    if isinstance(image, dict):  # a Hub dataset's Image column, read without decoding so that workers decode it
        file = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image.get("path")
        return file, image.get("path") or "(image bytes)"
    return os.fspath(image), os.fspath(image)


def _described(name: str, error: Exception) -> tuple[str, str]:
    """The kind of an image's problem and the words for it."""
    if isinstance(error, Image.DecompressionBombError):
        return "image over the pixel limit", (
            f"image file {name!r} is larger than the pixel limit ({Image.MAX_IMAGE_PIXELS:,} pixels; {error}). "
            "Resize it, or raise the limit with --max_image_pixels."
        )
    return "unreadable image", f"image file {name!r} cannot be read ({error})."


def inspect_image(
    image: str | dict[str, Any], max_pixels: int | None = None
) -> tuple[tuple[str, str] | None, tuple[int, int] | None]:
    """What keeps `image` (a path or an undecoded `datasets.Image` value) from the model, as `(kind, message)`, or
    None; and else its size as the model sees it (`image_size`). Read without decoding its pixels: PIL identifies the
    format and reads the header (the size, checked against `max_pixels`), then `verify`s what it can without decoding
    (a PNG's chunk checksums, up to its end). A file that is not an image, or a PNG cut short, is found here; a JPEG
    damaged after its header, only when it is decoded."""
    file, name = _file_and_name(image)
    if file is None:
        return ("unreadable image", "an image of the dataset holds neither bytes nor a path."), None
    try:
        with _opened(file, max_pixels) as opened:
            size = _oriented_size(opened)
            opened.verify()
    except (OSError, Image.DecompressionBombError) as error:  # FileNotFoundError, UnidentifiedImageError included
        return _described(name, error), None
    return None, size


def image_problem(image: str | dict[str, Any], max_pixels: int | None = None) -> tuple[str, str] | None:
    """What keeps `image` from the model, as `(kind, message)`, or None (see `inspect_image`)."""
    return inspect_image(image, max_pixels)[0]


def _oriented_size(opened: Image.Image) -> tuple[int, int]:
    # The EXIF (or XMP) orientation the header holds, read as `ImageOps.exif_transpose` reads it but without the
    # PNG plugin's `load()`: a PNG's EXIF chunk comes before its pixels where PIL and cameras write it.
    width, height = opened.size
    if Image.Image.getexif(opened).get(ExifTags.Base.Orientation, 1) in QUARTER_TURNS:
        width, height = height, width
    return height, width


def image_size(image: str | os.PathLike | dict[str, Any] | Image.Image) -> tuple[int, int]:
    """The (height, width) of the picture `open_image` makes of `image` (a path, an undecoded `datasets.Image` value
    or a decoded image), from its header: EXIF orientation applied, as `to_rgb` applies it (a phone photo turned a
    quarter swaps its sides). A PNG whose EXIF chunk comes after its pixel data (which no common writer does) is read
    unturned."""
    if isinstance(image, Image.Image):
        return _oriented_size(image)
    file, _ = _file_and_name(image)
    with _opened(file, None) as opened:
        return _oriented_size(opened)


def open_image(record_id: str, image: Any, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """An RGB PIL image from a path, an undecoded `datasets.Image` value (`{"bytes", "path"}`) or an already decoded
    image, with a `DataError` naming the record and the file if it is bad: how a sample of a data file (training's, a
    benchmark's) reaches the model."""
    if not isinstance(image, str | os.PathLike | dict):
        return to_rgb(image, background)
    file, name = _file_and_name(image)
    if file is None:
        raise DataError(f"Record {record_id!r}: an image of the dataset holds neither bytes nor a path.")
    try:
        return decode_image(file, background)
    except (OSError, Image.DecompressionBombError) as error:
        kind, message = _described(name, error)
        raise DataError(f"Record {record_id!r}: {message}", kind) from error


__all__ = ["decode_image", "image_background", "image_problem", "image_size", "inspect_image", "open_image", "to_rgb"]
