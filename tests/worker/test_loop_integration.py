"""The loop end to end with real Celery worker processes, and a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from activeseg.admin.simulation import annotate_queue
from activeseg.core.tables import LabelRevision, ModelVersion, Round, Task
from tests.conftest import Stack
from tests.utils import make_user
from tests.worker.conftest import wait_job

FAST_MODEL = {
    "method": "mc_dropout",
    "mc_samples": 3,
    "depth": 2,
    "base_channels": 8,
    "steps": 16,
    "batch_size": 4,
    "patch_size": 64,
    "patience": None,
}
FAST_WORKER = {
    "ACTIVESEG_JOB_STALE_AFTER_S": "4",
    "ACTIVESEG_MAINTENANCE_INTERVAL_S": "1",
    "ACTIVESEG_TORCH_THREADS": "1",
}


def digits_project(admin, n: int = 24, **settings: Any) -> tuple[int, dict[int, np.ndarray]]:  # type: ignore[no-untyped-def]
    """A `digits` project created over HTTP, as `activeseg simulate` does it."""
    from activeseg.admin.simulation import SimulationConfig, setup_project
    from activeseg.client.http import Client

    cfg = SimulationConfig(
        count=n,
        region_kind="grid",
        region_size=16,
        budget=10,
        measure="mutual_information",
        model=FAST_MODEL,
    )
    client = Client(str(admin.base_url), admin.headers["Authorization"].split()[1])
    pid, truth = setup_project(client, cfg, seed=5)
    if settings:
        assert admin.patch(f"/projects/{pid}", json={"settings": settings}).is_success
    return pid, truth


def annotator(stack: Stack, admin, pid: int):  # type: ignore[no-untyped-def]
    from activeseg.client.http import Client

    uid, token = make_user(admin, "annotator")
    admin.post(f"/projects/{pid}/members", json={"user_id": uid})
    return Client(stack.base_url, token)


def counts(stack: Stack, pid: int) -> dict[str, int]:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        return {
            "versions": s.scalar(
                select(func.count()).select_from(ModelVersion).where(ModelVersion.project_id == pid)
            ),
            "rounds": s.scalar(
                select(func.count()).select_from(Round).where(Round.project_id == pid)
            ),
            "tasks": s.scalar(select(func.count()).select_from(Task).where(Task.project_id == pid)),
            "revisions": s.scalar(
                select(func.count())
                .select_from(LabelRevision)
                .where(
                    LabelRevision.source == "task",
                    LabelRevision.task_id.in_(select(Task.id).where(Task.project_id == pid)),
                )
            ),
        }


@pytest.mark.integration
@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_bootstrap_annotate_retrain_rescore_requeue(stack: Stack, admin, worker) -> None:  # type: ignore[no-untyped-def]
    worker("w1", concurrency=1)
    worker("w2", concurrency=1)
    pid, truth = digits_project(admin)
    job = admin.post(f"/projects/{pid}/rounds", json={"request_id": "day-one"}).json()
    assert wait_job(admin, job["id"])["result"]["strategy"] == "random"
    ann = annotator(stack, admin, pid)
    assert annotate_queue(ann, pid, truth) == 10

    retrain = admin.post(f"/projects/{pid}/retrain", json={"request_id": "r1"}).json()
    mv_id = wait_job(admin, retrain["id"], timeout=600)["result"]["model_version_id"]
    model = admin.get(f"/models/{mv_id}").json()
    assert model["active"] and model["version"] == 1 and model["metrics"]["miou"] >= 0
    # The chain: score_pool with the new version, then build_queue from its scores.
    deadline = time.monotonic() + 600
    while True:
        rounds = counts(stack, pid)["rounds"]
        jobs = admin.get(f"/projects/{pid}/jobs").json()["data"]
        if rounds == 2 and all(j["state"] == "succeeded" for j in jobs):
            break
        assert not [j for j in jobs if j["state"] == "failed"], jobs
        assert time.monotonic() < deadline, jobs
        time.sleep(0.5)
    kinds = sorted(j["kind"] for j in jobs)
    assert kinds == ["build_queue", "build_queue", "evaluate", "retrain", "score_pool"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rnd = s.scalar(select(Round).where(Round.project_id == pid, Round.number == 2))
        assert rnd.model_version_id == mv_id and rnd.measure == "mutual_information"
        queued = s.scalars(select(Task).where(Task.round_id == rnd.id)).all()
        assert len(queued) == 10 and all(t.model_version_id == mv_id for t in queued)
    lease = ann.post(f"/projects/{pid}/tasks/next")
    assert lease["model_version_id"] == mv_id and lease["uncertainty_url"]
    assert lease["proposed_classes"]
    heat = admin.get(lease["uncertainty_url"])
    assert heat.status_code == 200 and heat.headers["content-type"] == "image/png"


@pytest.mark.integration
@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_worker_killed_mid_retrain_completes_elsewhere(stack: Stack, admin, worker) -> None:  # type: ignore[no-untyped-def]
    pid, truth = digits_project(admin, n=24)
    slow_model = {**FAST_MODEL, "steps": 400}
    assert admin.patch(f"/projects/{pid}", json={"settings": {"model": slow_model}}).is_success
    victim = worker("victim", concurrency=1, extra_env=FAST_WORKER)
    job = admin.post(f"/projects/{pid}/rounds", json={}).json()
    wait_job(admin, job["id"])
    ann = annotator(stack, admin, pid)
    annotate_queue(ann, pid, truth)
    before = counts(stack, pid)

    retrain = admin.post(f"/projects/{pid}/retrain", json={"request_id": "kill-me"}).json()
    deadline = time.monotonic() + 600
    while True:  # wait until it is really training
        state = admin.get(f"/jobs/{retrain['id']}").json()
        if state["state"] == "running" and state["progress"] > 0.1:
            break
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)  # the worker and its pool processes, no goodbye
    victim.wait()
    assert admin.get(f"/jobs/{retrain['id']}").json()["state"] == "running"

    worker("rescuer", concurrency=1, beat=True, extra_env=FAST_WORKER)
    done = wait_job(admin, retrain["id"], timeout=600)
    assert done["attempts"] == 2
    deadline = time.monotonic() + 600
    while counts(stack, pid)["rounds"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    after = counts(stack, pid)
    assert after["versions"] == 1  # no half-written or duplicate version
    assert after["revisions"] == before["revisions"]  # no label lost
    assert after["tasks"] == before["tasks"] + 10  # one new batch, not two
