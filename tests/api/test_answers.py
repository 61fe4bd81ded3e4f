"""What an answer to a task must be: it labels some pixel of the task's regions, and an
idempotency key names one answer (a retry repeats it; another answer under it is refused)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from activeseg.core.tables import Task
from tests.conftest import Stack
from tests.utils import grid_project, image_bytes, make_user, png_bytes, upload

# Grid tiles of 16 px on a 32x32 image, numbered row by row:  0 1
#                                                              2 3
# The task holds tiles 0 and 3: its bounding box is the whole image, and tiles 1 and 2 lie
# inside the box but outside the task's regions.
TILES = {0: (0, 0), 1: (0, 16), 2: (16, 0), 3: (16, 16)}
TASK_REGIONS = [0, 3]


def tile(arr: np.ndarray, region: int) -> np.ndarray:
    y, x = TILES[region]
    return arr[y : y + 16, x : x + 16]


def b64png(arr: np.ndarray) -> str:
    return base64.b64encode(png_bytes(arr)).decode()


def unlabelled() -> np.ndarray:
    return np.full((32, 32), 255, np.uint8)


@dataclass
class Leased:
    pid: int
    task_id: int
    image_id: int
    annotator: httpx.Client  # holds the lease
    other: httpx.Client  # another annotator of the project

    def submit(self, body: dict[str, object], key: str | None = None) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.annotator.post(f"/tasks/{self.task_id}/submit", json=body, headers=headers)

    def mask(self) -> np.ndarray:
        r = self.annotator.get(f"/images/{self.image_id}/mask")
        assert r.status_code == 200, r.text
        return np.asarray(PILImage.open(io.BytesIO(r.content)))

    def revisions(self) -> int:
        return int(self.annotator.get(f"/images/{self.image_id}/revisions").json()["count"])


@pytest.fixture
def leased(stack: Stack, admin) -> Iterator[Leased]:  # type: ignore[no-untyped-def]
    """One hand-made task over tiles 0 and 3 of one image, leased by an annotator."""
    pid = grid_project(admin)["id"]
    [row] = upload(admin, pid, ("a.png", image_bytes(32, 32, seed=91))).json()["data"]
    image_id = row["image"]["id"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        task = Task(
            project_id=pid,
            image_id=image_id,
            regions=TASK_REGIONS,
            region_key="0,3",
            region_kind="grid",
            region_size=16,
            measure="entropy",
            priority=1.0,
        )
        s.add(task)
        s.flush()
        task_id = task.id
    tokens = []
    for _ in range(2):
        uid, token = make_user(admin, "annotator")
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
        tokens.append(token)
    annotator, other = stack.client(tokens[0]), stack.client(tokens[1])
    lease = annotator.post(f"/projects/{pid}/tasks/next")
    assert lease.status_code == 200, lease.text
    assert lease.json()["task"]["id"] == task_id
    assert lease.json()["bbox"] == [0, 0, 32, 32]
    inside = np.asarray(
        PILImage.open(io.BytesIO(base64.b64decode(lease.json()["region_mask_png"])))
    )
    expected_inside = np.zeros((32, 32), np.uint8)
    tile(expected_inside, 0)[:] = 1
    tile(expected_inside, 3)[:] = 1
    assert np.array_equal(inside, expected_inside)
    yield Leased(pid, task_id, image_id, annotator, other)
    annotator.close()
    other.close()


def test_an_answer_that_labels_no_pixel_of_the_regions_is_refused(leased: Leased) -> None:
    nothing = leased.submit({"patch_png": b64png(unlabelled())})
    assert nothing.status_code == 422
    assert nothing.json()["detail"] == (
        "the answer labels no pixel of the task's regions; label at least one, or skip the task "
        f"with POST /tasks/{leased.task_id}/skip"
    )
    # Labels in the bounding box but outside the regions (tiles 1 and 2) are refused as such.
    outside = unlabelled()
    tile(outside, 1)[:] = 2
    r = leased.submit({"patch_png": b64png(outside)})
    assert r.status_code == 422 and "outside the task's regions" in r.json()["detail"]

    # Nothing was stored, and the task is still the caller's: not requeued, not submitted.
    assert leased.revisions() == 0
    task = leased.annotator.get(f"/tasks/{leased.task_id}").json()
    assert task["state"] == "leased"
    assert leased.annotator.post(f"/tasks/{leased.task_id}/heartbeat").status_code == 200
    assert leased.other.post(f"/projects/{leased.pid}/tasks/next").status_code == 204

    # One labelled pixel inside tile 3 is an answer: stored exactly, and nothing else.
    one = unlabelled()
    one[20, 30] = 1
    r = leased.submit({"patch_png": b64png(one)})
    assert r.status_code == 201, r.text
    assert r.json()["revision"]["labelled_pixels"] == 1
    assert r.json()["task"]["state"] == "submitted"
    assert np.array_equal(leased.mask(), one)


def test_a_retry_under_the_same_key_gets_the_first_answer_back(leased: Leased) -> None:
    answer = unlabelled()
    tile(answer, 0)[:8] = 1
    tile(answer, 3)[:] = 2
    first = leased.submit({"patch_png": b64png(answer)}, key="retry-1")
    assert first.status_code == 201, first.text
    again = leased.submit({"patch_png": b64png(answer)}, key="retry-1")
    assert again.status_code == 200, again.text
    assert again.json()["created"] is False
    assert again.json()["revision"] == first.json()["revision"]
    # The key in the body is the same key as the header's.
    body_key = leased.submit({"patch_png": b64png(answer), "idempotency_key": "retry-1"})
    assert (
        body_key.status_code == 200
        and body_key.json()["revision"]["id"] == (first.json()["revision"]["id"])
    )
    assert leased.revisions() == 1
    assert np.array_equal(leased.mask(), answer)


def test_another_answer_under_a_used_key_is_refused(leased: Leased) -> None:
    answer = unlabelled()
    tile(answer, 0)[:] = 1
    tile(answer, 3)[:] = 2
    first = leased.submit({"patch_png": b64png(answer)}, key="fix-me")
    assert first.status_code == 201, first.text

    corrected = answer.copy()
    corrected[31, 31] = 0  # one pixel of tile 3 changed
    r = leased.submit({"patch_png": b64png(corrected)}, key="fix-me")
    assert r.status_code == 422
    assert r.json()["detail"] == (
        "this Idempotency-Key was already used with a different request body; task "
        f"{leased.task_id} keeps the answer stored first (revision 1)"
    )
    # As classes instead of a patch, and different: refused too.
    r = leased.submit({"classes": {"0": 1, "3": 1}}, key="fix-me")
    assert r.status_code == 422 and "different request body" in r.json()["detail"]
    # The same labels sent as one class per region are the same answer: the first comes back.
    same = leased.submit({"classes": {"0": 1, "3": 2}}, key="fix-me")
    assert (
        same.status_code == 200
        and same.json()["revision"]["id"] == (first.json()["revision"]["id"])
    )
    # Nothing of the refused corrections was stored.
    assert leased.revisions() == 1
    assert np.array_equal(leased.mask(), answer)


def test_a_used_key_with_an_answer_that_labels_nothing_is_refused(leased: Leased) -> None:
    answer = unlabelled()
    tile(answer, 3)[:] = 0
    assert leased.submit({"patch_png": b64png(answer)}, key="k").status_code == 201
    r = leased.submit({"patch_png": b64png(unlabelled())}, key="k")
    assert r.status_code == 422 and "labels no pixel" in r.json()["detail"]
    assert leased.revisions() == 1
