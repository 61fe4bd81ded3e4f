"""Overlap 3 over real HTTP: a region is answered by 3 different annotators, never twice by
one; the consensus (plurality per pixel, ties unlabelled) becomes the label; answers that
agree too little are held back as 'disputed'; agreement and Fleiss' kappa are reported."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from activeseg.core.tables import Task
from tests.conftest import Stack
from tests.utils import grid_project, image_bytes, make_user, png_bytes, upload

N = 255


def _task(stack: Stack, pid: int, image_id: int, priority: float) -> int:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        task = Task(
            project_id=pid,
            image_id=image_id,
            regions=[0],
            region_key="0",
            region_kind="grid",
            region_size=16,
            measure="entropy",
            priority=priority,
        )
        s.add(task)
        s.flush()
        return task.id


def _patch(rows: dict[int, int]) -> str:
    """A 16x16 answer over tile 0: row y gets class rows[y] (missing rows: unlabelled)."""
    patch = np.full((16, 16), N, np.uint8)
    for y, cls in rows.items():
        patch[y] = cls
    return base64.b64encode(png_bytes(patch)).decode()


@pytest.fixture
def team(stack: Stack, admin):  # type: ignore[no-untyped-def]
    pid = grid_project(admin, overlap=3, agreement_threshold=0.4)["id"]
    images = upload(admin, pid, *[(f"{i}.png", image_bytes(16, 16, seed=i)) for i in range(2)])
    ids = [row["image"]["id"] for row in images.json()["data"]]
    tasks = [_task(stack, pid, ids[0], 2.0), _task(stack, pid, ids[1], 1.0)]
    clients = []
    for _ in range(4):
        uid, token = make_user(admin, "annotator")
        admin.post(f"/projects/{pid}/members", json={"user_id": uid})
        clients.append(stack.client(token))
    yield pid, ids, tasks, clients
    for c in clients:
        c.close()


def _lease(client: httpx.Client, pid: int) -> int | None:
    r = client.post(f"/projects/{pid}/tasks/next")
    assert r.status_code in (200, 204), r.text
    return r.json()["task"]["id"] if r.status_code == 200 else None


def test_three_answers_make_the_consensus_and_nobody_answers_twice(admin, team) -> None:  # type: ignore[no-untyped-def]
    pid, ids, (t1, t2), (a, b, c, d) = team
    answers = {  # rows 0-3: all agree; 4-7: two say 1, one says 2; 8: 0/1/2 tie; 9+: nobody
        a: {**{y: 0 for y in range(4)}, **{y: 1 for y in range(4, 8)}, 8: 0},
        b: {**{y: 0 for y in range(4)}, **{y: 1 for y in range(4, 8)}, 8: 1},
        c: {**{y: 0 for y in range(4)}, **{y: 2 for y in range(4, 8)}, 8: 2},
    }
    for n, (client, rows) in enumerate(answers.items(), start=1):
        assert _lease(client, pid) == t1  # the highest priority, still open to this annotator
        r = client.post(f"/tasks/{t1}/submit", json={"patch_png": _patch(rows)})
        assert r.status_code == 201, r.text
        assert r.json()["task"]["answers"] == n
        assert (r.json()["revision"] is None) == (n < 3)
        if n < 3:  # back in the queue; the one who answered gets the other task next
            assert r.json()["task"]["state"] == "queued"
            assert _lease(client, pid) == t2
            assert client.post(f"/tasks/{t2}/release").status_code == 200
    done = r.json()
    assert done["task"]["state"] == "submitted"
    assert done["revision"]["source"] == "consensus"
    assert done["task"]["agreement"] == pytest.approx(64 / (9 * 16))  # rows 0-3 of rows 0-8
    mask = np.asarray(PILImage.open(io.BytesIO(admin.get(f"/images/{ids[0]}/mask").content)))
    expected = np.full((16, 16), N, np.uint8)
    expected[:4], expected[4:8] = 0, 1  # row 8 tied: unlabelled
    assert np.array_equal(mask, expected)
    # Nobody answers twice: a second answer is refused, a retry of the first is a no-op.
    again = a.post(f"/tasks/{t1}/submit", json={"patch_png": _patch({0: 2})})
    assert again.status_code == 409 and "already answered" in again.json()["detail"]
    retry = c.post(f"/tasks/{t1}/submit", json={"patch_png": _patch(answers[c])})
    assert retry.status_code == 200 and retry.json()["created"] is False
    # The fourth annotator only gets the other task; those who answered t1 never see it again.
    assert _lease(d, pid) == t2
    stats = admin.get(f"/projects/{pid}/annotators").json()["data"]
    by_name = {row["user_id"]: row["consensus_agreement"] for row in stats}
    me = [client.get("/users/me").json()["id"] for client in (a, b, c)]
    # a and b: 72 of 144 labelled pixels match (rows 0-7), row 8 not; c: 64 of 144
    assert [by_name[u] for u in me] == [pytest.approx(128 / 144, abs=1e-3)] * 2 + [
        pytest.approx(64 / 144, abs=1e-3)
    ]


def test_answers_that_disagree_are_held_back_as_disputed(admin, team) -> None:  # type: ignore[no-untyped-def]
    pid, ids, (t1, _), (a, b, c, _) = team
    for client, cls in ((a, 0), (b, 1), (c, 1)):
        assert _lease(client, pid) == t1
        r = client.post(f"/tasks/{t1}/submit", json={"classes": {"0": cls}})
        assert r.status_code == 201, r.text
    assert r.json()["task"]["state"] == "disputed" and r.json()["revision"] is None
    assert r.json()["task"]["agreement"] == 0.0  # no pixel with all three the same
    assert admin.get(f"/images/{ids[0]}/revisions").json()["count"] == 0  # nothing to train on
    report = admin.get(f"/projects/{pid}/agreement").json()
    # every pixel rated 0, 1, 1 by three raters: P_i = 1/3, p = (1/3, 2/3): Pe = 5/9
    assert report == {
        "overlap": 3,
        "tasks": 1,
        "disputed": 1,
        "pixel_agreement": 0.0,
        "fleiss_kappa": pytest.approx((1 / 3 - 5 / 9) / (1 - 5 / 9)),
    }
