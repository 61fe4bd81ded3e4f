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
from sqlalchemy import update

from activeseg.core.services import tasks as task_service
from activeseg.core.services.annotators import percentile
from activeseg.core.tables import Task
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
