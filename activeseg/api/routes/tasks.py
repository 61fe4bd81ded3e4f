"""Annotation over HTTP: lease the next task, heartbeat, release, skip, submit."""

from __future__ import annotations

import base64
import binascii
import time
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Header, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from activeseg.api.deps import CurrentUser, DbDep, SettingsDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.metrics import LABELS_SUBMITTED, TASKS_LEASED, TASKS_SKIPPED
from activeseg.api.schemas import NO_NUL, LabelRevisionPublic, RowId
from activeseg.core.errors import Invalid
from activeseg.core.imaging import decode_index, encode_png
from activeseg.core.services import auth, links, tasks
from activeseg.core.services.auto_retrain import maybe_request_retrain
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import region_set
from activeseg.core.settings import DEFAULT_LINK_TTL_S
from activeseg.core.tables import Image, Project, RegionScore, Task, User

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
        description="the project's tasks by state; exact below 10,000 tasks, else up to 2 s old"
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


# The lease payload's queue counts are for display ("12 queued · 3 leased"). Counting is a
# GROUP BY over all of the project's tasks, O(tasks): done on every lease it made leasing
# slower as the project grew (8 of 11 ms of payload at 100,000 tasks). Below _EXACT_BELOW
# tasks it costs under a millisecond and stays exact; above, each process recounts a project
# at most every _QUEUE_TTL_S seconds. GET /projects/{id}/queue is always exact.
_EXACT_BELOW = 10_000
_QUEUE_TTL_S = 2.0
_queue_counts: dict[tuple[str, int], tuple[float, dict[str, int]]] = {}


def _recent_queue_counts(s: Any, project_id: int) -> dict[str, int]:
    key = (str(s.get_bind().url), project_id)  # one process may serve several databases
    now = time.monotonic()
    hit = _queue_counts.get(key)
    if hit is None or now - hit[0] > _QUEUE_TTL_S or sum(hit[1].values()) < _EXACT_BELOW:
        hit = (now, tasks.queue_counts(s, project_id))
        _queue_counts[key] = hit
    return dict(hit[1])


def _lease_payload(
    s: Any, store: Any, project: Project, task: Task, link_ttl_s: int = DEFAULT_LINK_TTL_S
) -> TaskLease:
    """The lease as the annotator needs it. Its image URLs are signed links (relative: path
    and query) that live ``link_ttl_s``: an ``<img>`` or a labelling tool opens them without
    the token, and a client that sends its token anyway is served the same."""
    image = s.get(Image, task.image_id)
    _, regions = region_set(s, store, image, task.region_kind, task.region_size, task.region_sigma)
    y0, x0, y1, x1 = tasks.task_bbox(regions, task.regions)
    my, mx = max(8, (y1 - y0) // 2), max(8, (x1 - x0) // 2)
    crop = [max(0, y0 - my), max(0, x0 - mx), min(image.height, y1 + my), min(image.width, x1 + mx)]
    inside = np.isin(regions.labels[y0:y1, x0:x1], task.regions).astype(np.uint8)
    proposed: dict[str, int] = {}
    if task.model_version_id is not None:
        for region, cls in s.execute(
            select(RegionScore.region, RegionScore.predicted_class).where(
                RegionScore.model_version_id == task.model_version_id,
                RegionScore.image_id == image.id,
                RegionScore.measure == task.measure,
                RegionScore.region.in_(task.regions),
            )
        ):
            proposed[str(region)] = int(cls)
    scored = task.model_version_id is not None and project.active_model_id is not None
    assert task.lease_expires_at is not None
    key, expires_at = links.signing_key(s), links.expiry(link_ttl_s)

    def signed(path: str, params: dict[str, str] | None = None) -> str:
        return f"{path}?{links.sign_with(key, path, params or {}, expires_at)}"

    return TaskLease(
        task=TaskPublic.model_validate(task),
        image_url=signed(f"/images/{image.id}/file"),
        image_width=image.width,
        image_height=image.height,
        bbox=[y0, x0, y1, x1],
        crop=crop,
        region_mask_png=base64.b64encode(encode_png(inside)).decode(),
        proposed_classes=proposed,
        prediction_url=signed(f"/images/{image.id}/prediction.png") if scored else None,
        uncertainty_url=(
            signed(f"/images/{image.id}/uncertainty.png", {"measure": task.measure})
            if scored
            else None
        ),
        model_version_id=task.model_version_id,
        lease_expires_at=task.lease_expires_at,
        queue=_recent_queue_counts(s, project.id),
    )


@router.post(
    "/projects/{project_id}/tasks/next",
    response_model=TaskLease,
    responses={204: {"description": "the queue is empty"}},
)
def lease_next(
    project_id: RowId, user: CurrentUser, db: DbDep, store: StoreDep, settings: SettingsDep
) -> Any:
    """Lease the highest-priority queued task to you (204 when the queue is empty)."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        lease_s = project_settings(project).lease_seconds
        task = tasks.lease_next(s, project, user, lease_s)
        if task is None:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
    TASKS_LEASED.labels(project_id=str(project_id)).inc()  # after the lease committed
    # Building the payload reads blobs: outside the lease transaction, which stays short. The
    # task and project stay loaded after the commit (expire_on_commit=False): not read again.
    # A write session: a task queued on a map that is not stored yet (tasks made outside
    # build_queue) gets it computed and stored here.
    with db.session() as s:
        return _lease_payload(s, store, project, task, settings.link_ttl_s)


def _task_and_project(s: Any, user: User, task_id: int, lock: bool = True) -> tuple[Task, Project]:
    task = tasks.get_task_for(s, task_id, lock=lock)
    project = auth.get_project_for(s, user, task.project_id)
    return task, project


@router.get("/tasks/{task_id}", response_model=TaskPublic)
def get_task(task_id: RowId, user: CurrentUser, db: DbDep) -> Task:
    with db.session() as s:
        return _task_and_project(s, user, task_id, lock=False)[0]


@router.post("/tasks/{task_id}/heartbeat", response_model=TaskPublic)
def heartbeat(task_id: RowId, user: CurrentUser, db: DbDep) -> Task:
    """Extend your lease by the project's lease time."""
    with db.session() as s:
        task, project = _task_and_project(s, user, task_id)
        return tasks.heartbeat(s, task, user, project_settings(project).lease_seconds)


@router.post("/tasks/{task_id}/release", response_model=TaskPublic)
def release(task_id: RowId, user: CurrentUser, db: DbDep) -> Task:
    """Give the task back to the queue."""
    with db.session() as s:
        task, _ = _task_and_project(s, user, task_id)
        return tasks.release(s, task, user)


@router.post("/tasks/{task_id}/skip", response_model=TaskPublic)
def skip(task_id: RowId, body: SkipBody, user: CurrentUser, db: DbDep) -> Task:
    """Take an unlabellable region out of the queue, with a reason."""
    with db.session() as s:
        task, _ = _task_and_project(s, user, task_id)
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
def submit(
    task_id: RowId,
    body: SubmitBody,
    user: CurrentUser,
    db: DbDep,
    store: StoreDep,
    response: Response,
    request: Request,
    idempotency_key: Annotated[str | None, Header(max_length=100)] = None,
) -> SubmitResult:
    """Label the task's regions: one class per region, or a mask patch over its bbox that
    labels at least one pixel of the regions (422 otherwise: skip a task you cannot label).
    The answer becomes a new label revision of the image. The same idempotency key (the
    ``Idempotency-Key`` header or ``idempotency_key``) stores it once: a retried request with
    the same answer gets the first one back with 200; another answer under that key is 422."""
    patch = decode_patch(body.patch_png) if body.patch_png is not None else None
    sub = tasks.Submission(
        region_classes=body.classes,
        patch=patch,
        idempotency_key=body.idempotency_key or idempotency_key,
    )
    with db.session() as s:
        task, project = _task_and_project(s, user, task_id)
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
    if not created:
        response.status_code = status.HTTP_200_OK
    return result


@router.get("/projects/{project_id}/queue")
def queue(project_id: RowId, user: CurrentUser, db: DbDep) -> dict[str, int]:
    """How many tasks are in each state."""
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        return tasks.queue_counts(s, project_id)
