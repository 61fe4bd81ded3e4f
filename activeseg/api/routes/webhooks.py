"""Outgoing webhooks of a project (engineer role) and their delivery log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import DbDep, Engineer
from activeseg.api.errors import error_responses
from activeseg.api.schemas import Page, RowId
from activeseg.core.services import auth, webhooks
from activeseg.core.tables import WebhookDelivery

router = APIRouter(tags=["webhooks"], responses=error_responses(403, 404, 409))
Event = Literal["model.trained", "queue.refilled", "job.failed"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # No whitespace or control characters (a NUL cannot even be stored in PostgreSQL text).
    url: str = Field(
        max_length=2000, pattern=r"^https?://[^\s\x00-\x1f\x7f]+$", examples=["https://ci/hook"]
    )
    events: list[Event] = Field(min_length=1, max_length=3)


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    url: str
    events: list[str]
    active: bool
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="HMAC-SHA256 signing secret; shown once, store it now")


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    webhook_id: int
    uuid: str
    event: str
    state: str
    payload: dict[str, Any]
    attempts: list[dict[str, Any]]
    last_status: int | None
    job_id: int | None
    created_at: datetime
    delivered_at: datetime | None


@router.post(
    "/projects/{project_id}/webhooks",
    response_model=WebhookCreated,
    status_code=status.HTTP_201_CREATED,
)
def create_webhook(project_id: RowId, body: WebhookCreate, user: Engineer, db: DbDep) -> Any:
    """Deliveries are POSTed as JSON with ``X-Activeseg-Signature: sha256=<hex HMAC-SHA256 of
    the raw body with the secret>``, ``X-Activeseg-Event`` and ``X-Activeseg-Delivery``."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        hook, secret = webhooks.create_webhook(s, project, user, body.url, list(body.events))
        return WebhookCreated.model_validate(
            {**WebhookPublic.model_validate(hook).model_dump(), "secret": secret}
        )


@router.get("/projects/{project_id}/webhooks", response_model=Page[WebhookPublic])
def list_webhooks(project_id: RowId, user: Engineer, db: DbDep) -> Page[WebhookPublic]:
    with db.session() as s:
        rows = webhooks.list_webhooks(s, auth.get_project_for(s, user, project_id))
        return Page(data=[WebhookPublic.model_validate(r) for r in rows], count=len(rows))


@router.get("/projects/{project_id}/webhooks/{webhook_id}", response_model=WebhookPublic)
def get_webhook(project_id: RowId, webhook_id: RowId, user: Engineer, db: DbDep) -> Any:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        return WebhookPublic.model_validate(webhooks.get_webhook(s, project, webhook_id))


@router.delete(
    "/projects/{project_id}/webhooks/{webhook_id}", status_code=status.HTTP_204_NO_CONTENT
)
def delete_webhook(project_id: RowId, webhook_id: RowId, user: Engineer, db: DbDep) -> None:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        s.delete(webhooks.get_webhook(s, project, webhook_id))


@router.get(
    "/projects/{project_id}/webhooks/{webhook_id}/deliveries",
    response_model=Page[DeliveryPublic],
)
def list_deliveries(
    project_id: RowId,
    webhook_id: RowId,
    user: Engineer,
    db: DbDep,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[DeliveryPublic]:
    """Newest first; ``attempts`` logs each try with its HTTP status or error."""
    with db.session() as s:
        hook = webhooks.get_webhook(s, auth.get_project_for(s, user, project_id), webhook_id)
        rows, total = webhooks.list_deliveries(s, hook, offset, limit)
        return Page(data=[DeliveryPublic.model_validate(r) for r in rows], count=total)


@router.post(
    "/projects/{project_id}/webhooks/{webhook_id}/ping",
    response_model=DeliveryPublic,
    status_code=status.HTTP_202_ACCEPTED,
)
def ping(
    project_id: RowId, webhook_id: RowId, user: Engineer, db: DbDep, request: Request
) -> DeliveryPublic:
    """Send a ``ping`` event now (to check the receiver and its signature check)."""
    with db.session() as s:
        hook = webhooks.get_webhook(s, auth.get_project_for(s, user, project_id), webhook_id)
        delivery_id, job_id = webhooks.ping(s, hook)
    if job_id is not None:
        request.app.state.dispatch(job_id)  # after the commit
    with db.session() as s:
        return DeliveryPublic.model_validate(s.get(WebhookDelivery, delivery_id))
