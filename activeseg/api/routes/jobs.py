from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from activeseg.api.deps import CurrentUser, DbDep, Engineer
from activeseg.api.errors import error_responses
from activeseg.api.schemas import JobPublic, JobRequest, Page, RowId
from activeseg.core.services import auth, jobs
from activeseg.core.tables import Job

router = APIRouter(tags=["jobs"], responses=error_responses(403, 404, 409))


def start_job(request: Request, job: Job, created: bool) -> JobPublic:
    """After the commit that created ``job``: hand it to the broker (or leave it pending in
    the outbox if the broker is down)."""
    if job.state == "pending":
        request.app.state.dispatch(job.id)
    with request.app.state.db.session() as s:
        return JobPublic.model_validate(s.get(Job, job.id))


@router.get("/projects/{project_id}/jobs", response_model=Page[JobPublic])
def list_jobs(
    project_id: RowId,
    user: CurrentUser,
    db: DbDep,
    state: Annotated[
        str | None, Query(pattern="^(pending|queued|running|waiting|succeeded|failed)$")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[JobPublic]:
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        rows = jobs.list_jobs(s, project_id, state, offset, limit)
        return Page(data=[JobPublic.model_validate(j) for j in rows], count=len(rows))


@router.get("/jobs/{job_id}", response_model=JobPublic)
def get_job(job_id: RowId, user: CurrentUser, db: DbDep) -> Job:
    with db.session() as s:
        return jobs.get_job_for(s, user, job_id)


@router.post("/jobs/{job_id}/retry", response_model=JobPublic)
def retry_job(job_id: RowId, user: Engineer, db: DbDep, request: Request) -> JobPublic:
    with db.session() as s:
        job = jobs.retry_job(s, jobs.get_job_for(s, user, job_id))
    return start_job(request, job, True)


@router.post(
    "/projects/{project_id}/verify",
    response_model=JobPublic,
    status_code=status.HTTP_202_ACCEPTED,
    summary="Check every stored blob of the project (a background job)",
)
def verify_storage(
    project_id: RowId, body: JobRequest, user: Engineer, db: DbDep, request: Request
) -> JobPublic:
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        job, created = jobs.request_job(
            s, project_id=project_id, kind="verify_storage", request_id=body.request_id, user=user
        )
    return start_job(request, job, created)
