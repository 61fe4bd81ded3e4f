"""The review stage over HTTP: lease the next disputed task, keep the review lease alive or
give it back, decide it (accept, reject, correct), and an annotator's own rejections. How:
:mod:`activeseg.core.services.review`."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, status
from pydantic import BaseModel, Field

from activeseg.api.deps import CurrentUser, DbDep, SettingsDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.routes.tasks import TaskPublic, decode_patch
from activeseg.api.schemas import NO_NUL, LabelRevisionPublic, RowId
from activeseg.core.imaging import encode_png
from activeseg.core.services import auth, links, review, tasks
from activeseg.core.services.auto_retrain import maybe_request_retrain
from activeseg.core.services.projects import project_settings
from activeseg.core.tables import MAX_ROW_ID, Image, Role, Task, User

router = APIRouter(tags=["review"], responses=error_responses(403, 404, 409, 507))


def _reviewer(user: CurrentUser) -> User:
    auth.require_role(user, Role.reviewer)  # before the project: a role too low is 403
    return user


Reviewer = Annotated[User, Depends(_reviewer)]


def _png(window: Any) -> str:
    return base64.b64encode(encode_png(window)).decode()


class AnswerForReview(BaseModel):
    id: int
    user_id: int
    agreement: float | None = Field(description="share of its labelled pixels = the consensus")
    answered_pixels: int
    submitted_at: datetime
    window_png: str = Field(description="base64 index PNG over bbox (255 = says nothing)")


class ReviewLease(BaseModel):
    task: TaskPublic
    image_url: str = Field(description="signed link to the image: opens without a token")
    image_width: int
    image_height: int
    bbox: list[int] = Field(description="[y0, x0, y1, x1] of the task's regions (end exclusive)")
    crop: list[int] = Field(
        description="[y0, x0, y1, x1]: the bbox with context around it (as a task lease's)"
    )
    region_mask_png: str = Field(description="base64 PNG over bbox: 1 inside the regions, 0 out")
    answers: list[AnswerForReview]
    consensus_png: str = Field(
        description="base64 index PNG over bbox: the per-pixel plurality, ties 255"
    )
    lease_expires_at: datetime


class ReviewBody(BaseModel):
    decision: Literal["accept", "reject", "correct"]
    reason: str | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        pattern=NO_NUL,
        description="why the answers are rejected (needed with 'reject'; the annotators see it)",
    )
    patch_png: str | None = Field(
        default=None, description="with 'correct': base64 index PNG over bbox, as in a submit"
    )
    classes: dict[int, int] | None = Field(
        default=None, description="with 'correct': region id -> class, as in a submit"
    )
    model_config = {"extra": "forbid"}


class ReviewPublic(BaseModel):
    id: int
    task_id: int
    reviewer_id: int | None
    decision: str
    reason: str | None
    agreement: float | None
    revision_id: int | None
    created_at: datetime
    model_config = {"from_attributes": True}


class ReviewResult(BaseModel):
    review: ReviewPublic
    task: TaskPublic
    revision: LabelRevisionPublic | None = Field(
        description="the label revision the decision made (null for a rejection)"
    )


class RejectionPublic(BaseModel):
    answer_id: int
    task_id: int
    project_id: int
    image_id: int
    reason: str | None
    reviewer_id: int | None
    answered_at: datetime
    rejected_at: datetime


class RejectionsPublic(BaseModel):
    data: list[RejectionPublic]
    count: int


@router.post(
    "/projects/{project_id}/reviews/next",
    response_model=ReviewLease,
    responses={204: {"description": "no disputed task waits for you"}},
)
def lease_next_review(
    project_id: RowId, user: Reviewer, db: DbDep, store: StoreDep, settings: SettingsDep
) -> Any:
    """Lease the oldest disputed task you did not answer, for the project's lease time, with
    its answers and their consensus (204 when there is none). Reviewers, engineers, admins."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        task = review.lease_next_review(s, project, user, project_settings(project).lease_seconds)
        if task is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
    with db.session() as s:
        view = review.review_view(s, store, task)
        image = s.get(Image, task.image_id)
        key, expires_at = links.signing_key(s), links.expiry(settings.link_ttl_s)
        path = f"/images/{task.image_id}/file"
        assert task.lease_expires_at is not None and image is not None
        y0, x0, y1, x1 = view.bbox
        my, mx = max(8, (y1 - y0) // 2), max(8, (x1 - x0) // 2)  # as a task lease's crop
        crop = [
            max(0, y0 - my),
            max(0, x0 - mx),
            min(image.height, y1 + my),
            min(image.width, x1 + mx),
        ]
        return ReviewLease(
            task=TaskPublic.model_validate(task),
            image_url=f"{path}?{links.sign_with(key, path, {}, expires_at)}",
            image_width=image.width,
            image_height=image.height,
            bbox=list(view.bbox),
            crop=crop,
            region_mask_png=_png(view.inside.astype("uint8")),
            answers=[
                AnswerForReview(
                    id=row.id,
                    user_id=row.user_id,
                    agreement=row.agreement,
                    answered_pixels=row.answered_pixels,
                    submitted_at=row.submitted_at,
                    window_png=_png(window),
                )
                for row, window in view.answers
            ],
            consensus_png=_png(view.consensus),
            lease_expires_at=task.lease_expires_at,
        )


@router.post("/tasks/{task_id}/review/heartbeat", response_model=TaskPublic)
def heartbeat(task_id: RowId, user: Reviewer, db: DbDep) -> Task:
    """Extend your review lease by the project's lease time (409 when the task is not under
    your review, or your review lease has lapsed: lease again)."""
    with db.session() as s:
        task = tasks.get_task_for(s, task_id, lock=True)
        project = auth.get_project_for(s, user, task.project_id)
        return review.heartbeat_review(task, user, project_settings(project).lease_seconds)


@router.post("/tasks/{task_id}/review/release", response_model=TaskPublic)
def release(task_id: RowId, user: Reviewer, db: DbDep) -> Task:
    """Give the disputed task back to the review queue (it stays ``disputed``; another
    reviewer may lease it at once). 409 when it is not under your review."""
    with db.session() as s:
        task = tasks.get_task_for(s, task_id, lock=True)
        auth.get_project_for(s, user, task.project_id)
        return review.release_review(task, user)


@router.post("/tasks/{task_id}/review", response_model=ReviewResult)
def decide(
    task_id: RowId,
    body: ReviewBody,
    user: Reviewer,
    db: DbDep,
    store: StoreDep,
    request: Request,
) -> ReviewResult:
    """Decide a disputed task under your review: ``accept`` (its consensus becomes the label),
    ``reject`` with a ``reason`` (the answers are rejected and the task goes back to the queue
    for fresh answers) or ``correct`` with your own ``patch_png`` (or ``classes``)."""
    correction = None
    if body.patch_png is not None or body.classes is not None:
        correction = tasks.Submission(
            region_classes=body.classes,
            patch=decode_patch(body.patch_png) if body.patch_png is not None else None,
        )
    with db.session() as s:
        task = tasks.get_task_for(s, task_id, lock=True)
        project = auth.get_project_for(s, user, task.project_id)
        decision, revision = review.decide(
            s, store, project, task, user, body.decision, body.reason, correction
        )
        retrain_job = maybe_request_retrain(s, project) if revision is not None else None
        result = ReviewResult(
            review=ReviewPublic.model_validate(decision),
            task=TaskPublic.model_validate(task),
            revision=LabelRevisionPublic.model_validate(revision) if revision else None,
        )
    if retrain_job is not None and retrain_job.state == "pending":
        request.app.state.dispatch(retrain_job.id)  # after the commit
    return result


@router.get("/users/me/rejections", response_model=RejectionsPublic)
def my_rejections(
    user: CurrentUser,
    db: DbDep,
    project_id: Annotated[
        int | None, Query(ge=1, le=MAX_ROW_ID, description="only this project's")
    ] = None,
) -> RejectionsPublic:
    """Your answers a reviewer rejected (newest first, at most 100), with the reason."""
    with db.read_session() as s:
        found = review.rejections_of(s, user, project_id)
        data = [
            RejectionPublic(
                answer_id=r.answer.id,
                task_id=r.task.id,
                project_id=r.task.project_id,
                image_id=r.task.image_id,
                reason=r.review.reason,
                reviewer_id=r.review.reviewer_id,
                answered_at=r.answer.submitted_at,
                rejected_at=r.answer.rejected_at,  # type: ignore[arg-type]
            )
            for r in found
        ]
    return RejectionsPublic(data=data, count=len(data))
