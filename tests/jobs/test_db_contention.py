"""Jobs never hold the database (issue 14): on SQLite, the embedded default, a job's reads take
no lock, its slow work (decoding, prediction, SLIC, pooling) runs with no session open and its
writes are short transactions, so annotators on other projects are not kept waiting and the
job's own heartbeat is never starved.

The end-to-end test scores a big superpixel image in a real Celery worker (the embedded
filesystem broker, another process) while this process leases tasks of a second project over
real HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError, OperationalError

from activeseg.core.db import Database
from activeseg.core.services.pool import brief_write
from activeseg.core.tables import (
    ImageRegionScores,
    Job,
    RegionSet,
    User,
)
from activeseg.jobs import runner
from activeseg.jobs.runner import JobContext, run_job
from tests.conftest import Stack, running_stack, stack_env
from tests.utils import (
    build_queue_inline,
    grid_project,
    image_bytes,
    make_project,
    make_user,
    png_bytes,
    stop_process,
    unique,
    untrained_version,
    upload,
)
from tests.worker.conftest import start_worker, wait_worker_ready

BIG_SIDE = 3000
"""Side of the image scored in the default suite (9 Mpx, ~35k superpixels, one score row):
the same verdict as the issue's 36 Mpx in about a quarter of the time. The 6000 x 6000 run
(about 110 s of scoring on a quiet two-core machine, several minutes on a loaded one) is
tests/reliability/test_big_image_lease.py, which `make reliability` (and CI) runs."""
REGION_SIZE = 16  # ~140k superpixels at 6000: 5 x 140k float32 scores (5 softmax measures)
BASELINE_LEASES = 150
LEASE_SLACK_S = 0.2
"""The bound on a lease's p99 while the image is scored is ``LEASE_SLACK_S`` plus the p99 of
the same loop measured just before without scoring, on the same server: the machine's own
pace (here two cores shared by several test runs) is in the baseline, and what is left is the
time a lease may wait for the database because of the job."""


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded default: SQLite file, filesystem broker, blob folder; big uploads allowed."""
    env = stack_env("sqlite", tmp_path_factory.mktemp("embedded"))
    env.update(
        ACTIVESEG_BROKER_URL="filesystem://",
        ACTIVESEG_MAX_IMAGE_PIXELS=str(40_000_000),
        ACTIVESEG_MAX_UPLOAD_BYTES=str(256 * 1024 * 1024),
    )
    with running_stack("sqlite", env) as running:
        yield running


def _db(stack: Stack) -> Database:
    return stack.db  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Unit level: read sessions, and the heartbeat.


def test_a_long_read_session_does_not_block_a_writer(embedded: Stack) -> None:
    """A job's read session held open (here for up to 20 s) must let another connection
    commit meanwhile: with every session beginning ``BEGIN IMMEDIATE`` the writer waited for
    the reader to end. The reader keeps its snapshot (it does not see the new row); a read
    session opened afterwards does."""
    db = _db(embedded)
    name = unique("writer")
    committed = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with db.session() as s:
                s.add(User(name=name, role="annotator"))
            committed.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def users(s: Any) -> int:
        return int(s.scalar(select(func.count()).select_from(User).where(User.name == name)))

    with db.read_session() as reader:
        assert users(reader) == 0  # the snapshot starts here
        writer = threading.Thread(target=write)
        writer.start()
        assert committed.wait(20), f"the write waited for the read session: {errors}"
        assert users(reader) == 0
    writer.join()
    with db.read_session() as s:
        assert users(s) == 1


def test_a_write_in_a_read_session_fails_and_stores_nothing(stack: Stack) -> None:
    """On both databases: a job that writes in a read session fails loudly (on SQLite a
    deferred read upgraded to a write would fail at random, on "database is locked")."""
    db = _db(stack)
    name = unique("ro")

    def count() -> int:
        with db.read_session() as s:
            return int(s.scalar(select(func.count()).select_from(User).where(User.name == name)))

    with pytest.raises(DBAPIError, match="read-only|readonly"), db.read_session() as s:
        s.add(User(name=name, role="annotator"))
        s.flush()
    assert count() == 0
    with db.session() as s:  # the pooled connection is a writer again
        s.add(User(name=name, role="annotator"))
    assert count() == 1


def _new_job(db: Database) -> int:
    from activeseg.core.services.jobs import request_job

    with db.session() as s:
        job, _ = request_job(
            s, project_id=None, kind="verify_storage", params={"n": time.time_ns()}
        )
        return int(job.id)


def test_the_heartbeat_keeps_beating_while_a_job_reads_and_another_connection_writes(
    embedded: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The job holds a read session open for its whole run while another connection commits
    write after write (each holding the lock 20 ms, as a chunk of score rows does): the
    heartbeat, a write of its own, must still advance several times and never fail."""
    monkeypatch.setattr(runner, "HEARTBEAT_S", 0.05)
    db = _db(embedded)
    jid = _new_job(db)
    stop = threading.Event()

    def hammer() -> None:
        # Chunk after chunk as score_pool writes them: each holds the lock 20 ms, then leaves
        # it free as long (brief_write). Re-taking it at once, as no job does, starved the
        # heartbeat when every core was busy: SQLite's lock is not fair.
        while not stop.is_set():
            with brief_write(db) as s:
                s.execute(update(Job).where(Job.id == -1).values(progress=0.0))
                time.sleep(0.02)  # the lock is held meanwhile

    beats: set[datetime] = set()

    def job(ctx: JobContext, n: int) -> None:
        writer = threading.Thread(target=hammer)
        writer.start()
        try:
            with ctx.db.read_session() as s:  # a long read: the job's whole run
                s.scalar(select(func.count()).select_from(Job))
                deadline = time.monotonic() + 30  # a bound, not a wait: ends at 5 beats
                while len(beats) < 5 and time.monotonic() < deadline:
                    with ctx.db.read_session() as r:
                        beats.add(r.scalar(select(Job.heartbeat_at).where(Job.id == jid)))
                    time.sleep(0.01)
        finally:
            stop.set()
            writer.join()

    run_job(db, embedded.store, embedded.settings, jid, job, lambda _: True)  # type: ignore[arg-type]
    assert len(beats) >= 5, f"the heartbeat advanced {len(beats) - 1} times in 30 s"
    assert "heartbeat for job" not in caplog.text
    with db.read_session() as s:
        assert s.scalar(select(Job.state).where(Job.id == jid)) == "succeeded"


class _Ticks:
    """A stand-in for the heartbeat's stop event: records each wait, stops after ``n``."""

    def __init__(self, n: int) -> None:
        self.waits: list[float] = []
        self.n = n

    def wait(self, seconds: float) -> bool:
        self.waits.append(seconds)
        return len(self.waits) > self.n


def test_a_failed_beat_is_retried_soon_then_the_period_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two failed beats (the database busy) are retried after BEAT_RETRY_S, then twice that;
    after a beat succeeds the period is HEARTBEAT_S again."""
    outcomes = iter([None, "busy", "busy", None, None])
    calls: list[int] = []

    def beat(db: Any, job_id: int) -> None:
        calls.append(job_id)
        if next(outcomes) == "busy":
            raise OperationalError("UPDATE jobs", {}, Exception("database is locked"))

    monkeypatch.setattr(runner, "beat", beat)
    ticks = _Ticks(5)
    runner._heartbeat(None, 7, ticks)  # type: ignore[arg-type]
    h, r = runner.HEARTBEAT_S, runner.BEAT_RETRY_S
    assert ticks.waits == [h, h, r, 2 * r, h, h]
    assert calls == [7] * 5


def test_an_image_scores_in_two_rows_and_a_redelivery_replaces_them(
    stack: Stack, admin: httpx.Client
) -> None:
    """On both databases: an image's scores are one image_region_scores row (every measure's
    region scores in one array) and one image_scores row, whatever the number of measures,
    in one brief write; writing them again (a redelivered job) leaves exactly the new rows,
    the image_scores row naming the new heatmap."""
    from sqlalchemy import event

    from activeseg.core.services.scores import ScoredImage
    from activeseg.core.tables import ImageScore
    from activeseg.jobs import score_pool

    pid = make_project(admin, n_classes=2)["id"]
    r = upload(admin, pid, ("chunks.png", image_bytes(8, 8, seed=141, rgb=False)))
    image_id = r.json()["data"][0]["image"]["id"]
    mv_id = _untrained(stack, pid)
    db = _db(stack)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("INSERT", "DELETE")):
            statements.append(statement.split("(")[0].split(" WHERE")[0].strip())

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        classes = np.array([0, 1] * 5)
        for offset, key in ((0.0, "first"), (1.0, "second")):
            values = {"entropy": np.arange(10.0) + offset, "margin": np.arange(10.0) / 10 + offset}
            item = ScoredImage.build(
                image_id,
                0,
                values,
                classes,
                np.zeros((10, 2)),
                np.ones(10, np.bool_),
                ("superpixel", 16, 0.0),
                means={name: float(v.mean()) for name, v in values.items()},
                heatmap_key=key,
            )
            score_pool._write(db, mv_id, [item], "margin")
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert (
        statements
        == [
            "DELETE FROM image_scores",
            "DELETE FROM image_region_scores",
            "INSERT INTO image_region_scores",
            "INSERT INTO image_scores",
        ]
        * 2
    )
    with db.read_session() as s:
        [row] = s.scalars(
            select(ImageRegionScores).where(
                ImageRegionScores.model_version_id == mv_id, ImageRegionScores.image_id == image_id
            )
        ).all()
        images = s.execute(
            select(ImageScore.measure, ImageScore.mean, ImageScore.heatmap_key).where(
                ImageScore.model_version_id == mv_id, ImageScore.image_id == image_id
            )
        ).all()
    stored = ScoredImage.from_row(row)
    assert stored.measures == ["entropy", "margin"] and stored.n_regions == 10
    np.testing.assert_array_equal(stored.scores[0], np.arange(10.0) + 1.0)
    np.testing.assert_allclose(stored.scores[1], np.arange(10.0) / 10 + 1.0, rtol=1e-7)
    assert stored.classes.tolist() == classes.tolist()
    assert [(m, k) for m, _, k in images] == [("margin", "second")]
    assert images[0][1] == pytest.approx(1.45)


# ---------------------------------------------------------------------------------------------
# End to end: a lease on another project while a big image is scored in a worker.


def big_image_png(side: int) -> bytes:
    """A grey image with structure for SLIC: two sinusoids, darker on a checkerboard of
    200-px squares. Smooth, so its PNG stays a few MB."""
    y, x = np.mgrid[0:side, 0:side].astype(np.float32)
    img = (127 + 60 * np.sin(x / 37.0) + 60 * np.cos(y / 23.0)).astype(np.uint8)
    img[(x // 200 + y // 200) % 2 == 0] //= 2
    return png_bytes(img)


class LeaseLoop:
    """Lease and release tasks of one project over HTTP, timing each lease."""

    def __init__(self, client: httpx.Client, project_id: int) -> None:
        self.client = client
        self.project_id = project_id
        self.seconds: list[float] = []
        self.statuses: list[int] = []
        self.phases: list[str] = []

    def once(self, phase: str = "") -> None:
        t0 = time.perf_counter()
        r = self.client.post(f"/projects/{self.project_id}/tasks/next")
        self.seconds.append(time.perf_counter() - t0)
        self.phases.append(phase)
        self.statuses.append(r.status_code)
        if r.status_code == 200:
            released = self.client.post(f"/tasks/{r.json()['task']['id']}/release")
            self.statuses.append(released.status_code)

    def p99(self) -> float:
        return float(np.percentile(self.seconds, 99))

    def slowest(self, n: int = 8) -> str:
        """The ``n`` slowest leases with the job's message when each was sent."""
        order = np.argsort(self.seconds)[::-1][:n]
        return ", ".join(f"{self.seconds[i] * 1000:.0f} ms ({self.phases[i]})" for i in order)


@pytest.mark.slow
def test_a_lease_on_another_project_stays_fast_while_a_big_image_is_scored(
    embedded: Stack, tmp_path: Path
) -> None:
    check_leases_while_scoring(embedded, tmp_path, BIG_SIDE)


def _untrained(stack: Stack, project_id: int) -> int:
    """The smallest UNet (depth 1, 4 channels, one softmax), active: the job's time is SLIC,
    pooling and writing."""
    return untrained_version(stack, project_id, in_channels=1, n_classes=2, depth=1, activate=True)


def check_leases_while_scoring(embedded: Stack, tmp_path: Path, side: int) -> None:
    """While a worker scores a side² superpixel image (SLIC, pooling, ~140k regions' scores),
    leases on another project answer 200 every time and their p99 stays below
    ``LEASE_SLACK_S`` + the p99 of the same loop without scoring (see LEASE_SLACK_S). Before
    issue 14 the job held SQLite's write lock through SLIC and the row insert: leases waited
    the 30 s busy timeout and failed with 503 "database is locked"."""
    with embedded.client(embedded.admin_token) as admin:
        settings = {"region_kind": "superpixel", "region_size": REGION_SIZE}
        big = make_project(admin, n_classes=2, **settings)["id"]
        r = upload(admin, big, ("big.png", big_image_png(side)))
        assert r.status_code == 201, r.text
        image_id = r.json()["data"][0]["image"]["id"]
        mv_id = _untrained(embedded, big)
        other = grid_project(admin, batch_size=24)["id"]  # 64x96 px: 24 tiles of 16 px
        assert upload(admin, other, ("small.png", image_bytes(64, 96, seed=14))).status_code == 201
        build_queue_inline(embedded, other)
        uid, token = make_user(admin, "annotator")
        assert admin.post(f"/projects/{other}/members", json={"user_id": uid}).status_code == 204

        worker = start_worker(embedded, tmp_path / "w.log", "dblocks")
        try:
            wait_worker_ready(worker, tmp_path / "w.log")
            with embedded.client(token) as annotator:
                baseline = LeaseLoop(annotator, other)
                for _ in range(BASELINE_LEASES):
                    baseline.once()
                job = admin.post(f"/projects/{big}/score", json={}).json()
                loaded = LeaseLoop(annotator, other)
                states: set[str] = set()
                state = job
                deadline = time.monotonic() + 900  # a bound on a stuck job, not a wait
                while time.monotonic() < deadline:
                    loaded.once(f"{state['state']}: {state['message']}")
                    state = admin.get(f"/jobs/{job['id']}").json()
                    states.add(state["state"])
                    if state["state"] in ("succeeded", "failed"):
                        break
        finally:
            stop_process(worker)
        log = (tmp_path / "w.log").read_text()

    assert state["state"] == "succeeded", f"{state}\n{log[-3000:]}"
    assert state["attempts"] == 1, state
    assert "running" in states  # leases ran while the job did
    assert "heartbeat for job" not in log
    assert set(baseline.statuses) == {200} and set(loaded.statuses) == {200}, sorted(
        set(loaded.statuses)
    )
    bound = LEASE_SLACK_S + baseline.p99()
    assert loaded.p99() < bound, (
        f"lease p99 {loaded.p99() * 1000:.0f} ms while scoring (max "
        f"{max(loaded.seconds) * 1000:.0f} ms, {len(loaded.seconds)} leases) >= "
        f"{bound * 1000:.0f} ms = {LEASE_SLACK_S * 1000:.0f} ms + baseline p99; slowest: "
        f"{loaded.slowest()}"
    )
    # The job did its whole work: one row holding every region's 5 softmax measures.
    with _db(embedded).read_session() as s:
        n_regions = s.scalar(select(RegionSet.n_regions).where(RegionSet.image_id == image_id))
        rows = s.execute(
            select(
                ImageRegionScores.n_regions, ImageRegionScores.measures, ImageRegionScores.scores
            ).where(
                ImageRegionScores.model_version_id == mv_id, ImageRegionScores.image_id == image_id
            )
        ).all()
    assert n_regions is not None and n_regions > 1000
    assert len(rows) == 1 and rows[0][0] == n_regions and len(rows[0][1]) == 5
    assert len(rows[0][2]) == 5 * n_regions * 4  # float32
    print(
        f"lease p99: baseline {baseline.p99() * 1000:.1f} ms ({len(baseline.seconds)} leases), "
        f"while scoring {loaded.p99() * 1000:.1f} ms ({len(loaded.seconds)} leases, max "
        f"{max(loaded.seconds) * 1000:.1f} ms); slowest: {loaded.slowest()}"
    )
