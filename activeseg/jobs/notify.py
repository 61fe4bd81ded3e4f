"""Jobs tell a project's webhooks what happened (``model.trained``, ``queue.refilled``,
``job.failed``): a delivery row and a ``deliver_webhook`` job per subscribed webhook."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from activeseg.core.services.webhooks import JOB_KIND, record_event

if TYPE_CHECKING:
    from activeseg.jobs.runner import JobContext

log = logging.getLogger(__name__)


def notify(ctx: JobContext, event: str, data: dict[str, Any]) -> None:
    """Called by a job: tell the project's webhooks about ``event``. Never raises: a webhook
    problem must not fail the job that reports it."""
    if ctx.project_id is None:
        return
    if event == "job.failed" and data.get("kind") == JOB_KIND:
        return  # a failed delivery reporting itself would loop
    try:
        with ctx.db.session() as s:
            job_ids = record_event(
                s, ctx.project_id, event, data, source_key=f"{event}:job-{ctx.job_id}"
            )
        for job_id in job_ids:
            ctx.dispatch(job_id)
    except Exception:  # noqa: BLE001 - logged; the reporting job goes on
        log.warning("could not record webhook event %s of job %s", event, ctx.job_id, exc_info=True)
