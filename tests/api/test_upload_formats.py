"""Real microscopy and camera files over real HTTP: each accepted one uploads, takes a mask of
its (upright) size, trains, is scored and is shown with the model's contrast; each refused
one answers the documented status and message and stores nothing."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.conftest import Stack
from tests.utils import make_project, png_bytes, run_job_inline, upload

H, W = 32, 24
OBJECT = np.zeros((H, W), bool)
OBJECT[:, W // 2 :] = True  # the right half is the object (class 1)


def two_level(background: float, foreground: float, dtype: type) -> np.ndarray:
    return np.where(OBJECT, foreground, background).astype(dtype)


def tiff(arr: np.ndarray, **options: Any) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **options)
    return buf.getvalue()


def pillow(im: Image.Image, fmt: str, **options: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options)
    return buf.getvalue()


def grey16_with_marks() -> np.ndarray:
    """1000 / 3000 halves (the 0.5th and 99.5th percentiles), one 2000 and one hot pixel."""
    image = two_level(1000, 3000, np.uint16)
    image[0, 0], image[H - 1, W - 1] = 2000, 60000
    return image


def rotated_jpeg() -> bytes:
    """Stored W tall x H wide (sideways); EXIF orientation 6 turns it upright to H x W."""
    upright = two_level(20, 230, np.uint8)
    stored = np.rot90(upright, 1)  # what a sideways camera writes
    im = Image.fromarray(np.ascontiguousarray(stored))
    exif = im.getexif()
    exif[0x0112] = 6
    return pillow(im, "JPEG", quality=95, exif=exif)


def palette_png() -> bytes:
    im = Image.fromarray(OBJECT.astype(np.uint8), mode="P")
    im.putpalette([12, 34, 56, 200, 180, 160])
    return pillow(im, "PNG")


def rgba_png() -> bytes:
    rgb = np.stack([two_level(10, 240, np.uint8)] * 3, axis=-1)
    return pillow(Image.fromarray(np.dstack([rgb, np.full((H, W), 77, np.uint8)])), "PNG")


ACCEPTED: dict[str, tuple[bytes, int]] = {  # name -> (bytes, channels)
    "grey16.png": (pillow(Image.fromarray(grey16_with_marks()), "PNG"), 1),
    "grey16.tif": (tiff(grey16_with_marks() + 5), 1),
    "float.tif": (tiff(two_level(-2.0, 5.0, np.float32)), 1),
    "rgb16.tif": (tiff(np.dstack([two_level(100, 4000, np.uint16)] * 3), photometric="rgb"), 3),
    "rotated.jpg": (rotated_jpeg(), 1),
    "palette.png": (palette_png(), 3),
    "rgba.png": (rgba_png(), 3),
}

STACK = tiff(np.stack([grey16_with_marks()] * 5), photometric="minisblack")
TWO_CHANNELS = tiff(
    np.dstack([grey16_with_marks()] * 2), photometric="minisblack", planarconfig="contig"
)
NAN = tiff(np.where(OBJECT, np.nan, 1.0).astype(np.float32))
REFUSED = [  # name, bytes, status, exact detail
    (
        "stack.tif",
        STACK,
        415,
        "stack.tif has 5 pages (a stack, time series or animation); activeseg labels "
        "single-plane images: save one plane, or a projection, per file (in Fiji: Image > "
        "Stacks > Z Project, or File > Save As > Image Sequence)",
    ),
    (
        "two.tif",
        TWO_CHANNELS,
        415,
        "two.tif has 2 channels; activeseg takes grey (1 channel) or RGB (3 channels) images: "
        "save the channel to label as a grey image, or 3 channels as an RGB composite",
    ),
    (
        "nan.tif",
        NAN,
        422,
        "nan.tif: the image holds NaN or infinite values; replace them (e.g. with 0) before "
        "uploading",
    ),
]

SMALL_MODEL = {
    "method": "single",
    "depth": 2,
    "base_channels": 4,
    "steps": 4,
    "batch_size": 2,
    "patch_size": 16,
    "patience": None,
}


@pytest.mark.parametrize(("name", "data", "status", "detail"), REFUSED)
def test_refused_formats_answer_the_documented_message_and_store_nothing(
    stack: Stack, admin: Any, name: str, data: bytes, status: int, detail: str
) -> None:
    pid = make_project(admin, n_classes=2)["id"]
    blobs = len(stack.store.keys())  # type: ignore[attr-defined]
    r = upload(admin, pid, ("fine.png", png_bytes(np.zeros((8, 8), np.uint8))), (name, data))
    assert r.status_code == status, r.text
    assert r.json()["detail"] == detail
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
    assert len(stack.store.keys()) == blobs  # type: ignore[attr-defined]


def shown(admin: Any, image_id: int) -> np.ndarray:
    r = admin.get(f"/annotate/images/{image_id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(r.content)))


def test_every_accepted_format_uploads_trains_scores_and_displays(stack: Stack, admin: Any) -> None:
    project = make_project(admin, n_classes=2, region_kind="grid", region_size=8, model=SMALL_MODEL)
    pid = project["id"]
    r = upload(admin, pid, *((name, data) for name, (data, _) in ACCEPTED.items()))
    assert r.status_code == 201, r.text
    items = {item["image"]["filename"]: item["image"] for item in r.json()["data"]}
    for name, (_, channels) in ACCEPTED.items():
        image = items[name]
        assert (image["width"], image["height"], image["channels"]) == (W, H, channels), name

    # The stored bytes are the uploaded bytes.
    tif = items["grey16.tif"]
    assert admin.get(f"/images/{tif['id']}/file").content == ACCEPTED["grey16.tif"][0]

    # Masks have the upright size: the sideways (stored) size of the JPEG is refused.
    jpeg_id = items["rotated.jpg"]["id"]
    sideways = png_bytes(np.zeros((W, H), np.uint8))
    r = admin.put(f"/images/{jpeg_id}/mask", files={"file": ("m.png", sideways)})
    assert r.status_code == 422 and f"mask is {H}x{W} but the image is {W}x{H}" in r.text
    mask = np.where(OBJECT, 1, 0).astype(np.uint8)
    mask[H // 2 - 2 : H // 2 + 2] = 255  # a strip left unlabelled
    for image in items.values():
        r = admin.put(f"/images/{image['id']}/mask", files={"file": ("m.png", png_bytes(mask))})
        assert r.status_code == 201, r.text

    # Display: the model's contrast, exact. 1000 -> 0, 3000 -> 255, 2000 -> 127.5 -> 128 (round
    # half to even), the hot pixel clipped to 255.
    expected = np.where(OBJECT, 255, 0).astype(np.uint8)
    expected[0, 0] = 128
    np.testing.assert_array_equal(shown(admin, items["grey16.png"]["id"]), expected)
    np.testing.assert_array_equal(shown(admin, items["grey16.tif"]["id"]), expected)
    np.testing.assert_array_equal(shown(admin, items["float.tif"]["id"]), np.where(OBJECT, 255, 0))
    rgb16 = shown(admin, items["rgb16.tif"]["id"])
    np.testing.assert_array_equal(rgb16, np.dstack([np.where(OBJECT, 255, 0)] * 3))
    palette = shown(admin, items["palette.png"]["id"])
    np.testing.assert_array_equal(palette[OBJECT], np.tile([200, 180, 160], (OBJECT.sum(), 1)))
    np.testing.assert_array_equal(palette[~OBJECT], np.tile([12, 34, 56], ((~OBJECT).sum(), 1)))
    rgba = shown(admin, items["rgba.png"]["id"])
    assert rgba.shape == (H, W, 3) and set(np.unique(rgba).tolist()) == {10, 240}
    upright = shown(admin, jpeg_id)
    assert upright.shape == (H, W)
    assert upright[OBJECT].min() > 200 and upright[~OBJECT].max() < 50

    # Train on all of them (the job decodes the stored bytes), then score the pool.
    job_id = run_job_inline(stack, pid, "retrain", {"activate": True})
    job = admin.get(f"/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job
    assert admin.get(f"/projects/{pid}").json()["active_model_id"] is not None
    for name, image in items.items():
        r = admin.get(f"/images/{image['id']}/uncertainty.png", params={"overlay": "true"})
        assert r.status_code == 200, (name, r.text)
        overlay = np.asarray(Image.open(io.BytesIO(r.content)))
        assert overlay.shape[:2] == (H, W), name
