"""Redis (the broker) killed and restarted while annotators work.

Leasing and submitting never touch the broker, so they keep working. Jobs requested during the
outage are stored as pending rows (the outbox) and dispatched by the maintenance sweep once
Redis is back; a job whose message died with Redis (it keeps nothing on disk) is sent again.
/health says the broker is down and still answers 200: annotation does not need it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Stack
from tests.reliability.annotators import Crew, lost_labels, percentile, project_with_crew
from tests.reliability.figures import record
from tests.reliability.services import PrivateRedis, stack_on
from tests.utils import stop_process
from tests.worker.conftest import start_worker, wait_job
from tests.worker.test_loop_integration import FAST_WORKER

OUTAGE_S = 8.0
WORKER_ENV = {**FAST_WORKER, "ACTIVESEG_JOB_REDISPATCH_AFTER_S": "5"}


@pytest.fixture
def broken(tmp_path: Path) -> Iterator[tuple[Stack, PrivateRedis]]:
    broker = PrivateRedis(tmp_path)
    broker.start()
    try:
        with stack_on(tmp_path / "data", broker.url) as stack:
            yield stack, broker
    finally:
        broker.stop()


@pytest.mark.integration
def test_annotation_and_job_requests_survive_a_redis_restart(  # type: ignore[no-untyped-def]
    broken: tuple[Stack, PrivateRedis], tmp_path: Path
) -> None:
    stack, broker = broken
    admin = stack.client(stack.admin_token)
    pid, crew_members = project_with_crew(stack)

    first = start_worker(stack, tmp_path / "w1.log", "w1", 1, True, WORKER_ENV)
    try:
        wait_job(admin, admin.post(f"/projects/{pid}/verify", json={}).json()["id"], timeout=60)
    finally:
        stop_process(first)
    # With no worker consuming, this job's message waits in Redis ... and dies with it.
    doomed = admin.post(f"/projects/{pid}/verify", json={"request_id": "doomed"}).json()
    assert doomed["state"] == "queued"

    with Crew(crew_members) as crew:
        time.sleep(3)
        broker.stop()
        t_down = time.monotonic()
        health = admin.get("/health")
        assert health.status_code == 200, health.text
        assert health.json()["status"] == "degraded"
        assert health.json()["broker"].startswith("down")
        t0 = time.monotonic()
        retrain = admin.post(f"/projects/{pid}/retrain", json={"request_id": "during-outage"})
        request_ms = (time.monotonic() - t0) * 1000
        assert retrain.status_code == 202, retrain.text
        assert retrain.json()["state"] == "pending"  # recorded, not sent: the outbox
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        broker.start()
        t_up = time.monotonic()
        during = crew.outcomes(t_down, t_up)
        assert admin.get("/health").json()["broker"] == "ok"
        rescuer = start_worker(stack, tmp_path / "w2.log", "w2", 1, True, WORKER_ENV)
        try:
            done_doomed = wait_job(admin, doomed["id"], timeout=120)
            done_retrain = wait_job(admin, retrain.json()["id"], timeout=240)
            time.sleep(2)
        finally:
            crew.stop.set()
            stop_process(rescuer)
        redispatch_s = time.monotonic() - t_up

    bad = [o for o in during if o.status not in (200, 201, 204)]
    assert not bad, f"annotation failed while Redis was down: {bad[:5]}"
    leases = [o for o in during if o.route == "lease" and o.status == 200]
    submits = [o for o in during if o.route == "submit" and o.status in (200, 201)]
    assert len(leases) >= 8 and len(submits) >= 8, (len(leases), len(submits))
    assert done_doomed["attempts"] == 1 and done_retrain["attempts"] == 1
    lost = lost_labels(stack.db, crew.acknowledged)
    assert lost == [], f"{len(lost)} acknowledged labels are missing"
    record(
        "redis outage",
        outage_s=OUTAGE_S,
        annotators=len(crew_members),
        leases_during=len(leases),
        submits_during=len(submits),
        errors_during=len(bad),
        lease_p99_ms_during=round(percentile([o.ms for o in leases], 99), 1),
        job_request_ms_during=round(request_ms, 1),
        jobs_recovered=2,
        recovered_within_s=round(redispatch_s, 1),
        acknowledged=len(crew.acknowledged),
        labels_lost=len(lost),
    )
