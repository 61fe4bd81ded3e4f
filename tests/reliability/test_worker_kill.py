"""A Celery worker SIGKILLed mid-job, for every job kind: the job completes after the maintenance
sweep re-dispatches it to another worker, and nothing is written twice.

The kill lands at an exact moment, not after a guessed sleep: the victim runs with a failpoint
(activeseg/core/failpoints.py) and freezes either at the job's first progress report (mid-job) or
after the job's function has written everything but before the job is marked done (the worst
case for duplicates: the whole job runs again). The webhook job is killed mid-POST instead: the
receiver holds the first request open until the victim is dead.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from activeseg.admin.simulation import annotate_queue
from activeseg.core.tables import (
    ImageRegionScores,
    ImageScore,
    Job,
    LabelRevision,
    ModelVersion,
    Round,
    ScoreCandidates,
    Task,
    WebhookDelivery,
)
from tests.conftest import Stack
from tests.reliability.figures import record
from tests.utils import run_job_inline, stop_process
from tests.worker.conftest import start_worker, wait_job
from tests.worker.test_loop_integration import FAST_MODEL, FAST_WORKER, annotator, digits_project


class Receiver:
    """A webhook receiver on loopback that records delivery ids; it can hold the first request
    open (the worker is then mid-POST) until told to let go."""

    def __init__(self) -> None:
        self.deliveries: list[str] = []
        self.hold_first = threading.Event()
        self.holding = threading.Event()
        self.release = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if outer.hold_first.is_set():
                    outer.hold_first.clear()
                    outer.holding.set()
                    outer.release.wait(60)
                    return  # the client is gone: answer nobody
                outer.deliveries.append(json.loads(body)["delivery"])
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def project(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A `digits` project with labels, a trained active model, scores and an open queue, all
    made in this process (no broker) so no message waits for the victim."""
    receiver = Receiver()
    with stack.client(stack.admin_token) as admin:
        pid, truth = digits_project(admin, n=24)
        assert admin.patch(f"/projects/{pid}", json={"settings": {"model": FAST_MODEL}}).is_success
        run_job_inline(stack, pid, "build_queue")
        annotate_queue(annotator(stack, admin, pid), pid, truth)
        run_job_inline(stack, pid, "retrain", {"activate": True})
        hook = admin.post(
            f"/projects/{pid}/webhooks", json={"url": receiver.url, "events": ["queue.refilled"]}
        )
        assert hook.status_code == 201, hook.text
        yield {"pid": pid, "receiver": receiver, "folder": tmp_path_factory.mktemp("failpoints")}
    receiver.server.shutdown()


def counts(stack: Stack, pid: int) -> dict[str, int]:
    """Every row a job may write, per project."""

    def n(table: Any, *where: Any) -> int:
        with stack.db.session() as s:  # type: ignore[attr-defined]
            return int(s.scalar(select(func.count()).select_from(table).where(*where)) or 0)

    versions = select(ModelVersion.id).where(ModelVersion.project_id == pid)
    return {
        "model_versions": n(ModelVersion, ModelVersion.project_id == pid),
        "image_scores": n(ImageScore, ImageScore.model_version_id.in_(versions)),
        "image_region_scores": n(
            ImageRegionScores, ImageRegionScores.model_version_id.in_(versions)
        ),
        "score_candidates": n(ScoreCandidates, ScoreCandidates.model_version_id.in_(versions)),
        "rounds": n(Round, Round.project_id == pid),
        "tasks": n(Task, Task.project_id == pid),
        "label_revisions": n(LabelRevision, LabelRevision.task_id.in_(select(Task.id))),
        "webhook_deliveries": n(WebhookDelivery),
    }


def all_referenced(stack: Stack) -> set[str]:
    from activeseg.core.services.blobs import referenced_keys

    with stack.db.session() as s:  # type: ignore[attr-defined]
        return referenced_keys(s)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def jobs_by_kind(stack: Stack, pid: int) -> dict[str, int]:
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rows = s.execute(
            select(Job.kind, func.count()).where(Job.project_id == pid).group_by(Job.kind)
        ).all()
    return {kind: int(c) for kind, c in rows}


def wait_for(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def wait_idle(admin: httpx.Client, pid: int, timeout: float = 240.0) -> None:
    """Until no job of the project is pending, queued, running or waiting, and no new job has
    appeared for 2 s: a chain's next job is created just *after* the previous one is marked
    succeeded, so one idle look can fall between the two."""
    seen: list[tuple[float, int]] = []  # (when, newest job id) of the current idle stretch

    def settled() -> bool:
        jobs = admin.get(f"/projects/{pid}/jobs", params={"limit": 200}).json()["data"]
        if not all(j["state"] in ("succeeded", "failed") for j in jobs):
            seen.clear()
            return False
        newest = max((j["id"] for j in jobs), default=0)  # the list is newest first
        if seen and seen[0][1] != newest:
            seen.clear()
        seen.append((time.monotonic(), newest))
        return seen[-1][0] - seen[0][0] >= 2.0

    wait_for(settled, "the project's jobs to finish", timeout)


def plant_orphans(stack: Stack, n: int = 2) -> list[str]:
    """Blobs no row references, written an hour ago: the sweep's work."""
    keys = []
    for _ in range(n):
        key = stack.store.put(os.urandom(64))  # type: ignore[attr-defined]
        old = time.time() - 3600
        os.utime(stack.store.root / key[:2] / key[2:4] / key, (old, old))  # type: ignore[attr-defined]
        keys.append(key)
    return keys


def request(stack: Stack, admin: httpx.Client, pid: int, kind: str, tag: str) -> int:
    """Ask for a job whose chain includes ``kind``; returns the first job's id."""
    rid = {"request_id": f"kill-{kind}-{tag}"}
    if kind == "sweep_orphan_blobs":  # no route: the maintenance task requests it
        from activeseg.core.services.jobs import request_job
        from activeseg.worker.app import make_celery
        from activeseg.worker.dispatch import dispatch

        with stack.db.session() as s:  # type: ignore[attr-defined]
            job, _ = request_job(
                s, project_id=None, kind=kind, params={"grace_s": 60}, request_id=rid["request_id"]
            )
            job_id = int(job.id)
        assert dispatch(stack.db, make_celery(stack.settings), job_id)  # type: ignore[arg-type]
        return job_id
    if kind == "verify_storage":
        r = admin.post(f"/projects/{pid}/verify", json=rid)
    elif kind == "score_pool":
        r = admin.post(f"/projects/{pid}/score", json=rid)
    elif kind in ("build_queue", "deliver_webhook"):  # score -> build_queue -> queue.refilled
        r = admin.post(f"/projects/{pid}/rounds", json=rid)
    elif kind == "retrain":
        r = admin.post(f"/projects/{pid}/retrain", json=rid)
    elif kind == "evaluate":
        mv = admin.get(f"/projects/{pid}").json()["active_model_id"]
        r = admin.post(f"/models/{mv}/report", json=rid)
    else:
        raise AssertionError(kind)
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


# Each job kind killed mid-job and killed after its writes, before it is marked done.
CASES = [
    ("verify_storage", "job.progress"),
    ("verify_storage", "job.before_finish"),
    ("score_pool", "job.progress"),
    ("score_pool", "job.before_finish"),
    ("build_queue", "job.progress"),
    ("build_queue", "job.before_finish"),
    ("retrain", "job.progress"),
    ("retrain", "job.before_finish"),
    ("evaluate", "job.progress"),
    ("evaluate", "job.before_finish"),
    ("deliver_webhook", "mid-post"),
    ("deliver_webhook", "job.before_finish"),
    ("sweep_orphan_blobs", "job.before_finish"),  # one pass, no progress reports
]


def test_every_job_kind_is_killed() -> None:
    from activeseg.jobs.registry import JOB_FUNCTIONS

    assert {kind for kind, _ in CASES} == set(JOB_FUNCTIONS)


@pytest.mark.integration
@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
@pytest.mark.parametrize(("kind", "point"), CASES)
def test_worker_sigkilled_mid_job_completes_once(  # type: ignore[no-untyped-def]
    stack: Stack, project: dict[str, Any], kind: str, point: str, tmp_path: Path
) -> None:
    pid, receiver, folder = project["pid"], project["receiver"], project["folder"]
    admin = stack.client(stack.admin_token)
    # A clean run first (no fault) measures what one run of this request writes.
    clean_workers = [start_worker(stack, tmp_path / "clean.log", "clean", 1, True, FAST_WORKER)]
    try:
        before_clean, jobs_before_clean = counts(stack, pid), jobs_by_kind(stack, pid)
        wait_job(admin, request(stack, admin, pid, kind, f"clean-{point}"), timeout=240)
        wait_idle(admin, pid)
        expected = delta(counts(stack, pid), before_clean)
        jobs_after_clean = jobs_by_kind(stack, pid)
        clean_jobs = delta(jobs_after_clean, jobs_before_clean)
    finally:
        for w in clean_workers:
            stop_process(w)
    delivered_before = len(receiver.deliveries)

    env = {**FAST_WORKER, "ACTIVESEG_FAILPOINT_DIR": str(folder)}
    if point == "mid-post":
        receiver.hold_first.set()
    else:
        env["ACTIVESEG_FAILPOINTS"] = f"{point}:{kind}"
    victim = start_worker(stack, tmp_path / "victim.log", "victim", 1, False, env)
    rescuer = None
    try:
        before = counts(stack, pid)
        orphans = plant_orphans(stack)
        first = request(stack, admin, pid, kind, f"fault-{point}")
        t0 = time.monotonic()
        if point == "mid-post":
            wait_for(receiver.holding.is_set, "the victim to be mid-POST")
        else:
            wait_for(lambda: any(folder.glob(f"{point}-{kind}-*")), f"{point} in {kind}")
        with stack.db.session() as s:  # type: ignore[attr-defined]
            held = s.scalars(
                select(Job).where(Job.kind == kind, Job.state == "running", Job.id >= first)
            ).all()
        assert len(held) == 1, "the victim holds exactly one job of this kind"
        os.killpg(victim.pid, signal.SIGKILL)  # worker and pool: no goodbye, no ack
        victim.wait()
        receiver.release.set()
        rescuer = start_worker(stack, tmp_path / "rescuer.log", "rescuer", 1, True, FAST_WORKER)
        done = wait_job(admin, held[0].id, timeout=240)
        wait_job(admin, first, timeout=240)
        recovered_s = time.monotonic() - t0  # the killed job and its request are done
        wait_idle(admin, pid)
    finally:
        for f in folder.glob("*"):
            f.unlink()
        receiver.release.clear()
        for p in (victim, rescuer):
            if p is not None:
                stop_process(p)
    assert done["attempts"] == 2, done  # the killed attempt and the one that finished it
    got = delta(counts(stack, pid), before)
    assert got == expected, f"a killed {kind} wrote {got}, a clean run writes {expected}"
    # No follow-up job was requested twice: the same new jobs per kind as the clean run.
    assert delta(jobs_by_kind(stack, pid), jobs_after_clean) == clean_jobs
    missing = [k for k in all_referenced(stack) if not stack.store.exists(k)]  # type: ignore[attr-defined]
    assert missing == [], "a row points at a blob that is gone"
    if kind == "sweep_orphan_blobs":
        assert not any(stack.store.exists(k) for k in orphans)  # type: ignore[attr-defined]
    if kind == "deliver_webhook":
        fresh = receiver.deliveries[delivered_before:]
        assert len(fresh) == len(set(fresh)) == 1, fresh  # one delivery id, received once
    record(
        "worker SIGKILL",
        kind=kind,
        point=point,
        recovered_s=round(recovered_s, 1),
        rows_written=got,
        jobs=clean_jobs,
    )
