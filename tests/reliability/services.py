"""Private PostgreSQL and Redis servers for the fault tests: the tests stop and restart them, so
they never touch the shared services on 5432/6379 (other test sessions keep using those).

Both listen on 127.0.0.1 only, on free ports, with their data in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import redis

from tests.conftest import Stack, free_port, running_stack, stack_env


def _wait(check, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not come up in {timeout:.0f}s")
        time.sleep(0.1)


class PrivateRedis:
    """``redis-server`` on a free loopback port; ``stop()`` kills it, ``start()`` brings it back
    on the same port (empty: it keeps nothing on disk, like the shared one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        cmd = [
            shutil.which("redis-server") or "redis-server",
            "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.folder),
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _wait(lambda: redis.Redis.from_url(self.url, socket_timeout=1).ping(), "redis")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # no shutdown save, no goodbye to clients
            self.proc.wait(timeout=10)
        self.proc = None


def _pg_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


class PrivatePostgres:
    """A throwaway PostgreSQL cluster (initdb) on a free loopback port, trust auth."""

    def __init__(self) -> None:
        # Its own folder under /tmp: pytest's tmp folders are private to root, and the server
        # runs as the postgres user.
        self.folder = Path(tempfile.mkdtemp(prefix="activeseg-pg-"))
        self.data = self.folder / "pgdata"
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0  # initdb refuses to run as root

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, timeout=120, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, dbname: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust")
        self.start()

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.folder} -c fsync=off"
        self._run(
            _pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "pg.log"),
            "-o", opts, "-w", "start",
        )  # fmt: skip
        _wait(lambda: psycopg.connect(self.admin_dsn, connect_timeout=1).close() is None, "pg")

    def stop(self, mode: str = "immediate") -> None:
        """``immediate`` is a crash as far as clients are concerned: every connection drops."""
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@contextlib.contextmanager
def stack_on(folder: Path, broker_url: str, database_url: str | None = None) -> Iterator[Stack]:
    """A served API on ``broker_url`` (and ``database_url``; default: a fresh database on the
    shared PostgreSQL) with a Celery queue of its own."""
    env = stack_env("postgresql" if database_url is None else "sqlite", folder)
    if database_url is not None:
        env["ACTIVESEG_DATABASE_URL"] = database_url
    env["ACTIVESEG_BROKER_URL"] = broker_url
    env["ACTIVESEG_QUEUE"] = f"faults-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    with running_stack("postgresql", env) as stack:
        yield stack
