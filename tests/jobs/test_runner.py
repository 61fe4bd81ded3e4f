"""The job runner without a broker: claim, heartbeat, success, failure, redelivery."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from activeseg.core.services.jobs import request_job
from activeseg.core.tables import Job
from activeseg.jobs.runner import JobBusy, JobContext, claim, run_job
from tests.conftest import Stack


def no_dispatch(job_id: int) -> bool:
    raise AssertionError(f"job {job_id} should not start a follow-up")


def new_job(stack: Stack, params: dict[str, Any] | None = None) -> int:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job, created = request_job(
            s,
            project_id=None,
            kind="verify_storage",
            params=params or {"n": datetime.now(UTC).isoformat()},
        )
        assert created
        return job.id


def job_row(stack: Stack, job_id: int) -> Job:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        s.expunge(job)
        return job


def test_success_records_result_and_progress(stack: Stack) -> None:
    jid = new_job(stack)

    def fn(ctx: JobContext, n: str) -> dict[str, Any]:
        ctx.progress(0.5, "half", force=True)
        assert job_row(stack, jid).progress == 0.5
        return {"echo": n}

    result = run_job(stack.db, stack.store, stack.settings, jid, fn, no_dispatch)  # type: ignore[arg-type]
    job = job_row(stack, jid)
    assert (job.state, job.progress, job.attempts) == ("succeeded", 1.0, 1)
    assert job.result == result and result is not None and "echo" in result
    # Redelivered after success: nothing runs again.
    assert (
        run_job(
            stack.db,
            stack.store,
            stack.settings,
            jid,  # type: ignore[arg-type]
            lambda ctx, n: pytest.fail("ran twice"),
            no_dispatch,
        )
        is None
    )


def test_failure_keeps_the_error_and_can_be_retried(stack: Stack) -> None:
    jid = new_job(stack)

    def boom(ctx: JobContext, n: str) -> None:
        raise ValueError("the model config is wrong")

    run_job(stack.db, stack.store, stack.settings, jid, boom, no_dispatch)  # type: ignore[arg-type]
    job = job_row(stack, jid)
    assert job.state == "failed" and job.error == "the model config is wrong"


def test_a_live_job_is_not_claimed_twice_but_a_dead_one_is(stack: Stack) -> None:
    jid = new_job(stack)
    assert claim(stack.db, jid) is not None  # type: ignore[arg-type]
    with pytest.raises(JobBusy):
        claim(stack.db, jid)  # type: ignore[arg-type]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.get(Job, jid).heartbeat_at = datetime.now(UTC) - timedelta(minutes=5)
    again = claim(stack.db, jid)  # type: ignore[arg-type]
    assert again is not None and again.attempts == 2


def test_heartbeat_runs_while_the_job_works(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    import activeseg.jobs.runner as runner

    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.05)
    jid = new_job(stack)
    seen: list[datetime] = []
    done = threading.Event()

    def slow(ctx: JobContext, n: str) -> None:
        first = job_row(stack, jid).heartbeat_at
        done.wait(0.4)
        seen.extend([first, job_row(stack, jid).heartbeat_at])

    run_job(stack.db, stack.store, stack.settings, jid, slow, no_dispatch)  # type: ignore[arg-type]
    assert seen[1] > seen[0]
