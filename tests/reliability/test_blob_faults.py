"""A blob write that fails half-way through a request: the client gets a clear error, no row
points at a missing blob, no row was added, and the orphan sweep removes what was written.

The fault: the store's ``put`` fails with a real ``OSError`` from the Nth call on (ENOSPC: a
full disk; EROFS: a read-only one), either before writing (the disk filled up) or after the
bytes landed (the error came from a later step, e.g. a directory fsync), on the live server's
own store. Services write the blob first and commit the row after, so the rows of the request
roll back and only unreferenced blobs (orphans) can be left behind. The error is injected at
``put`` because the real causes cannot be made here: the tests run as root (a read-only
folder does not stop root) and cannot mount a small filesystem to fill up.

Status choice: 507 Insufficient Storage for ENOSPC/EDQUOT (the request cannot succeed until
space is freed; a client should not retry at once) and 503 with Retry-After for other
storage errors (possibly transient). Both carry ``{"detail": ...}`` saying nothing was saved.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from activeseg.core.imaging import decode_index
from activeseg.core.services.blobs import (
    BLOB_KEY_COLUMNS,
    referenced_keys,
    sweep_orphan_blobs,
)
from activeseg.core.storage import LocalBlobStore, sha256_hex
from activeseg.core.tables import Base, Image, ModelVersion, Task
from tests.conftest import Stack
from tests.reliability.figures import record
from tests.utils import image_bytes, make_project, png_bytes, upload

GRACE_S = 0.5  # a tiny grace period, so the test can wait past it
FIGURES: dict[str, int] = {"faults_injected": 0, "rows_checked": 0, "orphans_swept": 0}


@pytest.fixture(scope="module", autouse=True)
def report_figures() -> Iterator[None]:
    yield
    record("blob faults", **FIGURES)


class FailingPut:
    """Stands in for ``store.put``: calls before the ``fail_at``-th pass through; from then on
    each call raises ``OSError(err)``, after storing the bytes when ``written``."""

    def __init__(
        self, put: Callable[[bytes], str], fail_at: int, err: int, written: bool = False
    ) -> None:
        self.put, self.fail_at, self.err, self.written = put, fail_at, err, written
        self.calls = self.faults = 0

    def __call__(self, data: bytes) -> str:
        self.calls += 1
        if self.calls < self.fail_at:
            return self.put(data)
        if self.written:
            self.put(data)
        self.faults += 1
        FIGURES["faults_injected"] += 1
        raise OSError(self.err, os.strerror(self.err))


def row_counts(stack: Stack) -> dict[str, int]:
    """Rows per table, every table of the schema."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        return {
            t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
            for t in Base.metadata.sorted_tables
        }


def project_blob_refs(stack: Stack, project_id: int) -> list[str]:
    """Every blob key a row of the project holds: each blob-key column, and the checkpoints."""
    keys: list[str] = []
    with stack.db.session() as s:  # type: ignore[attr-defined]
        for column in BLOB_KEY_COLUMNS:
            table = column.class_
            query = select(column).where(column.is_not(None))
            if hasattr(table, "project_id"):
                query = query.where(table.project_id == project_id)
            elif hasattr(table, "image_id"):
                query = query.join(Image, Image.id == table.image_id).where(
                    Image.project_id == project_id
                )
            else:  # an overlapping task's answer: its task names the project
                query = query.join(Task, Task.id == table.task_id).where(
                    Task.project_id == project_id
                )
            keys += list(s.scalars(query))
        for members in s.scalars(
            select(ModelVersion.member_keys).where(ModelVersion.project_id == project_id)
        ):
            keys += list(members)
    return keys


def assert_no_row_points_at_a_missing_blob(stack: Stack, project_id: int) -> int:
    refs = project_blob_refs(stack, project_id)
    missing = [k for k in refs if not stack.store.exists(k)]  # type: ignore[attr-defined]
    assert missing == []
    FIGURES["rows_checked"] += len(refs)
    return len(refs)


def unreferenced(stack: Stack) -> set[str]:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        return set(stack.store.keys()) - referenced_keys(s)  # type: ignore[attr-defined]


def sweep_and_check(stack: Stack, orphans_before: set[str], new_orphans: set[str]) -> None:
    """A sweep with a long grace period keeps the fresh orphans; past a tiny one, exactly the
    orphans (earlier ones of the session and this request's) go."""
    kept = sweep_orphan_blobs(stack.db, stack.store, grace_s=3600)  # type: ignore[arg-type]
    assert not set(kept.removed) & new_orphans
    assert all(stack.store.exists(k) for k in new_orphans)  # type: ignore[attr-defined]
    time.sleep(GRACE_S + 0.1)
    swept = sweep_orphan_blobs(stack.db, stack.store, grace_s=GRACE_S)  # type: ignore[arg-type]
    assert set(swept.removed) == orphans_before | new_orphans
    assert not any(stack.store.exists(k) for k in new_orphans)  # type: ignore[attr-defined]
    FIGURES["orphans_swept"] += len(new_orphans)


def test_multi_image_upload_fails_on_the_third_blob(
    stack: Stack, admin: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = stack.store
    assert isinstance(store, LocalBlobStore)
    pid = make_project(admin)["id"]
    rng = np.random.default_rng()
    files = [(f"img{i}.png", image_bytes(seed=int(rng.integers(1 << 31)))) for i in range(4)]
    counts, keys_before = row_counts(stack), set(store.keys())
    orphans_before = unreferenced(stack)
    fault = FailingPut(store.put, fail_at=3, err=errno.ENOSPC)
    monkeypatch.setattr(store, "put", fault)

    r = upload(admin, pid, *files)

    assert r.status_code == 507, r.text
    assert r.json() == {
        "detail": "blob storage is full (No space left on device); nothing was saved; "
        "free space and retry"
    }
    assert (fault.calls, fault.faults) == (3, 1)
    assert row_counts(stack) == counts  # no row added, in any table
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
    assert_no_row_points_at_a_missing_blob(stack, pid)
    written = set(store.keys()) - keys_before
    assert written == {sha256_hex(files[0][1]), sha256_hex(files[1][1])}  # the two before
    sweep_and_check(stack, orphans_before, written)

    monkeypatch.undo()  # the disk has space again: the same upload now succeeds whole
    r = upload(admin, pid, *files)
    assert r.status_code == 201, r.text
    assert r.json()["created"] == 4
    assert assert_no_row_points_at_a_missing_blob(stack, pid) == 4


@pytest.mark.parametrize(
    ("err", "status", "written"),
    [(errno.ENOSPC, 507, True), (errno.EROFS, 503, False)],
    ids=["full-after-write", "read-only"],
)
def test_mask_submit_fails_on_its_blob(
    stack: Stack,
    admin: httpx.Client,
    monkeypatch: pytest.MonkeyPatch,
    err: int,
    status: int,
    written: bool,
) -> None:
    store = stack.store
    assert isinstance(store, LocalBlobStore)
    pid = make_project(admin)["id"]
    r = upload(
        admin, pid, ("one.png", image_bytes(seed=int(np.random.default_rng().integers(9**9))))
    )
    image_id = r.json()["data"][0]["image"]["id"]
    first = np.full((32, 48), 255, np.uint8)
    first[:8] = 1
    mask_url = f"/images/{image_id}/mask"
    assert admin.put(mask_url, files={"file": ("m.png", png_bytes(first))}).status_code == 201
    second = first.copy()
    second[8:16] = 2
    before: dict[str, Any] = admin.get(f"/images/{image_id}").json()
    counts, keys_before = row_counts(stack), set(store.keys())
    orphans_before = unreferenced(stack)
    fault = FailingPut(store.put, fail_at=1, err=err, written=written)
    monkeypatch.setattr(store, "put", fault)

    r = admin.put(mask_url, files={"file": ("m.png", png_bytes(second))})

    assert r.status_code == status, r.text
    reason = os.strerror(err)
    if status == 507:
        assert r.json()["detail"].startswith(f"blob storage is full ({reason})")
    else:
        assert r.json() == {"detail": f"blob storage failed ({reason}); nothing was saved; "
                            "retry later"}  # fmt: skip
        assert r.headers["retry-after"] == "5"
    assert fault.faults == 1
    assert row_counts(stack) == counts
    assert admin.get(f"/images/{image_id}").json() == before  # revision 1, same labelled pixels
    got = admin.get(mask_url)
    assert got.headers["x-label-revision"] == "1"
    assert np.array_equal(decode_index(got.content), first)  # the pixels (not the encoding)
    assert_no_row_points_at_a_missing_blob(stack, pid)
    written_now = set(store.keys()) - keys_before
    assert len(written_now) == (1 if written else 0)
    sweep_and_check(stack, orphans_before, written_now)

    monkeypatch.undo()
    r = admin.put(mask_url, files={"file": ("m.png", png_bytes(second))})
    assert (r.status_code, r.json()["revision"]) == (201, 2)
    assert assert_no_row_points_at_a_missing_blob(stack, pid) == 3  # image + two revisions
