"""An API process runs no more requests at once than its database pool holds, so a burst
never opens (and closes) connections beyond the pool: the rest wait for a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from anyio.to_thread import current_default_thread_limiter
from fastapi import FastAPI
from sqlalchemy import text

from activeseg.api.app import create_app
from activeseg.core.migrate import upgrade
from activeseg.core.settings import Settings
from tests.conftest import fresh_pg_database, start_server

POOL = 3


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FastAPI, str, threading.Event]]:
    """The real app on PostgreSQL with a pool of 3, plus two probe routes: one that holds a
    pooled connection until ``release`` is set and answers its backend's pid, and an async
    one (it needs no thread) that reads the thread limiter of the server's event loop."""
    url = fresh_pg_database("activeseg_test_request_threads")
    upgrade(url)
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=url,
        db_pool_size=POOL,
        db_max_overflow=5,
    )
    app = create_app(settings, dispatcher=lambda job_id: True)
    release = threading.Event()

    def hold() -> int:
        with app.state.db.session() as s:
            pid = int(s.execute(text("SELECT pg_backend_pid()")).scalar_one())
            assert release.wait(60), "the test never released the held requests"
        return pid

    async def limiter() -> dict[str, float]:
        stats = current_default_thread_limiter().statistics()
        return {"total": stats.total_tokens, "borrowed": stats.borrowed_tokens,
                "waiting": stats.tasks_waiting}  # fmt: skip

    app.add_api_route("/test/hold", hold, methods=["POST"])
    app.add_api_route("/test/limiter", limiter)
    server, thread, base = start_server(app)
    try:
        yield app, base, release
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()


def test_a_burst_waits_for_the_pools_threads_and_reuses_its_connections(
    served: tuple[FastAPI, str, threading.Event],
) -> None:
    _, base, release = served
    burst = 2 * POOL
    with httpx.Client(base_url=base, timeout=60) as probe, ThreadPoolExecutor(burst) as pool:

        def hold() -> int:
            with httpx.Client(base_url=base, timeout=60) as c:
                r = c.post("/test/hold")
                assert r.status_code == 200, r.text
                return int(r.json())

        first = [pool.submit(hold) for _ in range(burst)]
        # Ready when every request of the burst has reached the server: three hold a thread
        # (and a connection), three wait for one.
        deadline = time.monotonic() + 60
        while (stats := probe.get("/test/limiter").json())["waiting"] < burst - POOL:
            assert time.monotonic() < deadline, stats
            time.sleep(0.01)
        assert stats == {"total": POOL, "borrowed": POOL, "waiting": burst - POOL}
        release.set()
        pids = {f.result() for f in first}
        second = {f.result() for f in [pool.submit(hold) for _ in range(burst)]}
    # Twelve requests, three backends: no connection was opened beyond the pool.
    assert len(pids) == POOL
    assert second == pids


def test_the_pool_sizes_come_from_the_settings(tmp_path: Path) -> None:
    from activeseg.core.db import Database

    for url in (f"sqlite:///{tmp_path / 'a.db'}", "postgresql+psycopg://postgres@127.0.0.1/x"):
        db = Database(Settings(data_dir=tmp_path, database_url=url, db_pool_size=4,
                               db_max_overflow=2))  # fmt: skip
        pool = db.engine.pool
        assert (pool.size(), pool._max_overflow) == (4, 2)  # type: ignore[attr-defined]
        db.dispose()
