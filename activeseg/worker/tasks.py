"""Celery task shells. Each is one line around a plain job function in ``activeseg.jobs``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Task

from activeseg.core.settings import get_settings
from activeseg.jobs.registry import JOB_FUNCTIONS
from activeseg.jobs.runner import TRANSIENT, JobBusy, JobFunction, RetryLater, run_job
from activeseg.worker import runtime
from activeseg.worker.app import celery_app
from activeseg.worker.dispatch import dispatch, run_maintenance, task_name

log = logging.getLogger(__name__)


def job_task(kind: str) -> Callable[[JobFunction], Task]:
    """The house decorator: name ``activeseg.<kind>``, retries with backoff on transient
    errors only (database or broker unreachable), never on a bug or bad input; a job that
    asks to run again later (RetryLater) is retried with its own countdown."""

    def decorate(fn: JobFunction) -> Task:
        @celery_app.task(
            name=task_name(kind),
            bind=True,
            autoretry_for=TRANSIENT,
            retry_backoff=2,
            retry_backoff_max=60,
            retry_jitter=True,
            max_retries=8,
        )
        def shell(self: Task, job_id: int) -> dict[str, Any] | None:
            try:
                return run_job(
                    runtime.database(),
                    runtime.store(),
                    get_settings(),
                    job_id,
                    fn,
                    _dispatcher(),
                )
            except JobBusy as exc:
                countdown = get_settings().job_stale_after_s
                raise self.retry(exc=exc, countdown=countdown, max_retries=20) from exc
            except RetryLater as exc:
                # The job bounds its own reruns (a webhook's attempts): Celery's count of
                # retries so far (transient ones included) must not refuse this one.
                allow = self.request.retries + 1
                raise self.retry(exc=exc, countdown=exc.countdown_s, max_retries=allow) from exc

        return shell

    return decorate


def _dispatcher() -> Callable[[int], bool]:
    """Dispatch follow-up jobs through this worker's own Celery app."""
    db = runtime.database()
    return lambda job_id: dispatch(db, celery_app, job_id)


SHELLS = {kind: job_task(kind)(fn) for kind, fn in JOB_FUNCTIONS.items()}


@celery_app.task(name="activeseg.maintenance")
def maintenance() -> dict[str, int]:
    """Periodic: dispatch jobs the broker never got (outbox) and revive jobs of dead workers."""
    settings = get_settings()
    return run_maintenance(
        runtime.database(),
        celery_app,
        settings.job_stale_after_s,
        redispatch_after_s=settings.job_redispatch_after_s,
    )
