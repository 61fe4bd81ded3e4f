"""The ``activeseg`` command line."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from activeseg.core.settings import get_settings

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
            help="create the `digits` demo project with a queue and an annotator on first start"
        ),
    ] = True,
) -> None:
    """Run the API and (by default) a worker together: the embedded one-command mode.

    Migrates the database first. On a fresh data folder it creates an `admin` user and
    prints its token (also saved to DATA_DIR/admin-token, readable by you only).
    """
    import uvicorn

    from activeseg.core.migrate import upgrade

    logging.basicConfig(level=get_settings().log_level)
    settings = get_settings()
    upgrade(settings.database_url)
    _bootstrap_admin()
    if demo:
        _demo_project(host, port)
    if api_workers > 1:
        _prometheus_multiprocess_dir(settings.data_dir.resolve() / "prometheus")
    proc = None
    if with_worker:
        proc = subprocess.Popen(worker_command(workers, beat=True, loglevel="WARNING"))
    typer.echo(f"activeseg API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    try:
        uvicorn.run(
            "activeseg.api.main:app", host=host, port=port, workers=api_workers, log_level="info"
        )
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


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


def _demo_project(host: str, port: int) -> None:
    """On first start: a `digits` project, its first (random) queue, and an annotator."""
    from sqlalchemy import select

    from activeseg.core.project_config import ProjectSettings
    from activeseg.core.services import auth
    from activeseg.core.services.importer import import_dataset
    from activeseg.core.services.jobs import request_job
    from activeseg.core.storage import open_store
    from activeseg.core.tables import Project, User
    from activeseg.datasets.registry import load_dataset
    from activeseg.jobs.registry import inline_dispatcher

    settings = get_settings()
    db = _db()
    store = open_store(settings.storage_url)
    token_file = settings.data_dir / "demo-annotator-token"
    with db.session() as s:
        project = s.scalar(select(Project).where(Project.name == "digits-demo"))
        if project is None:
            admin = s.scalar(select(User).where(User.name == "admin"))
            assert admin is not None
            demo_settings = ProjectSettings(
                region_kind="superpixel",
                region_size=12,
                batch_size=30,
                measure="mutual_information",
            )
            project = import_dataset(
                s,
                store,
                admin,
                "digits-demo",
                load_dataset("digits", count=80, seed=0),
                demo_settings,
            ).project
            annotator = auth.create_user(s, "demo-annotator", "annotator")
            auth.add_member(s, project, annotator.id)
            _, secret = auth.create_token(s, annotator)
            token_file.write_text(secret + "\n")
            token_file.chmod(0o600)
            job, _ = request_job(
                s, project_id=project.id, kind="build_queue", params={}, request_id="demo-bootstrap"
            )
            typer.echo("created the demo project 'digits-demo' (80 images, 11 classes)")
        else:
            job = None
        project_id = project.id
    if job is not None:
        inline_dispatcher(db, store, settings)(job.id)  # the first queue, before serving
    if token_file.exists():
        url = f"http://{host}:{port}/annotate?project={project_id}"
        typer.echo(
            f"annotate the demo queue: {url}\n  annotator token: {token_file.read_text().strip()}"
        )


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
    role: Annotated[str, typer.Option(help="annotator | engineer | admin")] = "annotator",
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
