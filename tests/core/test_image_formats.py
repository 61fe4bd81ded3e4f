"""Image formats: what each file decodes to (exact pixels), what is refused (exact message),
and the model-input / display normalisation (hand-computed values)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from activeseg.core.errors import DomainError, Invalid, UnsupportedMedia
from activeseg.core.imaging import check_image, decode_image, display_image
from activeseg.models.preprocess import intensity_range, normalise_image
from activeseg.models.training import Augmentation, PatchSampler, train
from tests.models.conftest import tiny_config

LIMIT = 10_000_000


def tiff(arr: np.ndarray, **options: object) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **options)  # type: ignore[arg-type]
    return buf.getvalue()


def pillow(im: Image.Image, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def png16_colour(arr: np.ndarray, colour_type: int) -> bytes:
    """A 16-bit PNG written by hand (Pillow cannot write 16-bit colour)."""
    h, w = arr.shape[:2]
    rows = arr.astype(">u2").reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def refusal(data: bytes, name: str) -> DomainError:
    with pytest.raises(DomainError) as info:
        check_image(data, name, LIMIT)
    return info.value


GREY16 = (np.arange(6 * 8, dtype=np.uint16).reshape(6, 8) * 1111) + 7  # up to 52234
RGB16 = np.stack([GREY16, GREY16 // 2 + 3, 65535 - GREY16], axis=-1).astype(np.uint16)
FLOAT = (np.arange(6 * 8, dtype=np.float32).reshape(6, 8) - 20.0) / 7.0  # negative too


# --- accepted: native type kept, exact values ------------------------------------------------


def test_16_bit_grey_png_and_tiff_keep_their_values() -> None:
    for name, data in [
        ("a.png", pillow(Image.fromarray(GREY16), "PNG")),
        ("a.tif", tiff(GREY16)),
        ("lzw.tif", pillow(Image.fromarray(GREY16), "TIFF", compression="tiff_lzw")),
    ]:
        decoded = decode_image(data)
        assert decoded.dtype == np.uint16, name
        np.testing.assert_array_equal(decoded, GREY16)
        checked = check_image(data, name, LIMIT)
        assert (checked.width, checked.height, checked.channels) == (8, 6, 1)


def test_float_tiffs_are_float32_and_other_number_types_become_float32() -> None:
    for arr in (FLOAT, FLOAT.astype(np.float64), (FLOAT * 7).astype(np.int16)):
        decoded = decode_image(tiff(arr))
        assert decoded.dtype == np.float32
        np.testing.assert_array_equal(decoded, arr.astype(np.float32))


def test_16_bit_and_float_colour_tiffs_keep_all_bits() -> None:
    for data in (
        tiff(RGB16, photometric="rgb"),
        tiff(np.moveaxis(RGB16, -1, 0), photometric="rgb", planarconfig="separate"),
    ):
        decoded = decode_image(data)
        assert decoded.dtype == np.uint16 and decoded.shape == (6, 8, 3)
        np.testing.assert_array_equal(decoded, RGB16)  # Pillow alone would keep the top byte
        assert check_image(data, "c.tif", LIMIT).channels == 3
    rgb_float = np.stack([FLOAT, -FLOAT, FLOAT * 2], axis=-1)
    np.testing.assert_array_equal(decode_image(tiff(rgb_float, photometric="rgb")), rgb_float)


def test_alpha_is_dropped_and_palettes_expanded_with_exact_values() -> None:
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 200, 33, 0  # fully transparent
    rgba[1, 2] = (255, 1, 2, 128)
    expected = rgba[..., :3]
    np.testing.assert_array_equal(decode_image(pillow(Image.fromarray(rgba), "PNG")), expected)
    rgba16 = np.concatenate([RGB16, np.full((6, 8, 1), 9, np.uint16)], axis=-1)
    alpha_tiff = tiff(rgba16, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(decode_image(alpha_tiff), RGB16)

    grey_alpha = np.stack([GREY16.astype(np.uint8), np.zeros((6, 8), np.uint8)], axis=-1)
    la = pillow(Image.fromarray(grey_alpha, mode="LA"), "PNG")
    np.testing.assert_array_equal(decode_image(la), GREY16.astype(np.uint8))
    assert check_image(la, "la.png", LIMIT).channels == 1

    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 7])
    want = np.array([[[10, 20, 30], [200, 100, 50], [0, 255, 7]]], np.uint8)
    want = np.concatenate([want, want[:, ::-1]])
    for data in (
        pillow(palette, "PNG"),
        pillow(palette, "PNG", transparency=1),  # transparency ignored: colours stay
        pillow(palette, "TIFF"),
    ):
        decoded = decode_image(data)
        assert decoded.dtype == np.uint8
        np.testing.assert_array_equal(decoded, want)
        assert check_image(data, "p.png", LIMIT).channels == 3


# --- orientation ------------------------------------------------------------------------------


def test_jpeg_with_exif_orientation_6_is_turned_upright() -> None:
    """Stored 40 wide x 24 tall with a white 8x8 block top-left; orientation 6 says "turn 90
    degrees clockwise to view", so the viewer sees 24 wide x 40 tall, the block top-right."""
    stored = np.zeros((24, 40), np.uint8)
    stored[:8, :8] = 255
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6
    data = pillow(im, "JPEG", quality=95, exif=exif)
    checked = check_image(data, "phone.jpg", LIMIT)
    assert (checked.width, checked.height, checked.channels) == (24, 40, 1)
    decoded = decode_image(data)
    assert decoded.shape == (40, 24)
    block = np.zeros((40, 24), bool)
    block[:8, 16:] = True  # top-right after the clockwise turn
    assert decoded[block].min() > 230 and decoded[~block].max() < 25  # JPEG: near-exact
    np.testing.assert_array_equal(decoded, display_image(decoded))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillows_exif_transpose(orientation: int) -> None:
    stored = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 2).astype(np.uint8)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = orientation
    data = pillow(im, "PNG", exif=exif)
    upright = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(decode_image(data), upright)
    # A 16-bit TIFF (tifffile route) with the same orientation tag turns the same way.
    deep = tiff(stored.astype(np.uint16), photometric="rgb", extratags=[(274, 3, 1, orientation)])
    np.testing.assert_array_equal(decode_image(deep), upright.astype(np.uint16))


# --- refused, with the documented message ----------------------------------------------------


def test_multi_page_tiffs_are_refused_never_cut() -> None:
    stack16 = tiff(np.stack([GREY16] * 5), photometric="minisblack")
    planes = [Image.fromarray(np.full((6, 8), 40 * i, np.uint8)) for i in range(5)]
    stack8 = pillow(planes[0], "TIFF", save_all=True, append_images=planes[1:])
    for data in (stack16, stack8):
        error = refusal(data, "x.tif")
        assert isinstance(error, UnsupportedMedia) and error.status_code == 415
        assert error.detail == (
            "x.tif has 5 pages (a stack, time series or animation); activeseg labels "
            "single-plane images: save one plane, or a projection, per file (in Fiji: Image > "
            "Stacks > Z Project, or File > Save As > Image Sequence)"
        )


def test_channel_counts_other_than_1_and_3_are_refused() -> None:
    two = tiff(np.stack([GREY16] * 2, -1), photometric="minisblack", planarconfig="contig")
    five = tiff(np.zeros((6, 8, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    for data, count in ((two, 2), (five, 5)):
        error = refusal(data, "multi.tif")
        assert error.status_code == 415
        assert error.detail == (
            f"multi.tif has {count} channels; activeseg takes grey (1 channel) or RGB "
            "(3 channels) images: save the channel to label as a grey image, or 3 channels as "
            "an RGB composite"
        )


def test_lossy_or_unreadable_inputs_are_refused() -> None:
    error = refusal(png16_colour(RGB16, 2), "deep.png")
    assert error.status_code == 415 and error.detail.startswith(
        "deep.png: 16-bit colour (or grey + alpha) PNG is not supported"
    )
    nan = FLOAT.copy()
    nan[2, 3] = np.nan
    for bad in (nan, np.where(FLOAT > 2, np.inf, FLOAT).astype(np.float32)):
        error = refusal(tiff(bad), "nan.tif")
        assert isinstance(error, Invalid) and error.detail == (
            "nan.tif: the image holds NaN or infinite values; replace them (e.g. with 0) "
            "before uploading"
        )
    cut = tiff(RGB16, photometric="rgb")[:-40]
    error = refusal(cut, "cut.tif")
    assert error.status_code == 422 and "cut.tif: the image is corrupt or truncated" in error.detail
    cmyk = pillow(Image.new("CMYK", (4, 4)), "JPEG")
    assert refusal(cmyk, "c.jpg").detail.startswith("c.jpg: pixel mode CMYK is not supported")


# --- normalisation: model input and display ----------------------------------------------------

# 201 values 0..200: the 0.5th percentile is at position 0.005 * 200 = 1 -> 1, the 99.5th at
# 199 -> 199, so x maps to clip((x - 1) / 198, 0, 1).
RAMP = np.arange(201, dtype=np.uint16).reshape(3, 67)


def test_percentile_stretch_hand_values() -> None:
    np.testing.assert_array_equal(intensity_range(RAMP), [[1.0], [199.0]])
    out = normalise_image(RAMP, 1)
    assert out.shape == (1, 3, 67) and out.dtype == np.float32
    flat = out.ravel()
    assert flat[0] == 0.0 and flat[1] == 0.0 and flat[199] == 1.0 and flat[200] == 1.0
    assert flat[100] == pytest.approx(0.5, abs=1e-7)
    assert flat[50] == pytest.approx(49 / 198, abs=1e-7)
    # float input: the same ramp shifted and scaled maps to the same values
    flipped = normalise_image(RAMP.astype(np.float32) * -0.5 + 3, 1)
    np.testing.assert_allclose(flipped, 1 - out, atol=1e-6)


def test_stretch_is_per_channel_and_handles_flat_and_constant_images() -> None:
    rgb = np.stack([RAMP, RAMP * 2 + 10, RAMP * 300], axis=-1).astype(np.uint16)
    out = normalise_image(rgb, 3)
    for channel in range(3):
        np.testing.assert_allclose(out[channel], normalise_image(RAMP, 1)[0], atol=1e-6)
    np.testing.assert_array_equal(normalise_image(np.full((5, 5), 7.5, np.float32), 1), 0.0)
    sparse = np.zeros((40, 50), np.uint16)  # 99.5th percentile is 0: full range instead
    sparse[3, 4], sparse[10, 11] = 250, 500
    out = normalise_image(sparse, 1)[0]
    assert out[3, 4] == 0.5 and out[10, 11] == 1.0 and out.sum() == 1.5
    with pytest.raises(ValueError, match="NaN or infinite"):
        normalise_image(np.array([[1.0, np.nan]], np.float32), 1)


def test_uint8_is_still_divided_by_255_exactly() -> None:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (9, 7), dtype=np.uint8)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(normalise_image(grey, 1), grey[None].astype(np.float32) / 255)
    np.testing.assert_array_equal(
        normalise_image(rgb, 3), np.moveaxis(rgb, 2, 0).astype(np.float32) / 255.0
    )
    np.testing.assert_array_equal(normalise_image(grey, 3)[2], grey.astype(np.float32) / 255)
    assert display_image(grey) is grey


def test_large_images_take_percentiles_from_a_regular_grid() -> None:
    # 2100 x 2000 = 4.2 Mpx > 2**20: step ceil(sqrt(4.2e6 / 2**20)) = 3, rows 0, 3, ... 2097
    # and every 3rd column; the value is the row index, so the grid holds rows 0..2097 step 3.
    image = np.broadcast_to(np.arange(2100, dtype=np.uint16)[:, None], (2100, 2000))
    grid_rows = np.arange(0, 2100, 3, dtype=np.float64)  # 700 values, each 667 times
    expected = np.percentile(np.repeat(grid_rows, 667), [0.5, 99.5])
    np.testing.assert_array_equal(intensity_range(image)[:, 0], expected)


def test_a_crop_with_the_whole_images_range_equals_the_whole_image_cropped() -> None:
    image = (np.random.default_rng(1).random((30, 40, 3)) * 5000).astype(np.uint16)
    whole = normalise_image(image, 3)
    crop = normalise_image(image[5:17, 8:30], 3, intensity_range(image))
    np.testing.assert_array_equal(crop, whole[:, 5:17, 8:30])


def test_display_maps_to_uint8_with_the_model_contrast() -> None:
    shown = display_image(RAMP)
    assert shown.dtype == np.uint8 and shown.shape == RAMP.shape
    expected = np.round(np.clip((np.arange(201) - 1) / 198, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(shown.ravel(), expected)
    colour = display_image(np.stack([RAMP, RAMP, RAMP], axis=-1))
    assert colour.shape == (3, 67, 3)
    np.testing.assert_array_equal(colour[..., 1], shown)


# --- training on each accepted format -------------------------------------------------------


def accepted_files() -> dict[str, bytes]:
    grey8 = (GREY16 // 256).astype(np.uint8)
    rgba = np.concatenate([np.repeat(grey8[..., None], 3, -1), np.zeros((6, 8, 1), np.uint8)], -1)
    palette = Image.fromarray(grey8 // 64, mode="P")
    palette.putpalette([0, 0, 0, 90, 90, 90, 180, 180, 180, 255, 255, 255])
    exif_im = Image.fromarray(np.repeat(np.repeat(grey8, 2, 0), 2, 1))
    exif = exif_im.getexif()
    exif[0x0112] = 6
    return {
        "grey16.png": pillow(Image.fromarray(GREY16), "PNG"),
        "grey16.tif": tiff(GREY16),
        "float.tif": tiff(FLOAT),
        "rgb16.tif": tiff(RGB16, photometric="rgb"),
        "rotated.jpg": pillow(exif_im, "JPEG", quality=95, exif=exif),
        "palette.png": pillow(palette, "PNG"),
        "rgba.png": pillow(Image.fromarray(rgba), "PNG"),
    }


@pytest.mark.parametrize("name", sorted(accepted_files()))
def test_each_accepted_format_trains(name: str) -> None:
    image = decode_image(accepted_files()[name])
    mask = np.full(image.shape[:2], 255, np.uint8)
    mask[: image.shape[0] // 2, :3], mask[-2:, -3:] = 0, 1  # a few hand-labelled pixels
    in_channels = 1 if image.ndim == 2 else 3
    config = tiny_config(in_channels=in_channels, n_classes=2, steps=3, patch_size=16)
    result = train(config, [image], [mask])
    losses = [entry["train_loss"] for entry in result.history]
    assert losses and all(np.isfinite(losses))
    # The sampler's patches are the normalised whole image, cropped: same values as inference.
    sampler = PatchSampler(
        [image], [mask], (4, 4), in_channels, Augmentation(False, False, False, False)
    )
    patch, _ = sampler.sample(0, np.random.default_rng(0))
    whole = normalise_image(image, in_channels)
    windows = np.lib.stride_tricks.sliding_window_view(whole, (in_channels, 4, 4))
    assert (windows == patch).all(axis=(-3, -2, -1)).any()
