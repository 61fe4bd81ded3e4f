"""Handing committed job rows to the broker (after commit, never inside the transaction)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from celery import Celery
from sqlalchemy import update

from activeseg.core.db import Database
from activeseg.core.services.jobs import mark_dispatched, undispatched
from activeseg.core.services.tasks import expire_leases
from activeseg.core.tables import Job, JobState
from activeseg.worker.app import task_name

log = logging.getLogger(__name__)


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


def run_maintenance(db: Database, celery: Celery, stale_after_s: float) -> dict[str, int]:
    """Dispatch the outbox, and return jobs whose worker died (stale heartbeat) to pending."""
    stale = datetime.now(UTC) - timedelta(seconds=stale_after_s)
    with db.session() as s:
        revived = s.execute(
            update(Job)
            .where(Job.state == JobState.running.value, Job.heartbeat_at < stale)
            .values(state=JobState.pending.value, message="worker lost; re-dispatched")
        ).rowcount  # type: ignore[attr-defined]
        pending = undispatched(s, older_than_s=2.0)
        expired = expire_leases(s)
    sent = sum(dispatch(db, celery, job_id) for job_id in pending)
    return {"revived": revived, "dispatched": sent, "leases_expired": expired}
