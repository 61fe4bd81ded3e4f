"""Outgoing webhooks in the database: registration, the delivery log, and the events that
make deliveries (one delivery row and one ``deliver_webhook`` job per subscribed webhook).

Sending is elsewhere: the payload, signature and one HTTP attempt are
:mod:`activeseg.integrations.webhooks`; the job that makes the attempts and schedules the
retries is :mod:`activeseg.jobs.deliver_webhook`; jobs report events with
:func:`activeseg.jobs.notify.notify`.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.errors import Invalid, NotFound
from activeseg.core.services.jobs import request_job
from activeseg.core.tables import JobState, Project, User, Webhook, WebhookDelivery

EVENTS = ("model.trained", "queue.refilled", "job.failed")
PING = "ping"
JOB_KIND = "deliver_webhook"


# --- registration --------------------------------------------------------------------------


def create_webhook(
    session: Session, project: Project, user: User, url: str, events: list[str]
) -> tuple[Webhook, str]:
    """A new webhook and its secret (returned once; the caller shows it to the user)."""
    unknown = sorted(set(events) - set(EVENTS))
    if unknown or not events:
        raise Invalid(f"events must be a non-empty subset of {', '.join(EVENTS)}; got {events}")
    if not url.startswith(("http://", "https://")):
        raise Invalid(f"url must start with http:// or https://, got {url!r}")
    secret = "whsec_" + secrets.token_urlsafe(32)
    hook = Webhook(
        project_id=project.id,
        url=url,
        events=sorted(set(events)),
        secret=secret,
        created_by=user.id,
    )
    session.add(hook)
    session.flush()
    return hook, secret


def list_webhooks(session: Session, project: Project) -> list[Webhook]:
    return list(
        session.scalars(
            select(Webhook).where(Webhook.project_id == project.id).order_by(Webhook.id)
        )
    )


def get_webhook(session: Session, project: Project, webhook_id: int) -> Webhook:
    hook = session.get(Webhook, webhook_id)
    if hook is None or hook.project_id != project.id:
        raise NotFound(f"webhook {webhook_id} not found in project {project.id}")
    return hook


def list_deliveries(
    session: Session, hook: Webhook, offset: int, limit: int
) -> tuple[list[WebhookDelivery], int]:
    query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == hook.id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(WebhookDelivery.id.desc()).offset(offset).limit(limit))
    return list(rows), total


# --- recording events ----------------------------------------------------------------------


def record_event(
    session: Session,
    project_id: int,
    event: str,
    data: dict[str, Any],
    source_key: str,
    only_webhook: int | None = None,
) -> list[int]:
    """In the caller's transaction: one delivery and one pending job per subscribed webhook.
    Returns the ids of jobs to dispatch after the commit. Idempotent per ``source_key``."""
    query = select(Webhook).where(Webhook.project_id == project_id, Webhook.active.is_(True))
    if only_webhook is not None:
        query = query.where(Webhook.id == only_webhook)
    job_ids = []
    for hook in session.scalars(query.order_by(Webhook.id)):
        if event != PING and event not in hook.events:
            continue
        delivery = session.scalar(
            select(WebhookDelivery).where(
                WebhookDelivery.webhook_id == hook.id, WebhookDelivery.source_key == source_key
            )
        )
        if delivery is None:
            delivery = WebhookDelivery(
                webhook_id=hook.id,
                uuid=str(uuid.uuid4()),
                event=event,
                source_key=source_key,
                payload=data,
                state="pending",
                attempts=[],
            )
            session.add(delivery)
            session.flush()
        job, _ = request_job(
            session,
            project_id=project_id,
            kind=JOB_KIND,
            params={"delivery_id": delivery.id},
            request_id=f"delivery-{delivery.id}",
        )
        delivery.job_id = job.id
        if job.state == JobState.pending.value:
            job_ids.append(job.id)
    return job_ids


def ping(session: Session, hook: Webhook) -> tuple[int, int | None]:
    """Record a ``ping`` delivery to ``hook``: (delivery id, job id to dispatch or None)."""
    job_ids = record_event(
        session,
        hook.project_id,
        PING,
        {"webhook_id": hook.id},
        source_key=f"ping-{uuid.uuid4()}",
        only_webhook=hook.id,
    )
    delivery_id = session.scalar(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.webhook_id == hook.id)
        .order_by(WebhookDelivery.id.desc())
        .limit(1)
    )
    assert delivery_id is not None
    return delivery_id, job_ids[0] if job_ids else None


# --- the delivery log ----------------------------------------------------------------------


def record_attempt(
    db: Database, delivery_id: int, record: dict[str, Any], ok: bool, final: bool
) -> None:
    """Log one attempt in its own transaction, and the delivery's state after it:
    ``succeeded``, ``failed`` (the last attempt failed) or ``retrying``."""
    with db.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return
        delivery.attempts = [*delivery.attempts, record]  # a new list: JSON change tracking
        delivery.last_status = record["status"]
        delivery.state = "succeeded" if ok else ("failed" if final else "retrying")
        if ok:
            delivery.delivered_at = datetime.now(UTC)
