"""Handing committed job rows to the broker (after commit, never inside the transaction)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.services.jobs import mark_dispatched, request_job, undispatched
from activeseg.core.services.tasks import expire_leases
from activeseg.core.tables import Job, JobState

log = logging.getLogger(__name__)

# The maintenance task requests an orphan-blob sweep job this often (activeseg/jobs/
# sweep_orphan_blobs.py): listing a whole bucket every few seconds would cost more than orphans.
ORPHAN_SWEEP_EVERY_S = 3600.0
ORPHAN_SWEEP_KIND = "sweep_orphan_blobs"


def task_name(kind: str) -> str:
    """The Celery task name of a job kind (the API dispatches by name, never importing the
    job code and its torch dependency)."""
    return f"activeseg.{kind}"


def dispatch(db: Database, celery: Celery, job_id: int) -> bool:
    """Send job ``job_id`` to the broker. False (job left pending for the sweep) if the broker
    cannot be reached; the request that created the job still succeeds."""
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state != JobState.pending.value:
            return False
        kind, attempt = job.kind, job.attempts
    task_id = f"job-{job_id}-{attempt}-{datetime.now(UTC).timestamp():.0f}"
    try:
        celery.send_task(task_name(kind), args=[job_id], task_id=task_id)
    except Exception:  # noqa: BLE001 - any broker failure: leave it to the outbox sweep
        log.warning("broker unreachable; job %s stays pending", job_id, exc_info=True)
        return False
    with db.session() as s:
        mark_dispatched(s, job_id, task_id)
    return True


def request_orphan_sweep(session: Session, every_s: float = ORPHAN_SWEEP_EVERY_S) -> int | None:
    """The id of a new sweep job if one is due (none requested in the last ``every_s``
    seconds, none still running), else None. Shared by every worker through the database."""
    last = session.scalar(
        select(Job.created_at)
        .where(Job.kind == ORPHAN_SWEEP_KIND, Job.project_id.is_(None))
        .order_by(Job.created_at.desc())
        .limit(1)
    )
    if last is not None and last > datetime.now(UTC) - timedelta(seconds=every_s):
        return None
    job, created = request_job(session, project_id=None, kind=ORPHAN_SWEEP_KIND)
    return job.id if created else None


def run_maintenance(
    db: Database,
    celery: Celery,
    stale_after_s: float,
    orphan_sweep_every_s: float = ORPHAN_SWEEP_EVERY_S,
    redispatch_after_s: float | None = None,
) -> dict[str, int]:
    """Dispatch the outbox, return jobs whose worker died (stale heartbeat) to pending, send
    again jobs queued for longer than ``redispatch_after_s`` (their message may have died with
    a broker that keeps nothing on disk; a duplicate message is harmless, a job runs once), and
    request the orphan-blob sweep when it is due."""
    now = datetime.now(UTC)
    stale = now - timedelta(seconds=stale_after_s)
    with db.session() as s:
        revived = s.execute(
            update(Job)
            .where(Job.state == JobState.running.value, Job.heartbeat_at < stale)
            .values(state=JobState.pending.value, message="worker lost; re-dispatched")
        ).rowcount  # type: ignore[attr-defined]
        lost = 0
        if redispatch_after_s is not None:
            lost = s.execute(
                update(Job)
                .where(
                    Job.state == JobState.queued.value,
                    Job.dispatched_at < now - timedelta(seconds=redispatch_after_s),
                )
                .values(state=JobState.pending.value, message="not started; sent again")
            ).rowcount  # type: ignore[attr-defined]
        pending = undispatched(s, older_than_s=2.0)
        expired = expire_leases(s)
        sweep = request_orphan_sweep(s, orphan_sweep_every_s)
    sent = sum(dispatch(db, celery, job_id) for job_id in pending)
    if sweep is not None:
        dispatch(db, celery, sweep)
    return {
        "revived": revived,
        "redispatched": lost,
        "dispatched": sent,
        "leases_expired": expired,
        "orphan_sweeps_requested": int(sweep is not None),
    }
