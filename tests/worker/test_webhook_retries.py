"""Webhook retries on a real Celery worker: scheduled by the broker with the backoff, not
slept in the worker, so a worker of one process runs other jobs in between."""

from __future__ import annotations

import time

from tests.conftest import Stack
from tests.integrations.helpers import receiver
from tests.utils import make_project
from tests.worker.conftest import wait_job


def test_a_failing_endpoint_is_retried_with_the_backoff_while_the_worker_runs_other_jobs(  # type: ignore[no-untyped-def]
    stack: Stack, admin, worker
) -> None:
    pid = make_project(admin)["id"]
    worker("w1", concurrency=1)
    with receiver([500, 500]) as failing, receiver() as healthy:
        hooks = [
            admin.post(
                f"/projects/{pid}/webhooks", json={"url": rec.url, "events": ["job.failed"]}
            ).json()
            for rec in (failing, healthy)
        ]
        first = admin.post(f"/projects/{pid}/webhooks/{hooks[0]['id']}/ping").json()
        deadline = time.monotonic() + 60
        while not failing.times:  # its first attempt failed: a retry is due in 1 s
            assert time.monotonic() < deadline, "the first attempt never came"
            time.sleep(0.05)
        second = admin.post(f"/projects/{pid}/webhooks/{hooks[1]['id']}/ping").json()
        wait_job(admin, second["job_id"], timeout=60)
        done = wait_job(admin, first["job_id"], timeout=60)
        assert len(failing.times) == 3 and len(healthy.times) == 1
        # The one pool process delivered the other webhook while the failing one waited.
        assert healthy.times[0] < failing.times[2]
        waits = [b - a for a, b in zip(failing.times, failing.times[1:], strict=False)]
    assert 1.0 <= waits[0] < 1.0 + 5 and 2.0 <= waits[1] < 2.0 + 5, waits  # 1 s, then 2 s
    assert done["state"] == "succeeded" and done["attempts"] == 3
    assert done["result"]["attempts"] == 3 and done["result"]["status"] == 200
    log = admin.get(f"/projects/{pid}/webhooks/{hooks[0]['id']}/deliveries").json()
    [row] = log["data"]
    assert row["state"] == "succeeded" and [a["status"] for a in row["attempts"]] == [500, 500, 200]
