"""A uvicorn server in its own process, for load tests that must not share the GIL with the
load generator (the ``stack`` fixture's server runs in a thread of the test process)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.utils import stop_process

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def server_process(env: dict[str, str], workers: int = 2) -> Iterator[str]:
    """Run ``uvicorn activeseg.api.main:app`` with ``env`` (ACTIVESEG_* settings); yield its
    base URL. Its log (warnings, tracebacks) is printed on exit: pytest shows it with the
    output of a failed test."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "activeseg.api.main:app",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--log-level", "warning", "--no-access-log", "--lifespan", "off",
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+b") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            _wait_ready(proc, f"http://127.0.0.1:{port}", workers)
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)
            log.seek(0)
            text = log.read().decode(errors="replace").strip()
            if text:
                print(f"--- uvicorn log ---\n{text[-20000:]}")


def _wait_ready(proc: subprocess.Popen[bytes], url: str, workers: int) -> None:
    deadline = time.monotonic() + 300
    ok = 0
    while ok < 2 * workers:  # a few answers in a row: every worker has most likely started
        if proc.poll() is not None:
            raise RuntimeError(f"uvicorn exited with {proc.returncode} (its log follows)")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not answer /health within 300 s")
        try:
            ok = ok + 1 if httpx.get(f"{url}/health", timeout=5).status_code < 500 else 0
        except httpx.TransportError:
            ok = 0
        time.sleep(0.1)
