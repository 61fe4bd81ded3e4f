"""Outgoing webhooks on the wire: the body, its signature, and one HTTP attempt.

A delivery is a JSON POST signed with the webhook's secret (``X-Activeseg-Signature:
sha256=<hex HMAC-SHA256 of the raw body>``). A non-2xx answer or a connection error is tried
again, up to :data:`MAX_ATTEMPTS` attempts in all, waiting :func:`retry_delay_s` before each
(1, 2, 4, 8 s). Nothing here touches the database or the job queue: the delivery rows and
events are :mod:`activeseg.core.services.webhooks`, the job that makes each attempt and
schedules the next one is :mod:`activeseg.jobs.deliver_webhook`.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import UTC, datetime
from typing import Any

import httpx

from activeseg import __version__
from activeseg.integrations.png_masks import canonical_json

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


def retry_delay_s(attempt: int) -> float:
    """Seconds to wait before attempt number ``attempt`` (2, 3, ...): doubling from
    :data:`BACKOFF_S` (read at call time, so tests may shorten it)."""
    return BACKOFF_S * 2 ** (attempt - 2)


def delivery_body(
    *, delivery: str, event: str, created_at: datetime, data: dict[str, Any], project_id: int
) -> bytes:
    """The exact bytes POSTed (the same on every attempt)."""
    return canonical_json(
        {
            "created_at": created_at.astimezone(UTC).isoformat(),
            "data": data,
            "delivery": delivery,
            "event": event,
            "project_id": project_id,
        }
    )


def delivery_headers(*, secret: str, body: bytes, event: str, delivery: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "User-Agent": f"activeseg-webhooks/{__version__}",
        SIGNATURE_HEADER: sign(secret, body),
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery,
    }


def post_once(
    url: str, body: bytes, headers: dict[str, str], attempt: int, timeout_s: float | None = None
) -> dict[str, Any]:
    """One attempt, never raising for the receiver's sake: the record the delivery log keeps
    (``attempt``, ``status`` or None, ``error`` or None, ``duration_ms``, ``at``). Redirects
    are not followed."""
    started = time.monotonic()
    status: int | None = None
    error: str | None = None
    try:
        with httpx.Client(timeout=timeout_s or TIMEOUT_S, follow_redirects=False) as client:
            status = client.post(url, content=body, headers=headers).status_code
    except httpx.HTTPError as exc:
        error = f"{type(exc).__name__}: {exc}"[:500]
    return {
        "attempt": attempt,
        "status": status,
        "error": error,
        "duration_ms": round(1000 * (time.monotonic() - started), 1),
        "at": datetime.now(UTC).isoformat(),
    }


def succeeded(record: dict[str, Any]) -> bool:
    status = record["status"]
    return status is not None and 200 <= status < 300
