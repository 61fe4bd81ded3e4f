"""Outgoing webhooks: a project's URLs hear of ``model.trained``, ``queue.refilled`` and
``job.failed``.

:func:`notify` (called by jobs) records one delivery row per subscribed webhook and hands each
to a ``deliver_webhook`` job after the commit. :func:`deliver` POSTs the body signed with the
webhook's secret (``X-Activeseg-Signature: sha256=<hex HMAC-SHA256 of the raw body>``),
retries non-2xx answers and connection errors with exponential backoff, and logs every
attempt in the delivery row. A delivery is sent at most once successfully: a redelivered job
continues from the attempts already logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg import __version__
from activeseg.core.db import Database
from activeseg.core.errors import Invalid, NotFound
from activeseg.core.services.jobs import request_job
from activeseg.core.tables import JobState, Project, User, Webhook, WebhookDelivery
from activeseg.integrations.png_masks import canonical_json

if TYPE_CHECKING:
    from activeseg.jobs.runner import JobContext

log = logging.getLogger(__name__)

EVENTS = ("model.trained", "queue.refilled", "job.failed")
PING = "ping"
JOB_KIND = "deliver_webhook"
SIGNATURE_HEADER = "X-Activeseg-Signature"
EVENT_HEADER = "X-Activeseg-Event"
DELIVERY_HEADER = "X-Activeseg-Delivery"
MAX_ATTEMPTS = 5
BACKOFF_S = 1.0  # waits 1, 2, 4, 8 s between the 5 attempts
TIMEOUT_S = 10.0


class DeliveryFailed(RuntimeError):
    """Every attempt failed; the delivery job ends failed with this message."""


def sign(secret: str, body: bytes) -> str:
    """The signature header value: ``sha256=`` + hex HMAC-SHA256 of ``body`` with ``secret``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """What a receiver does: compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header)


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


# --- delivering ----------------------------------------------------------------------------


def delivery_body(delivery: WebhookDelivery, project_id: int) -> bytes:
    """The exact bytes POSTed (the same on every attempt)."""
    return canonical_json(
        {
            "created_at": delivery.created_at.astimezone(UTC).isoformat(),
            "data": delivery.payload,
            "delivery": delivery.uuid,
            "event": delivery.event,
            "project_id": project_id,
        }
    )


def deliver(
    db: Database,
    delivery_id: int,
    *,
    max_attempts: int | None = None,
    backoff_s: float | None = None,
    timeout_s: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Send one delivery, retrying with backoff; log each attempt. Raises DeliveryFailed when
    the last attempt fails."""
    max_attempts = max_attempts or MAX_ATTEMPTS
    backoff_s = BACKOFF_S if backoff_s is None else backoff_s
    timeout_s = timeout_s or TIMEOUT_S
    with db.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        hook = s.get(Webhook, delivery.webhook_id) if delivery is not None else None
        if delivery is None or hook is None:
            return {"skipped": "the webhook was deleted"}
        if delivery.state == "succeeded":
            return {"delivery": delivery.uuid, "status": delivery.last_status, "attempts": 0}
        url, secret, done = hook.url, hook.secret, len(delivery.attempts)
        body = delivery_body(delivery, hook.project_id)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"activeseg-webhooks/{__version__}",
            SIGNATURE_HEADER: sign(secret, body),
            EVENT_HEADER: delivery.event,
            DELIVERY_HEADER: delivery.uuid,
        }
    last = ""
    with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(done + 1, max(max_attempts, done + 1) + 1):
            if attempt > 1:
                sleep(backoff_s * 2 ** (attempt - 2))
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                status = client.post(url, content=body, headers=headers).status_code
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
            ok = status is not None and 200 <= status < 300
            record = {
                "attempt": attempt,
                "status": status,
                "error": error,
                "duration_ms": round(1000 * (time.monotonic() - started), 1),
                "at": datetime.now(UTC).isoformat(),
            }
            _log_attempt(db, delivery_id, record, ok, final=attempt >= max_attempts)
            if ok:
                return {"delivery": headers[DELIVERY_HEADER], "status": status, "attempts": attempt}
            last = f"HTTP {status}" if status is not None else str(error)
            log.info("webhook delivery %s attempt %s failed: %s", delivery_id, attempt, last)
    raise DeliveryFailed(f"webhook delivery to {url} failed after {max_attempts} attempts: {last}")


def _log_attempt(
    db: Database, delivery_id: int, record: dict[str, Any], ok: bool, final: bool
) -> None:
    with db.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        if delivery is None:
            return
        delivery.attempts = [*delivery.attempts, record]  # a new list: JSON change tracking
        delivery.last_status = record["status"]
        delivery.state = "succeeded" if ok else ("failed" if final else "retrying")
        if ok:
            delivery.delivered_at = datetime.now(UTC)
