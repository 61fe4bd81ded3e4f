"""Job rows: created in the requester's transaction, dispatched to the broker after commit.

State machine: pending (committed, broker not told yet) -> queued (broker has it) -> running
-> succeeded | failed. A failed job can be retried; an identical job still pending, queued or
running is returned instead of starting another (idempotent requests).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, NotFound
from activeseg.core.services.auth import get_project_for
from activeseg.core.tables import Image, Job, JobState, Split, User

ACTIVE_STATES = (
    JobState.pending.value,
    JobState.queued.value,
    JobState.running.value,
    JobState.waiting.value,
)
# The images a retrain trains on: pool and train images with labelled pixels (val and test
# labels are held out for calibration and evaluation); see activeseg/jobs/retrain.py.
TRAIN_SPLITS = (Split.pool.value, Split.train.value)


def has_training_labels(session: Session, project_id: int) -> bool:
    """Whether a retrain of the project has anything to train on."""
    first = session.scalar(
        select(Image.id)
        .where(
            Image.project_id == project_id,
            Image.split.in_(TRAIN_SPLITS),
            Image.labelled_pixels > 0,
        )
        .limit(1)
    )
    return first is not None


def require_training_labels(session: Session, project_id: int) -> None:
    """Conflict, at request time, where a retrain job would only fail in the worker."""
    if not has_training_labels(session, project_id):
        raise Conflict(
            f"project {project_id} has no labelled pool or train images to train on yet; "
            "label some through its tasks or upload masks, then retrain"
        )


def request_job(
    session: Session,
    *,
    project_id: int | None,
    kind: str,
    params: dict[str, Any] | None = None,
    request_id: str | None = None,
    user: User | None = None,
) -> tuple[Job, bool]:
    """Return ``(job, created)``. Reuses a job with the same request id, or an identical one
    (same kind and params) that has not finished yet."""
    params = params or {}
    if request_id is not None:
        same = session.scalar(
            select(Job).where(
                Job.project_id == project_id, Job.kind == kind, Job.request_id == request_id
            )
        )
        if same is not None:
            return same, False
    for job in session.scalars(
        select(Job).where(
            Job.project_id == project_id, Job.kind == kind, Job.state.in_(ACTIVE_STATES)
        )
    ):
        if job.params == params:
            return job, False
    job = Job(
        project_id=project_id,
        kind=kind,
        params=params,
        request_id=request_id,
        created_by=user.id if user else None,
        state=JobState.pending.value,
    )
    session.add(job)
    session.flush()
    return job, True


def get_job_for(session: Session, user: User, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found")
    if job.project_id is not None:
        get_project_for(session, user, job.project_id)
    return job


def list_jobs(
    session: Session, project_id: int, state: str | None, offset: int, limit: int
) -> list[Job]:
    query = select(Job).where(Job.project_id == project_id)
    if state:
        query = query.where(Job.state == state)
    return list(session.scalars(query.order_by(Job.id.desc()).offset(offset).limit(limit)))


def retry_job(session: Session, job: Job) -> Job:
    if job.state != JobState.failed.value:
        raise Conflict(f"job {job.id} is {job.state}; only a failed job can be retried")
    job.state = JobState.pending.value
    job.error = None
    job.progress = 0.0
    job.message = "retry requested"
    job.finished_at = None
    job.dispatched_at = None
    return job


def mark_dispatched(session: Session, job_id: int, celery_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == JobState.pending.value)
        .values(state=JobState.queued.value, celery_id=celery_id, dispatched_at=datetime.now(UTC))
    )


def undispatched(session: Session, older_than_s: float = 0.0) -> list[int]:
    """Pending jobs the broker never heard of (the outbox), oldest first."""
    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.state == JobState.pending.value, Job.created_at <= cutoff)
            .order_by(Job.id)
        )
    )
