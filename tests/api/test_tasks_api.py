"""Task leasing, heartbeat, release, skip, submission and expiry over real HTTP."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, update

from activeseg.core.tables import LabelRevision, Project, Task
from tests.conftest import Stack
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_project,
    make_user,
    png_bytes,
    sql_statements,
    upload,
)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def queued(stack: Stack, admin) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """A project of 3 images 32x32, grid tiles of 16 (4 regions each), 6 tasks queued with
    known priorities 0.1 .. 0.6, and two annotators who are members."""
    project = grid_project(admin)
    pid = project["id"]
    files = [(f"{i}.png", image_bytes(32, 32, seed=40 + i)) for i in range(3)]
    images = [d["image"] for d in upload(admin, pid, *files).json()["data"]]
    build_queue_inline(stack, pid)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rows = s.scalars(select(Task).where(Task.project_id == pid).order_by(Task.id)).all()
        assert len(rows) == 6
        for i, t in enumerate(rows):
            t.priority = 0.1 * (i + 1)
        ids = [t.id for t in rows]
    users = []
    for _ in range(2):
        uid, token = make_user(admin, "annotator")
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
        users.append(token)
    return {"pid": pid, "task_ids": ids, "images": images, "ann": users}


def test_leases_follow_priority_then_204(stack: Stack, queued) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    with stack.client(queued["ann"][0]) as c:
        order = [c.post(f"/projects/{pid}/tasks/next").json()["task"]["id"] for _ in range(6)]
        assert order == queued["task_ids"][::-1]  # priority 0.6 first
        assert c.post(f"/projects/{pid}/tasks/next").status_code == 204
        assert c.get(f"/projects/{pid}/queue").json()["leased"] == 6


def test_lease_payload_counts_show_this_annotators_moves(
    stack: Stack, queued, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """The payload's counts are kept between counts (activeseg.core.services.tasks), but every
    lease, submit, skip and release this process makes is applied to them: with counts kept
    for an hour, each payload still matches GET /queue exactly."""
    from activeseg.core.services import tasks as task_service

    monkeypatch.setattr(task_service, "QUEUE_COUNTS_TTL_S", 3600.0)
    pid = queued["pid"]
    with stack.client(queued["ann"][0]) as c:

        def lease() -> dict[str, Any]:
            r = c.post(f"/projects/{pid}/tasks/next")
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            exact = c.get(f"/projects/{pid}/queue").json()
            shown = body["queue"]
            assert shown == {k: exact[k] for k in shown}
            return body

        first = lease()["task"]
        assert lease()["queue"]["leased"] == 2  # a second lease, counted by its move
        region = first["regions"][0]
        sub = c.post(f"/tasks/{first['id']}/submit", json={"classes": {str(region): 1}})
        assert sub.status_code == 201, sub.text
        third = lease()
        assert (third["queue"]["submitted"], third["queue"]["leased"]) == (1, 2)
        assert c.post(f"/tasks/{third['task']['id']}/skip", json={"reason": "unclear"}).is_success
        assert c.post(f"/tasks/{third['task']['id']}/release").status_code == 409  # skipped
        fourth = lease()
        assert (fourth["queue"]["skipped"], fourth["queue"]["queued"]) == (1, 2)
        assert c.post(f"/tasks/{fourth['task']['id']}/release").is_success
        assert lease()["queue"]["queued"] == 2


def test_stale_payload_counts_are_recounted_beside_the_request(
    stack: Stack, queued, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Kept counts past their age are shown once more while one thread counts again; the
    next payload shows the recount, with a move made behind this process's back."""
    from activeseg.core.services import tasks as task_service

    pid = queued["pid"]
    monkeypatch.setattr(task_service, "QUEUE_COUNTS_TTL_S", 3600.0)
    with stack.client(queued["ann"][0]) as c:
        assert c.post(f"/projects/{pid}/tasks/next").json()["queue"]["leased"] == 1
        # Another process skips a task: this process's kept counts do not know.
        with stack.db.session() as s:  # type: ignore[attr-defined]
            s.execute(update(Task).where(Task.id == queued["task_ids"][0]).values(state="skipped"))
        monkeypatch.setattr(task_service, "QUEUE_COUNTS_TTL_S", 0.0)
        stale = c.post(f"/projects/{pid}/tasks/next").json()["queue"]
        assert (stale["leased"], stale["skipped"], stale["queued"]) == (2, 0, 4)
        assert task_service.queue_recounts_done(timeout=60)
        monkeypatch.setattr(task_service, "QUEUE_COUNTS_TTL_S", 3600.0)
        fresh = c.post(f"/projects/{pid}/tasks/next").json()["queue"]
        assert (fresh["leased"], fresh["skipped"], fresh["queued"]) == (3, 1, 2)
        assert fresh == {
            k: v for k, v in c.get(f"/projects/{pid}/queue").json().items() if k in fresh
        }


def test_lease_payload_and_region_answer_make_the_exact_mask(stack: Stack, queued) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    with stack.client(queued["ann"][0]) as c:
        lease = c.post(f"/projects/{pid}/tasks/next").json()
        task = lease["task"]
        region = task["regions"][0]
        # Grid tiles of 16 on 32x32, numbered row by row.
        y0, x0 = 16 * (region // 2), 16 * (region % 2)
        assert lease["bbox"] == [y0, x0, y0 + 16, x0 + 16]
        assert lease["crop"] == [max(0, y0 - 8), max(0, x0 - 8), min(32, y0 + 24), min(32, x0 + 24)]
        inside = decode_png(base64.b64decode(lease["region_mask_png"]))
        assert inside.shape == (16, 16) and inside.all()
        # a signed link (tests/api/test_signed_links.py): path, then exp, kid and sig only
        path, query = lease["image_url"].split("?")
        assert path == f"/images/{task['image_id']}/file"
        assert sorted(p.split("=")[0] for p in query.split("&")) == ["exp", "kid", "sig"]
        assert lease["lease_expires_at"] > datetime.now(UTC).isoformat()

        r = c.post(
            f"/tasks/{task['id']}/submit",
            json={"classes": {str(region): 2}, "idempotency_key": "k1"},
        )
        assert r.status_code == 201, r.text
        rev = r.json()["revision"]
        assert (rev["revision"], rev["labelled_pixels"], rev["task_id"]) == (1, 256, task["id"])
        mask = decode_png(c.get(f"/images/{task['image_id']}/mask").content)
        expected = np.full((32, 32), 255, np.uint8)
        expected[y0 : y0 + 16, x0 : x0 + 16] = 2
        assert np.array_equal(mask, expected)

        # The same request again (a retry after a lost response): stored once.
        again = c.post(
            f"/tasks/{task['id']}/submit",
            json={"classes": {str(region): 2}, "idempotency_key": "k1"},
        )
        assert again.status_code == 200 and again.json()["revision"]["id"] == rev["id"]
        history = c.get(f"/images/{task['image_id']}/revisions").json()
        assert history["count"] == 1
        # A different answer to a submitted task is refused.
        other = c.post(f"/tasks/{task['id']}/submit", json={"classes": {str(region): 1}})
        assert other.status_code == 409


def test_mask_patch_submission_and_its_checks(stack: Stack, queued) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    with stack.client(queued["ann"][0]) as c:
        lease = c.post(f"/projects/{pid}/tasks/next").json()
        tid, iid = lease["task"]["id"], lease["task"]["image_id"]
        y0, x0, y1, x1 = lease["bbox"]
        patch = np.full((y1 - y0, x1 - x0), 255, np.uint8)
        patch[:8, :] = 1
        patch[8:, :4] = 0  # the rest stays unlabelled
        b64 = base64.b64encode(png_bytes(patch)).decode()
        bad_cases = [
            ({"patch_png": base64.b64encode(png_bytes(patch[:-1])).decode()}, "bounding box"),
            ({"patch_png": base64.b64encode(png_bytes(np.full_like(patch, 7))).decode()}, "[7]"),
            ({"patch_png": "not base64!"}, "base64"),
            ({"patch_png": b64, "classes": {"0": 1}}, "either"),
            ({"classes": {"99": 1}}, "one class for each region"),
            ({"classes": {str(lease["task"]["regions"][0]): 9}}, "class 9"),
        ]
        for body, words in bad_cases:
            r = c.post(f"/tasks/{tid}/submit", json=body)
            assert r.status_code == 422, (body, r.text)
            assert words in r.json()["detail"] if isinstance(r.json()["detail"], str) else True
        assert c.get(f"/images/{iid}/revisions").json()["count"] == 0  # nothing stored

        r = c.post(f"/tasks/{tid}/submit", json={"patch_png": b64})
        assert r.status_code == 201, r.text
        mask = decode_png(c.get(f"/images/{iid}/mask").content)
        assert np.array_equal(mask[y0:y1, x0:x1], patch)
        assert (mask != 255).sum() == 8 * 16 + 8 * 4


def test_patch_outside_the_region_is_refused(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    """With superpixels the bbox holds pixels of other regions: labelling them is refused."""
    project = make_project(
        admin,
        n_classes=2,
        region_kind="superpixel",
        region_size=8,
        batch_size=50,
        per_image_cap=None,
    )
    pid = project["id"]
    yy, xx = np.mgrid[:48, :48]
    disc = np.where((yy - 20) ** 2 + (xx - 26) ** 2 < 15**2, 220, 30).astype(np.uint8)
    upload(admin, pid, ("disc.png", png_bytes(disc)))
    build_queue_inline(stack, pid)
    # Lease until a superpixel that does not fill its bounding box (the disc's edge has them).
    while True:
        r = admin.post(f"/projects/{pid}/tasks/next")
        assert r.status_code == 200, "every superpixel was a rectangle"
        lease = r.json()
        inside = decode_png(base64.b64decode(lease["region_mask_png"])).astype(bool)
        if not inside.all():
            break
    patch = np.ones(inside.shape, np.uint8)  # labels every bbox pixel
    r = admin.post(
        f"/tasks/{lease['task']['id']}/submit",
        json={"patch_png": base64.b64encode(png_bytes(patch)).decode()},
    )
    assert r.status_code == 422 and "outside" in r.json()["detail"]
    patch[~inside] = 255
    r = admin.post(
        f"/tasks/{lease['task']['id']}/submit",
        json={"patch_png": base64.b64encode(png_bytes(patch)).decode()},
    )
    assert r.status_code == 201
    assert r.json()["revision"]["labelled_pixels"] == int(inside.sum())


def test_heartbeat_release_skip(stack: Stack, queued) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    a, b = (stack.client(t) for t in queued["ann"])
    with a, b:
        lease = a.post(f"/projects/{pid}/tasks/next").json()
        tid = lease["task"]["id"]
        assert b.post(f"/tasks/{tid}/heartbeat").status_code == 409  # not b's lease
        beat = a.post(f"/tasks/{tid}/heartbeat").json()
        assert beat["lease_expires_at"] >= lease["lease_expires_at"]
        assert a.post(f"/tasks/{tid}/release").json()["state"] == "queued"
        # Released: the next lease (by anyone) gets it again, as the top priority.
        again = b.post(f"/projects/{pid}/tasks/next").json()
        assert again["task"]["id"] == tid
        skipped = b.post(f"/tasks/{tid}/skip", json={"reason": "unclear"}).json()
        assert (skipped["state"], skipped["skip_reason"]) == ("skipped", "unclear")
        assert b.post(f"/tasks/{tid}/skip", json={"reason": ""}).status_code == 422
        nxt = b.post(f"/projects/{pid}/tasks/next").json()
        assert nxt["task"]["id"] != tid


def _expire(stack: Stack, task_id: int) -> None:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(
            update(Task)
            .where(Task.id == task_id)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_expired_lease_goes_back_and_late_submission_rules(stack: Stack, queued) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    a, b = (stack.client(t) for t in queued["ann"])
    with a, b:
        first = a.post(f"/projects/{pid}/tasks/next").json()
        tid, region = first["task"]["id"], str(first["task"]["regions"][0])
        _expire(stack, tid)
        assert a.post(f"/tasks/{tid}/heartbeat").status_code == 409  # too late to extend
        # b leases: the lapsed task is returned to the queue at lease time and is top priority.
        taken = b.post(f"/projects/{pid}/tasks/next").json()
        assert taken["task"]["id"] == tid
        late = a.post(f"/tasks/{tid}/submit", json={"classes": {region: 1}})
        assert late.status_code == 409 and "someone else" in late.json()["detail"]
        assert b.post(f"/tasks/{tid}/submit", json={"classes": {region: 0}}).status_code == 201

        # Lapsed, and nobody took it since: the late answer is accepted, not thrown away.
        second = a.post(f"/projects/{pid}/tasks/next").json()
        tid2, region2 = second["task"]["id"], str(second["task"]["regions"][0])
        _expire(stack, tid2)
        r = a.post(f"/tasks/{tid2}/submit", json={"classes": {region2: 1}})
        assert r.status_code == 201, r.text
    with stack.db.session() as s:  # type: ignore[attr-defined]
        authors = s.execute(
            select(LabelRevision.task_id, LabelRevision.author_id).where(
                LabelRevision.task_id.in_([tid, tid2])
            )
        ).all()
    assert len(authors) == 2


def test_outsiders_cannot_lease(stack: Stack, queued, admin) -> None:  # type: ignore[no-untyped-def]
    _, outsider = make_user(admin, "annotator")
    with stack.client(outsider) as c:
        assert c.post(f"/projects/{queued['pid']}/tasks/next").status_code == 404
        assert c.post(f"/tasks/{queued['task_ids'][0]}/heartbeat").status_code == 404


def test_auto_retrain_fires_once_per_threshold(stack: Stack, queued, admin) -> None:  # type: ignore[no-untyped-def]
    pid = queued["pid"]
    assert admin.patch(f"/projects/{pid}", json={"settings": {"auto_retrain_every": 2}}).is_success

    def retrains() -> list[dict[str, Any]]:
        jobs = admin.get(f"/projects/{pid}/jobs").json()["data"]
        return [j for j in jobs if j["kind"] == "retrain"]

    with stack.client(queued["ann"][0]) as c:
        for n, expected in [(1, 0), (2, 1), (3, 1)]:
            lease = c.post(f"/projects/{pid}/tasks/next").json()
            region = str(lease["task"]["regions"][0])
            key = f"auto-{n}"
            r = c.post(
                f"/tasks/{lease['task']['id']}/submit",
                json={"classes": {region: 1}, "idempotency_key": key},
            )
            assert r.status_code == 201
            # A retried submission is not a new label: it must not count toward the trigger.
            c.post(
                f"/tasks/{lease['task']['id']}/submit",
                json={"classes": {region: 1}, "idempotency_key": key},
            )
            assert len(retrains()) == expected, n
    assert retrains()[0]["params"] == {"trigger": "auto"}
    assert admin.get(f"/projects/{pid}").json()["settings"]["auto_retrain_every"] == 2


def test_labels_count_toward_auto_retrain_only_from_when_it_is_on(
    stack: Stack, queued, admin
) -> None:  # type: ignore[no-untyped-def]
    """Off, a submit leaves the project row alone (every submit of the project would queue on
    its lock); turned on, the count starts at zero."""
    pid = queued["pid"]

    def retrains() -> int:
        jobs = admin.get(f"/projects/{pid}/jobs").json()["data"]
        return len([j for j in jobs if j["kind"] == "retrain"])

    with stack.client(queued["ann"][0]) as c:

        def label_one() -> None:
            lease = c.post(f"/projects/{pid}/tasks/next").json()
            region = str(lease["task"]["regions"][0])
            r = c.post(f"/tasks/{lease['task']['id']}/submit", json={"classes": {region: 1}})
            assert r.status_code == 201, r.text

        with sql_statements(stack) as sql:
            label_one()
        assert [q for q in sql if q.startswith("INSERT INTO label_revisions")]
        assert not [q for q in sql if "projects SET" in q]
        label_one()
        patch = {"settings": {"auto_retrain_every": 2}}
        assert admin.patch(f"/projects/{pid}", json=patch).is_success
        label_one()
        with stack.db.session() as s:  # type: ignore[attr-defined]
            assert s.get(Project, pid).labels_since_retrain == 1  # the two before are not
        assert retrains() == 0
        label_one()
        assert retrains() == 1
