"""What a failed job tells people: a known cause's own sentence, or, for a bug, only which
exception it was and where the traceback is (the worker log). And a retrain that could only
fail is refused when it is requested."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from sqlalchemy import update

from activeseg.core.errors import Conflict
from activeseg.core.services.jobs import request_job
from activeseg.core.tables import Job, JobState, Project
from activeseg.jobs.runner import JobContext, run_job
from tests.conftest import Stack
from tests.utils import grid_project, image_bytes, png_bytes, run_job_inline, upload

RUNNER_LOG = "activeseg.jobs.runner"


def no_dispatch(job_id: int) -> bool:
    raise AssertionError(f"job {job_id} should not start a follow-up")


def failed_job(stack: Stack, fn: Any) -> int:
    """A verify_storage job row run by the real runner with ``fn`` as its body."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job, created = request_job(
            s,
            project_id=None,
            kind="verify_storage",
            params={"n": datetime.now(UTC).isoformat()},
        )
        assert created
        job_id = int(job.id)
    run_job(stack.db, stack.store, stack.settings, job_id, fn, no_dispatch)  # type: ignore[arg-type]
    return job_id


def shown(admin: Any, job_id: int) -> dict[str, Any]:
    r = admin.get(f"/jobs/{job_id}")
    assert r.status_code == 200, r.text
    job: dict[str, Any] = r.json()
    assert job["state"] == "failed"
    assert "Traceback" not in job["message"] and "Traceback" not in job["error"]
    return job


# --- known causes keep their message -------------------------------------------------------


def test_a_real_jobs_own_check_is_shown_as_written(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    """The retrain job itself, run without the route's check: its ValueError is the sentence."""
    pid = grid_project(admin)["id"]
    upload(admin, pid, ("a.png", image_bytes(32, 32, seed=71)))
    job_id = run_job_inline(stack, pid, "retrain")
    job = shown(admin, job_id)
    assert job["error"] == "no labelled images to train on: label some regions first"
    assert job["message"] == "failed"


def test_a_missing_blob_is_reported_by_verify_storage_as_written(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    """A RuntimeError raised by the project's own code (verify_storage) keeps its message."""
    pid = grid_project(admin)["id"]
    [row] = upload(admin, pid, ("a.png", image_bytes(32, 32, seed=72))).json()["data"]
    key = row["image"]["sha256"]
    stack.store.delete(key)  # type: ignore[attr-defined]
    job_id = run_job_inline(stack, pid, "verify_storage")
    assert shown(admin, job_id)["error"] == f"1 missing and 0 corrupt blobs: ['{key}']"


def test_a_domain_error_keeps_its_message_on_one_line(
    stack: Stack, admin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    def conflict(ctx: JobContext, n: str) -> None:
        raise Conflict("the pool changed while scoring;\n   request the job again")

    with caplog.at_level(logging.WARNING, logger=RUNNER_LOG):
        job_id = failed_job(stack, conflict)
    assert shown(admin, job_id)["error"] == (
        "the pool changed while scoring; request the job again"
    )
    [record] = [r for r in caplog.records if r.name == RUNNER_LOG and str(job_id) in r.message]
    assert record.levelno == logging.WARNING and record.exc_info is not None


def test_a_long_known_message_is_cut(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    def long(ctx: JobContext, n: str) -> None:
        raise ValueError("x" * 5000)

    error = shown(admin, failed_job(stack, long))["error"]
    assert error == "x" * 999 + "…"


# --- anything else is a bug: type and job id for people, traceback for the log --------------


def missing_key() -> int:
    lookup: dict[str, int] = {}
    return lookup["internal-detail"]


def numpy_type_error() -> Any:
    return np.dtype("internal-detail")  # raised inside numpy: data type '...' not understood


def raise_runtime_error() -> None:
    # Not the project's own raise (this test's): a RuntimeError from elsewhere is a bug.
    raise RuntimeError("internal-detail")


@pytest.mark.parametrize(
    ("make_error", "type_name"),
    [
        (missing_key, "KeyError"),
        (numpy_type_error, "TypeError"),
        (raise_runtime_error, "RuntimeError"),
    ],
)
def test_an_unexpected_failure_shows_one_sentence_and_logs_the_traceback(
    stack: Stack, admin: Any, caplog: pytest.LogCaptureFixture, make_error: Any, type_name: str
) -> None:
    def broken(ctx: JobContext, n: str) -> None:
        make_error()

    with caplog.at_level(logging.ERROR, logger=RUNNER_LOG):
        job_id = failed_job(stack, broken)
    job = shown(admin, job_id)
    assert job["error"] == (
        f"job verify_storage failed unexpectedly ({type_name}); the worker log has the details "
        f"(job id {job_id})"
    )
    assert job["message"] == "failed"
    [record] = [r for r in caplog.records if r.name == RUNNER_LOG and str(job_id) in r.message]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[0] is not None and record.exc_info[0].__name__ == type_name
    assert "internal-detail" in caplog.text and "broken" in caplog.text  # the traceback


def test_a_known_type_without_a_message_is_shown_as_unexpected(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    def silent(ctx: JobContext, n: str) -> None:
        raise ValueError("  ")

    job_id = failed_job(stack, silent)
    assert shown(admin, job_id)["error"] == (
        "job verify_storage failed unexpectedly (ValueError); the worker log has the details "
        f"(job id {job_id})"
    )


# --- a retrain that could only fail is refused at once ------------------------------------


def test_retrain_without_training_labels_is_409_and_makes_no_job(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin)["id"]
    [pool] = upload(admin, pid, ("p.png", image_bytes(32, 32, seed=73))).json()["data"]
    [val] = upload(admin, pid, ("v.png", image_bytes(32, 32, seed=74)), split="val").json()["data"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(update(Project).where(Project.id == pid).values(labels_since_retrain=3))

    def retrain_status() -> tuple[int, Any]:
        r = admin.post(f"/projects/{pid}/retrain", json={})
        return r.status_code, r.json()

    def put_mask(image_id: int, mask: np.ndarray) -> None:
        r = admin.put(f"/images/{image_id}/mask", files={"file": ("m.png", png_bytes(mask))})
        assert r.status_code == 201, r.text

    refused = (
        409,
        {
            "detail": f"project {pid} has no labelled pool or train images to train on yet; "
            "label some through its tasks or upload masks, then retrain"
        },
    )
    assert retrain_status() == refused  # no labels at all
    labelled = np.full((32, 32), 255, np.uint8)
    labelled[3, 4] = 1
    put_mask(val["image"]["id"], labelled)
    assert retrain_status() == refused  # val labels are held out, not trained on
    put_mask(pool["image"]["id"], np.full((32, 32), 255, np.uint8))
    assert retrain_status() == refused  # a revision that labels no pixel
    jobs = admin.get(f"/projects/{pid}/jobs").json()["data"]
    assert [j for j in jobs if j["kind"] == "retrain"] == []
    with stack.db.session() as s:  # type: ignore[attr-defined]
        assert s.get(Project, pid).labels_since_retrain == 3  # the refusal changed nothing

    put_mask(pool["image"]["id"], labelled)  # one labelled pool pixel is enough
    status, job = retrain_status()
    assert status == 202 and job["kind"] == "retrain", job
    with stack.db.session() as s:  # type: ignore[attr-defined]
        assert s.get(Project, pid).labels_since_retrain == 0
        # No worker runs here; a worker of a later test that gets the message skips it.
        s.execute(
            update(Job)
            .where(Job.id == job["id"])
            .values(state=JobState.failed.value, error="left over by tests/jobs")
        )


def test_a_train_split_image_is_training_data(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = grid_project(admin)["id"]
    [train] = upload(admin, pid, ("t.png", image_bytes(32, 32, seed=75)), split="train").json()[
        "data"
    ]
    labelled = np.full((32, 32), 255, np.uint8)
    labelled[0, 0] = 2
    r = admin.put(
        f"/images/{train['image']['id']}/mask", files={"file": ("m.png", png_bytes(labelled))}
    )
    assert r.status_code == 201, r.text
    r = admin.post(f"/projects/{pid}/retrain", json={})
    assert r.status_code == 202, r.text
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.execute(
            update(Job)
            .where(Job.id == r.json()["id"])
            .values(state=JobState.failed.value, error="left over by tests/jobs")
        )
