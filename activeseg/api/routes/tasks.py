"""Annotation over HTTP: lease the next task, heartbeat, release, skip, submit."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import BearerToken, CurrentUser, DbDep, SettingsDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.metrics import LABELS_SUBMITTED, TASKS_LEASED, TASKS_SKIPPED
from activeseg.api.schemas import NO_NUL, LabelRevisionPublic, RowId
from activeseg.api.threads import annotation_lane
from activeseg.core.errors import Invalid
from activeseg.core.imaging import decode_index
from activeseg.core.services import auth, tasks
from activeseg.core.services.auto_retrain import maybe_request_retrain
from activeseg.core.services.lease_view import lease_view
from activeseg.core.services.projects import project_settings
from activeseg.core.settings import DEFAULT_LINK_TTL_S
from activeseg.core.tables import Project, Task

router = APIRouter(tags=["annotation"], responses=error_responses(404, 409, 507))


class TaskPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    image_id: int
    regions: list[int]
    region_kind: str
    priority: float
    measure: str
    model_version_id: int | None
    state: str
    lease_expires_at: datetime | None
    skip_reason: str | None = None
    answers: int = Field(default=0, description="answers collected (overlap > 1)")
    agreement: float | None = Field(
        default=None, description="overlap > 1: share of pixels all answers agree on"
    )


class TaskLease(BaseModel):
    task: TaskPublic
    image_url: str = Field(
        description="signed link (path and query) to the stored file: opens without a token"
    )
    image_width: int
    image_height: int
    bbox: list[int] = Field(description="[y0, x0, y1, x1] of the task's regions (end exclusive)")
    crop: list[int] = Field(description="[y0, x0, y1, x1]: the bbox with context around it")
    region_mask_png: str = Field(description="base64 PNG over bbox: 1 inside the regions, 0 out")
    proposed_classes: dict[str, int] = Field(description="region id -> model's majority class")
    prediction_url: str | None = Field(description="signed link to the prediction PNG")
    uncertainty_url: str | None = Field(description="signed link to the uncertainty heatmap")
    model_version_id: int | None
    lease_expires_at: datetime
    queue: dict[str, int] = Field(
        description="the project's tasks by state, counted about a second ago at most, with "
        "this process's moves since (GET /projects/{id}/queue is exact)"
    )


class SubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    classes: dict[int, int] | None = Field(
        default=None, description="region id -> class id: one dominant label per region"
    )
    patch_png: str | None = Field(
        default=None,
        description="base64 index PNG over bbox; 255 = unlabelled, pixels "
        "outside the regions must be 255, at least one inside them must not be",
    )
    idempotency_key: str | None = Field(
        default=None,
        max_length=100,
        pattern=NO_NUL,
        description="a retry with the same key and answer gets the first answer back; "
        "another answer under a key already used is refused (422)",
    )


class SkipBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(
        min_length=1, max_length=200, pattern=NO_NUL, examples=["unclear", "not this project"]
    )


class SubmitResult(BaseModel):
    task: TaskPublic
    revision: LabelRevisionPublic | None = Field(
        description="the label revision the answer made; with overlap > 1 the consensus "
        "revision, null until the last of the k answers (or when they disagree: 'disputed')"
    )
    created: bool


def _lease_payload(
    s: Any, store: Any, project: Project, task: Task, link_ttl_s: int = DEFAULT_LINK_TTL_S
) -> TaskLease:
    """The lease as the annotator needs it (:func:`activeseg.core.services.lease_view.lease_view`:
    its image URLs are signed links, relative, that live ``link_ttl_s``; a client that sends
    its token anyway is served the same)."""
    view = lease_view(s, store, project, task, link_ttl_s)
    assert task.lease_expires_at is not None
    return TaskLease(
        task=TaskPublic.model_validate(task),
        image_url=view.image_url,
        image_width=view.image_width,
        image_height=view.image_height,
        bbox=view.bbox,
        crop=view.crop,
        region_mask_png=base64.b64encode(view.region_mask_png).decode(),
        proposed_classes=view.proposed_classes,
        prediction_url=view.prediction_url,
        uncertainty_url=view.uncertainty_url,
        model_version_id=task.model_version_id,
        lease_expires_at=task.lease_expires_at,
        queue=view.queue,
    )


@router.post(
    "/projects/{project_id}/tasks/next",
    response_model=TaskLease,
    responses={204: {"description": "the queue is empty"}},
)
@annotation_lane
def lease_next(
    project_id: RowId, token: BearerToken, db: DbDep, store: StoreDep, settings: SettingsDep
) -> Any:
    """Lease the highest-priority queued task to you (204 when the queue is empty)."""
    # One transaction: the token, the project and membership (one query), the lease (one
    # statement on PostgreSQL) and the payload's reads. On SQLite a region map missing from
    # the store is computed inside it (tasks made outside build_queue only).
    with db.session() as s:
        user, project = auth.authenticate_for_project(s, token, project_id)
        lease_s = project_settings(project).lease_seconds
        task = tasks.lease_next(s, project, user, lease_s)
        if task is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        payload = _lease_payload(s, store, project, task, settings.link_ttl_s)
    TASKS_LEASED.labels(project_id=str(project_id)).inc()  # after the lease committed
    return _json(payload)


def _json(model: BaseModel, status_code: int = status.HTTP_200_OK) -> Response:
    """A model built (and so validated) here, serialised once. Returned as the model, FastAPI
    would dump it, validate the dump against the response model again and serialise that:
    the hot annotation routes skip that second pass (the OpenAPI schema still names the
    model)."""
    return Response(model.model_dump_json(), status_code, media_type="application/json")


@router.get("/tasks/{task_id}", response_model=TaskPublic)
@annotation_lane
def get_task(task_id: RowId, token: BearerToken, db: DbDep) -> Task:
    with db.read_session() as s:
        return auth.authenticate_for_task(s, token, task_id, lock=False)[1]


@router.post("/tasks/{task_id}/heartbeat", response_model=TaskPublic)
@annotation_lane
def heartbeat(task_id: RowId, token: BearerToken, db: DbDep) -> Task:
    """Extend your lease by the project's lease time."""
    with db.session() as s:
        user, task, project = auth.authenticate_for_task(s, token, task_id)
        return tasks.heartbeat(s, task, user, project_settings(project).lease_seconds)


@router.post("/tasks/{task_id}/release", response_model=TaskPublic)
@annotation_lane
def release(task_id: RowId, token: BearerToken, db: DbDep) -> Task:
    """Give the task back to the queue."""
    with db.session() as s:
        user, task, _ = auth.authenticate_for_task(s, token, task_id)
        return tasks.release(s, task, user)


@router.post("/tasks/{task_id}/skip", response_model=TaskPublic)
@annotation_lane
def skip(task_id: RowId, body: SkipBody, token: BearerToken, db: DbDep) -> Task:
    """Take an unlabellable region out of the queue, with a reason."""
    with db.session() as s:
        user, task, _ = auth.authenticate_for_task(s, token, task_id)
        skipped = tasks.skip(s, task, user, body.reason)
    TASKS_SKIPPED.labels(project_id=str(skipped.project_id)).inc()  # after the skip committed
    return skipped


def decode_patch(data: str) -> np.ndarray:
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise Invalid("patch_png must be base64 of an index PNG") from None
    try:
        arr = decode_index(raw)
    except Exception:  # noqa: BLE001 - any decoding failure is the client's bad input
        raise Invalid("patch_png is not a readable PNG") from None
    if arr.ndim != 2:
        raise Invalid("patch_png must be a single-channel index PNG")
    return arr


@router.post(
    "/tasks/{task_id}/submit", response_model=SubmitResult, status_code=status.HTTP_201_CREATED
)
@annotation_lane
def submit(
    task_id: RowId,
    body: SubmitBody,
    token: BearerToken,
    db: DbDep,
    store: StoreDep,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> Response:
    """Label the task's regions: one class per region, or a mask patch over its bbox that
    labels at least one pixel of the regions (422 otherwise: skip a task you cannot label).
    The answer becomes a new label revision of the image. The same idempotency key (the
    ``Idempotency-Key`` header or ``idempotency_key``) stores it once: a retried request with
    the same answer gets the first one back with 200; another answer under that key is 422."""
    with db.session() as s:
        user, task, project = auth.authenticate_for_task(s, token, task_id)
        # After the token is checked (401 before 422), in the transaction: a patch is a
        # region's bounding box, a fraction of a millisecond to decode.
        sub = tasks.Submission(
            region_classes=body.classes,
            patch=decode_patch(body.patch_png) if body.patch_png is not None else None,
            idempotency_key=body.idempotency_key or idempotency_key,
        )
        rev, created = tasks.submit(s, store, project, task, user, sub)
        retrain_job = maybe_request_retrain(s, project) if created else None
        result = SubmitResult(
            task=TaskPublic.model_validate(task),
            revision=LabelRevisionPublic.model_validate(rev) if rev is not None else None,
            created=created,
        )
    # A retried submission stored nothing new.
    LABELS_SUBMITTED.labels(project_id=str(project.id)).inc(int(created))
    if retrain_job is not None and retrain_job.state == "pending":
        request.app.state.dispatch(retrain_job.id)  # after the commit
    return _json(result, status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@router.get("/projects/{project_id}/queue")
def queue(project_id: RowId, user: CurrentUser, db: DbDep) -> dict[str, int]:
    """How many tasks are in each state."""
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        return tasks.queue_counts(s, project_id)
