"""GET /projects/{id}/annotators over real HTTP, on SQLite and PostgreSQL: a scripted session
of leases, submits and skips made through the API, then known lease and submit times written
into the database, and the exact statistics they must give.

The script (times in seconds after T0; "late" = submitted after the lease went back to the
queue, so it has no lease-to-submit time):

* annotator A: 5 submits, leased at 0, 1000, 2000, 3000, 4000, taking 10, 20, 30, 40, 100 s
  (the last answered by a mask patch labelling 128 of the tile's 256 pixels); 1 skip (5000);
* annotator B: 2 submits (leased at 500 and 1500, taking 15 and 45 s), 1 late submit (2600),
  1 skip (leased 3000, skipped 3010);
* engineer E (the project's creator): 1 lease still held (4000);
* the admin (not a member): 1 submit (leased 7000, 50 s);
* annotator C: a member who did nothing.

Percentiles are linear interpolation between closest ranks (numpy's default, PostgreSQL's
percentile_cont): the p90 of 10, 20, 30, 40, 100 is 40 + 0.6 * (100 - 40) = 76.

A second script (see "overlap" below) has two annotators answer the same tasks of an overlap-2
project (after one answer under overlap 1, and with a rejected pair of answers): each gets
their own answers' count, times and pixels, never the task row's last answerer's consensus.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, update

from activeseg.core.services import tasks as task_service
from activeseg.core.services.annotators import percentile
from activeseg.core.tables import Task, TaskAnswer
from tests.api.test_metrics import scrape, value
from tests.conftest import Stack
from tests.utils import (
    build_queue_inline,
    chromium_browser,
    grid_project,
    image_bytes,
    make_user,
    png_bytes,
    upload,
)

T0 = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
TILE = 16 * 16  # pixels of one grid tile: what a whole-region answer labels


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def iso(seconds: float) -> str:
    return at(seconds).isoformat()


@dataclass
class Session:
    """The scripted project: its id, and a client and user id per person."""

    stack: Stack
    pid: int
    ids: dict[str, int]
    clients: dict[str, httpx.Client]
    tokens: dict[str, str]
    skips_counted: float  # activeseg_tasks_skipped_total{project_id} after the script

    def stats(self, who: str, **params: str) -> httpx.Response:
        return self.clients[who].get(f"/projects/{self.pid}/annotators", params=params)

    def rows(self, who: str, **params: str) -> dict[str, dict[str, Any]]:
        r = self.stats(who, **params)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["count"] == len(body["data"])
        names = {v: k for k, v in self.ids.items()}
        return {names[row["user_id"]]: row for row in body["data"]}


def _lease(c: httpx.Client, pid: int) -> dict[str, Any]:
    r = c.post(f"/projects/{pid}/tasks/next")
    assert r.status_code == 200, r.text
    task: dict[str, Any] = r.json()["task"]
    assert len(task["regions"]) == 1, "one grid tile per task: TILE pixels per answer"
    return task


def _submit(c: httpx.Client, task: dict[str, Any], patch: bool = False) -> None:
    if patch:  # the tile's top half labelled, the rest left unlabelled: 128 pixels
        half = np.full((16, 16), 255, np.uint8)
        half[:8] = 1
        body: dict[str, Any] = {"patch_png": base64.b64encode(png_bytes(half)).decode()}
    else:
        body = {"classes": {str(task["regions"][0]): 2}}
    r = c.post(f"/tasks/{task['id']}/submit", json=body)
    assert r.status_code == 201, r.text


def _skip(c: httpx.Client, task: dict[str, Any]) -> None:
    r = c.post(f"/tasks/{task['id']}/skip", json={"reason": "unclear"})
    assert r.status_code == 200, r.text


def _set_times(stack: Stack, times: dict[int, tuple[float | None, float]]) -> None:
    """task id -> (lease start, submit or skip), seconds after T0; None: no lease time."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        for task_id, (leased, submitted) in times.items():
            s.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(
                    leased_at=None if leased is None else at(leased),
                    submitted_at=at(submitted),
                )
            )


@pytest.fixture(scope="module")
def session(stack: Stack) -> Iterator[Session]:
    with stack.client(stack.admin_token) as admin:
        ids = {"admin": admin.get("/users/me").json()["id"]}
        tokens = {"admin": stack.admin_token}
        for who, role in [
            ("E", "engineer"),
            ("A", "annotator"),
            ("B", "annotator"),
            ("C", "annotator"),
            ("outsider", "engineer"),
        ]:
            ids[who], tokens[who] = make_user(admin, role)
    clients = {who: stack.client(token) for who, token in tokens.items()}
    eng = clients["E"]
    pid = grid_project(eng, batch_size=14, lease_seconds=3600)["id"]
    for who in ("A", "B", "C"):
        r = eng.post(f"/projects/{pid}/members", json={"user_id": ids[who]})
        assert r.status_code == 204, r.text
    files = [(f"st{i}.png", image_bytes(32, 32, seed=8100 + i)) for i in range(4)]
    assert upload(eng, pid, *files).status_code == 201
    build_queue_inline(stack, pid)  # 4 images x 4 tiles, 14 tasks
    before, _ = scrape(stack.base_url)

    times: dict[int, tuple[float | None, float]] = {}
    a, b = clients["A"], clients["B"]
    a_tasks = [_lease(a, pid) for _ in range(6)]
    for i, (task, seconds) in enumerate(zip(a_tasks[:5], [10, 20, 30, 40, 100], strict=True)):
        _submit(a, task, patch=i == 4)
        times[task["id"]] = (1000 * i, 1000 * i + seconds)
    _skip(a, a_tasks[5])
    times[a_tasks[5]["id"]] = (5000, 5005)

    b_tasks = [_lease(b, pid) for _ in range(4)]
    for task, leased, seconds in [(b_tasks[0], 500, 15), (b_tasks[1], 1500, 45)]:
        _submit(b, task)
        times[task["id"]] = (leased, leased + seconds)
    _skip(b, b_tasks[2])
    times[b_tasks[2]["id"]] = (3000, 3010)
    # B's last lease lapses and the task goes back to the queue; nobody takes it, so B's late
    # answer is accepted: a submitted task without a lease time.
    late = b_tasks[3]["id"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(
            update(Task)
            .where(Task.id == late)
            .values(lease_expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
        assert task_service.expire_leases(s, pid) == 1
    _submit(b, b_tasks[3])
    times[late] = (None, 2600)

    held = _lease(eng, pid)
    admin_task = _lease(clients["admin"], pid)
    _submit(clients["admin"], admin_task)
    times[admin_task["id"]] = (7000, 7050)
    _set_times(stack, times)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(update(Task).where(Task.id == held["id"]).values(leased_at=at(4000)))

    after, _ = scrape(stack.base_url)
    skips = value(after, "activeseg_tasks_skipped_total", project_id=pid) - value(
        before, "activeseg_tasks_skipped_total", project_id=pid
    )
    yield Session(stack, pid, ids, clients, tokens, skips)
    for c in clients.values():
        c.close()


A_ALL = {
    "tasks_submitted": 5,
    "tasks_skipped": 1,
    "skip_rate": 0.167,  # 1 / 6, rounded to 3 decimals
    "timed_tasks": 5,
    "median_seconds": 30.0,
    "p90_seconds": 76.0,
    "labelled_pixels": 4 * TILE + TILE // 2,  # 1152
    "labels_per_hour": 1152 * 3600 / 200,  # 20736.0: pixels per hour of the 200 s
    "tasks_per_hour": 90.0,  # 5 tasks in 200 s
    "first_activity": iso(0),
    "last_activity": iso(5005),  # the skip
    "consensus_agreement": None,
    "reviewer_agreement": None,
    "rejections": None,
}
B_ALL = {
    "tasks_submitted": 3,
    "tasks_skipped": 1,
    "skip_rate": 0.25,
    "timed_tasks": 2,  # the late answer has no lease time
    "median_seconds": 30.0,  # (15 + 45) / 2
    "p90_seconds": 42.0,  # 15 + 0.9 * 30
    "labelled_pixels": 3 * TILE,
    "labels_per_hour": 2 * TILE * 3600 / 60,  # 30720.0: the timed answers' pixels only
    "tasks_per_hour": 120.0,
    "first_activity": iso(500),
    "last_activity": iso(3010),
}
NOTHING = {
    "tasks_submitted": 0,
    "tasks_skipped": 0,
    "skip_rate": None,
    "timed_tasks": 0,
    "median_seconds": None,
    "p90_seconds": None,
    "labelled_pixels": 0,
    "labels_per_hour": None,
    "tasks_per_hour": None,
    "first_activity": None,
    "last_activity": None,
}


def same_times(row: dict[str, Any]) -> dict[str, Any]:
    """The row with its datetimes as aware datetimes (the two databases may spell them
    differently: ``Z`` or ``+00:00``)."""
    out = dict(row)
    for key in ("first_activity", "last_activity"):
        if out.get(key) is not None:
            out[key] = datetime.fromisoformat(out[key])
    return out


def check(row: dict[str, Any], want: dict[str, Any]) -> None:
    got = same_times({k: row[k] for k in want})
    assert got == same_times(want)


def test_engineer_sees_every_member_and_everyone_who_worked(session: Session) -> None:
    rows = session.rows("E")
    # The admin is no member but answered a task; the outsider is neither.
    assert set(rows) == {"A", "B", "C", "E", "admin"}
    check(rows["A"], A_ALL)
    check(rows["B"], B_ALL)
    check(rows["C"], NOTHING)
    check(rows["E"], {**NOTHING, "first_activity": iso(4000), "last_activity": iso(4000)})
    check(
        rows["admin"],
        {
            "tasks_submitted": 1,
            "timed_tasks": 1,
            "median_seconds": 50.0,
            "p90_seconds": 50.0,
            "labels_per_hour": TILE * 3600 / 50,
            "tasks_per_hour": 72.0,
            "first_activity": iso(7000),
            "last_activity": iso(7050),
        },
    )
    assert rows["A"]["name"] and rows["A"]["role"] == "annotator"
    # The answers' numbers agree with numpy's default percentile (the stated definition).
    assert np.percentile([10, 20, 30, 40, 100], [50, 90]).tolist() == [30.0, 76.0]


def test_admin_sees_the_same_rows(session: Session) -> None:
    assert session.rows("admin") == session.rows("E")


def test_an_annotator_sees_only_their_own_row(session: Session) -> None:
    rows = session.rows("A")
    assert list(rows) == ["A"]
    check(rows["A"], A_ALL)
    # A member without any activity still gets their (empty) row; nobody else's.
    rows = session.rows("C")
    assert list(rows) == ["C"]
    check(rows["C"], NOTHING)
    # The period applies to the own row as to everyone's.
    rows = session.rows("B", since=iso(1000), until=iso(3000))
    assert list(rows) == ["B"] and rows["B"]["tasks_submitted"] == 2


def test_a_period_bounds_answers_and_leases(session: Session) -> None:
    """[T0 + 1000 s, T0 + 3000 s): A's answers at 1020 and 2030; B's answer at 1545 and late
    answer at 2600 (the skip at 3010 and the lease at 3000 fall outside: until is exclusive)."""
    body = session.stats("E", since=iso(1000), until=iso(3000)).json()
    assert datetime.fromisoformat(body["since"]) == at(1000)
    assert datetime.fromisoformat(body["until"]) == at(3000)
    rows = session.rows("E", since=iso(1000), until=iso(3000))
    assert set(rows) == {"A", "B", "C", "E"}  # the admin's work is outside, E is a member
    check(
        rows["A"],
        {
            "tasks_submitted": 2,
            "tasks_skipped": 0,
            "skip_rate": 0.0,
            "timed_tasks": 2,
            "median_seconds": 25.0,
            "p90_seconds": 29.0,  # 20 + 0.9 * 10
            "labelled_pixels": 2 * TILE,
            "labels_per_hour": 2 * TILE * 3600 / 50,  # 36864.0
            "tasks_per_hour": 144.0,
            "first_activity": iso(1000),
            "last_activity": iso(2030),
        },
    )
    check(
        rows["B"],
        {
            "tasks_submitted": 2,
            "tasks_skipped": 0,
            "timed_tasks": 1,
            "median_seconds": 45.0,
            "p90_seconds": 45.0,
            "labelled_pixels": 2 * TILE,
            "first_activity": iso(1500),
            "last_activity": iso(2600),
        },
    )
    check(rows["E"], NOTHING)  # the held lease started at 4000


def test_a_naive_time_is_utc_and_an_empty_period_is_refused(session: Session) -> None:
    naive = at(1000).replace(tzinfo=None).isoformat()
    assert session.rows("E", since=naive) == session.rows("E", since=iso(1000))
    r = session.stats("E", since=iso(3000), until=iso(3000))
    assert (r.status_code, r.json()) == (422, {"detail": "'since' must be before 'until'"})
    assert session.stats("E", since="yesterday").status_code == 422


def test_outsiders_get_404_and_no_token_401(session: Session) -> None:
    r = session.stats("outsider")
    assert (r.status_code, r.json()) == (404, {"detail": f"project {session.pid} not found"})
    with session.stack.client() as anonymous:
        r = anonymous.get(f"/projects/{session.pid}/annotators")
    assert r.status_code == 401


def test_skips_are_counted_per_project(session: Session) -> None:
    assert session.skips_counted == 2  # A's and B's


def test_the_page_and_its_files_are_served(session: Session) -> None:
    with session.stack.client() as c:  # the page asks for the token itself
        page = c.get("/annotate/annotators")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in ("annotators.js", "annotators.css", "annotate.css"):
            assert f"/static/{name}" in page.text
            assert c.get(f"/static/{name}").status_code == 200


# --- overlap: each answer is its own person's ------------------------------------------------
#
# A second scripted project, times in seconds after T0 again. It starts with overlap 1 and
# goes to overlap 2 (agreement threshold 0.4); six one-tile tasks t0..t5 (16x16 images),
# leased in that order. P and Q are annotators, R a reviewer, E the engineer who made it.
#
# * overlap 1: P answers t0 (lease 0, submit 40; the whole tile: 256 pixels): a task row;
# * overlap 2: P answers t1, t2, t3 (the tile's top half, class 1: 128 pixels each; leases at
#   100, 200, 300, taking 10, 30, 60 s) and t4 (the whole tile, class 0: 256 pixels; 400,
#   20 s), then skips t5 (lease 500, skip 505);
# * Q answers the same t1, t2, t3 (the top quarter, class 1: 64 pixels each; leases at 1000,
#   1100, 1200, taking 15, 45, 90 s): the second answers, so t1..t3 are submitted, and their
#   task rows name Q with the consensus's 128 pixels (rows 0-7: agreement 64/128 = 0.5);
#   and t4 (the whole tile, class 2: 256 pixels; 1300, 5 s): no pixel agrees, t4 is disputed;
# * R rejects t4: both answers are rejected (they stay done work) and t4 is queued again;
#   Q answers it again (the whole tile, class 2; lease 2000, 25 s): the first of two answers.
#
# P: durations 10, 20, 30, 40, 60 (median 30, p90 = 40 + 0.6 * 20 = 52), 896 pixels in
# 160 s. Q: 5, 15, 25, 45, 90 (median 25, p90 = 45 + 0.6 * 45 = 72), 704 pixels in 180 s.
# Counted from the task rows alone, Q would have 3 tasks of 128 pixels and P only t0.

OVERLAP_TASKS = 6


@dataclass
class OverlapSession:
    stack: Stack
    pid: int
    ids: dict[str, int]
    clients: dict[str, httpx.Client]

    def rows(self, who: str, **params: str) -> dict[str, dict[str, Any]]:
        r = self.clients[who].get(f"/projects/{self.pid}/annotators", params=params)
        assert r.status_code == 200, r.text
        names = {v: k for k, v in self.ids.items()}
        return {names[row["user_id"]]: row for row in r.json()["data"]}


def _one_tile_task(stack: Stack, pid: int, image_id: int, priority: float) -> int:
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


def _rows_patch(rows: range, cls: int) -> dict[str, Any]:
    """A submit body over one 16x16 tile: the rows ``rows`` get ``cls``, the rest nothing."""
    patch = np.full((16, 16), 255, np.uint8)
    patch[rows.start : rows.stop] = cls
    return {"patch_png": base64.b64encode(png_bytes(patch)).decode()}


def _answer(
    stack: Stack,
    c: httpx.Client,
    pid: int,
    task_id: int,
    user_id: int,
    body: dict[str, Any],
    leased: float,
    submitted: float,
) -> dict[str, Any]:
    """Lease (it must be ``task_id``), submit ``body``, and date the answer: its task_answers
    row (the user's newest for the task) and, when it finished the task, the task row."""
    r = c.post(f"/projects/{pid}/tasks/next")
    assert r.status_code == 200, r.text
    assert r.json()["task"]["id"] == task_id
    r = c.post(f"/tasks/{task_id}/submit", json=body)
    assert r.status_code == 201, r.text
    task = r.json()["task"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        newest = s.scalar(
            select(func.max(TaskAnswer.id)).where(
                TaskAnswer.task_id == task_id, TaskAnswer.user_id == user_id
            )
        )
        if newest is None:  # overlap 1: the answer is the task row
            s.execute(
                update(Task)
                .where(Task.id == task_id)
                .values(leased_at=at(leased), submitted_at=at(submitted))
            )
        else:
            s.execute(
                update(TaskAnswer)
                .where(TaskAnswer.id == newest)
                .values(leased_at=at(leased), submitted_at=at(submitted))
            )
            if task["state"] != "queued":  # the k-th answer: the task row repeats its time
                s.execute(update(Task).where(Task.id == task_id).values(submitted_at=at(submitted)))
    return task  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def overlapping(stack: Stack) -> Iterator[OverlapSession]:
    with stack.client(stack.admin_token) as admin:
        ids, tokens = {}, {}
        for who, role in [("E", "engineer"), ("P", "annotator"), ("Q", "annotator")] + [
            ("R", "reviewer")
        ]:
            ids[who], tokens[who] = make_user(admin, role)
    clients = {who: stack.client(token) for who, token in tokens.items()}
    eng, p, q = clients["E"], clients["P"], clients["Q"]
    pid = grid_project(eng, lease_seconds=3600, agreement_threshold=0.4)["id"]
    for who in ("P", "Q", "R"):
        r = eng.post(f"/projects/{pid}/members", json={"user_id": ids[who]})
        assert r.status_code == 204, r.text
    files = [(f"ov{i}.png", image_bytes(16, 16, seed=8200 + i)) for i in range(OVERLAP_TASKS)]
    r = upload(eng, pid, *files)
    assert r.status_code == 201, r.text
    images = [row["image"]["id"] for row in r.json()["data"]]
    t = [_one_tile_task(stack, pid, image, 10.0 - i) for i, image in enumerate(images)]

    whole = {"classes": {"0": 1}}
    _answer(stack, p, pid, t[0], ids["P"], whole, 0, 40)
    r = eng.patch(f"/projects/{pid}", json={"settings": {"overlap": 2}})
    assert r.status_code == 200, r.text
    for task_id, leased, seconds in [(t[1], 100, 10), (t[2], 200, 30), (t[3], 300, 60)]:
        done = _answer(
            stack, p, pid, task_id, ids["P"], _rows_patch(range(0, 8), 1), leased, leased + seconds
        )
        assert (done["state"], done["answers"]) == ("queued", 1)
    _answer(stack, p, pid, t[4], ids["P"], {"classes": {"0": 0}}, 400, 420)
    r = p.post(f"/projects/{pid}/tasks/next")
    assert r.status_code == 200 and r.json()["task"]["id"] == t[5], r.text
    assert p.post(f"/tasks/{t[5]}/skip", json={"reason": "unclear"}).status_code == 200
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(
            update(Task).where(Task.id == t[5]).values(leased_at=at(500), submitted_at=at(505))
        )

    for task_id, leased, seconds in [(t[1], 1000, 15), (t[2], 1100, 45), (t[3], 1200, 90)]:
        done = _answer(
            stack, q, pid, task_id, ids["Q"], _rows_patch(range(0, 4), 1), leased, leased + seconds
        )
        assert done["state"] == "submitted"
    done = _answer(stack, q, pid, t[4], ids["Q"], {"classes": {"0": 2}}, 1300, 1305)
    assert done["state"] == "disputed"
    with stack.db.session() as s:  # type: ignore[attr-defined]
        # What the task rows say: Q answered t1..t3 (and t4), with the consensus's pixels.
        last = s.execute(
            select(Task.submitted_by, Task.answered_pixels).where(Task.id.in_(t[1:4]))
        ).all()
        assert last == [(ids["Q"], 128)] * 3

    reviewer = clients["R"]
    r = reviewer.post(f"/projects/{pid}/reviews/next")
    assert r.status_code == 200 and r.json()["task"]["id"] == t[4], r.text
    r = reviewer.post(f"/tasks/{t[4]}/review", json={"decision": "reject", "reason": "unsure"})
    assert r.status_code == 200, r.text
    done = _answer(stack, q, pid, t[4], ids["Q"], {"classes": {"0": 2}}, 2000, 2025)
    assert (done["state"], done["answers"]) == ("queued", 1)
    yield OverlapSession(stack, pid, ids, clients)
    for c in clients.values():
        c.close()


P_ALL = {
    "tasks_submitted": 5,  # t0 (a task row), t1..t4 (task_answers rows, t4's rejected)
    "tasks_skipped": 1,
    "skip_rate": 0.167,
    "timed_tasks": 5,
    "median_seconds": 30.0,
    "p90_seconds": 52.0,
    "labelled_pixels": TILE + 3 * (TILE // 2) + TILE,  # 896
    "labels_per_hour": 896 * 3600 / 160,  # 20160.0
    "tasks_per_hour": 5 * 3600 / 160,  # 112.5
    "first_activity": iso(0),
    "last_activity": iso(505),  # the skip
    "consensus_agreement": 0.75,  # 1.0 on t1..t3, 0.0 on t4
    "reviewer_agreement": 0.0,
    "rejections": 1,
}
Q_ALL = {
    "tasks_submitted": 5,  # t1..t3, t4 rejected, t4 again
    "tasks_skipped": 0,
    "skip_rate": 0.0,
    "timed_tasks": 5,
    "median_seconds": 25.0,
    "p90_seconds": 72.0,
    "labelled_pixels": 3 * (TILE // 4) + 2 * TILE,  # 704: never the consensus's 128
    "labels_per_hour": 704 * 3600 / 180,  # 14080.0
    "tasks_per_hour": 100.0,
    "first_activity": iso(1000),
    "last_activity": iso(2025),
    "consensus_agreement": 0.75,  # 1.0 on t1..t3, 0.0 on the rejected t4, none yet on t4
    "reviewer_agreement": 0.0,
    "rejections": 1,
}


def test_under_overlap_each_person_counts_their_own_answers(overlapping: OverlapSession) -> None:
    rows = overlapping.rows("E")
    assert set(rows) == {"E", "P", "Q", "R"}
    check(rows["P"], P_ALL)
    check(rows["Q"], Q_ALL)
    # The reviewer answered nothing; their review lease ended with the decision.
    check(rows["R"], {**NOTHING, "rejections": None})
    assert np.percentile([10, 20, 30, 40, 60], [50, 90]).tolist() == [30.0, 52.0]
    assert np.percentile([5, 15, 25, 45, 90], [50, 90]).tolist() == [25.0, 72.0]
    # Each sees their own row, the same; a reviewer sees only theirs, as an annotator does.
    assert overlapping.rows("P") == {"P": rows["P"]}
    assert overlapping.rows("Q") == {"Q": rows["Q"]}
    assert overlapping.rows("R") == {"R": rows["R"]}


def test_under_overlap_a_period_takes_each_answer_by_its_own_times(
    overlapping: OverlapSession,
) -> None:
    """[200, 1200): P's answers at 230, 360, 420 (leases 200, 300, 400) and the skip at 505
    (lease 500); Q's at 1015 and 1145 (leases 1000, 1100); t0 (40) and Q's lease at 1200 fall
    outside."""
    rows = overlapping.rows("E", since=iso(200), until=iso(1200))
    check(
        rows["P"],
        {
            "tasks_submitted": 3,
            "tasks_skipped": 1,
            "timed_tasks": 3,
            "median_seconds": 30.0,
            "p90_seconds": 54.0,  # 30 + 0.8 * 30
            "labelled_pixels": 2 * (TILE // 2) + TILE,
            "tasks_per_hour": 98.182,  # 3 tasks in 110 s
            "first_activity": iso(200),
            "last_activity": iso(505),
        },
    )
    check(
        rows["Q"],
        {
            "tasks_submitted": 2,
            "tasks_skipped": 0,
            "timed_tasks": 2,
            "median_seconds": 30.0,
            "p90_seconds": 42.0,  # 15 + 0.9 * 30
            "labelled_pixels": 2 * (TILE // 4),
            "labels_per_hour": 2 * (TILE // 4) * 3600 / 60,
            "first_activity": iso(1000),
            "last_activity": iso(1145),
        },
    )


browser = pytest.fixture(scope="module")(chromium_browser)


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_the_page_shows_the_table_and_sorts_it(session: Session, browser: Any) -> None:
    """In headless Chromium: log in with the engineer's token, read the project's table, sort
    it by the median (largest first, empty cells last), log out."""
    from playwright.sync_api import expect

    # en-US: the page formats numbers for the browser's locale ("20,736")
    context = browser.new_context(viewport={"width": 1280, "height": 800}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    try:
        page.goto(f"{session.stack.base_url}/annotate/annotators?project={session.pid}")
        page.fill("#token", session.tokens["E"])
        page.click("#login-form button[type=submit]")
        expect(page.locator("#status")).to_have_text("5 annotators.")
        rows = page.locator("#rows tr")
        expect(rows).to_have_count(5)
        a_row = page.locator(f"#rows tr[data-user-id='{session.ids['A']}'] td")
        # name, submitted, skipped, skip rate, median, p90, tasks/h, pixels/h, first, last
        assert a_row.all_text_contents()[1:8] == [
            "5", "1", "16.7 %", "30.0", "76.0", "90.0", "20,736"
        ]  # fmt: skip
        page.click("th[data-key=median_seconds] button")
        expect(page.locator("th[data-key=median_seconds]")).to_have_attribute(
            "aria-sort", "descending"
        )
        order = [int(u) for u in rows.evaluate_all("rs => rs.map(r => r.dataset.userId)")]
        ids = session.ids
        assert order[0] == ids["admin"]  # 50 s
        assert set(order[1:3]) == {ids["A"], ids["B"]}  # 30 s each
        assert set(order[3:]) == {ids["C"], ids["E"]}  # no timed task: last
        page.click("#logout")
        expect(page.locator("#login")).to_be_visible()
        assert page.evaluate("sessionStorage.length") == 0
    finally:
        context.close()
    assert errors == []


@pytest.mark.parametrize(
    ("values", "q", "want"),
    [
        ([7.0], 0.9, 7.0),
        ([1.0, 2.0, 3.0, 4.0], 0.5, 2.5),
        ([1.0, 2.0, 3.0, 4.0], 0.9, 3.7),  # h = 2.7: 3 + 0.7 * (4 - 3)
        ([10.0, 20.0, 30.0, 40.0, 100.0], 0.0, 10.0),
        ([10.0, 20.0, 30.0, 40.0, 100.0], 1.0, 100.0),
    ],
)
def test_percentile_is_linear_between_closest_ranks(
    values: list[float], q: float, want: float
) -> None:
    assert percentile(values, q) == pytest.approx(want, abs=1e-12)
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, 100 * q)))
