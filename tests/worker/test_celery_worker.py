"""A real Celery worker process runs jobs enqueued through the API."""

from __future__ import annotations

from tests.conftest import Stack
from tests.utils import image_bytes, make_project, upload
from tests.worker.conftest import wait_job


def test_worker_runs_a_job_enqueued_through_the_api(stack: Stack, admin, worker) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    upload(admin, pid, ("a.png", image_bytes(8, 8, seed=21)), ("b.png", image_bytes(8, 8, seed=22)))
    worker("w1")
    job = admin.post(f"/projects/{pid}/verify", json={"request_id": "first"}).json()
    done = wait_job(admin, job["id"])
    assert done["state"] == "succeeded" and done["progress"] == 1.0
    assert done["result"] == {"checked": 2}
    assert done["attempts"] == 1


def test_a_failing_job_is_marked_failed_and_can_be_retried(stack: Stack, admin, worker) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    image = upload(admin, pid, ("a.png", image_bytes(8, 8, seed=23))).json()["data"][0]["image"]
    stack.store.delete(image["sha256"])  # type: ignore[attr-defined]
    worker("w1")
    job = admin.post(f"/projects/{pid}/verify", json={}).json()
    failed = wait_job(admin, job["id"], states=("failed",))
    assert "1 missing" in failed["error"]
    # Put the blob back, retry: the same job row succeeds.
    stack.store.put(image_bytes(8, 8, seed=23))  # type: ignore[attr-defined]
    retried = admin.post(f"/jobs/{job['id']}/retry")
    # The answer is read after the dispatch: a fast worker may have finished the tiny job.
    assert retried.status_code == 200
    assert retried.json()["state"] in ("queued", "running", "pending", "succeeded")
    done = wait_job(admin, job["id"])
    assert done["attempts"] == 2 and done["error"] is None
