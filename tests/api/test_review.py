"""The review stage over real HTTP, on SQLite and PostgreSQL: disputed tasks (overlap 3,
answers that disagree) are leased to reviewers (never to one who answered, never to an
annotator), and accepted (the consensus becomes a `review` revision), rejected (the answers
are kept but rejected, the task goes back to the queue and its answerers may answer again)
or corrected (the reviewer's patch becomes the revision). Hand-made 16x16 answers."""

from __future__ import annotations

import base64
import io
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage

from activeseg.core.tables import Task, TaskAnswer, TaskReview
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


def _rows(rows: dict[range, int]) -> np.ndarray:
    """A 16x16 window over tile 0: the rows of each range get its class, others 255."""
    out = np.full((16, 16), N, np.uint8)
    for span, cls in rows.items():
        out[span.start : span.stop] = cls
    return out


def _b64(window: np.ndarray) -> str:
    return base64.b64encode(png_bytes(window)).decode()


def _unb64(data: str) -> np.ndarray:
    return np.asarray(PILImage.open(io.BytesIO(base64.b64decode(data))))


def _mask(admin: httpx.Client, image_id: int) -> np.ndarray:
    r = admin.get(f"/images/{image_id}/mask")
    assert r.status_code == 200, r.text
    return np.asarray(PILImage.open(io.BytesIO(r.content)))


# Three answers that agree on rows 0-3 only (64 of 256 pixels: agreement 0.25 < 0.4):
# consensus rows 0-11 -> 0 (two votes for 0 on rows 4-11), rows 12-15 -> 1 (a and c).
A = _rows({range(0, 12): 0, range(12, 16): 1})
B = _rows({range(0, 12): 0, range(12, 16): 2})
C = _rows({range(0, 4): 0, range(4, 16): 1})
CONSENSUS = _rows({range(0, 12): 0, range(12, 16): 1})


@pytest.fixture
def team(stack: Stack, admin):  # type: ignore[no-untyped-def]
    """A project with overlap 3, two one-tile tasks (t1 first in the queue), a reviewer who
    also annotates (``a``), two annotators (``b``, ``c``), a reviewer who answers nothing
    (``r``) and an annotator who answers nothing (``d``)."""
    pid = grid_project(admin, overlap=3, agreement_threshold=0.4)["id"]
    images = upload(admin, pid, *[(f"{i}.png", image_bytes(16, 16, seed=i)) for i in range(2)])
    ids = [row["image"]["id"] for row in images.json()["data"]]
    tasks = [_task(stack, pid, ids[0], 2.0), _task(stack, pid, ids[1], 1.0)]
    people: dict[str, Any] = {}
    for name, role in (("a", "reviewer"), ("b", "annotator"), ("c", "annotator")) + (
        ("r", "reviewer"),
        ("d", "annotator"),
    ):
        uid, token = make_user(admin, role)
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
        people[name] = (uid, stack.client(token))
    yield pid, ids, tasks, people
    for _, client in people.values():
        client.close()


def _answer(client: httpx.Client, pid: int, task_id: int, window: np.ndarray) -> dict[str, Any]:
    r = client.post(f"/projects/{pid}/tasks/next")
    assert r.status_code == 200, r.text
    assert r.json()["task"]["id"] == task_id
    r = client.post(f"/tasks/{task_id}/submit", json={"patch_png": _b64(window)})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def _dispute(people: dict[str, Any], pid: int, task_id: int, windows: list[np.ndarray]) -> None:
    for name, window in zip("abc", windows, strict=True):
        done = _answer(people[name][1], pid, task_id, window)
    assert done["task"]["state"] == "disputed" and done["revision"] is None


def _stats(admin: httpx.Client, pid: int) -> dict[int, dict[str, Any]]:
    r = admin.get(f"/projects/{pid}/annotators")
    assert r.status_code == 200, r.text
    return {row["user_id"]: row for row in r.json()["data"]}


def test_accept_writes_the_consensus_and_nobody_reviews_their_own_answer(  # type: ignore[no-untyped-def]
    stack: Stack, admin, team
) -> None:
    pid, ids, (t1, t2), people = team
    (a_id, a), (b_id, b), (c_id, _), (r_id, r), (_, d) = (people[k] for k in "abcrd")
    _dispute(people, pid, t1, [A, B, C])
    _dispute(people, pid, t2, [A, B, C])
    # Annotators may not review at all; a reviewer who answered gets no task they answered.
    for client in (b, d):
        refused = client.post(f"/projects/{pid}/reviews/next")
        assert refused.status_code == 403 and "reviewer" in refused.json()["detail"]
    assert a.post(f"/projects/{pid}/reviews/next").status_code == 204
    lease = r.post(f"/projects/{pid}/reviews/next")
    assert lease.status_code == 200, lease.text
    body = lease.json()
    assert body["task"]["id"] == t1  # the older dispute first
    assert body["bbox"] == body["crop"] == [0, 0, 16, 16]  # the whole 16x16 image
    assert np.array_equal(_unb64(body["consensus_png"]), CONSENSUS)
    assert np.array_equal(_unb64(body["region_mask_png"]), np.ones((16, 16), np.uint8))
    got = [(x["user_id"], x["agreement"], _unb64(x["window_png"])) for x in body["answers"]]
    want = [(a_id, 1.0, A), (b_id, 0.75, B), (c_id, 0.5, C)]  # 256, 192, 128 of 256 pixels
    assert [(u, g) for u, g, _ in got] == [(u, g) for u, g, _ in want]
    assert all(np.array_equal(x, y) for (_, _, x), (_, _, y) in zip(got, want, strict=True))
    assert admin.get(body["image_url"], headers={"Authorization": ""}).status_code == 200
    # t1 is under r's review: the admin gets the other one, then nothing is left.
    assert admin.post(f"/projects/{pid}/reviews/next").json()["task"]["id"] == t2
    assert admin.post(f"/projects/{pid}/reviews/next").status_code == 204
    # Only the holder of the review lease decides; annotators are refused before anything.
    assert b.post(f"/tasks/{t1}/review", json={"decision": "accept"}).status_code == 403
    other = admin.post(f"/tasks/{t1}/review", json={"decision": "accept"})
    assert other.status_code == 409 and "not under your review" in other.json()["detail"]

    done = r.post(f"/tasks/{t1}/review", json={"decision": "accept"})
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["task"]["state"] == "submitted"
    assert result["revision"]["source"] == "review" and result["revision"]["author_id"] == r_id
    assert result["review"]["decision"] == "accept"
    assert result["review"]["agreement"] == 0.25
    assert result["review"]["revision_id"] == result["revision"]["id"]
    assert np.array_equal(_mask(admin, ids[0]), CONSENSUS)
    assert admin.get(f"/images/{ids[0]}/revisions").json()["count"] == 1
    again = r.post(f"/tasks/{t1}/review", json={"decision": "accept"})
    assert again.status_code == 409  # decided once; the task is no longer disputed
    stats = _stats(admin, pid)
    for uid in (a_id, b_id, c_id):
        assert (stats[uid]["rejections"], stats[uid]["reviewer_agreement"]) == (0, 1.0)
    assert (stats[r_id]["rejections"], stats[r_id]["reviewer_agreement"]) == (None, None)


def test_reject_sends_the_task_back_and_its_answerers_may_answer_again(  # type: ignore[no-untyped-def]
    stack: Stack, admin, team
) -> None:
    pid, ids, (t1, _), people = team
    (a_id, a), (b_id, b), (c_id, c), (r_id, r), (_, d) = (people[k] for k in "abcrd")
    _dispute(people, pid, t1, [A, B, C])
    assert r.post(f"/projects/{pid}/reviews/next").json()["task"]["id"] == t1
    no_reason = r.post(f"/tasks/{t1}/review", json={"decision": "reject"})
    assert no_reason.status_code == 422 and "reason" in no_reason.json()["detail"]
    reason = "rows 12-15 are the road, class 1: look again"
    done = r.post(f"/tasks/{t1}/review", json={"decision": "reject", "reason": reason})
    assert done.status_code == 200, done.text
    assert done.json()["revision"] is None
    task = done.json()["task"]
    assert (task["state"], task["answers"], task["agreement"]) == ("queued", 0, None)
    assert admin.get(f"/images/{ids[0]}/revisions").json()["count"] == 0
    # The rejected answers are kept as rows, with the review that rejected them.
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rows = s.query(TaskAnswer).filter_by(task_id=t1).order_by(TaskAnswer.id).all()
        review = s.query(TaskReview).filter_by(task_id=t1).one()
        assert [x.user_id for x in rows] == [a_id, b_id, c_id]
        assert all(x.rejected_at is not None and x.review_id == review.id for x in rows)
        assert (review.decision, review.reason, review.reviewer_id) == ("reject", reason, r_id)
    # Each annotator sees their own rejection with the reason; someone else sees none.
    mine = b.get("/users/me/rejections", params={"project_id": pid})
    assert mine.status_code == 200, mine.text
    assert mine.json()["count"] == 1
    seen = mine.json()["data"][0]
    assert (seen["task_id"], seen["reason"], seen["reviewer_id"]) == (t1, reason, r_id)
    assert b.get("/users/me/rejections").json()["count"] == 1  # every project
    assert d.get("/users/me/rejections", params={"project_id": pid}).json()["count"] == 0
    assert d.get("/users/me/rejections", params={"project_id": 10**6}).status_code == 404
    stats = _stats(admin, pid)
    for uid in (a_id, b_id, c_id):
        assert (stats[uid]["rejections"], stats[uid]["reviewer_agreement"]) == (1, 0.0)
    # The same three answer the region again; this time they agree, so the consensus is the
    # label, made of the three fresh answers only.
    agreed = _rows({range(0, 12): 0, range(12, 16): 1})
    for n, (name, client) in enumerate((("a", a), ("b", b), ("c", c)), start=1):
        done = _answer(client, pid, t1, agreed)
        assert done["task"]["answers"] == n, name
    assert done["task"]["state"] == "submitted" and done["task"]["agreement"] == 1.0
    assert done["revision"]["source"] == "consensus"
    assert np.array_equal(_mask(admin, ids[0]), agreed)
    # A second answer is still refused: only rejected answers stop counting.
    again = b.post(f"/tasks/{t1}/submit", json={"patch_png": _b64(B)})
    assert again.status_code == 409 and "already answered" in again.json()["detail"]


def test_correct_makes_the_reviewers_patch_the_label(stack: Stack, admin, team) -> None:  # type: ignore[no-untyped-def]
    pid, ids, (t1, _), people = team
    r_id, r = people["r"]
    # Every pixel 0 / 1 / 2: agreement 0 and a consensus that is all ties (unlabelled).
    _dispute(people, pid, t1, [_rows({range(16): k}) for k in (0, 1, 2)])
    lease = r.post(f"/projects/{pid}/reviews/next").json()
    assert np.array_equal(_unb64(lease["consensus_png"]), np.full((16, 16), N, np.uint8))
    tied = r.post(f"/tasks/{t1}/review", json={"decision": "accept"})
    assert tied.status_code == 409 and "labels no pixel" in tied.json()["detail"]
    missing = r.post(f"/tasks/{t1}/review", json={"decision": "correct"})
    assert missing.status_code == 422
    empty = r.post(
        f"/tasks/{t1}/review", json={"decision": "correct", "patch_png": _b64(_rows({}))}
    )
    assert empty.status_code == 422 and "labels no pixel" in empty.json()["detail"]
    patch = _rows({range(0, 8): 2, range(8, 10): 0})  # rows 10-15 stay unlabelled
    done = r.post(f"/tasks/{t1}/review", json={"decision": "correct", "patch_png": _b64(patch)})
    assert done.status_code == 200, done.text
    result = done.json()
    assert result["task"]["state"] == "submitted"
    assert (result["revision"]["source"], result["revision"]["author_id"]) == ("review", r_id)
    assert result["revision"]["labelled_pixels"] == 160
    assert result["review"]["decision"] == "correct"
    assert np.array_equal(_mask(admin, ids[0]), patch)
    stats = _stats(admin, pid)
    for name in "abc":  # a correction accepts nobody's answer
        row = stats[people[name][0]]
        assert (row["rejections"], row["reviewer_agreement"]) == (0, 0.0)


def _set_lease_expiry(stack: Stack, task_id: int, at: datetime) -> None:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.get(Task, task_id).lease_expires_at = at


def _lease_columns(stack: Stack, task_id: int) -> tuple[Any, ...]:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        task = s.get(Task, task_id)
        return task.state, task.leased_by, task.leased_at, task.lease_expires_at


def test_review_heartbeat_extends_only_your_live_review_lease(  # type: ignore[no-untyped-def]
    stack: Stack, admin, team
) -> None:
    pid, _, (t1, t2), people = team
    (_, a), (_, b), (r_id, r) = (people[k] for k in "abr")
    _dispute(people, pid, t1, [A, B, C])
    # An annotator is refused on the role, before the task or its project is looked up.
    for task_id in (t1, 10**6):
        for action in ("heartbeat", "release"):
            refused = b.post(f"/tasks/{task_id}/review/{action}")
            assert refused.status_code == 403 and "reviewer" in refused.json()["detail"]
    assert r.post(f"/tasks/{10**6}/review/heartbeat").status_code == 404
    _, outsider_token = make_user(admin, "reviewer")  # not a member: no such task
    with stack.client(outsider_token) as outsider:
        assert outsider.post(f"/tasks/{t1}/review/heartbeat").status_code == 404
    # Nobody reviews t1 yet; t2 is not even disputed.
    for task_id in (t1, t2):
        idle = r.post(f"/tasks/{task_id}/review/heartbeat")
        assert idle.status_code == 409 and "not under your review" in idle.json()["detail"]

    lease = r.post(f"/projects/{pid}/reviews/next").json()
    assert lease["task"]["id"] == t1
    # 5 s left of the 60 s lease; a heartbeat makes it 60 s from now.
    _set_lease_expiry(stack, t1, datetime.now(UTC) + timedelta(seconds=5))
    before = datetime.now(UTC)
    beat = r.post(f"/tasks/{t1}/review/heartbeat")
    after = datetime.now(UTC)
    assert beat.status_code == 200, beat.text
    body = beat.json()
    assert (body["id"], body["state"]) == (t1, "disputed")
    expires = datetime.fromisoformat(body["lease_expires_at"])
    assert before + timedelta(seconds=60) <= expires <= after + timedelta(seconds=60)
    state, leased_by, _, stored = _lease_columns(stack, t1)
    assert (state, leased_by, stored) == ("disputed", r_id, expires)
    # Someone else's review: the admin's heartbeat moves nothing, nor does an answerer's.
    for client in (admin, a):
        other = client.post(f"/tasks/{t1}/review/heartbeat")
        assert other.status_code == 409 and "not under your review" in other.json()["detail"]
    assert _lease_columns(stack, t1)[3] == expires
    # A lapsed review lease is not revived: lease again.
    lapsed_at = datetime.now(UTC) - timedelta(seconds=1)
    _set_lease_expiry(stack, t1, lapsed_at)
    lapsed = r.post(f"/tasks/{t1}/review/heartbeat")
    assert lapsed.status_code == 409 and "expired" in lapsed.json()["detail"]
    assert _lease_columns(stack, t1)[3] == lapsed_at
    again = r.post(f"/projects/{pid}/reviews/next")
    assert again.json()["task"]["id"] == t1
    assert r.post(f"/tasks/{t1}/review/heartbeat").status_code == 200


def test_review_release_gives_the_task_to_the_next_reviewer_at_once(  # type: ignore[no-untyped-def]
    stack: Stack, admin, team
) -> None:
    pid, ids, (t1, _), people = team
    (_, a), (r_id, r) = (people[k] for k in "ar")
    _dispute(people, pid, t1, [A, B, C])
    assert r.post(f"/projects/{pid}/reviews/next").json()["task"]["id"] == t1
    assert admin.post(f"/projects/{pid}/reviews/next").status_code == 204  # t1 is r's
    for client in (admin, a):  # not theirs to give back
        other = client.post(f"/tasks/{t1}/review/release")
        assert other.status_code == 409 and "not under your review" in other.json()["detail"]
    assert _lease_columns(stack, t1)[:2] == ("disputed", r_id)

    done = r.post(f"/tasks/{t1}/review/release")
    assert done.status_code == 200, done.text
    body = done.json()
    assert (body["id"], body["state"], body["lease_expires_at"]) == (t1, "disputed", None)
    assert _lease_columns(stack, t1) == ("disputed", None, None, None)
    # Another reviewer leases it at once, with the same answers; r's release is spent.
    lease = admin.post(f"/projects/{pid}/reviews/next")
    assert lease.status_code == 200 and lease.json()["task"]["id"] == t1
    assert len(lease.json()["answers"]) == 3
    again = r.post(f"/tasks/{t1}/review/release")
    assert again.status_code == 409
    assert r.post(f"/tasks/{t1}/review", json={"decision": "accept"}).status_code == 409
    # A lapsed lease nobody took since may still be given back; the admin's then decides
    # nothing until leased again, and the task was never decided on the way.
    _set_lease_expiry(stack, t1, datetime.now(UTC) - timedelta(seconds=1))
    assert admin.post(f"/tasks/{t1}/review/release").status_code == 200
    assert _lease_columns(stack, t1) == ("disputed", None, None, None)
    assert admin.get(f"/images/{ids[0]}/revisions").json()["count"] == 0
    assert r.post(f"/projects/{pid}/reviews/next").json()["task"]["id"] == t1
