"""Decoding and checking of uploaded images and masks (Pillow), and PNG encoding."""

from __future__ import annotations

import io
import sys
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from activeseg.core.errors import Invalid, TooLarge, UnsupportedMedia

ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "TIFF": "tiff"}
# Modes converted to L (grey) or RGB on decode; anything else (16-bit, float, CMYK) is refused
# rather than silently rescaled.
_GREY_MODES = {"1", "L", "LA"}
_RGB_MODES = {"RGB", "RGBA", "P", "PA"}


@dataclass(frozen=True)
class CheckedImage:
    format: str
    width: int
    height: int
    channels: int


def _open(data: bytes, name: str, max_pixels: int) -> PILImage.Image:
    if not data:
        raise Invalid(f"{name}: the file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            im = PILImage.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnsupportedMedia(
                f"{name}: not an image Pillow can read; upload PNG, JPEG or TIFF"
            ) from None
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            raise TooLarge(f"{name}: image has too many pixels (decompression bomb?)") from None
    if im.width * im.height > max_pixels:
        raise TooLarge(
            f"{name}: {im.width}x{im.height} = {im.width * im.height} pixels exceeds the "
            f"limit of {max_pixels} (ACTIVESEG_MAX_IMAGE_PIXELS)"
        )
    return im


def check_image(data: bytes, name: str, max_pixels: int) -> CheckedImage:
    """Decode fully (catches truncation) and describe an uploaded image, or raise a 4xx error."""
    im = _open(data, name, max_pixels)
    if im.format not in ACCEPTED_FORMATS:
        raise UnsupportedMedia(f"{name}: format {im.format} is not accepted; use PNG, JPEG or TIFF")
    if im.mode not in _GREY_MODES | _RGB_MODES:
        raise UnsupportedMedia(
            f"{name}: pixel mode {im.mode} is not supported; save it as 8-bit grey or RGB"
        )
    try:
        im.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise Invalid(f"{name}: the image is corrupt or truncated ({exc})") from None
    channels = 1 if im.mode in _GREY_MODES else 3
    return CheckedImage(ACCEPTED_FORMATS[im.format], im.width, im.height, channels)


def decode_image(data: bytes) -> np.ndarray:
    """Stored image bytes -> uint8 array [H, W] (grey) or [H, W, 3] (RGB)."""
    opened = PILImage.open(io.BytesIO(data))
    im = opened.convert("L") if opened.mode in _GREY_MODES else opened.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def decode_index(data: bytes) -> np.ndarray:
    """A stored index PNG (mask, prediction) -> uint8 [H, W] with its values unchanged."""
    return np.asarray(PILImage.open(io.BytesIO(data)), dtype=np.uint8)


def decode_mask(
    data: bytes, name: str, height: int, width: int, n_classes: int, ignore_index: int
) -> np.ndarray:
    """An index-mask PNG -> uint8 [H, W], checked against the image size and the classes."""
    # Opening reads the header only. The exact-size check below, before any pixel is decoded,
    # is the bomb guard (the image passed ACTIVESEG_MAX_IMAGE_PIXELS); a pixel limit of the
    # image's size here would answer a merely larger mask "too many pixels" (413).
    im = _open(data, name, max_pixels=sys.maxsize)
    if im.format != "PNG":
        raise UnsupportedMedia(f"{name}: a mask must be a PNG index image, got {im.format}")
    if im.mode not in ("L", "P", "1"):
        raise Invalid(
            f"{name}: a mask must be a single-channel 8-bit PNG (mode L or P), got mode "
            f"{im.mode}; each pixel holds a class id or {ignore_index} for unlabelled"
        )
    if (im.height, im.width) != (height, width):
        raise Invalid(f"{name}: mask is {im.width}x{im.height} but the image is {width}x{height}")
    try:
        arr = np.asarray(im, dtype=np.uint8) if im.mode != "1" else np.asarray(im, np.uint8)
    except (OSError, SyntaxError, ValueError) as exc:
        raise Invalid(f"{name}: the mask is corrupt or truncated ({exc})") from None
    check_mask_values(arr, n_classes, ignore_index, name)
    return arr


def check_mask_values(arr: np.ndarray, n_classes: int, ignore_index: int, name: str) -> None:
    values = np.unique(arr)
    bad = [int(v) for v in values if v >= n_classes and v != ignore_index]
    if bad:
        raise Invalid(
            f"{name}: mask holds values {bad[:10]} that are neither a class id "
            f"(0..{n_classes - 1}) nor {ignore_index} (unlabelled)"
        )


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 [H, W] or [H, W, 3|4] -> PNG bytes (deterministic for equal input)."""
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", optimize=False)
    return buf.getvalue()
