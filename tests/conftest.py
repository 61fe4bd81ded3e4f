"""Shared fixtures: real PostgreSQL and Redis, real HTTP to a real uvicorn server.

The API suite runs once per database backend: SQLite (embedded default) and PostgreSQL.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
import uvicorn

PG_ADMIN_DSN = os.environ.get("ACTIVESEG_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("ACTIVESEG_TEST_REDIS", "redis://127.0.0.1:6379")
# Redis database numbers per backend, so workers of one never see the other's messages.
# ACTIVESEG_TEST_REDIS_DB_BASE moves both, so two test runs on one machine stay apart.
_REDIS_BASE = int(os.environ.get("ACTIVESEG_TEST_REDIS_DB_BASE", "14"))
REDIS_DB = {"sqlite": _REDIS_BASE, "postgresql": _REDIS_BASE + 1}

os.environ.setdefault("ACTIVESEG_ENVIRONMENT", "test")


def pg_url(dbname: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{dbname}"


_created_databases: list[str] = []


def _drop_database(conn: psycopg.Connection, name: str) -> None:  # type: ignore[type-arg]
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
    )
    conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


def fresh_pg_database(name: str) -> str:
    """Drop and create database ``name``; return its SQLAlchemy URL. Dropped again when the
    test session ends."""
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        _drop_database(conn, name)
        conn.execute(f'CREATE DATABASE "{name}"')
    _created_databases.append(name)
    return pg_url(name)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Drop the databases this session made, so they do not pile up on a developer machine."""
    if not _created_databases:
        return
    try:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            for name in _created_databases:
                _drop_database(conn, name)
    except psycopg.Error as exc:  # a failed cleanup must not hide the test results
        print(f"could not drop test databases: {exc}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """A running API server on one backend, with its settings and an admin token."""

    backend: str
    settings: object
    env: dict[str, str]
    base_url: str
    admin_token: str
    db: object
    store: object

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=60)


_stack_ids = itertools.count()


def stack_env(backend: str, data_dir: Path) -> dict[str, str]:
    if backend == "sqlite":
        db_url = f"sqlite:///{data_dir / 'activeseg.db'}"
    else:
        db_url = fresh_pg_database(f"activeseg_test_{os.getpid()}_{next(_stack_ids)}")
    broker = f"{REDIS_URL}/{REDIS_DB[backend]}"
    return {
        "ACTIVESEG_ENVIRONMENT": "test",
        "ACTIVESEG_DATA_DIR": str(data_dir),
        "ACTIVESEG_DATABASE_URL": db_url,
        "ACTIVESEG_BROKER_URL": broker,
        # One queue per test session: concurrent sessions on this Redis never share messages.
        "ACTIVESEG_QUEUE": f"activeseg-test-{os.getpid()}-{backend}",
        "ACTIVESEG_STORAGE_URL": f"file://{data_dir / 'blobs'}",
        "ACTIVESEG_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "ACTIVESEG_MAX_IMAGE_PIXELS": str(1_000_000),
        "ACTIVESEG_MAX_IMAGES_PER_UPLOAD": "20",
        # One admin token uploads for the whole session: no per-token limits here (they have
        # their own servers in tests/api/test_rate_limit.py).
        "ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE": "0",
        "ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE": "0",
    }


def start_server(app: object) -> tuple[uvicorn.Server, threading.Thread, str]:
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            # Longer than any pause in a test: at uvicorn's default (5 s) a request sent just
            # as the server closes the idle keep-alive connection gets "connection reset".
            timeout_keep_alive=300,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300  # a readiness bound, not a wait
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return server, thread, f"http://127.0.0.1:{port}"


@contextmanager
def running_stack(backend: str, env: dict[str, str]) -> Iterator[Stack]:
    """Migrate, create the app and an admin, serve it over real HTTP on a free port."""
    from activeseg.api.app import create_app
    from activeseg.core.migrate import upgrade
    from activeseg.core.services import auth
    from activeseg.core.settings import Settings

    settings = Settings(**{k.removeprefix("ACTIVESEG_").lower(): v for k, v in env.items()})
    upgrade(settings.database_url)
    app = create_app(settings)
    with app.state.db.session() as s:
        admin = auth.create_user(s, f"admin-{backend}", "admin")
        _, token = auth.create_token(s, admin)
    server, thread, url = start_server(app)
    try:
        yield Stack(backend, settings, env, url, token, app.state.db, app.state.store)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    backend = request.param
    env = stack_env(backend, tmp_path_factory.mktemp(backend))
    with running_stack(backend, env) as running:
        yield running
    purge_queue(env)


def purge_queue(env: dict[str, str]) -> None:
    """Drop every message waiting in the stack's Celery queue."""
    redis.Redis.from_url(env["ACTIVESEG_BROKER_URL"]).delete(env["ACTIVESEG_QUEUE"])


@pytest.fixture
def admin(stack: Stack) -> Iterator[httpx.Client]:
    with stack.client(stack.admin_token) as c:
        yield c
