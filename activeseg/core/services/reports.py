"""Reading what the ``evaluate`` job stored: a model version's report, the latest baseline.

The job (:mod:`activeseg.jobs.evaluate`) writes reports and carries baselines in its
parameters; the report routes and the job itself read them back here, so the API never
imports job code.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, NotFound
from activeseg.core.tables import Job, JobState, ModelState, ModelVersion, Project

BASELINE_LOOKBACK = 500
"""Most recent evaluate jobs searched for an attached baseline (or a version's report job)."""


def latest_baseline_key(session: Session, project_id: int) -> str | None:
    """Blob key of the baseline CSV most recently attached to the project, or None."""
    for params in session.scalars(
        select(Job.params)
        .where(Job.project_id == project_id, Job.kind == "evaluate")
        .order_by(Job.id.desc())
        .limit(BASELINE_LOOKBACK)
    ):
        if isinstance(params, dict) and params.get("baseline_key"):
            return str(params["baseline_key"])
    return None


def latest_report_job(session: Session, mv: ModelVersion) -> Job | None:
    """The most recent evaluate job of model version ``mv``, or None."""
    for job in session.scalars(
        select(Job)
        .where(Job.project_id == mv.project_id, Job.kind == "evaluate")
        .order_by(Job.id.desc())
        .limit(BASELINE_LOOKBACK)
    ):
        if isinstance(job.params, dict) and job.params.get("model_version_id") == mv.id:
            return job
    return None


def _not_computed(session: Session, mv: ModelVersion) -> NotFound:
    """Why ``mv`` has no report yet, and what to do about it (its evaluate job's state)."""
    job = latest_report_job(session, mv)
    if job is not None and job.state != JobState.succeeded.value:
        how = f"the evaluate job {job.id} is {job.state}"
        if job.state == JobState.failed.value:
            how += f" ({job.error}); POST /models/{mv.id}/report to try again"
        else:
            how += (
                f" ({round(100 * job.progress)}%: {job.message}); GET /jobs/{job.id} to follow it"
            )
    else:
        how = f"POST /models/{mv.id}/report to compute it"
    return NotFound(f"the report of model version {mv.id} is not computed yet: {how}")


def stored_report(session: Session, mv: ModelVersion) -> dict[str, Any]:
    """A copy of ``mv``'s stored report; NotFound (saying why) while it is not computed."""
    if mv.report is None:
        raise _not_computed(session, mv)
    return dict(mv.report)


def baseline_model_version(session: Session, project: Project) -> int:
    """Id of the model version whose evaluate job draws a newly attached baseline: the active
    one, else the newest ready one; Conflict before the first retrain."""
    mv_id = project.active_model_id or session.scalar(
        select(ModelVersion.id)
        .where(
            ModelVersion.project_id == project.id,
            ModelVersion.state == ModelState.ready.value,
        )
        .order_by(ModelVersion.version.desc())
        .limit(1)
    )
    if mv_id is None:
        raise Conflict(
            f"project {project.id} has no model version yet; attach the baseline after the "
            "first retrain (POST /projects/{id}/retrain)"
        )
    return mv_id
