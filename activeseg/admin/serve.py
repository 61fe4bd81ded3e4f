"""``activeseg serve``: the API and a worker together, the embedded one-command mode. The
child processes run under :mod:`activeseg.admin.supervisor`."""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activeseg.admin.demo import demo_project
from activeseg.admin.users import bootstrap_admin
from activeseg.admin.worker import worker_command
from activeseg.core.settings import get_settings

if TYPE_CHECKING:
    from activeseg.admin.supervisor import Part

SERVE_STOP_GRACE_S = 25.0
"""Default ``serve --stop-grace``: how long a stop waits for the API's open requests and the
worker's running job before it kills them. Below Docker's stop timeout when the service runs
there with ``stop_grace_period: 40s`` (Docker's own default, 10 s, kills sooner)."""


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="Celery worker processes started alongside")] = 1,
    api_workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    with_worker: Annotated[bool, typer.Option(help="start a Celery worker too")] = True,
    demo: Annotated[
        bool,
        typer.Option(
            help="create the `digits` demo project on first start; the worker trains its first "
            "model, scores the pool and builds the first queue"
        ),
    ] = True,
    stop_grace: Annotated[
        float,
        typer.Option(
            min=0,
            help="seconds a stop (SIGTERM, SIGINT, SIGHUP) waits for open requests and the "
            "running job before killing them; SIGQUIT or a second signal stops at once",
        ),
    ] = SERVE_STOP_GRACE_S,
) -> None:
    """Run the API and (by default) a worker together: the embedded one-command mode.

    Migrates the database first. On a fresh data folder it creates an `admin` user and
    prints its token (also saved to DATA_DIR/admin-token, readable by you only). The API and
    the worker run as child processes that every stop ends (activeseg/admin/supervisor.py);
    exits 0 after a requested stop, 1 if a part exited on its own.
    """
    from activeseg.admin.supervisor import Supervisor
    from activeseg.core.migrate import upgrade

    logging.basicConfig(level=get_settings().log_level)
    settings = get_settings()
    upgrade(settings.database_url)
    bootstrap_admin()
    if demo:
        demo_project(host, port)
    if api_workers > 1:
        _prometheus_multiprocess_dir(settings.data_dir.resolve() / "prometheus")
    parts = [_api_part(host, port, api_workers, stop_grace)]
    if with_worker:
        parts.append(_worker_part(workers, settings.data_dir.resolve() / "run"))
    url = f"http://{host}:{port}"
    typer.echo(f"starting the activeseg API on {url} (docs: {url}/docs)")
    ready = f"activeseg is ready: API on {url}" + (", worker up" if with_worker else "")
    supervisor = Supervisor(
        parts, grace_s=stop_grace, say=typer.echo, on_ready=lambda: typer.echo(ready)
    )
    status = supervisor.run()
    for part in parts:
        if part.cleanup is not None:
            part.cleanup()
    raise typer.Exit(status)


def _api_part(host: str, port: int, api_workers: int, grace_s: float) -> Part:
    """uvicorn in a child process: it finishes open requests on SIGTERM, within the grace."""
    from activeseg.admin.supervisor import Part

    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "activeseg.api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(api_workers),
        "--log-level",
        "info",
        "--timeout-graceful-shutdown",
        str(max(1, int(grace_s))),
    ]
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return Part("API", argv, ready=lambda: _accepts(probe_host, port))


def _accepts(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _worker_part(workers: int, run_dir: Path) -> Part:
    """The Celery worker with the maintenance beat. SIGTERM is its warm shutdown (the running
    job may finish); if serve dies, SIGQUIT (cold shutdown) ends it and its pool at once."""
    from activeseg.admin.supervisor import Part
    from activeseg.worker.app import READY_FILE_ENV

    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob("worker-*.ready"):  # left by a serve that was killed
        stale.unlink(missing_ok=True)
    ready_file = run_dir / f"worker-{os.getpid()}.ready"
    return Part(
        "worker",
        worker_command(workers, beat=True, loglevel="WARNING"),
        death_signal=signal.SIGQUIT,
        env={**os.environ, READY_FILE_ENV: str(ready_file)},
        ready=ready_file.exists,
        cleanup=lambda: ready_file.unlink(missing_ok=True),
    )


def _prometheus_multiprocess_dir(default: Path) -> None:
    """Several API processes: /metrics must sum their counters, which prometheus_client does
    from files in PROMETHEUS_MULTIPROC_DIR. Stale files of a previous run are removed."""
    folder = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(default)))
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink()
