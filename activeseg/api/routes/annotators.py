"""Per-annotator statistics of a project, and the web page that shows them.

Who sees what: engineers and admins of the project see every row; an annotator or a reviewer
sees their own row only (the other rows are not returned at all); a caller who is not a member
gets 404, as on every project route. How each figure is counted, and how overlapping answers
(``overlap > 1``) are each their own person's: :mod:`activeseg.core.services.annotators`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import CurrentUser, DbDep
from activeseg.api.errors import error_responses
from activeseg.api.routes.annotate import static_file_response
from activeseg.api.schemas import RowId
from activeseg.core.services import annotators, auth, overlap
from activeseg.core.services.projects import project_settings

router = APIRouter(tags=["annotation"], responses=error_responses(404))


class AnnotatorStatsPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    user_id: int
    name: str
    role: str
    tasks_submitted: int = Field(
        description="answers given with a label in the period; with overlap > 1 each person's "
        "own answers, those a reviewer rejected included"
    )
    tasks_skipped: int = Field(description="tasks skipped in the period")
    skip_rate: float | None = Field(
        description="skipped / (submitted + skipped); null without either"
    )
    timed_tasks: int = Field(
        description="submitted answers with a known lease-to-submit time (a late submit "
        "after the lease went back to the queue has none)"
    )
    median_seconds: float | None = Field(
        description="median lease-to-submit seconds of the timed answers"
    )
    p90_seconds: float | None = Field(
        description="90th percentile of the same (linear interpolation, as numpy's default "
        "and PostgreSQL's percentile_cont)"
    )
    labelled_pixels: int = Field(
        description="pixels labelled by the person's submitted answers (never a consensus's)"
    )
    labels_per_hour: float | None = Field(
        description="labelled pixels of the timed answers per hour of their lease-to-submit time"
    )
    tasks_per_hour: float | None = Field(
        description="timed answers per hour of their lease-to-submit time"
    )
    first_activity: datetime | None = Field(
        description="earliest lease started or answer given in the period"
    )
    last_activity: datetime | None = Field(
        description="latest lease started or answer given in the period"
    )
    consensus_agreement: float | None = Field(
        description="overlap > 1: mean share of an answer's labelled pixels that equal its "
        "task's consensus; null without finished overlapping tasks"
    )
    reviewer_agreement: float | None = Field(
        description="share of the person's answers reviewed in the period that the reviewer "
        "accepted (a correction accepts none); null when none was reviewed"
    )
    rejections: int | None = Field(
        description="answers rejected by a reviewer in the period; null when none was reviewed"
    )


class AnnotatorsPublic(BaseModel):
    data: list[AnnotatorStatsPublic]
    count: int
    since: datetime | None = Field(description="start of the period (inclusive), UTC")
    until: datetime | None = Field(description="end of the period (exclusive), UTC")


@router.get(
    "/projects/{project_id}/annotators",
    response_model=AnnotatorsPublic,
    responses=error_responses(422),
)
def annotator_stats(
    project_id: RowId,
    user: CurrentUser,
    db: DbDep,
    since: Annotated[
        datetime | None,
        Query(description="count only what happened at or after this ISO time (UTC if naive)"),
    ] = None,
    until: Annotated[
        datetime | None,
        Query(description="count only what happened before this ISO time (UTC if naive)"),
    ] = None,
) -> AnnotatorsPublic:
    """Per annotator: tasks submitted and skipped, skip rate, lease-to-submit seconds (median,
    p90), labelled pixels and tasks per hour, first and last activity; with overlap > 1 each
    of a task's answers counts for the person who gave it. Engineers and admins get one row per
    member and per user who leased or answered tasks of the project; an annotator or a reviewer
    gets only their own row (other rows are not returned)."""
    with db.read_session() as s:
        project = auth.get_project_for(s, user, project_id)
        rows = annotators.annotator_stats(s, project, user, since, until)
    return AnnotatorsPublic(
        data=[AnnotatorStatsPublic.model_validate(r) for r in rows],
        count=len(rows),
        since=annotators.as_utc(since),
        until=annotators.as_utc(until),
    )


class AgreementPublic(BaseModel):
    overlap: int = Field(description="answers per task (the project setting)")
    tasks: int = Field(description="finished tasks with that many answers")
    disputed: int = Field(description="of those, held back from training (agreement too low)")
    pixel_agreement: float | None = Field(
        description="mean share of a task's labelled pixels on which all answers agree"
    )
    fleiss_kappa: float | None = Field(
        description="Fleiss' kappa over the pixels of those tasks (each answer's 'unlabelled' "
        "counts as a category)"
    )


@router.get("/projects/{project_id}/agreement", response_model=AgreementPublic)
def project_agreement(project_id: RowId, user: CurrentUser, db: DbDep) -> AgreementPublic:
    """How far the annotators of a project with overlap > 1 agree (see
    activeseg.core.services.overlap)."""
    with db.read_session() as s:
        project = auth.get_project_for(s, user, project_id)
        k = project_settings(project).overlap
        return AgreementPublic(**overlap.project_agreement(s, project, k))


@router.get("/annotate/annotators", response_class=FileResponse, include_in_schema=False)
def annotators_page() -> FileResponse:
    """The statistics page (log in with an API token, pick a project)."""
    return static_file_response("annotators.html")
