"""The images of an API request: where `llava serve` may take them from, and how each is decoded.

The server must not become a way to reach other machines or the server's own disk on a user's behalf, so an
`image_url` is by default only a `data:` URL (the image itself, base64). `http(s)` URLs are fetched only with
`--allow-remote-images`, local files (`file://` or a plain path) read only with `--allow-local-files`. Every image,
wherever it comes from, is checked against the pixel limit (`--max-image-pixels`) from its header, before decoding,
so a decompression bomb costs a header read, not the server's memory.
"""

import base64
import binascii
import io
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image

from processing.images import decode_image

from .request_error import RequestError


@dataclass(frozen=True)
class ImagePolicy:
    """What a request's images may be: how many per conversation, from where, how large (in bytes, in pixels)."""

    max_images: int = 1
    max_pixels: int = 4096 * 4096
    allow_remote_images: bool = False
    allow_local_files: bool = False
    max_image_bytes: int = 20 * 2**20
    remote_timeout_s: float = 10.0
    background: tuple[int, int, int] = (0, 0, 0)


def load_image(url: str, policy: ImagePolicy) -> Image.Image:
    """The RGB image an `image_url` names, or a `RequestError` saying why not and what to send instead."""
    scheme = urlparse(url).scheme.lower()
    if scheme == "data":
        data = _data_url_bytes(url)
    elif scheme in ("http", "https"):
        if not policy.allow_remote_images:
            raise RequestError(
                "This server does not fetch images from http(s) URLs (start it with --allow-remote-images to allow "
                "that); send the image itself as a data URL: data:image/png;base64,...",
                "remote_images_not_allowed",
            )
        data = _fetch(url, policy)
    elif scheme == "file" or len(scheme) <= 1:  # no scheme, or a Windows drive letter
        if not policy.allow_local_files:
            raise RequestError(
                "This server does not read local files (start it with --allow-local-files to allow that); send the "
                "image itself as a data URL: data:image/png;base64,...",
                "local_files_not_allowed",
            )
        path = Path(unquote(urlparse(url).path)) if scheme == "file" else Path(url)
        if not path.is_file():
            raise RequestError(f"No image file at {str(path)!r} on the server.", "image_not_found")
        if path.stat().st_size > policy.max_image_bytes:
            raise RequestError(f"{str(path)!r} is larger than {policy.max_image_bytes:,} bytes.", "image_too_large")
        data = path.read_bytes()
    else:
        raise RequestError(f"Unsupported image URL scheme {scheme!r}: send a data: URL.", "invalid_image_url")
    if len(data) > policy.max_image_bytes:
        raise RequestError(f"The image is larger than {policy.max_image_bytes:,} bytes.", "image_too_large")
    try:
        return decode_image(io.BytesIO(data), policy.background, policy.max_pixels)
    except Image.DecompressionBombError as error:
        raise RequestError(
            f"The image is larger than this server accepts (--max-image-pixels {policy.max_pixels}): {error}",
            "image_too_large",
        ) from error
    except OSError as error:
        raise RequestError(f"The image cannot be decoded: {error}", "invalid_image") from error


def _data_url_bytes(url: str) -> bytes:
    header, comma, payload = url.partition(",")
    if not comma or not header.endswith(";base64"):
        raise RequestError(
            "An image data URL must be base64: data:image/png;base64,<the bytes in base64>.", "invalid_image_url"
        )
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as error:
        raise RequestError(f"The image data URL is not valid base64: {error}", "invalid_image_url") from error


def _fetch(url: str, policy: ImagePolicy) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=policy.remote_timeout_s) as response:
            data = response.read(policy.max_image_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise RequestError(f"Could not fetch the image at {url!r}: {error}", "image_fetch_failed") from error
    return data


__all__ = ["ImagePolicy", "load_image"]
