"""Decoding and checking of uploaded images and masks (Pillow, tifffile), and PNG encoding.

What an uploaded image becomes (:func:`decode_image`; the stored bytes stay as uploaded):

* pixels keep their type: uint8, uint16 (16-bit PNG and TIFF), float32 (float TIFF; other
  integer and float types, e.g. int16 or float64, are read as float32); NaN or infinity is
  refused. The model and the browser see them through one normalisation
  (``activeseg.models.preprocess``: uint8 / 255, else a per-image percentile stretch).
* shape ``[H, W]`` (grey) or ``[H, W, 3]``: palette images are expanded to RGB, alpha
  (LA, PA, RGBA, a TIFF's alpha sample) is dropped without blending, any other channel count
  (2 without alpha, 4+ in a TIFF) is refused with the count in the message.
* EXIF (JPEG, PNG) or TIFF orientation is applied, so width and height are as displayed.
* one plane: a multi-page TIFF (stack, time series) or an animated PNG is refused, never cut.

Pillow decodes what it reads faithfully (and every compression); tifffile decodes the TIFFs
Pillow cannot read or would cut to 8 bits (16-bit or float colour, odd sample counts).
"""

from __future__ import annotations

import io
import logging
import struct
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tifffile
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from activeseg.core.errors import DomainError, Invalid, TooLarge, UnsupportedMedia

log = logging.getLogger(__name__)

# MPO is how Pillow names camera JPEGs that carry extra preview images; the first is the photo.
ACCEPTED_FORMATS = {"PNG": "png", "JPEG": "jpeg", "MPO": "jpeg", "TIFF": "tiff"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# Pillow mode -> how it is decoded. Modes not listed (CMYK, LAB, HSV, ...) are refused.
_TO_GREY = {"1", "L", "LA"}  # Pillow's convert("L"): 1 -> 0/255, LA drops alpha
_TO_RGB = {"P", "PA", "RGB", "RGBA", "RGBX", "YCbCr"}  # palette expanded, alpha dropped
_DEEP = {  # read as numbers, not converted: 16-bit stays uint16, 32-bit becomes float32
    "I;16": np.uint16,
    "I;16L": np.uint16,
    "I;16B": np.uint16,
    "I;16N": np.uint16,
    "I": np.float32,
    "F": np.float32,
}
_ALPHA_SAMPLES = (1, 2)  # TIFF ExtraSamples: associated, unassociated alpha
_ORIENTATION_TAG = 0x0112
# EXIF/TIFF orientation -> the transform that shows the image upright (as Pillow's
# ImageOps.exif_transpose does), on [H, W(, C)] arrays.
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass(frozen=True)
class CheckedImage:
    format: str
    width: int
    height: int
    channels: int


def _check_size(width: int, height: int, name: str, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise TooLarge(
            f"{name}: {width}x{height} = {width * height} pixels exceeds the "
            f"limit of {max_pixels} (ACTIVESEG_MAX_IMAGE_PIXELS)"
        )


def _open(data: bytes, name: str, max_pixels: int, strict: bool = True) -> PILImage.Image | None:
    """Pillow's view of the header; None for a TIFF that Pillow cannot identify (tifffile may).

    ``strict`` turns Pillow's decompression-bomb warning into a refusal (uploads)."""
    if not data:
        raise Invalid(f"{name}: the file is empty")
    with warnings.catch_warnings():
        if strict:
            warnings.simplefilter("error", PILImage.DecompressionBombWarning)
        try:
            im = PILImage.open(io.BytesIO(data))
        except UnidentifiedImageError:
            if data[:4] in _TIFF_MAGIC:
                return None
            raise UnsupportedMedia(
                f"{name}: not an image Pillow can read; upload PNG, JPEG or TIFF"
            ) from None
        except (PILImage.DecompressionBombError, PILImage.DecompressionBombWarning):
            raise TooLarge(f"{name}: image has too many pixels (decompression bomb?)") from None
        except (OSError, SyntaxError, ValueError, struct.error) as exc:
            raise Invalid(f"{name}: the image is corrupt or truncated ({exc})") from None
    _check_size(im.width, im.height, name, max_pixels)
    return im


def _refuse_stack(count: int, name: str, what: str = "pages") -> None:
    if count > 1:
        raise UnsupportedMedia(
            f"{name} has {count} {what} (a stack, time series or animation); activeseg labels "
            "single-plane images: save one plane, or a projection, per file (in Fiji: Image > "
            "Stacks > Z Project, or File > Save As > Image Sequence)"
        )


def _refuse_deep_colour_png(data: bytes, name: str) -> None:
    """Pillow reads 16-bit colour PNGs as 8-bit (top byte only): refuse rather than mangle."""
    depth, colour_type = data[24], data[25]  # IHDR: always the first chunk
    if depth == 16 and colour_type in (2, 4, 6):
        raise UnsupportedMedia(
            f"{name}: 16-bit colour (or grey + alpha) PNG is not supported, only its top 8 bits "
            "could be read; save it as a 16-bit TIFF, or as 16-bit grey PNGs"
        )


def _pillow_faithful(im: PILImage.Image) -> bool:
    """Whether Pillow decodes this TIFF without losing bits (colour modes are 8-bit only)."""
    if im.mode in _DEEP or im.mode in {"1", "L"}:
        return True
    bits = np.atleast_1d(im.tag_v2.get(258, 8))  # type: ignore[attr-defined]
    return im.mode in _TO_GREY | _TO_RGB and int(bits.max()) <= 8


def _orientation(im: PILImage.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, SyntaxError, ValueError, TypeError, struct.error) as exc:
        log.warning("unreadable EXIF, orientation ignored: %s", exc)
        return 1
    return value if isinstance(value, int) else 1


def _pillow_pixels(im: PILImage.Image, name: str) -> np.ndarray:
    """Pixels of a Pillow image as ``[H, W]`` or ``[H, W, 3]`` (before orientation)."""
    mode = im.mode
    if mode not in _TO_GREY | _TO_RGB | _DEEP.keys():
        raise UnsupportedMedia(
            f"{name}: pixel mode {mode} is not supported; save it as grey or RGB "
            "(8 or 16-bit integer, or 32-bit float)"
        )
    try:
        im.load()
        if mode in _TO_GREY:
            return np.asarray(im.convert("L"))
        if mode in _TO_RGB:
            return np.asarray(im.convert("RGB"))
        return np.asarray(im).astype(_DEEP[mode], copy=False)
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise Invalid(f"{name}: the image is corrupt or truncated ({exc})") from None


def _tiff_channels(pixels: np.ndarray, page: tifffile.TiffPage, name: str) -> np.ndarray:
    """A tifffile page's ``[H, W(, S)]`` -> ``[H, W]`` or ``[H, W, 3]`` (alpha dropped)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return pixels[:, :, 0]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    extra = tuple(page.extrasamples or ())
    is_rgb = page.photometric == tifffile.PHOTOMETRIC.RGB
    if samples == 4 and is_rgb or samples == 2 and extra[-1:] in ((1,), (2,)):
        return pixels[:, :, :-1]  # RGB + alpha (or padding), grey + alpha
    if samples in (1, 3):
        return pixels
    raise UnsupportedMedia(
        f"{name} has {samples} channels; activeseg takes grey (1 channel) or RGB (3 channels) "
        "images: save the channel to label as a grey image, or 3 channels as an RGB composite"
    )


def _tiff_number_type(pixels: np.ndarray, name: str) -> np.ndarray:
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * np.uint8(255)
    if pixels.dtype in (np.uint8, np.uint16, np.float32):
        return pixels
    if pixels.dtype.kind in "iuf":
        return pixels.astype(np.float32)
    raise UnsupportedMedia(f"{name}: pixel type {pixels.dtype} is not supported")


def _tiff_pixels(data: bytes, name: str, max_pixels: int) -> tuple[np.ndarray, int]:
    """tifffile's decode of the first (only) page -> (``[H, W(, 3)]``, orientation)."""
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            _refuse_stack(len(tif.pages), name)
            page = tif.pages.first
            _check_size(page.imagewidth, page.imagelength, name, max_pixels)
            photometric = tifffile.PHOTOMETRIC(page.photometric)
            if photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
                raise UnsupportedMedia(
                    f"{name}: TIFF photometric {photometric.name} with "
                    f"{page.bitspersample}-bit samples is not supported; save it as grey or RGB"
                )
            pixels = page.asarray()
            if page.axes == "SYX":  # planar configuration: samples first
                pixels = np.moveaxis(pixels, 0, -1)
            elif page.axes not in ("YX", "YXS"):
                raise UnsupportedMedia(
                    f"{name}: TIFF page with axes {page.axes} (shape {page.shape}) is not a "
                    "single grey or colour plane"
                )
            pixels = _tiff_number_type(_tiff_channels(pixels, page, name), name)
            tag = page.tags.get(274)
            orientation = int(tag.value) if tag is not None else 1
    except DomainError:
        raise
    except (OSError, ValueError, KeyError, IndexError, struct.error) as exc:
        if "imagecodecs" in str(exc):
            raise UnsupportedMedia(
                f"{name}: this TIFF's compression cannot be decoded for its pixel type ({exc}); "
                "save it uncompressed or with deflate (zip) compression"
            ) from None
        raise Invalid(f"{name}: the image is corrupt or truncated ({exc})") from None
    return pixels, orientation


def _refuse_non_finite(pixels: np.ndarray, name: str) -> None:
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise Invalid(
            f"{name}: the image holds NaN or infinite values; replace them (e.g. with 0) "
            "before uploading"
        )


def _decode(data: bytes, name: str, max_pixels: int, strict: bool = True) -> tuple[str, np.ndarray]:
    """(accepted format, pixels ``[H, W]`` or ``[H, W, 3]`` upright); every refusal is 4xx."""
    im = _open(data, name, max_pixels, strict)
    pillow_format = "TIFF" if im is None else str(im.format)
    if pillow_format not in ACCEPTED_FORMATS:
        raise UnsupportedMedia(
            f"{name}: format {pillow_format} is not accepted; use PNG, JPEG or TIFF"
        )
    fmt = ACCEPTED_FORMATS[pillow_format]
    if im is None or (fmt == "tiff" and not _pillow_faithful(im)):
        pixels, orientation = _tiff_pixels(data, name, max_pixels)
    else:
        if im.format != "MPO":  # an MPO's later frames are previews of the same photo
            _refuse_stack(getattr(im, "n_frames", 1), name, "frames" if fmt == "png" else "pages")
        if fmt == "png":
            _refuse_deep_colour_png(data, name)
        pixels = _pillow_pixels(im, name)
        orientation = _orientation(im)
    _refuse_non_finite(pixels, name)
    if orientation in _UPRIGHT:
        pixels = _UPRIGHT[orientation](pixels)
    return fmt, np.ascontiguousarray(pixels)


def check_image(data: bytes, name: str, max_pixels: int) -> CheckedImage:
    """Decode fully (catches truncation) and describe an uploaded image, or raise a 4xx error.

    Width, height and channels are those of :func:`decode_image` (after orientation)."""
    fmt, pixels = _decode(data, name, max_pixels)
    channels = 1 if pixels.ndim == 2 else 3
    return CheckedImage(fmt, int(pixels.shape[1]), int(pixels.shape[0]), channels)


def decode_image(data: bytes, name: str = "image") -> np.ndarray:
    """Stored image bytes -> ``[H, W]`` or ``[H, W, 3]`` uint8, uint16 or float32, upright.

    What the model sees, before ``normalise_image``; see the module docstring for each format.
    ``name`` only labels error messages (bytes that never passed :func:`check_image`).
    """
    return _decode(data, name, sys.maxsize, strict=False)[1]


def display_image(image: np.ndarray) -> np.ndarray:
    """A decoded image -> uint8 of the same shape, for the browser, overlays and SLIC.

    uint8 passes unchanged; other types get the model's normalisation (per-image percentile
    stretch, ``activeseg.models.preprocess``) scaled to 0..255, so people see the contrast the
    model sees.
    """
    if image.dtype == np.uint8:
        return image
    # Imported here: activeseg.models loads torch, which uint8-only deployments never pay for.
    from activeseg.models.preprocess import normalise_image

    channels = 1 if image.ndim == 2 else image.shape[2]
    unit = normalise_image(image, channels)  # [C, H, W] in [0, 1]
    unit *= 255.0
    np.rint(unit, out=unit)
    as_bytes = unit.astype(np.uint8)
    return as_bytes[0] if image.ndim == 2 else np.ascontiguousarray(np.moveaxis(as_bytes, 0, -1))


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
    if im is None or im.format != "PNG":
        got = "TIFF" if im is None else im.format
        raise UnsupportedMedia(f"{name}: a mask must be a PNG index image, got {got}")
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
    """uint8 [H, W] or [H, W, 3|4] -> PNG bytes (deterministic for equal input).

    zlib level 1: a 256x256 label mask encodes in 0.3 ms instead of 1.1 ms at the default
    level 6 (1.1 KB instead of 0.8 KB), a class map 5x faster for 13% more bytes; every submit
    encodes the image's whole mask, every scored image its class map."""
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="PNG", optimize=False, compress_level=1)
    return buf.getvalue()
