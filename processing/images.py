"""Decoding an image into the RGB picture the model should see, whatever the file's mode: the one decoder of every
place that shows the model an image (the training collator, `llava chat`, `llava serve`'s API and page, every
evaluation through `generate_greedy`, the demo), so that a model is scored and served on the pixels it was trained on.

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
error that names the record and the file, not a warning or a crash in a dataloader worker.
"""

import io
import os
import warnings
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

from modeling_llava.processing_llava_plugin import LlavaPluginProcessor

from .llava_data import DataError

DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


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


def decode_image(
    file: str | os.PathLike | IO[bytes], background: tuple[int, int, int], max_pixels: int | None = None
) -> Image.Image:
    """The RGB picture in `file` (a path or a binary stream), transparent pixels on `background`.

    Raises `Image.DecompressionBombError` past `max_pixels` or PIL's `MAX_IMAGE_PIXELS` (read from the header, before
    any pixel is decoded; PIL itself only warns below twice its limit, here the limit is the limit) and `OSError` for
    anything that is not a whole image.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as opened:
                if max_pixels is not None and opened.width * opened.height > max_pixels:
                    raise Image.DecompressionBombError(
                        f"{opened.width}x{opened.height} = {opened.width * opened.height:,} pixels, "
                        f"more than the limit of {max_pixels:,}"
                    )
                opened.load()  # a truncated file fails here, not later in the processor
                return to_rgb(opened, background)
        except Image.DecompressionBombWarning as warning:
            raise Image.DecompressionBombError(str(warning)) from warning
        except (SyntaxError, ValueError, EOFError) as error:  # what some of PIL's decoders raise on corrupt data
            raise OSError(str(error)) from error


def open_image(record_id: str, image: Any, background: tuple[int, int, int] = (0, 0, 0)) -> Image.Image:
    """An RGB PIL image from a path, an undecoded `datasets.Image` value (`{"bytes", "path"}`) or an already decoded
    image, with a `DataError` naming the record and the file if it is bad: how a sample of a data file (training's, a
    benchmark's) reaches the model."""
    if isinstance(image, dict):  # a Hub dataset's Image column, read without decoding so that workers decode it
        name = image.get("path") or "(image bytes)"
        file = io.BytesIO(image["bytes"]) if image.get("bytes") is not None else image.get("path")
        if file is None:
            raise DataError(f"Record {record_id!r}: an image of the dataset holds neither bytes nor a path.")
    elif isinstance(image, str | os.PathLike):
        name = file = os.fspath(image)
    else:
        return to_rgb(image, background)
    try:
        return decode_image(file, background)
    except Image.DecompressionBombError as error:
        raise DataError(
            f"Record {record_id!r}: image file {name!r} is larger than the pixel limit "
            f"({Image.MAX_IMAGE_PIXELS:,} pixels; {error}). Resize it, or raise the limit with --max_image_pixels."
        ) from error
    except OSError as error:
        raise DataError(f"Record {record_id!r}: image file {name!r} cannot be read ({error}).") from error


__all__ = ["decode_image", "image_background", "open_image", "to_rgb"]
