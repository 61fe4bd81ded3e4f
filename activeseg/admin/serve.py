"""``activeseg serve``: the API and a worker together, the embedded one-command mode. The
child processes run under :mod:`activeseg.admin.supervisor`."""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activeseg.admin.demo import demo_project
from activeseg.admin.users import bootstrap_admin
from activeseg.admin.worker import worker_command
from activeseg.core.settings import get_settings

if TYPE_CHECKING:
    from activeseg.admin.balancer import Balancer
    from activeseg.admin.supervisor import Part

SERVE_STOP_GRACE_S = 25.0
"""Default ``serve --stop-grace``: how long a stop waits for the API's open requests and the
worker's running job before it kills them. Below Docker's stop timeout when the service runs
there with ``stop_grace_period: 40s`` (Docker's own default, 10 s, kills sooner)."""

ApiProcesses = Annotated[
    int,
    typer.Option(
        min=1,
        help="API processes; with more than one, each new connection goes to the next in turn "
        "(activeseg/admin/balancer.py)",
    ),
]


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: Annotated[int, typer.Option(help="Celery worker processes started alongside")] = 1,
    api_workers: ApiProcesses = 1,
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
    from activeseg.core.migrate import upgrade

    logging.basicConfig(level=get_settings().log_level)
    settings = get_settings()
    upgrade(settings.database_url)
    bootstrap_admin()
    if demo:
        demo_project(host, port)
    served = _api(host, port, api_workers, stop_grace, settings.data_dir.resolve())
    parts = list(served.parts)
    if with_worker:
        parts.append(_worker_part(workers, settings.data_dir.resolve() / "run"))
    url = f"http://{host}:{port}"
    typer.echo(f"starting the activeseg API on {url} (docs: {url}/docs)")
    ready = f"activeseg is ready: API on {url}" + (", worker up" if with_worker else "")
    raise typer.Exit(_supervise(parts, served, stop_grace, ready))


def api(
    host: str = "127.0.0.1",
    port: int = 8000,
    processes: ApiProcesses = 1,
    stop_grace: Annotated[
        float,
        typer.Option(min=0, help="seconds a stop waits for open requests before killing them"),
    ] = SERVE_STOP_GRACE_S,
) -> None:
    """Run the API alone (no worker, no migration, no demo): what a deployment with its own
    workers runs, as docker-compose.yml's `api` service does. Exits as `serve` does."""
    logging.basicConfig(level=get_settings().log_level)
    served = _api(host, port, processes, stop_grace, get_settings().data_dir.resolve())
    url = f"http://{host}:{port}"
    typer.echo(f"starting the activeseg API on {url} ({processes} process(es))")
    ready = f"activeseg is ready: API on {url}"
    raise typer.Exit(_supervise(served.parts, served, stop_grace, ready))


@dataclass
class _Api:
    """The API's parts, and the balancer that hands them connections when there are several."""

    parts: list[Part]
    balancer: Balancer | None = None


def _supervise(parts: list[Part], api: _Api, grace_s: float, ready: str) -> int:
    from activeseg.admin.supervisor import Supervisor

    balancer = api.balancer
    supervisor = Supervisor(
        parts,
        grace_s=grace_s,
        say=typer.echo,
        on_ready=lambda: typer.echo(ready),
        on_stop=balancer.stop if balancer is not None else None,
    )
    if balancer is not None:
        balancer.start()
    try:
        status = supervisor.run()
    finally:
        if balancer is not None:
            balancer.close()
    for part in parts:
        if part.cleanup is not None:
            part.cleanup()
    return status


def _api(host: str, port: int, processes: int, grace_s: float, data_dir: Path) -> _Api:
    """One uvicorn process; or several, behind the balancer (one listening socket, each
    connection handed to the next process in turn), counting their metrics together."""
    if processes == 1:
        return _Api([_api_part(host, port, grace_s)])
    from activeseg.admin.balancer import Balancer, api_process_argv
    from activeseg.admin.supervisor import Part

    _prometheus_multiprocess_dir(data_dir / "prometheus")
    try:
        balancer = Balancer(host, port, processes)
    except OSError as exc:
        typer.echo(f"cannot listen on {host}:{port}: {exc}", err=True)
        raise typer.Exit(1) from None
    log_level = get_settings().log_level.lower()
    parts = []
    for k in range(processes):
        fd = balancer.channel_fd(k)
        parts.append(
            Part(
                f"API process {k + 1}",
                api_process_argv(fd, grace_s, log_level),
                pass_fds=(fd,),
                on_start=functools.partial(balancer.started, k),
                ready=functools.partial(balancer.ready, k),
            )
        )
    return _Api(parts, balancer)


def _api_part(host: str, port: int, grace_s: float) -> Part:
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
        "--log-level",
        get_settings().log_level.lower(),
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
