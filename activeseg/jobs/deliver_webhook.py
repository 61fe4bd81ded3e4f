"""deliver_webhook: POST one recorded webhook delivery, retrying with backoff."""

from __future__ import annotations

from typing import Any

from activeseg.integrations.webhooks import deliver
from activeseg.jobs.runner import JobContext


def deliver_webhook(ctx: JobContext, delivery_id: int) -> dict[str, Any]:
    return deliver(ctx.db, delivery_id)
