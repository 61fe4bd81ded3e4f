"""``activeseg worker``: a Celery worker on the settings' broker and queue."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from activeseg.core.settings import get_settings


def worker_command(concurrency: int, beat: bool, loglevel: str = "INFO") -> list[str]:
    """The argv of a Celery worker process (``serve`` starts the same one as a child)."""
    settings = get_settings()
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "activeseg.worker.app",
        "worker",
        "--loglevel",
        loglevel,
        "--concurrency",
        str(concurrency),
        "-Q",
        settings.queue,
        "--hostname",
        f"activeseg-{os.getpid()}@%h",
    ]
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        cmd += ["--beat", "--schedule", str(settings.data_dir.resolve() / "celerybeat-schedule")]
    return cmd


def worker(
    concurrency: Annotated[int, typer.Option(help="parallel jobs in this worker")] = 1,
    beat: Annotated[
        bool,
        typer.Option(
            help="also run the periodic maintenance schedule "
            "(exactly one worker of a deployment should)"
        ),
    ] = False,
    loglevel: str = "INFO",
) -> None:
    """Run a Celery worker (production: start as many as you like, on any machine)."""
    os.execv(sys.executable, worker_command(concurrency, beat, loglevel))
