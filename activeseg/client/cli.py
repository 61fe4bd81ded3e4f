"""The ``activeseg`` command line."""

from __future__ import annotations

import logging
import os
import signal
import sys
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from activeseg.core.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from activeseg.client.supervisor import Part
    from activeseg.core.project_config import ProjectSettings

app = typer.Typer(
    help="activeseg: active-learning annotation service for segmentation.", no_args_is_help=True
)
user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")


def _db():  # type: ignore[no-untyped-def]
    from activeseg.core.db import Database

    return Database(get_settings())


@app.command()
def migrate() -> None:
    """Bring the database schema to the latest version (alembic upgrade head)."""
    from activeseg.core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo(f"database at head: {_redact(settings.database_url)}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def worker_command(concurrency: int, beat: bool, loglevel: str = "INFO") -> list[str]:
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


@app.command()
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


SERVE_STOP_GRACE_S = 25.0
"""Default ``serve --stop-grace``: how long a stop waits for the API's open requests and the
worker's running job before it kills them. Below Docker's stop timeout when the service runs
there with ``stop_grace_period: 40s`` (Docker's own default, 10 s, kills sooner)."""


@app.command()
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
    the worker run as child processes that every stop ends (activeseg/client/supervisor.py);
    exits 0 after a requested stop, 1 if a part exited on its own.
    """
    from activeseg.client.supervisor import Supervisor
    from activeseg.core.migrate import upgrade

    logging.basicConfig(level=get_settings().log_level)
    settings = get_settings()
    upgrade(settings.database_url)
    _bootstrap_admin()
    if demo:
        _demo_project(host, port)
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
    from activeseg.client.supervisor import Part

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
    from activeseg.client.supervisor import Part
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


def _bootstrap_admin() -> None:
    from sqlalchemy import func, select

    from activeseg.core.services import auth
    from activeseg.core.tables import User

    settings = get_settings()
    with _db().session() as s:
        if s.scalar(select(func.count()).select_from(User)):
            path = settings.data_dir / "admin-token"
            if path.exists():
                typer.echo(f"admin token: see {path}")
            return
        user = auth.create_user(s, "admin", "admin")
        _, secret = auth.create_token(s, user)
    path = settings.data_dir / "admin-token"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    typer.echo(f"created user 'admin'; token (saved in {path}):\n  {secret}")


DEMO_NAME = "digits-demo"
DEMO_IMAGES = 80
DEMO_TRAIN_FRACTION = 0.2
"""16 of the demo's 80 canvases come fully labelled (split ``train``), so its first model
trains on first start; 8 val and 8 test images are labelled too, the other 48 form the pool."""
DEMO_STEPS = 200
"""Optimiser steps per retrain of the demo project: its first model trains in about a minute
on 2 idle cores (46 s measured, test mIoU about 0.3: enough for its uncertainty to point at
digit strokes), and later retrains of the demo stay as short."""
DEMO_FIRST_MODEL_S = 90
"""What a newcomer is told to expect, in seconds, from the first start to a queue of the
model's proposals on 2 idle cores: the worker starting (about 20 s), the retrain (46 s),
evaluating it (9 s), scoring the pool (4 s) and building the queue (under 1 s)."""


def demo_settings() -> ProjectSettings:
    """The demo project's settings: superpixels, a BALD queue, a short retrain."""
    from activeseg.core.project_config import ModelSettings, ProjectSettings

    return ProjectSettings(
        region_kind="superpixel",
        region_size=12,
        batch_size=30,
        measure="mutual_information",
        model=ModelSettings(steps=DEMO_STEPS),
    )


def _demo_project(host: str, port: int) -> None:
    """On first start: the `digits` project with some labelled images, an annotator, and its
    first retrain requested (the worker runs it once serve is up: retrain -> score -> queue)."""
    from sqlalchemy import select

    from activeseg.core.tables import Project

    settings = get_settings()
    db = _db()
    token_file = settings.data_dir / "demo-annotator-token"
    with db.session() as s:
        project = s.scalar(select(Project).where(Project.name == DEMO_NAME))
        created = project is None
        project_id, job_id = _create_demo(s, token_file) if project is None else (project.id, None)
    if job_id is not None:
        from activeseg.worker.app import celery_app
        from activeseg.worker.dispatch import dispatch

        dispatch(db, celery_app, job_id)  # else pending: the worker's maintenance sends it
        n_train = round(DEMO_IMAGES * DEMO_TRAIN_FRACTION)
        typer.echo(
            f"created the demo project '{DEMO_NAME}' ({DEMO_IMAGES} images, 11 classes, "
            f"{n_train} labelled for training)\n"
            f"  the worker trains its first model ({DEMO_STEPS} steps, about a minute), scores"
            f" the pool and builds the first queue: /annotate shows the model's proposals and"
            f" heatmaps about {DEMO_FIRST_MODEL_S} s on 2 cores after this start (job {job_id})"
        )
    elif not created:
        with db.session() as s:
            typer.echo(f"demo project '{DEMO_NAME}': {_demo_status(s, project_id)}")
    if token_file.exists():
        url = f"http://{host}:{port}/annotate?project={project_id}"
        typer.echo(
            f"annotate the demo queue: {url}\n  annotator token: {token_file.read_text().strip()}"
        )


def _create_demo(session: Session, token_file: Path) -> tuple[int, int]:
    """Import the demo dataset, add its annotator, request its first retrain: one transaction.
    Returns ``(project id, retrain job id)``."""
    from sqlalchemy import select

    from activeseg.core.services import auth
    from activeseg.core.services.jobs import request_job
    from activeseg.core.storage import open_store
    from activeseg.core.tables import User
    from activeseg.datasets.importer import import_dataset
    from activeseg.datasets.registry import load_dataset

    admin = session.scalar(select(User).where(User.name == "admin"))
    assert admin is not None
    project = import_dataset(
        session,
        open_store(get_settings().storage_url),
        admin,
        DEMO_NAME,
        load_dataset("digits", count=DEMO_IMAGES, seed=0),
        demo_settings(),
        train_fraction=DEMO_TRAIN_FRACTION,
    ).project
    annotator = auth.create_user(session, "demo-annotator", "annotator")
    auth.add_member(session, project, annotator.id)
    _, secret = auth.create_token(session, annotator)
    token_file.write_text(secret + "\n")
    token_file.chmod(0o600)
    job, _ = request_job(
        session,
        project_id=project.id,
        kind="retrain",
        params={"trigger": "demo"},
        request_id="demo-first-model",
    )
    return project.id, job.id


def _demo_status(session: Session, project_id: int) -> str:
    """One line: the active model version, else the state of the latest retrain."""
    from sqlalchemy import select

    from activeseg.core.tables import Job, ModelVersion, Project

    project = session.get(Project, project_id)
    assert project is not None
    if project.active_model_id is not None:
        mv = session.get(ModelVersion, project.active_model_id)
        return f"model version {mv.version if mv else '?'} active"
    job = session.scalar(
        select(Job)
        .where(Job.project_id == project_id, Job.kind == "retrain")
        .order_by(Job.id.desc())
        .limit(1)
    )
    if job is None:
        return "no model yet (label some regions, then retrain)"
    state = f"no model yet; retrain job {job.id} is {job.state} ({100 * job.progress:.0f}%)"
    if job.state == "running":
        # Cut off by the last stop: the worker's maintenance runs it again once its heartbeat
        # is older than job_stale_after_s.
        state += f"; if a stop cut it off, it runs again within {_revive_s():.0f} s"
    return state


def _revive_s() -> float:
    settings = get_settings()
    return settings.job_stale_after_s + settings.maintenance_interval_s


SIMULATE_STEPS = 300
"""``simulate``'s optimiser steps per retrain: under a third of a project's default (1000), so
that ``--rounds 2 --budget 20`` on digits stays within a few minutes on a laptop CPU."""


class AnnotatorProtocol(StrEnum):
    """How ``simulate``'s annotator answers (activeseg.client.simulate.PROTOCOLS)."""

    dominant = "dominant"
    exact = "exact"


@app.command()
def simulate(
    dataset: Annotated[str, typer.Option(help="digits | nuclei | folder:PATH")] = "digits",
    count: Annotated[int, typer.Option(help="images to generate or read")] = 120,
    measure: Annotated[str, typer.Option(help="uncertainty measure that ranks regions")] = (
        "entropy"
    ),
    strategy: Annotated[str, typer.Option(help="top_k | random | power | softmax | softrank")] = (
        "power"
    ),
    region_kind: Annotated[str, typer.Option(help="superpixel | grid")] = "superpixel",
    region_size: Annotated[int, typer.Option(help="superpixel or tile side in pixels")] = 12,
    rounds: Annotated[int, typer.Option(help="label -> retrain rounds")] = 4,
    budget: Annotated[int, typer.Option(help="regions labelled per round")] = 40,
    seeds: Annotated[int, typer.Option(help="repetitions with seeds 0..S-1")] = 1,
    method: Annotated[str, typer.Option(help="mc_dropout | ensemble | single")] = "mc_dropout",
    steps: Annotated[
        int,
        typer.Option(
            help="optimiser steps per retrain (the project default is "
            "activeseg.config_compat.DEFAULT_STEPS; fewer keep a simulation short)"
        ),
    ] = SIMULATE_STEPS,
    protocol: Annotated[
        AnnotatorProtocol,
        typer.Option(
            help="the simulated annotator's answer: the region's majority class (dominant) "
            "or its exact ground-truth pixels as a mask patch (exact)",
        ),
    ] = AnnotatorProtocol.dominant,
    control_fraction: Annotated[
        float | None,
        typer.Option(
            help="share of each queue drawn at random as a control (project setting "
            "control_fraction); default: the project's default"
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for curve.csv and curve.png")] = Path(
        "simulation"
    ),
    keep: Annotated[bool, typer.Option(help="keep each seed's service folder")] = False,
) -> None:
    """Run the whole loop against a real service (API + worker) with a simulated annotator
    who answers from the ground truth; write the learning curve as CSV and PNG."""
    from activeseg.client.simulate import (
        SimulationConfig,
        plot_learning_curves,
        run_simulation,
        write_csv,
    )

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request hides the rounds
    cfg = SimulationConfig(
        dataset=dataset,
        count=count,
        measure=measure,
        strategy=strategy,
        region_kind=region_kind,
        region_size=region_size,
        rounds=rounds,
        budget=budget,
        seeds=list(range(seeds)),
        model={"method": method, "steps": steps},
        protocol=protocol.value,
        control_fraction=control_fraction,
    )
    rows = run_simulation(cfg, workdir=out / "runs" if keep else None, keep=keep)
    write_csv(rows, out / "curve.csv")
    plot_learning_curves(rows, out / "curve.png", title=f"{dataset}: {cfg.label}")
    for row in rows:
        typer.echo(
            f"seed {row['seed']} round {row['round']}: {row['labelled_regions']} regions,"
            f" {100 * row['labelled_fraction']:.1f}% pixels, test mIoU {row['test_miou']},"
            f" {row['round_s']:.1f} s (label {row['label_s']:.1f}, retrain {row['retrain_s']:.1f},"
            f" re-score/queue {row['requeue_s']:.1f})"
        )
    for seed in cfg.seeds:
        mine = [row for row in rows if row["seed"] == seed]
        if mine:
            typer.echo(f"seed {seed}: {mine[-1]['seed_elapsed_s']:.1f} s in all")
    typer.echo(f"wrote {out / 'curve.csv'} and {out / 'curve.png'}")


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[
        str, typer.Option(help="annotator | reviewer | engineer | admin")
    ] = "annotator",
    expires_days: Annotated[float | None, typer.Option(help="token lifetime")] = None,
) -> None:
    """Create a user and print a new API token for them."""
    from activeseg.core.errors import DomainError
    from activeseg.core.services import auth

    try:
        with _db().session() as s:
            user = auth.create_user(s, name, role)
            _, secret = auth.create_token(
                s, user, timedelta(days=expires_days) if expires_days else None
            )
    except DomainError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="user name")],
    expires_days: Annotated[float | None, typer.Option(help="token lifetime")] = None,
) -> None:
    """Print a new API token for an existing user."""
    from sqlalchemy import select

    from activeseg.core.services import auth
    from activeseg.core.tables import User

    with _db().session() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            typer.echo(f"error: no user named {name!r}", err=True)
            raise typer.Exit(2)
        _, secret = auth.create_token(
            s, user, timedelta(days=expires_days) if expires_days else None
        )
    typer.echo(secret)


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(help="the token itself, or its id")],
) -> None:
    """Revoke a token so it can no longer be used."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from activeseg.core.services.auth import hash_token
    from activeseg.core.tables import ApiToken

    with _db().session() as s:
        query = select(ApiToken)
        query = (
            query.where(ApiToken.id == int(token))
            if token.isdigit()
            else query.where(ApiToken.token_hash == hash_token(token))
        )
        row = s.scalar(query)
        if row is None:
            typer.echo("error: no such token", err=True)
            raise typer.Exit(2)
        row.revoked_at = row.revoked_at or datetime.now(UTC)
        typer.echo(f"revoked token {row.id} ({row.prefix}…)")


from activeseg.client.commands import register  # noqa: E402 - client commands

register(app)

if __name__ == "__main__":
    app()
