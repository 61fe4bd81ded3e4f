"""deliver_webhook: one attempt to POST a recorded webhook delivery.

A failed attempt with attempts left does not wait in the job: it raises
:class:`~activeseg.jobs.runner.RetryLater`, the job goes back to ``queued`` and the broker
runs it again after the backoff (the Celery shell retries with that countdown), so no worker
is held between attempts. Each attempt is logged in the delivery row before the job decides,
so a redelivered job continues from the attempts already logged, and a delivery that
succeeded is never sent again.
"""

from __future__ import annotations

import logging
from typing import Any

from activeseg.core.services.webhooks import record_attempt
from activeseg.core.tables import Webhook, WebhookDelivery
from activeseg.integrations import webhooks
from activeseg.jobs.runner import JobContext, RetryLater

log = logging.getLogger(__name__)


def deliver_webhook(ctx: JobContext, delivery_id: int) -> dict[str, Any]:
    """Make the delivery's next attempt. Returns when it succeeds; raises RetryLater (the
    wait before the next attempt) or, after the last attempt, DeliveryFailed."""
    with ctx.db.session() as s:
        delivery = s.get(WebhookDelivery, delivery_id)
        hook = s.get(Webhook, delivery.webhook_id) if delivery is not None else None
        if delivery is None or hook is None:
            return {"skipped": "the webhook was deleted"}
        if delivery.state == "succeeded":
            return {"delivery": delivery.uuid, "status": delivery.last_status, "attempts": 0}
        url, attempt = hook.url, len(delivery.attempts) + 1
        body = webhooks.delivery_body(
            delivery=delivery.uuid,
            event=delivery.event,
            created_at=delivery.created_at,
            data=delivery.payload,
            project_id=hook.project_id,
        )
        headers = webhooks.delivery_headers(
            secret=hook.secret, body=body, event=delivery.event, delivery=delivery.uuid
        )
    record = webhooks.post_once(url, body, headers, attempt)
    ok, final = webhooks.succeeded(record), attempt >= webhooks.MAX_ATTEMPTS
    record_attempt(ctx.db, delivery_id, record, ok, final)
    if ok:
        return {
            "delivery": headers[webhooks.DELIVERY_HEADER],
            "status": record["status"],
            "attempts": attempt,
        }
    last = f"HTTP {record['status']}" if record["status"] is not None else str(record["error"])
    log.info("webhook delivery %s attempt %s failed: %s", delivery_id, attempt, last)
    if final:
        raise webhooks.DeliveryFailed(
            f"webhook delivery to {url} failed after {attempt} attempts: {last}"
        )
    wait_s = webhooks.retry_delay_s(attempt + 1)
    raise RetryLater(
        wait_s, f"attempt {attempt} failed ({last}); attempt {attempt + 1} in {wait_s:g} s"
    )
