from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import Stack
from tests.utils import image_bytes, make_project, png_bytes, upload


def blob_count(stack: Stack) -> int:
    return len(stack.store.keys())  # type: ignore[attr-defined]


def state(stack: Stack, admin, pid: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    return admin.get(f"/projects/{pid}/images").json()["count"], blob_count(stack)


def test_upload_list_get_download_delete(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    png, jpg = image_bytes(20, 30, seed=1), image_bytes(16, 16, seed=2, fmt="JPEG")
    tif = image_bytes(10, 12, seed=3, fmt="TIFF", rgb=False)
    r = upload(admin, pid, ("a.png", png), ("dir/../b.jpg", jpg), ("c.tif", tif))
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["created"], body["duplicates"]) == (3, 0)
    a, b, c = (item["image"] for item in body["data"])
    assert (a["width"], a["height"], a["channels"], a["format"]) == (30, 20, 3, "png")
    assert (b["filename"], b["format"]) == ("b.jpg", "jpeg")  # path parts stripped
    assert (c["channels"], c["format"]) == (1, "tiff")

    # Same bytes again: deduplicated within the project, nothing new stored.
    before = state(stack, admin, pid)
    r = upload(admin, pid, ("again.png", png))
    assert r.json()["duplicates"] == 1 and r.json()["data"][0]["image"]["id"] == a["id"]
    assert state(stack, admin, pid) == before

    assert admin.get(f"/images/{a['id']}/file").content == png
    page = admin.get(f"/projects/{pid}/images", params={"limit": 2, "offset": 1}).json()
    assert page["count"] == 3 and [i["id"] for i in page["data"]] == [b["id"], c["id"]]
    assert admin.patch(f"/images/{c['id']}", json={"split": "val"}).json()["split"] == "val"
    val = admin.get(f"/projects/{pid}/images", params={"split": "val"}).json()
    assert [i["id"] for i in val["data"]] == [c["id"]]

    assert admin.delete(f"/images/{b['id']}").status_code == 204
    assert admin.get(f"/images/{b['id']}").status_code == 404
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 2


def _bomb() -> bytes:
    # 1500 x 1500 grey PNG of zeros: a few KB on the wire, 2.25 Mpx decoded (limit is 1 Mpx).
    return png_bytes(np.zeros((1500, 1500), np.uint8))


@pytest.mark.parametrize(
    ("name", "payload", "status", "words"),
    [
        ("truncated.png", image_bytes(64, 64, seed=5)[:300], 422, "corrupt or truncated"),
        ("notes.txt", b"hello, not an image", 415, "not an image"),
        ("empty.png", b"", 422, "empty"),
        ("bomb.png", _bomb(), 413, "pixels"),
        ("big.png", image_bytes(900, 900, seed=6), 413, "bytes"),
        ("gif.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", 415, "gif"),
    ],
)
def test_bad_uploads_are_refused_and_nothing_is_stored(
    stack: Stack,
    admin,
    name: str,
    payload: bytes,
    status: int,
    words: str,  # type: ignore[no-untyped-def]
) -> None:
    pid = make_project(admin)["id"]
    upload(admin, pid, ("good.png", image_bytes(8, 8, seed=9)))
    before = state(stack, admin, pid)
    # The good file first: the whole request is refused, the good one not kept either.
    r = upload(admin, pid, ("fresh.png", image_bytes(9, 9, seed=10)), (name, payload))
    assert r.status_code == status, r.text
    assert words.lower() in r.json()["detail"].lower()
    assert "Traceback" not in r.text
    assert state(stack, admin, pid) == before


def test_upload_other_bad_requests(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    assert upload(admin, 999999, ("a.png", image_bytes())).status_code == 404
    r = upload(admin, pid, ("a.png", image_bytes()), split="nowhere")
    assert r.status_code == 422
    r = admin.post(f"/projects/{pid}/images")
    assert r.status_code == 422
    many = [(f"{i}.png", image_bytes(4, 4, seed=100 + i)) for i in range(21)]
    r = upload(admin, pid, *many)
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0


def test_masks_are_revisions_and_checked(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin, n_classes=3)["id"]
    image = upload(admin, pid, ("a.png", image_bytes(4, 5, seed=11))).json()["data"][0]["image"]
    iid = image["id"]
    empty = Image.open(io.BytesIO(admin.get(f"/images/{iid}/mask").content))
    assert np.all(np.asarray(empty) == 255) and empty.size == (5, 4)

    mask1 = np.array([[0, 1, 2, 255, 255]] * 4, np.uint8)
    r = admin.put(f"/images/{iid}/mask", files={"file": ("m.png", png_bytes(mask1))})
    assert r.status_code == 201, r.text
    assert (r.json()["revision"], r.json()["labelled_pixels"]) == (1, 12)
    mask2 = np.full((4, 5), 1, np.uint8)
    assert (
        admin.put(f"/images/{iid}/mask", files={"file": ("m.png", png_bytes(mask2))}).json()[
            "revision"
        ]
        == 2
    )
    got1 = np.asarray(Image.open(io.BytesIO(admin.get(f"/images/{iid}/mask?revision=1").content)))
    got2 = np.asarray(Image.open(io.BytesIO(admin.get(f"/images/{iid}/mask").content)))
    assert np.array_equal(got1, mask1) and np.array_equal(got2, mask2)
    meta = admin.get(f"/images/{iid}").json()
    assert (meta["current_revision"], meta["labelled_fraction"]) == (2, 1.0)
    assert admin.get(f"/projects/{pid}/images", params={"labelled": True}).json()["count"] == 1

    bad = [
        (png_bytes(np.zeros((5, 4), np.uint8)), 422, "5x4"),  # transposed size
        (png_bytes(np.full((4, 5), 3, np.uint8)), 422, "[3]"),  # unknown class 3
        (png_bytes(np.zeros((4, 5, 3), np.uint8)), 422, "mode rgb"),
        (image_bytes(4, 5, fmt="JPEG", rgb=False), 415, "png"),
        (png_bytes(np.zeros((4, 5), np.uint8))[:-20], 422, "corrupt"),
    ]
    for payload, status, words in bad:
        r = admin.put(f"/images/{iid}/mask", files={"file": ("m.png", payload)})
        assert r.status_code == status, (words, r.text)
        assert words in r.json()["detail"].lower()
    history = admin.get(f"/images/{iid}/revisions").json()
    assert [h["revision"] for h in history["data"]] == [1, 2]
    assert admin.get(f"/images/{iid}/mask?revision=3").status_code == 404


def test_truncated_png_crc_is_detected(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    """A PNG whose image data is cut short but whose header is intact."""
    pid = make_project(admin)["id"]
    raw = bytearray(image_bytes(32, 32, seed=12))
    idat = raw.find(b"IDAT")
    raw[idat + 40 : idat + 60] = bytes(20)  # corrupt compressed data inside IDAT
    r = upload(admin, pid, ("broken.png", bytes(raw)))
    assert r.status_code == 422, r.text
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
    assert zlib  # zlib imported to document that the corruption is in the deflate stream
