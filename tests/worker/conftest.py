from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack, purge_queue
from tests.utils import stop_process


def start_worker(
    stack: Stack,
    log: Path,
    name: str,
    concurrency: int = 1,
    beat: bool = False,
    extra_env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """A real Celery worker process on the stack's broker, database and blob folder."""
    env = {**os.environ, **stack.env, **(extra_env or {})}
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "activeseg.worker.app",
        "worker",
        "--loglevel",
        "INFO",
        "--concurrency",
        str(concurrency),
        "-Q",
        stack.env["ACTIVESEG_QUEUE"],
        "--hostname",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]
    if beat:
        cmd += ["--beat", "--schedule", str(log.with_suffix(".beat"))]
    return subprocess.Popen(
        cmd, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


@pytest.fixture
def worker(stack: Stack, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    # The stack lives for the whole session and earlier tests enqueue jobs with no worker to
    # run them (a retrain of the default model takes minutes): a worker started here must
    # find only what its own test enqueues, so the leftovers go first.
    purge_queue(stack.env)

    def spawn(
        name: str = "w1",
        concurrency: int = 1,
        beat: bool = False,
        extra_env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = tmp_path / f"{name}.log"
        proc = start_worker(stack, log, name, concurrency, beat, extra_env)
        procs.append(proc)
        wait_worker_ready(proc, log)
        return proc

    yield spawn
    for p in procs:
        stop_process(p)


WORKER_START_DEADLINE_S = 600.0
"""A worker imports torch and Celery before it consumes: seconds on a quiet machine, minutes
with every core busy. Tests wait for its ``ready.`` line, so a job's own deadline measures the
job, not the start-up; this bound only turns a worker that never starts into a failure."""


def wait_worker_ready(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Block until Celery logs ``<name>@<host> ready.`` (it consumes from then on)."""
    deadline = time.monotonic() + WORKER_START_DEADLINE_S
    while b" ready." not in (log.read_bytes() if log.exists() else b""):
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"worker not ready after {WORKER_START_DEADLINE_S}s: {log}")
        time.sleep(0.1)


def wait_job(
    client: httpx.Client,
    job_id: int,
    states: tuple[str, ...] = ("succeeded",),
    timeout: float = 300.0,
) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if job["state"] in states:
            return job  # type: ignore[no-any-return]
        if job["state"] == "failed" and "failed" not in states:
            raise AssertionError(f"job failed: {job['error']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")
        time.sleep(0.2)
