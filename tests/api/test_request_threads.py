"""An API process runs no more requests at once than its database pool holds, so a burst
never opens (and closes) connections beyond the pool: the rest wait for a thread. The
annotation routes have threads of their own, so a full shared pool never stalls them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from anyio.to_thread import current_default_thread_limiter
from fastapi import FastAPI
from sqlalchemy import text

from activeseg.api.app import create_app
from activeseg.api.threads import annotation_lane, lane_limiter
from activeseg.core.migrate import upgrade
from activeseg.core.settings import Settings
from tests.conftest import fresh_pg_database, start_server

POOL, LANE = 5, 2
SHARED = POOL - LANE  # threads (and connections) for every route outside the lane


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FastAPI, str, threading.Event]]:
    """The real app on PostgreSQL with a pool of 5 (2 of them the annotation lane's), plus
    probe routes: ``hold`` holds a pooled connection until ``release`` is set and answers its
    backend's pid, ``lane-hold`` does the same in the annotation lane, and an async one (it
    needs no thread) reads the thread limiters of the server's event loop."""
    url = fresh_pg_database("activeseg_test_request_threads")
    upgrade(url)
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=url,
        db_pool_size=POOL,
        annotation_threads=LANE,
        db_max_overflow=5,
    )
    app = create_app(settings, dispatcher=lambda job_id: True)
    release = threading.Event()

    def hold() -> int:
        with app.state.db.session() as s:
            pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
            assert release.wait(60), "the test never released the held requests"
        return pid

    async def limiter() -> dict[str, dict[str, float]]:
        out = {}
        for name, lim in (("shared", current_default_thread_limiter()), ("lane", lane_limiter())):
            stats = lim.statistics()
            out[name] = {"total": stats.total_tokens, "borrowed": stats.borrowed_tokens,
                         "waiting": stats.tasks_waiting}  # fmt: skip
        return out

    app.add_api_route("/test/hold", hold, methods=["POST"])
    started: list[int] = []
    done = [threading.Event() for _ in range(8)]

    def lane_hold(n: int) -> int:
        started.append(n)
        assert done[n].wait(60), "the test never released the request"
        return n

    app.add_api_route("/test/lane-hold/{n}", annotation_lane(lane_hold), methods=["POST"])
    app.state.started, app.state.done = started, done
    app.add_api_route("/test/limiter", limiter)
    server, thread, base = start_server(app)
    try:
        yield app, base, release
    finally:
        release.set()
        for event in done:
            event.set()
        server.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()


def _burst(base: str, route: str, n: int, pool: ThreadPoolExecutor) -> list[Future[int]]:
    def hold() -> int:
        with httpx.Client(base_url=base, timeout=60) as c:
            r = c.post(route)
            assert r.status_code == 200, r.text
            return int(r.json())

    return [pool.submit(hold) for _ in range(n)]


def _wait_for(probe: httpx.Client, key: str, waiting: int) -> dict[str, dict[str, float]]:
    """The limiters' state once ``waiting`` requests wait in ``key`` (every request of a burst
    has reached the server)."""
    deadline = time.monotonic() + 60
    while (stats := probe.get("/test/limiter").json())[key]["waiting"] < waiting:
        assert time.monotonic() < deadline, stats
        time.sleep(0.01)
    return stats  # type: ignore[no-any-return]


def test_a_burst_waits_for_the_pools_threads_and_reuses_its_connections(
    served: tuple[FastAPI, str, threading.Event],
) -> None:
    _, base, release = served
    burst = 2 * SHARED
    with httpx.Client(base_url=base, timeout=60) as probe, ThreadPoolExecutor(burst) as pool:
        first = _burst(base, "/test/hold", burst, pool)
        # Three hold a shared thread (and a connection), three wait for one; the lane is idle.
        stats = _wait_for(probe, "shared", burst - SHARED)
        assert stats == {
            "shared": {"total": SHARED, "borrowed": SHARED, "waiting": burst - SHARED},
            "lane": {"total": LANE, "borrowed": 0, "waiting": 0},
        }
        # An annotation route still answers: it needs no shared thread (a bad token: 401
        # after a database lookup in the lane).
        r = probe.get("/tasks/1", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401, r.text
        release.set()
        pids = {f.result() for f in first}
        second = {f.result() for f in _burst(base, "/test/hold", burst, pool)}
    # Twelve requests, no backend beyond the pool's five (with 40 threads, six at once would
    # have opened a sixth): three held at once, the rest reused them or the lane's.
    assert len(pids) >= SHARED
    assert len(pids | second) <= POOL


def test_the_annotation_lane_runs_its_own_threads_in_arrival_order(
    served: tuple[FastAPI, str, threading.Event],
) -> None:
    app, base, release = served
    n = LANE + 3
    with httpx.Client(base_url=base, timeout=60) as probe, ThreadPoolExecutor(n) as pool:
        held = []
        for k in range(n):  # one at a time: each has reached the lane before the next is sent
            held += _burst(base, f"/test/lane-hold/{k}", 1, pool)
            deadline = time.monotonic() + 60
            while sum((lane := probe.get("/test/limiter").json()["lane"])[key]
                      for key in ("borrowed", "waiting")) < k + 1:  # fmt: skip
                assert time.monotonic() < deadline, lane
                time.sleep(0.01)
        assert probe.get("/test/limiter").json() == {
            "shared": {"total": SHARED, "borrowed": 0, "waiting": 0},
            "lane": {"total": LANE, "borrowed": LANE, "waiting": n - LANE},
        }
        assert app.state.started == [0, 1]
        # Each request that ends frees one thread: the longest-waiting request takes it.
        for k in range(n):
            app.state.done[k].set()
            deadline = time.monotonic() + 60
            while len(app.state.started) < min(n, k + 1 + LANE):
                assert time.monotonic() < deadline, app.state.started
                time.sleep(0.01)
        assert [f.result() for f in held] == list(range(n))
    assert app.state.started == list(range(n))


def test_the_lane_must_leave_threads_to_the_other_routes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ACTIVESEG_ANNOTATION_THREADS"):
        Settings(data_dir=tmp_path, db_pool_size=4, annotation_threads=4)


def test_the_pool_sizes_come_from_the_settings(tmp_path: Path) -> None:
    from activeseg.core.db import Database

    for url in (f"sqlite:///{tmp_path / 'a.db'}", "postgresql+psycopg://postgres@127.0.0.1/x"):
        db = Database(Settings(data_dir=tmp_path, database_url=url, db_pool_size=4,
                               db_max_overflow=2))  # fmt: skip
        pool = db.engine.pool
        assert (pool.size(), pool._max_overflow) == (4, 2)  # type: ignore[attr-defined]
        db.dispose()
