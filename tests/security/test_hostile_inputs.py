"""Hostile and malformed input on every parameter a client controls: each one is refused with a
4xx and a ``detail`` that says what was wrong, and leaves nothing behind.

Why "nothing behind" is checked and not assumed: uploads write blobs before rows, submissions
read and write masks, imports check many items before storing any. A refusal that comes after
a write would leave an orphan blob or half a change. So around every case the test snapshots
the row count of every table, the rows of the project under attack, and the set of blob keys,
and demands they are identical afterwards.

File names get their own test: a name is stored (sanitised), never used as a path.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select

from activeseg.core.tables import Base, LabelRevision, Project
from activeseg.core.tables import Image as ImageRow
from tests.conftest import Stack
from tests.utils import build_queue_inline, image_bytes, make_project, make_user, png_bytes, upload

MIB = 1024 * 1024
LIMIT = 2 * MIB  # ACTIVESEG_MAX_UPLOAD_BYTES of the test stack
INT64_OVER = 2**63  # one past the largest int64
HUGE = 2**70
NOT_AN_ID = 2**31  # past PostgreSQL's INTEGER, the type of every id column


# --- crafted files ---------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A 100-byte PNG whose header claims ``width`` x ``height`` grey pixels (a bomb's header:
    decoding it would need width*height bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _chunk(b"IEND", b"")
    )


def encoded(arr: np.ndarray, fmt: str, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format=fmt)
    return buf.getvalue()


def png16(h: int, w: int, top: int) -> bytes:
    arr = (np.arange(h * w).reshape(h, w) % (top + 1)).astype(np.uint16)
    return encoded(arr, "PNG")


def tiff_stack(pages: int) -> bytes:
    """A ``pages``-page 8x8 grey TIFF (a z-stack or time series)."""
    planes = [Image.fromarray(np.full((8, 8), 40 * i, np.uint8)) for i in range(pages)]
    buf = io.BytesIO()
    planes[0].save(buf, format="TIFF", save_all=True, append_images=planes[1:])
    return buf.getvalue()


def png16_rgb(h: int, w: int) -> bytes:
    """A 16-bit RGB PNG (colour type 2), written by hand: Pillow cannot write one."""
    rows = np.arange(h * w * 3, dtype=">u2").reshape(h, w * 3) * 1000
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def multipart(field: str, filename: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so the file name reaches the server byte for byte
    (httpx would escape control characters and quotes)."""
    boundary = b"hostile-boundary-7d1f"
    body = (
        b"--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="'
        + field.encode()
        + b'"; filename="'
        + filename
        + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
        + data
        + b"\r\n--"
        + boundary
        + b"--\r\n"
    )
    return body, {"Content-Type": "multipart/form-data; boundary=" + boundary.decode()}


def files(*items: tuple[str, bytes]) -> dict[str, Any]:
    return {"files": [("files", (name, data, "application/octet-stream")) for name, data in items]}


def mask_file(data: bytes, name: str = "mask.png") -> dict[str, Any]:
    return {"files": {"file": (name, data, "application/octet-stream")}}


def raw_json(text: str) -> dict[str, Any]:
    """A body Python's json would produce from NaN/Infinity, or not JSON at all."""
    return {"content": text.encode(), "headers": {"Content-Type": "application/json"}}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the project under attack ----------------------------------------------------------------


@dataclass
class Target:
    stack: Stack
    pid: int
    image_id: int
    task_id: int
    regions: list[int]
    webhook_id: int
    engineer: str
    annotator: str


@pytest.fixture(scope="module")
def target(stack: Stack) -> Iterator[Target]:
    """A 3-class project with one 32x32 grey image in grid tiles of 16, four queued tasks, one
    of them leased to an annotator member, and a webhook."""
    with stack.client(stack.admin_token) as admin:
        _, eng = make_user(admin, "engineer")
        ann_id, ann = make_user(admin, "annotator")
    with stack.client(eng) as c:
        project = make_project(
            c, n_classes=3, region_kind="grid", region_size=16, batch_size=4, per_image_cap=None
        )
        pid = project["id"]
        assert c.post(f"/projects/{pid}/members", json={"user_id": ann_id}).status_code == 204
        r = upload(c, pid, ("target.png", image_bytes(32, 32, seed=11, rgb=False)))
        assert r.status_code == 201, r.text
        image_id = r.json()["data"][0]["image"]["id"]
        hook = c.post(
            f"/projects/{pid}/webhooks",
            json={"url": "http://127.0.0.1:9/hook", "events": ["job.failed"]},
        )
        assert hook.status_code == 201, hook.text
    build_queue_inline(stack, pid)
    with stack.client(ann) as c:
        lease = c.post(f"/projects/{pid}/tasks/next")
        assert lease.status_code == 200, lease.text
        task = lease.json()["task"]
    yield Target(stack, pid, image_id, task["id"], task["regions"], hook.json()["id"], eng, ann)


# --- the snapshot ----------------------------------------------------------------------------


def snapshot(t: Target) -> dict[str, Any]:
    """Row counts of every table, every row of the project under attack, and the blob keys."""
    with t.stack.db.session() as s:  # type: ignore[attr-defined]
        counts = {
            table.name: s.scalar(select(func.count()).select_from(table))
            for table in Base.metadata.sorted_tables
        }
        rows: dict[str, list[Any]] = {}
        for table in Base.metadata.sorted_tables:
            if "project_id" in table.c:
                query = table.select().where(table.c.project_id == t.pid)
                rows[table.name] = [tuple(r) for r in s.execute(query.order_by(*table.primary_key))]
        rows["projects"] = [
            tuple(r) for r in s.execute(select(Project.__table__).where(Project.id == t.pid))
        ]
        revs = select(LabelRevision.__table__).join(ImageRow, ImageRow.id == LabelRevision.image_id)
        rows["label_revisions"] = [
            tuple(r) for r in s.execute(revs.where(ImageRow.project_id == t.pid))
        ]
    return {"counts": counts, "rows": rows, "blobs": set(t.stack.store.keys())}  # type: ignore[attr-defined]


def detail_text(body: Any) -> str:
    """The ``detail`` as one string: a sentence, or FastAPI's list of validation issues."""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, list):
        return "; ".join(
            ".".join(str(p) for p in issue["loc"]) + ": " + issue["msg"] for issue in detail
        )
    assert isinstance(detail, str) and detail, f"no detail in {body!r}"
    return detail


# --- the cases -------------------------------------------------------------------------------

Kwargs = Callable[[Target], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    name: str
    who: str  # "eng" or "ann": the engineer or the annotator (members of the project)
    method: str
    path: str  # formatted with pid, image_id, task_id, webhook_id
    status: int
    detail: str  # must appear in the detail text (case-insensitive)
    kwargs: dict[str, Any] | Kwargs | None = None


def _patch(arr: np.ndarray) -> Kwargs:
    return lambda t: {"json": {"patch_png": b64(png_bytes(arr))}}


def _classes(value: Callable[[list[int]], dict[str, Any]]) -> Kwargs:
    return lambda t: {"json": {"classes": value(t.regions)}}


def _ls_result(value: dict[str, Any]) -> Kwargs:
    """A Label Studio ANNOTATION_CREATED for the target image with one brush result."""
    result = {"type": "brushlabels", "original_height": 32, "original_width": 32, "value": value}
    return lambda t: {
        "json": {
            "action": "ANNOTATION_CREATED",
            "task": {"data": {"image": f"/images/{t.image_id}/file"}},
            "annotation": {"id": 1, "result": [result]},
        }
    }


def _coco(segmentation: Any = None, **doc: Any) -> dict[str, Any]:
    """A COCO file labelling the target image (file name target.png, 32x32)."""
    body = {
        "images": [{"id": 1, "file_name": "target.png", "height": 32, "width": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "segmentation": segmentation}],
        "categories": [{"id": 1, "name": "class0"}],
        **doc,
    }
    return _import("coco", json.dumps(body).encode())


def _import(fmt: str, data: bytes) -> dict[str, Any]:
    return {"params": {"format": fmt}, **mask_file(data, "labels")}


def _zip(entries: dict[str, str | bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return buf.getvalue()


GARBAGE = hashlib.sha512(b"garbage").digest() * 64  # 4 KiB of noise
TRUNCATED_PNG = image_bytes(32, 32, seed=3)[:400]
GREY = np.zeros((32, 32), np.uint8)
CLASSES_JSON = json.dumps({"classes": [{"id": i, "name": f"class{i}"} for i in range(3)]})
TWO = [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}]
SUBMIT_OK = _classes(lambda regions: {str(r): 0 for r in regions})
U, M, S = "/projects/{pid}/images", "/images/{image_id}/mask", "/tasks/{task_id}/submit"
P, W, IMP = "/projects/{pid}", "/projects/{pid}/webhooks", "/projects/{pid}/import"
LE = "Input should be less than or equal to"

# fmt: off
CASES: list[Case] = [
    # -- image uploads: size, count, bombs, broken and foreign files
    Case("upload-over-byte-limit", "eng", "POST", U, 413,
         "big.png: larger than 2097152 bytes (ACTIVESEG_MAX_UPLOAD_BYTES)",
         files(("big.png", b"\x89PNG" + b"\x00" * LIMIT))),
    Case("upload-body-over-limit", "eng", "POST", U, 413, "request body over 2097152 bytes",
         files(("huge.png", b"\x00" * (LIMIT + 2 * MIB)))),
    Case("upload-chunked-no-length", "eng", "POST", U, 413, "c.png: larger than 2097152 bytes",
         lambda t: {"content": iter([multipart("files", b"c.png", b"\x00" * (LIMIT + 9))[0]]),
                    "headers": multipart("files", b"c.png", b"")[1]}),
    Case("upload-files-sum-over-limit", "eng", "POST", U, 413, "c.png: larger than",
         files(("a.png", b"a" * (MIB - 99_999)), ("b.png", b"b" * (MIB - 99_999)),
               ("c.png", b"c" * 300_000))),
    Case("upload-too-many-files", "eng", "POST", U, 413, "21 files in one upload; the limit is 20",
         files(*[(f"{i}.png", image_bytes(4, 4, seed=500 + i)) for i in range(21)])),
    Case("upload-bomb-header-30000x30000", "eng", "POST", U, 413,
         "bomb.png: image has too many pixels (decompression bomb?)",
         files(("bomb.png", png_declaring(30000, 30000)))),
    Case("upload-over-max-pixels", "eng", "POST", U, 413,
         "1100x1000 = 1100000 pixels exceeds the limit of 1000000 (ACTIVESEG_MAX_IMAGE_PIXELS)",
         files(("wide.png", encoded(np.zeros((1000, 1100), np.uint8), "PNG")))),
    Case("upload-truncated-png", "eng", "POST", U, 422,
         "cut.png: the image is corrupt or truncated", files(("cut.png", TRUNCATED_PNG))),
    Case("upload-garbage", "eng", "POST", U, 415, "noise.png: not an image Pillow can read",
         files(("noise.png", GARBAGE))),
    Case("upload-text-file", "eng", "POST", U, 415, "notes.txt: not an image Pillow can read",
         files(("notes.txt", b"name,value\nroot,0\n"))),
    Case("upload-pdf", "eng", "POST", U, 415, "doc.pdf: not an image Pillow can read",
         files(("doc.pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"))),
    Case("upload-gif", "eng", "POST", U, 415, "anim.gif: format GIF is not accepted",
         files(("anim.gif", encoded(GREY, "GIF")))),
    Case("upload-tiff-stack", "eng", "POST", U, 415,
         "stack.tif has 3 pages (a stack, time series or animation); activeseg labels "
         "single-plane images", files(("stack.tif", tiff_stack(3)))),
    Case("upload-nan-tiff", "eng", "POST", U, 422,
         "nan.tif: the image holds NaN or infinite values",
         files(("nan.tif", encoded(np.full((8, 8), np.nan, np.float32), "TIFF")))),
    Case("upload-16-bit-colour-png", "eng", "POST", U, 415,
         "deep.png: 16-bit colour (or grey + alpha) PNG is not supported",
         files(("deep.png", png16_rgb(8, 8)))),
    Case("upload-cmyk-jpeg", "eng", "POST", U, 415, "cmyk.jpg: pixel mode CMYK is not supported",
         files(("cmyk.jpg", encoded(np.zeros((8, 8, 4), np.uint8), "JPEG", "CMYK")))),
    Case("upload-empty-file", "eng", "POST", U, 422, "empty.png: the file is empty",
         files(("empty.png", b""))),
    Case("upload-good-then-bad", "eng", "POST", U, 415, "bad.png: not an image",
         files(("good.png", image_bytes(8, 8, seed=77)), ("bad.png", GARBAGE))),
    Case("upload-name-10000-chars", "eng", "POST", U, 400, "Invalid multipart data",
         lambda t: dict(zip(("content", "headers"),
                            multipart("files", b"x" * 10_000, image_bytes(8, 8, seed=79)),
                            strict=True))),
    Case("upload-no-files-field", "eng", "POST", U, 422, "body.files: Field required",
         {"data": {"split": "pool"}}),
    Case("upload-empty-body", "eng", "POST", U, 422, "body.files: Field required", {}),
    Case("upload-bad-split", "eng", "POST", U, 422, "body.split: String should match pattern",
         {**files(("s.png", image_bytes(8, 8, seed=78))), "data": {"split": "../../pool"}}),
    # -- masks
    Case("mask-float-tiff", "eng", "PUT", M, 415, "a mask must be a PNG index image, got TIFF",
         mask_file(encoded(np.zeros((32, 32), np.float32), "TIFF"), "m.tif")),
    Case("mask-16-bit-beyond-classes", "eng", "PUT", M, 422,
         "a mask must be a single-channel 8-bit PNG (mode L or P), got mode I;16",
         mask_file(png16(32, 32, 1000))),
    Case("mask-smaller", "eng", "PUT", M, 422, "mask is 16x16 but the image is 32x32",
         mask_file(png_bytes(np.zeros((16, 16), np.uint8)))),
    Case("mask-larger", "eng", "PUT", M, 422, "mask is 64x48 but the image is 32x32",
         mask_file(png_bytes(np.zeros((48, 64), np.uint8)))),
    Case("mask-class-out-of-range", "eng", "PUT", M, 422,
         "mask holds values [7] that are neither a class id (0..2) nor 255 (unlabelled)",
         mask_file(png_bytes(np.where(np.eye(32, dtype=bool), 7, 0).astype(np.uint8)))),
    Case("mask-254", "eng", "PUT", M, 422, "mask holds values [254]",
         mask_file(png_bytes(np.full((32, 32), 254, np.uint8)))),
    Case("mask-rgb", "eng", "PUT", M, 422, "(mode L or P), got mode RGB",
         mask_file(png_bytes(np.zeros((32, 32, 3), np.uint8)))),
    Case("mask-jpeg", "eng", "PUT", M, 415, "a mask must be a PNG index image, got JPEG",
         mask_file(encoded(GREY, "JPEG"), "m.jpg")),
    Case("mask-bomb-header", "eng", "PUT", M, 413,
         "image has too many pixels (decompression bomb?)",
         mask_file(png_declaring(30000, 30000))),
    Case("mask-truncated", "eng", "PUT", M, 422, "the mask is corrupt or truncated",
         mask_file(png_bytes(np.tile(np.arange(32, dtype=np.uint8) % 3, (32, 1)))[:60])),
    Case("mask-garbage", "eng", "PUT", M, 415, "not an image Pillow can read", mask_file(GARBAGE)),
    Case("mask-empty-file", "eng", "PUT", M, 422, "mask.png: the file is empty", mask_file(b"")),
    Case("mask-empty-body", "eng", "PUT", M, 422, "body.file: Field required", {}),
    Case("mask-over-byte-limit", "eng", "PUT", M, 413, "larger than 2097152 bytes",
         mask_file(b"\x89PNG" + b"\x00" * LIMIT)),
    # -- JSON bodies: wrong types, nesting, null, huge numbers, NaN and Infinity
    Case("project-name-int", "eng", "POST", "/projects", 422,
         "body.name: Input should be a valid string", {"json": {"name": 123, "classes": TWO}}),
    Case("project-classes-nested", "eng", "POST", "/projects", 422,
         "body.classes: Input should be a valid list",
         {"json": {"name": "n", "classes": {"a": {"b": {"c": {}}}}}}),
    Case("project-null-body", "eng", "POST", "/projects", 422,
         "body: Input should be a valid dictionary",
         raw_json("null")),
    Case("project-not-json", "eng", "POST", "/projects", 422, "JSON decode error",
         raw_json('{"name": ')),
    Case("project-deep-nesting", "eng", "POST", "/projects", 400,
         "There was an error parsing the body",
         raw_json('{"name": "x", "classes": ' + "[" * 5000 + "]" * 5000 + "}")),
    Case("project-class-id-huge", "eng", "POST", "/projects", 422,
         "body.classes.0.id: Input should be less than or equal to 254",
         {"json": {"name": "h", "classes": [{"id": HUGE, "name": "a"}, {"id": 1, "name": "b"}]}}),
    Case("project-settings-infinity", "eng", "POST", "/projects", 422,
         "body.settings.beta: Input should be a finite number",
         raw_json('{"name": "inf", "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],'
                  ' "settings": {"beta": Infinity}}')),
    Case("project-settings-1e400", "eng", "POST", "/projects", 422,
         "body.settings.min_distance: Input should be a finite number",
         raw_json('{"name": "inf2", "classes": [{"id": 0, "name": "a"}, {"id": 1, "name": "b"}],'
                  ' "settings": {"min_distance": 1e400}}')),
    Case("patch-settings-nan", "eng", "PATCH", P, 422,
         "settings.beta: Input should be a finite number", raw_json('{"settings": {"beta": NaN}}')),
    Case("patch-settings-infinity", "eng", "PATCH", P, 422,
         "settings.min_distance: Input should be a finite number",
         raw_json('{"settings": {"min_distance": Infinity}}')),
    Case("patch-settings-cap-huge", "eng", "PATCH", P, 422,
         "settings.per_image_cap: Input should be less than or equal to 100000",
         {"json": {"settings": {"per_image_cap": HUGE}}}),
    Case("patch-settings-seed-huge", "eng", "PATCH", P, 422,
         "settings.model.seed: Input should be less than or equal to 4294967295",
         {"json": {"settings": {"model": {"seed": HUGE}}}}),
    Case("patch-settings-model-int", "eng", "PATCH", P, 422,
         "settings.model must be an object of model settings",
         {"json": {"settings": {"model": 5}}}),
    Case("patch-settings-list", "eng", "PATCH", P, 422,
         "body.settings: Input should be a valid dictionary", {"json": {"settings": [1, 2]}}),
    Case("patch-unknown-field", "eng", "PATCH", P, 422,
         "body.owner: Extra inputs are not permitted", {"json": {"owner": 1}}),
    Case("member-id-huge", "eng", "POST", P + "/members", 422, f"body.user_id: {LE}",
         {"json": {"user_id": HUGE}}),
    Case("member-id-past-int32", "eng", "POST", P + "/members", 422,
         f"body.user_id: {LE} 2147483647", {"json": {"user_id": NOT_AN_ID}}),
    Case("member-id-string", "eng", "POST", P + "/members", 422,
         "body.user_id: Input should be a valid integer", {"json": {"user_id": "abc"}}),
    Case("member-id-null", "eng", "POST", P + "/members", 422,
         "body.user_id: Input should be a valid integer", {"json": {"user_id": None}}),
    Case("member-id-zero", "eng", "POST", P + "/members", 422,
         "body.user_id: Input should be greater than 0", {"json": {"user_id": 0}}),
    Case("member-id-float", "eng", "POST", P + "/members", 422,
         "body.user_id: Input should be a valid integer", {"json": {"user_id": 1.5}}),
    Case("score-version-huge", "eng", "POST", P + "/score", 422,
         f"body.model_version_id: {LE}", {"json": {"model_version_id": HUGE}}),
    Case("retrain-bool-garbage", "eng", "POST", P + "/retrain", 422,
         "body.from_scratch: Input should be a valid boolean", {"json": {"from_scratch": "maybe"}}),
    Case("retrain-request-id-long", "eng", "POST", P + "/retrain", 422,
         "body.request_id: String should have at most 200 characters",
         {"json": {"request_id": "r" * 201}}),
    Case("round-strategy-injection", "eng", "POST", P + "/rounds", 422,
         "body.strategy: String should match pattern", {"json": {"strategy": "x'; DROP TABLE"}}),
    Case("token-expiry-nan", "eng", "POST", "/tokens", 422,
         "body.expires_in_days: Input should be less than or equal to 3650",
         raw_json('{"expires_in_days": NaN}')),
    Case("token-expiry-infinity", "eng", "POST", "/tokens", 422,
         "body.expires_in_days: Input should be less than or equal to 3650",
         raw_json('{"expires_in_days": Infinity}')),
    Case("token-expiry-negative", "eng", "POST", "/tokens", 422,
         "body.expires_in_days: Input should be greater than 0", {"json": {"expires_in_days": -1}}),
    Case("token-expiry-string", "eng", "POST", "/tokens", 422,
         "body.expires_in_days: Input should be a valid number",
         {"json": {"expires_in_days": "tomorrow"}}),
    # -- task submissions (the annotator holds the task's lease)
    Case("submit-region-not-int", "ann", "POST", S, 422,
         "body.classes.abc.[key]: Input should be a valid integer",
         _classes(lambda regions: {"abc": 1})),
    Case("submit-class-huge", "ann", "POST", S, 422,
         f"class {HUGE} is not a class of this project (0..2)",
         _classes(lambda regions: {str(r): HUGE for r in regions})),
    Case("submit-class-negative", "ann", "POST", S, 422,
         "class -1 is not a class of this project (0..2)",
         _classes(lambda regions: {str(r): -1 for r in regions})),
    Case("submit-region-huge", "ann", "POST", S, 422,
         "give one class for each region of the task",
         _classes(lambda regions: {str(HUGE): 1})),
    Case("submit-wrong-regions", "ann", "POST", S, 422,
         "give one class for each region of the task",
         _classes(lambda regions: {str(r + 1): 1 for r in regions})),
    Case("submit-both", "ann", "POST", S, 422,
         "send either 'classes' (one class per region) or a mask 'patch', not both",
         lambda t: {"json": {"classes": {str(r): 0 for r in t.regions},
                             "patch_png": b64(png_bytes(np.zeros((16, 16), np.uint8)))}}),
    Case("submit-neither", "ann", "POST", S, 422, "or a mask 'patch', not both", {"json": {}}),
    Case("submit-patch-not-base64", "ann", "POST", S, 422,
         "patch_png must be base64 of an index PNG", {"json": {"patch_png": "!!not base64!!"}}),
    Case("submit-patch-garbage", "ann", "POST", S, 422, "patch_png is not a readable PNG",
         {"json": {"patch_png": b64(GARBAGE)}}),
    Case("submit-patch-bomb", "ann", "POST", S, 422, "patch_png is not a readable PNG",
         {"json": {"patch_png": b64(png_declaring(30000, 30000))}}),
    Case("submit-patch-rgb", "ann", "POST", S, 422, "patch_png must be a single-channel index PNG",
         _patch(np.zeros((16, 16, 3), np.uint8))),
    Case("submit-patch-wrong-size", "ann", "POST", S, 422,
         "the patch must cover the task's bounding box: 16x16 (height x width), got 8x8",
         _patch(np.zeros((8, 8), np.uint8))),
    Case("submit-patch-class-out-of-range", "ann", "POST", S, 422,
         "patch: mask holds values [9]", _patch(np.full((16, 16), 9, np.uint8))),
    Case("submit-idempotency-header-long", "ann", "POST", S, 422,
         "header.idempotency-key: String should have at most 100 characters",
         lambda t: {**SUBMIT_OK(t), "headers": {"Idempotency-Key": "k" * 101}}),
    Case("submit-extra-field", "ann", "POST", S, 422,
         "body.task_id: Extra inputs are not permitted",
         lambda t: {"json": {**SUBMIT_OK(t)["json"], "task_id": 1}}),
    Case("skip-empty-reason", "ann", "POST", "/tasks/{task_id}/skip", 422,
         "body.reason: String should have at least 1 character", {"json": {"reason": ""}}),
    Case("skip-long-reason", "ann", "POST", "/tasks/{task_id}/skip", 422,
         "body.reason: String should have at most 200 characters", {"json": {"reason": "r" * 201}}),
    Case("skip-no-body", "ann", "POST", "/tasks/{task_id}/skip", 422, "body: Field required", {}),
    # -- webhooks
    Case("webhook-javascript-url", "eng", "POST", W, 422, "body.url: String should match pattern",
         {"json": {"url": "javascript:alert(1)", "events": ["job.failed"]}}),
    Case("webhook-file-url", "eng", "POST", W, 422, "body.url: String should match pattern",
         {"json": {"url": "file:///etc/passwd", "events": ["job.failed"]}}),
    Case("webhook-url-too-long", "eng", "POST", W, 422,
         "body.url: String should have at most 2000 characters",
         {"json": {"url": "http://x/" + "a" * 2000, "events": ["job.failed"]}}),
    Case("webhook-unknown-event", "eng", "POST", W, 422,
         "body.events.0: Input should be 'model.trained', 'queue.refilled' or 'job.failed'",
         {"json": {"url": "http://x/h", "events": ["everything"]}}),
    Case("webhook-no-events", "eng", "POST", W, 422,
         "body.events: List should have at least 1 item",
         {"json": {"url": "http://x/h", "events": []}}),
    # -- Label Studio endpoints
    Case("ls-webhook-not-json", "eng", "POST", "/ls/{pid}/webhook", 422,
         "the webhook body must be JSON", raw_json("{not json")),
    Case("ls-webhook-label-config-int", "eng", "POST", "/ls/{pid}/webhook", 422,
         "label_config must be a string of XML",
         {"json": {"action": "ANNOTATION_CREATED", "project": {"label_config": 5},
                   "task": {"data": {"image": "x.png"}}, "annotation": {"result": []}}}),
    Case("ls-webhook-data-list", "eng", "POST", "/ls/{pid}/webhook", 422,
         "task.data.image must be the image URL",
         {"json": {"action": "ANNOTATION_CREATED", "task": {"data": [1]}, "annotation": {}}}),
    Case("ls-webhook-value-not-object", "eng", "POST", "/ls/{pid}/webhook", 422,
         "result 0: value must be an object with rle and brushlabels",
         lambda t: {"json": {**_ls_result({})(t)["json"], "annotation": {
             "result": [{"type": "brushlabels", "value": [1]}]}}}),
    Case("ls-webhook-label-nested", "eng", "POST", "/ls/{pid}/webhook", 422,
         "result 0: brush label [[1]] is not one class of this project",
         _ls_result({"rle": [0], "brushlabels": [[1]]})),
    Case("ls-webhook-rle-huge-int", "eng", "POST", "/ls/{pid}/webhook", 422,
         "result 0: rle must be a list of integers 0..255",
         _ls_result({"rle": 10**12, "brushlabels": ["class0"]})),
    Case("ls-setup-billion-laughs", "eng", "POST", "/ls/{pid}/setup", 422,
         "label_config is not valid XML (limit on input amplification factor",
         {"json": {"schema": '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                   + "".join(f'<!ENTITY {chr(98 + i)} "' + f"&{chr(97 + i)};" * 10 + '">'
                             for i in range(8))
                   + "]><View><BrushLabels name='l' toName='i'>&i;</BrushLabels></View>"}}),
    Case("ls-predict-too-many-tasks", "eng", "POST", "/ls/{pid}/predict", 422,
         "body.tasks: List should have at most 10000 items", {"json": {"tasks": [{}] * 10_001}}),
    Case("ls-bad-basic-auth", "eng", "GET", "/ls/{pid}/health", 401,
         "malformed HTTP Basic credentials", {"headers": {"Authorization": "Basic %%%"}}),
    # -- label imports (COCO, PNG zip, Label Studio) and baseline files
    Case("coco-polygon-far-vertex", "eng", "POST", IMP, 422,  # was: SIGSEGV of the API process
         "polygon vertices must lie on the 32x32 image", _coco([[0, 0, 1e9, 0, 0, 1e9]])),
    Case("coco-polygon-nan", "eng", "POST", IMP, 422,
         "polygon vertices must lie on the 32x32 image", _coco([[0, 0, float("nan"), 0, 0, 5]])),
    Case("coco-rle-ends-mid-number", "eng", "POST", IMP, 422,  # was: heap corruption
         "segmentation.counts is not a valid compressed RLE",
         _coco({"size": [32, 32], "counts": "0PPP"})),
    Case("coco-rle-bad-character", "eng", "POST", IMP, 422,
         "segmentation.counts holds 'é', not RLE",
         _coco({"size": [32, 32], "counts": "é"})),
    Case("coco-rle-runs-huge", "eng", "POST", IMP, 422,
         "the RLE runs cover 1000000000005 pixels, the image 1024",
         _coco({"size": [32, 32], "counts": [10**12, 5]})),
    Case("coco-rle-runs-negative", "eng", "POST", IMP, 422,
         "segmentation.counts must be non-negative integers",
         _coco({"size": [32, 32], "counts": [2000, -976]})),
    Case("coco-image-id-list", "eng", "POST", IMP, 422,
         "the coco file is malformed (TypeError: unhashable type: 'list')",
         _coco([], images=[{"id": [1], "file_name": "target.png"}])),
    Case("coco-categories-int", "eng", "POST", IMP, 422,
         "the coco file is malformed (TypeError", _coco([], categories=5)),
    Case("coco-garbage", "eng", "POST", IMP, 422, "not a COCO JSON file", _import("coco", GARBAGE)),
    Case("coco-deep-nesting", "eng", "POST", IMP, 422, "the coco file is malformed (RecursionError",
         _import("coco", b"[" * 100_000 + b"]" * 100_000)),
    Case("png-not-zip", "eng", "POST", IMP, 422, "not a zip file", _import("png", GARBAGE)),
    Case("png-ignore-index-text", "eng", "POST", IMP, 422, "the png file is malformed (ValueError",
         _import("png", _zip({"classes.json": json.dumps(
             {"classes": json.loads(CLASSES_JSON)["classes"], "ignore_index": "x"})}))),
    Case("png-ignore-index-1000", "eng", "POST", IMP, 422, "the png file is malformed (IndexError",
         _import("png", _zip({"classes.json": json.dumps(
             {"classes": json.loads(CLASSES_JSON)["classes"], "ignore_index": 1000})}))),
    Case("png-mask-garbage", "eng", "POST", IMP, 415, "masks/target.png: not an image",
         _import("png", _zip({"classes.json": CLASSES_JSON, "masks/target.png": GARBAGE}))),
    Case("png-mask-wrong-size", "eng", "POST", IMP, 422,
         "masks/target.png: mask is 8x8 but the image is 32x32",
         _import("png", _zip({"classes.json": CLASSES_JSON,
                                "masks/target.png": png_bytes(np.zeros((8, 8), np.uint8))}))),
    Case("ls-import-annotations-int", "eng", "POST", IMP, 422,
         'task 1: "annotations" must be a list of annotation objects',
         _import("labelstudio", b'[{"data": {"image": "target.png"}, "annotations": 5}]')),
    Case("ls-import-rle-huge-int", "eng", "POST", IMP, 422,
         "task 1: result 0: rle must be a list of integers 0..255",
         _import("labelstudio", json.dumps([{"data": {"image": "target.png"}, "annotations": [
             {"result": [{"type": "brushlabels", "original_height": 32, "original_width": 32,
                          "value": {"rle": 10**12, "brushlabels": ["class0"]}}]}]}]).encode())),
    Case("import-bad-format", "eng", "POST", IMP, 422, "query.format: String should match pattern",
         _import("../../etc", b"{}")),
    Case("baseline-not-utf8", "eng", "POST", P + "/baseline", 422,
         "baseline must be a UTF-8 CSV file", mask_file(b"\xff\xfe\x00bad", "curve.csv")),
    Case("baseline-nan", "eng", "POST", P + "/baseline", 422,
         "line 2: column 'test_miou' must be finite, got 'nan'",
         mask_file(b"round,labelled_fraction,labelled_regions,test_miou\n0,0.1,1,nan\n", "c.csv")),
    # -- query parameters: page sizes, offsets, enumerations
    Case("images-limit-huge", "eng", "GET", U, 422, f"query.limit: {LE} 500",
         {"params": {"limit": 10**9}}),
    Case("images-limit-zero", "eng", "GET", U, 422,
         "query.limit: Input should be greater than or equal to 1", {"params": {"limit": 0}}),
    Case("images-offset-negative", "eng", "GET", U, 422,
         "query.offset: Input should be greater than or equal to 0", {"params": {"offset": -1}}),
    Case("images-labelled-garbage", "eng", "GET", U, 422,
         "query.labelled: Input should be a valid boolean", {"params": {"labelled": "perhaps"}}),
    Case("projects-limit-huge", "eng", "GET", "/projects", 422, f"query.limit: {LE} 500",
         {"params": {"limit": 10**9}}),
    Case("jobs-offset-past-int64", "eng", "GET", P + "/jobs", 422, f"query.offset: {LE}",
         {"params": {"offset": INT64_OVER}}),
    Case("jobs-state-garbage", "eng", "GET", P + "/jobs", 422,
         "query.state: String should match pattern", {"params": {"state": "running; --"}}),
    Case("deliveries-offset-past-int64", "eng", "GET", W + "/{webhook_id}/deliveries", 422,
         f"query.offset: {LE}", {"params": {"offset": INT64_OVER}}),
    Case("mask-revision-zero", "eng", "GET", M, 422,
         "query.revision: Input should be greater than or equal to 1", {"params": {"revision": 0}}),
    Case("mask-revision-past-int64", "eng", "GET", M, 422, f"query.revision: {LE}",
         {"params": {"revision": INT64_OVER}}),
    Case("uncertainty-measure-long", "eng", "GET", "/images/{image_id}/uncertainty.png", 422,
         "query.measure: String should have at most 40 characters",
         {"params": {"measure": "m" * 41}}),
    Case("export-format-traversal", "eng", "GET", P + "/export", 422,
         "query.format: String should match pattern", {"params": {"format": "../../x"}}),
    # -- path ids: not integers, zero, negative, past the id columns' range
    Case("path-id-word", "eng", "GET", "/projects/abc", 422,
         "path.project_id: Input should be a valid integer"),
    Case("path-id-float", "eng", "GET", "/images/1.5", 422,
         "path.image_id: Input should be a valid integer"),
    Case("path-id-zero", "eng", "GET", "/projects/0", 422,
         "path.project_id: Input should be greater than or equal to 1"),
    Case("path-id-negative", "eng", "GET", "/jobs/-1", 422,
         "path.job_id: Input should be greater than or equal to 1"),
    Case("path-id-past-int32", "eng", "GET", f"/projects/{NOT_AN_ID}", 422,
         f"path.project_id: {LE} 2147483647"),
    Case("path-id-past-int64", "eng", "GET", f"/images/{INT64_OVER}", 422, f"path.image_id: {LE}"),
    Case("path-id-huge-task", "ann", "POST", f"/tasks/{HUGE}/submit", 422, f"path.task_id: {LE}",
         {"json": {"classes": {"0": 0}}}),
    Case("path-id-huge-webhook", "eng", "POST", f"{W}/{INT64_OVER}/ping", 422,
         f"path.webhook_id: {LE}"),
    Case("path-id-huge-token", "eng", "DELETE", f"/tokens/{INT64_OVER}", 422,
         f"path.token_id: {LE}"),
    Case("path-id-huge-model", "eng", "GET", f"/models/{INT64_OVER}/plots/x.png", 422,
         f"path.model_id: {LE}"),
    Case("plot-name-traversal", "eng", "GET", "/models/1/plots/..%2F..%2Fx.png", 404, "Not Found"),
    Case("static-dotfile", "eng", "GET", "/static/.htaccess", 404, "no static file '.htaccess'"),
    Case("static-traversal", "eng", "GET", "/static/..%2F..%2Fapp.py", 404, "Not Found"),
    Case("static-nul", "eng", "GET", "/static/annotate.html%00.js", 404, "no static file"),
    # -- headers
    Case("token-8k-chars", "eng", "GET", "/users/me", 401, "invalid API token",
         {"headers": {"Authorization": "Bearer " + "a" * 8000}}),
]
# fmt: on


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_input_is_refused_and_leaves_nothing(target: Target, case: Case) -> None:
    token = target.engineer if case.who == "eng" else target.annotator
    path = case.path.format(
        pid=target.pid,
        image_id=target.image_id,
        task_id=target.task_id,
        webhook_id=target.webhook_id,
    )
    kwargs = case.kwargs(target) if callable(case.kwargs) else dict(case.kwargs or {})
    before = snapshot(target)
    with target.stack.client(token) as c:
        r = c.request(case.method, path, **kwargs)
    after = snapshot(target)
    assert r.status_code == case.status, r.text[:500]
    text = detail_text(r.json())
    assert case.detail.lower() in text.lower(), text
    assert after["counts"] == before["counts"]
    assert after["rows"] == before["rows"]
    assert after["blobs"] == before["blobs"]


def test_case_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


# --- file names --------------------------------------------------------------------------------

NAMES = [
    (b"../../etc/passwd", "passwd"),
    (b"/etc/shadow", "shadow"),
    (b"..\\..\\windows\\win.ini", "win.ini"),
    (b"C:\\Users\\x\\evil.png", "evil.png"),
    (b"a\x00b.png", "ab.png"),
    (b"tab\there.png", "tabhere.png"),
    ("图像 ünïcödé 🙂.png".encode(), "图像 ünïcödé 🙂.png"),
    (b"  ", "unnamed"),
    (b"../", "unnamed"),
    (b"y" * 1000 + b".png", "y" * 255),
]


def files_under(root: Path) -> set[str]:
    """Files under the data folder, but the SQLite database's own (journal, WAL)."""
    return {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.name.startswith("activeseg.db")
    }


@pytest.mark.parametrize("raw,stored", NAMES, ids=[f"name{i}" for i in range(len(NAMES))])
def test_file_names_are_stored_sanitised_never_used_as_paths(
    target: Target, raw: bytes, stored: str
) -> None:
    stack = target.stack
    data_dir = Path(stack.env["ACTIVESEG_DATA_DIR"])
    content = image_bytes(8, 8, seed=int(hashlib.sha256(raw).hexdigest()[:6], 16))
    key = hashlib.sha256(content).hexdigest()
    before = files_under(data_dir)
    body, headers = multipart("files", raw, content)
    with stack.client(target.engineer) as c:
        r = c.post(f"/projects/{target.pid}/images", content=body, headers=headers)
    assert r.status_code == 201, r.text[:300]
    image = r.json()["data"][0]["image"]
    assert image["filename"] == stored
    # The only new file is the content-addressed blob: no path was made from the name.
    new = files_under(data_dir) - before
    assert [Path(p).name for p in new] == [key]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        row = s.get(ImageRow, image["id"])
        assert row is not None and (row.filename, row.blob_key) == (stored, key)
        s.delete(row)  # the hostile cases expect the project as the fixture made it
    stack.store.delete(key)  # type: ignore[attr-defined]


def test_label_studio_predict_with_hostile_urls_answers_per_task(target: Target) -> None:
    """Label Studio's protocol answers 200 with a skip (no ``result``: Label Studio then stores
    nothing) per task it cannot predict."""
    urls = [f"/images/{INT64_OVER}/file", "../../etc/passwd", "file:///etc/passwd", "?d=" + "/" * 9]
    tasks = [{"id": i, "data": {"image": u}} for i, u in enumerate(urls)]
    before = snapshot(target)
    with target.stack.client(target.engineer) as c:
        r = c.post(f"/ls/{target.pid}/predict", json={"tasks": tasks})
    assert r.status_code == 200, r.text[:300]
    results = r.json()["results"]
    assert [res.get("skipped") for res in results] == [
        f"no image of project {target.pid} at {u}" for u in urls
    ]
    assert not any("result" in res for res in results)
    assert snapshot(target) == before


def test_label_studio_webhook_answers_outsiders_404_even_for_ignored_events(
    target: Target,
) -> None:
    """An ignored event was acknowledged to anyone with a token, for any project id; and a NaN
    ``action`` made the acknowledgement itself fail (500)."""
    with target.stack.client(target.stack.admin_token) as admin:
        _, outsider = make_user(admin, "engineer")
    nan_action = raw_json('{"action": NaN}')
    with target.stack.client(outsider) as c:
        r = c.post(f"/ls/{target.pid}/webhook", json={"action": "PROJECT_UPDATED"})
        assert (r.status_code, r.json()) == (404, {"detail": f"project {target.pid} not found"})
    with target.stack.client(target.annotator) as c:
        r = c.post(f"/ls/{target.pid}/webhook", **nan_action)
        assert (r.status_code, r.json()) == (200, {"status": "ignored", "event": None})
        r = c.post(f"/ls/{target.pid}/webhook", json={"action": "PROJECT_UPDATED"})
        assert r.json() == {"status": "ignored", "event": "PROJECT_UPDATED"}


def test_the_attacked_project_still_works(target: Target) -> None:
    """After every refusal the project answers normally: the task is still leased to the
    annotator and a valid answer is stored."""
    with target.stack.client(target.annotator) as c:
        r = c.post(f"/tasks/{target.task_id}/submit", **SUBMIT_OK(target))
    assert r.status_code == 201, r.text
    with target.stack.db.session() as s:  # type: ignore[attr-defined]
        image = s.get(ImageRow, target.image_id)
        assert image is not None and image.current_revision == 1
        assert image.labelled_pixels == 16 * 16 * len(target.regions)
