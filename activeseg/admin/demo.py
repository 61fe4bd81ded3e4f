"""The ``digits`` demo project ``activeseg serve`` creates on first start (``--demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

from activeseg.admin.database import open_database
from activeseg.core.settings import get_settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from activeseg.core.project_config import ProjectSettings

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
    from activeseg.uncertainty.measures import MUTUAL_INFORMATION

    return ProjectSettings(
        region_kind="superpixel",
        region_size=12,
        batch_size=30,
        measure=MUTUAL_INFORMATION.name,
        model=ModelSettings(steps=DEMO_STEPS),
    )


def demo_project(host: str, port: int) -> None:
    """On first start: the `digits` project with some labelled images, an annotator, and its
    first retrain requested (the worker runs it once serve is up: retrain -> score -> queue)."""
    from sqlalchemy import select

    from activeseg.core.tables import Project

    settings = get_settings()
    db = open_database()
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
