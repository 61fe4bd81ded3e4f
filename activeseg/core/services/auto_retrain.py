"""Auto-retrain: after N newly submitted labels a retrain is requested, once per trigger."""

from __future__ import annotations

from sqlalchemy import Table, bindparam, update
from sqlalchemy.orm import Session

from activeseg.core.services.jobs import has_training_labels, request_job
from activeseg.core.services.projects import project_settings
from activeseg.core.tables import Job, Project

# A Core statement on the table, built once: the ORM's bulk UPDATE (and its session
# synchronisation) cost more than the statement on every submit.
_projects: Table = Project.__table__  # type: ignore[assignment]
_COUNT_LABEL = (
    update(_projects)
    .where(_projects.c.id == bindparam("project_id"))
    .values(labels_since_retrain=_projects.c.labels_since_retrain + 1)
)


def count_labels(session: Session, project: Project) -> None:
    """One more labelled task toward ``auto_retrain_every`` (the counter
    :func:`maybe_request_retrain` reads), in the transaction that stored it. Only while the
    project retrains by itself: the counter is one row per project, and its update holds that
    row until the commit, so every submit of the project would otherwise queue on it for
    nothing (BENCHMARKS.md, issue 17). Turning the setting on starts the count at zero
    (:func:`activeseg.core.services.projects.update_project`)."""
    if project_settings(project).auto_retrain_every is not None:
        session.execute(_COUNT_LABEL, {"project_id": project.id})


def maybe_request_retrain(session: Session, project: Project) -> Job | None:
    """In the submitting transaction: if the counter reached the project's threshold, reset
    it and request a retrain. The conditional UPDATE is the trigger: of two concurrent
    submissions that cross the threshold, exactly one matches it, so one retrain is queued."""
    every = project_settings(project).auto_retrain_every
    if every is None:
        return None
    fired = session.execute(
        update(Project)
        .where(Project.id == project.id, Project.labels_since_retrain >= every)
        .values(labels_since_retrain=0)
    ).rowcount  # type: ignore[attr-defined]
    if not fired or not has_training_labels(session, project.id):
        return None  # e.g. answers on an image moved to val since: a retrain could only fail
    job, _ = request_job(
        session, project_id=project.id, kind="retrain", params={"trigger": "auto"}, request_id=None
    )
    return job
