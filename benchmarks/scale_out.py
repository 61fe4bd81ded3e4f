"""Scale-out: the same score_pool pass with 1 and with 2 Celery workers, images per second.

Usage::

    python benchmarks/scale_out.py [--images 2000] [--side 64] [--tile 16] [--chunk 64]
        [--repeats 2] [--workers 1,2] [--train-steps 30]
        [--broker redis://127.0.0.1:6379/12] [--blobs /dev/shm]
        [--pg postgresql://postgres@127.0.0.1:5432/postgres]

Setup, once: a throw-away PostgreSQL database (``activeseg_bench_scaleout``, dropped and made
again, migrated with Alembic; dropped at the end), a blob folder under ``--blobs`` (tmpfs by
default: the file store fsyncs every blob it writes, and on this machine's disk the heatmap
blobs' fsyncs would be what is measured), a project (grid tiles of ``tile``; the default model
settings: MC dropout, T = 10, depth 4, 16 channels), ``images`` distinct synthetic RGB images of
``side`` x ``side`` uploaded through the image service into the pool, their grid region maps
(``ensure_region_map``, so no pass computes them), and a model trained in this process for
``--train-steps`` steps on 8 synthetic images with full masks (the weights do not change what
a pass costs).

Then for each setting in the order 1, 2, 2, 1, 1, 2, ... (``--repeats`` passes of each):

1. start that many real workers, ``activeseg worker --concurrency 1`` (a Celery prefork worker
   of one process), with ``ACTIVESEG_TORCH_THREADS=1``, the Redis broker, this database and
   blob store, on their own queue; wait until each answers a Celery ping;
2. warm up: one-image ``score_pool`` jobs for a throw-away version until every worker has run
   one (Celery ``inspect stats``), so the pass does not include importing torch; that version
   and its blobs are deleted;
3. a fresh model version (a copy of the trained one: the same weights, no scores yet) is made
   active and one ``score_pool`` job is requested for the active version over the whole pool
   with ``chunk_images = --chunk`` (it fans out into child jobs, one per chunk), dispatched
   through the service's own dispatcher, and the jobs table polled until it is done;
4. the workers are stopped (SIGTERM to each pid, then wait); the version is deleted (its score
   rows go with it) and the blobs the pass wrote are removed, so every pass does the same work.

A pass's seconds run from the parent job's ``created_at`` to the last ``finished_at`` of it
and its children (both stamped by processes on this machine). ``busy`` is the sum of the
chunks' own ``seconds`` (from loading the model to the last write) over the pass's seconds
times the workers: how much of the pass the workers spent scoring. The load average before
each pass is printed: the machine is shared, and 2 workers need both cores.

Output: markdown on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DBNAME = "activeseg_bench_scaleout"
QUEUE = "activeseg-bench-scaleout"
N_CLASSES = 3
N_TRAIN = 8
UPLOAD_BATCH = 200
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
POLL_S = 0.05


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------


def synthetic(index: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A distinct RGB image ``[side, side, 3]`` (uint8) and its class mask: a noisy background
    (class 0) with a few bright discs (class 1) and dark squares (class 2)."""
    rng = np.random.default_rng(index)
    image = rng.normal(110, 20, (side, side, 3))
    mask = np.zeros((side, side), np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for _ in range(int(rng.integers(1, 4))):
        cy, cx = rng.integers(0, side, 2)
        r = int(rng.integers(side // 10, side // 4))
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        image[disc] += 80
        mask[disc] = 1
    for _ in range(int(rng.integers(1, 3))):
        y, x = rng.integers(0, side - side // 6, 2)
        w = int(rng.integers(side // 8, side // 4))
        image[y : y + w, x : x + w] -= 70
        mask[y : y + w, x : x + w] = 2
    return np.clip(image, 0, 255).astype(np.uint8), mask


# --- setup ---------------------------------------------------------------------------------


def fresh_database(admin_dsn: str, name: str) -> str:
    drop_database(admin_dsn, name)
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')


@dataclass
class Env:
    dsn: str  # psycopg
    pid: int
    image_ids: list[int]
    model_config: dict[str, Any]
    member_keys: list[str]
    keep_blobs: set[str]
    model_line: str
    versions: int = 0


def service_env(dsn: str, data_dir: Path, broker: str) -> dict[str, str]:
    """The ``ACTIVESEG_*`` variables of this process and of the workers: one configuration."""
    return {
        "ACTIVESEG_DATA_DIR": str(data_dir),
        "ACTIVESEG_DATABASE_URL": dsn.replace("postgresql://", "postgresql+psycopg://", 1),
        "ACTIVESEG_BROKER_URL": broker,
        "ACTIVESEG_QUEUE": QUEUE,
        "ACTIVESEG_STORAGE_URL": f"file://{data_dir / 'blobs'}",
        "ACTIVESEG_TORCH_THREADS": "1",
        "ACTIVESEG_DEVICE": "cpu",
        "ACTIVESEG_LOG_LEVEL": "WARNING",
    }


def setup(args: argparse.Namespace, dsn: str) -> Env:
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from activeseg.core.imaging import encode_png
    from activeseg.core.migrate import upgrade
    from activeseg.core.project_config import ClassDef, ModelSettings, ProjectSettings
    from activeseg.core.services import auth
    from activeseg.core.services.images import UploadedFile, upload_images
    from activeseg.core.services.models import model_config_for
    from activeseg.core.services.projects import create_project
    from activeseg.core.services.regions import ensure_region_map
    from activeseg.core.settings import get_settings
    from activeseg.core.tables import Image, Project
    from activeseg.models.checkpoint import state_to_bytes
    from activeseg.models.training import train
    from activeseg.worker import runtime

    t0 = time.perf_counter()
    settings = get_settings()
    upgrade(settings.database_url)
    db, store = runtime.database(), runtime.store()
    model = ModelSettings(steps=args.train_steps, batch_size=4, patch_size=args.side)
    with db.session() as s:
        owner = auth.create_user(s, "bench-owner", "admin")
        project = create_project(
            s,
            owner,
            "scale-out",
            [ClassDef(id=i, name=f"c{i}") for i in range(N_CLASSES)],
            settings=ProjectSettings(region_kind="grid", region_size=args.tile, model=model),
        )
        pid = project.id

    def the_project(s: Session) -> Project:
        found = s.get(Project, pid)
        assert found is not None
        return found

    for start in range(0, args.images, UPLOAD_BATCH):
        files = [
            UploadedFile(f"{i}.png", encode_png(synthetic(i, args.side)[0]))
            for i in range(start, min(start + UPLOAD_BATCH, args.images))
        ]
        with db.session() as s:
            results = upload_images(
                s,
                store,
                the_project(s),
                files,
                max_pixels=settings.max_image_pixels,
                max_files=settings.max_images_per_upload,
            )
            if any(r.duplicate for r in results):
                raise RuntimeError("synthetic images must be distinct")
    with db.read_session() as s:
        images = list(s.scalars(select(Image).where(Image.project_id == pid)))
        s.expunge_all()
    for im in images:
        ensure_region_map(db, store, im, "grid", args.tile)
    log(f"setup: {len(images):,} images and region maps in {time.perf_counter() - t0:.1f} s")

    t0 = time.perf_counter()
    pairs = [synthetic(i, args.side) for i in range(N_TRAIN)]
    with db.read_session() as s:
        config = model_config_for(the_project(s), 3, settings)
    result = train(config, [p[0] for p in pairs], [p[1] for p in pairs])
    keys = [store.put(state_to_bytes(state)) for state in result.states]
    log(f"setup: model trained ({args.train_steps} steps) in {time.perf_counter() - t0:.1f} s")
    line = (
        f"{config.method}, {config.mc_samples if config.method == 'mc_dropout' else ''} samples, "
        f"depth {config.depth}, {config.base_channels} channels"
    )
    return Env(
        dsn,
        pid,
        sorted(im.id for im in images),
        config.model_dump(),
        keys,
        set(store.keys()),
        line,
    )


def new_version(env: Env, active: bool) -> int:
    """A ready copy of the trained model (same weights, no scores), optionally made active."""
    from activeseg.core.tables import ModelState, ModelVersion, Project
    from activeseg.worker import runtime

    env.versions += 1
    with runtime.database().session() as s:
        mv = ModelVersion(
            project_id=env.pid,
            version=env.versions,
            state=ModelState.ready.value,
            config=env.model_config,
            member_keys=env.member_keys,
        )
        s.add(mv)
        s.flush()
        if active:
            project = s.get(Project, env.pid)
            assert project is not None
            project.active_model_id = mv.id
        return mv.id


def forget_version(env: Env, mv_id: int) -> None:
    """Delete the version (its scores go with it: ON DELETE CASCADE) and every blob written
    since setup (heatmaps; the store is content-addressed, so a later pass would skip them)."""
    from sqlalchemy import delete

    from activeseg.core.tables import ModelVersion
    from activeseg.worker import runtime

    with runtime.database().session() as s:
        s.execute(delete(ModelVersion).where(ModelVersion.id == mv_id))
    store = runtime.store()
    for key in set(store.keys()) - env.keep_blobs:
        store.delete(key)
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


# --- workers -------------------------------------------------------------------------------


@dataclass
class Workers:
    procs: list[subprocess.Popen[bytes]]
    nodes: list[str] = field(default_factory=list)  # Celery node names, in procs' order


def node_of(pid: int, names: list[str]) -> str | None:
    """``activeseg worker`` names its node ``activeseg-<pid>@<host>`` (pid kept across exec)."""
    prefix = f"activeseg-{pid}@"
    return next((n for n in names if n.startswith(prefix)), None)


@contextmanager
def workers(n: int, log_dir: Path, tag: str) -> Iterator[Workers]:
    """``n`` worker processes, each ready (answers a ping); stopped by pid on the way out."""
    from activeseg.worker.app import celery_app

    cmd = [sys.executable, "-m", "activeseg.cli", "worker", "--concurrency", "1",
           "--loglevel", "WARNING"]  # fmt: skip
    w = Workers([])
    logs = []
    try:
        for k in range(n):
            out = open(log_dir / f"worker-{tag}-{k}.log", "wb")  # noqa: SIM115 - closed below
            logs.append(out)
            w.procs.append(
                subprocess.Popen(cmd, cwd=REPO, env=os.environ.copy(), stdout=out, stderr=out)
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            for p in w.procs:
                if p.poll() is not None:
                    tail = (log_dir / f"worker-{tag}-{w.procs.index(p)}.log").read_text()[-3000:]
                    raise RuntimeError(f"worker {p.pid} exited with {p.returncode}:\n{tail}")
            names = [name for reply in celery_app.control.ping(timeout=0.5) for name in reply]
            found = [node_of(p.pid, names) for p in w.procs]
            if all(found):
                w.nodes = [f for f in found if f is not None]
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers not ready after {READY_TIMEOUT_S:.0f} s")
        yield w
    finally:
        for p in w.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in w.procs:
            try:
                p.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"worker {p.pid} still running {STOP_TIMEOUT_S:.0f} s after SIGTERM; killing")
                p.kill()
                p.wait()
        for out in logs:
            out.close()


def jobs_run(w: Workers) -> dict[str, int]:
    """Tasks each worker has received so far (Celery ``inspect stats``)."""
    from activeseg.worker.app import celery_app

    stats = celery_app.control.inspect(destination=w.nodes, timeout=2.0).stats() or {}
    return {node: sum((stats.get(node) or {}).get("total", {}).values()) for node in w.nodes}


def request(env: Env, params: dict[str, Any]) -> int:
    from activeseg.core.services.jobs import request_job
    from activeseg.worker import runtime
    from activeseg.worker.app import celery_app
    from activeseg.worker.dispatch import dispatch

    db = runtime.database()
    with db.session() as s:
        job, created = request_job(s, project_id=env.pid, kind="score_pool", params=params)
        job_id = job.id
    if not created or not dispatch(db, celery_app, job_id):
        raise RuntimeError(f"score_pool job {job_id} was not created and dispatched")
    return job_id


def wait_done(env: Env, job_ids: list[int], timeout_s: float) -> None:
    """Poll the jobs table until every job of ``job_ids`` has succeeded (a fanned-out parent
    succeeds when its last child does); raise if one failed."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(env.dsn, autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT id, state, error FROM jobs WHERE id = ANY(%s) OR parent_id = ANY(%s)",
                (job_ids, job_ids),
            ).fetchall()
            failed = [(i, e) for i, state, e in rows if state == "failed"]
            if failed:
                raise RuntimeError(f"jobs failed: {failed[:3]}")
            if all(state == "succeeded" for i, state, _ in rows if i in job_ids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"jobs {job_ids} not done after {timeout_s:.0f} s")
            time.sleep(POLL_S)


def warm_up(env: Env, w: Workers, timeout_s: float) -> None:
    """One-image score_pool jobs until every worker has run one (torch imported, the model
    code loaded), for a throw-away version forgotten afterwards."""
    mv = new_version(env, active=False)
    for attempt in range(5):
        ids = [
            request(env, {"model_version_id": mv, "image_ids": [env.image_ids[k]]})
            for k in range(attempt * 2 * len(w.nodes), (attempt + 1) * 2 * len(w.nodes))
        ]
        wait_done(env, ids, timeout_s)
        if all(jobs_run(w).values()):
            break
    else:
        raise RuntimeError("a worker took no warm-up job")
    forget_version(env, mv)


@dataclass
class Pass:
    workers: int
    load: tuple[float, float, float]
    seconds: float
    images: int
    chunks: int
    chunk_s: float  # the chunks' own seconds, summed
    per_worker: list[int]

    @property
    def busy(self) -> float:
        return self.chunk_s / (self.seconds * self.workers)

    @property
    def ms_per_image(self) -> float:
        return 1000 * self.chunk_s / self.images

    @property
    def rate(self) -> float:
        return self.images / self.seconds


def score_pass(env: Env, n_workers: int, chunk: int, log_dir: Path, tag: str) -> Pass:
    with workers(n_workers, log_dir, tag) as w:
        warm_up(env, w, timeout_s=600)
        before = jobs_run(w)
        mv = new_version(env, active=True)
        load = os.getloadavg()
        job_id = request(env, {"chunk_images": chunk})
        wait_done(env, [job_id], timeout_s=24 * 3600)
        after = jobs_run(w)
    with psycopg.connect(env.dsn) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(c.finished_at) - p.created_at), count(*), "
            "sum((c.result->>'images')::int), sum((c.result->>'seconds')::float) "
            "FROM jobs p JOIN jobs c ON c.parent_id = p.id WHERE p.id = %s GROUP BY p.id",
            (job_id,),
        ).fetchone()
    assert row is not None
    seconds, chunks, images, busy = float(row[0]), int(row[1]), int(row[2]), float(row[3])
    if images != len(env.image_ids):
        raise RuntimeError(f"the pass scored {images} images, not {len(env.image_ids)}")
    forget_version(env, mv)
    # The parent job counts once on the worker that ran it.
    per_worker = [after[n] - before[n] for n in w.nodes]
    return Pass(n_workers, load, seconds, images, chunks, busy, per_worker)


# --- report --------------------------------------------------------------------------------


def report(args: argparse.Namespace, env: Env, passes: list[Pass]) -> None:
    print("## Scale-out: one score_pool pass with 1 and with 2 Celery workers\n")
    print(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, PostgreSQL, Redis broker; workers: `activeseg worker "
        f"--concurrency 1`, ACTIVESEG_TORCH_THREADS=1.  "
    )
    print(
        f"Pool: {len(env.image_ids):,} synthetic {args.side}x{args.side} RGB images, grid tiles "
        f"of {args.tile} ({(args.side // args.tile) ** 2} regions each), chunks of {args.chunk} "
        f"images; model: {env.model_line}.\n"
    )
    print("| pass | workers | load avg before (1/5/15 min) | seconds | images/s | chunks per "
          "worker | busy | ms/image in a chunk |")  # fmt: skip
    print("|---:|---:|---|---:|---:|---|---:|---:|")
    for k, p in enumerate(passes, 1):
        load = " / ".join(f"{x:.2f}" for x in p.load)
        print(
            f"| {k} | {p.workers} | {load} | {p.seconds:.2f} | {p.rate:.1f} | "
            f"{' + '.join(map(str, p.per_worker))} | {100 * p.busy:.0f}% | "
            f"{p.ms_per_image:.0f} |"
        )
    print()
    print("| workers | images | chunks | seconds per pass | images/s (median) | ratio to 1 |")
    print("|---:|---:|---:|---|---:|---:|")
    medians: dict[int, float] = {}
    for n in sorted({p.workers for p in passes}):
        mine = [p for p in passes if p.workers == n]
        medians[n] = statistics.median(p.rate for p in mine)
        ratio = f"{medians[n] / medians[1]:.2f}x" if 1 in medians else "n/a"
        print(
            f"| {n} | {mine[0].images:,} | {mine[0].chunks} | "
            f"{', '.join(f'{p.seconds:.2f}' for p in mine)} | {medians[n]:.1f} | {ratio} |"
        )
    print(
        "\nSeconds: from the request of the parent job to the last job of the pass done "
        "(jobs table). Chunks per worker: Celery tasks each worker ran in the pass (the parent "
        "counts once). Busy: the chunks' own seconds over (seconds x workers). ms/image in a "
        "chunk: the chunks' own seconds per image; it grows when the workers share the CPUs "
        "with each other or with other load."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--side", type=int, default=64)
    parser.add_argument("--tile", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--blobs", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",")]
    if args.images <= args.chunk:
        raise SystemExit("--images must exceed --chunk, or the pass does not fan out")

    data_dir = Path(tempfile.mkdtemp(prefix="activeseg-scaleout-", dir=args.blobs))
    try:
        dsn = fresh_database(args.pg, DBNAME)
        # Set before any activeseg import reads the settings (the worker package builds its
        # Celery app from them when first imported): this process and the workers share them.
        os.environ.update(service_env(dsn, data_dir, args.broker))
        from activeseg.worker.app import celery_app

        celery_app.control.purge()  # messages left on this queue by an interrupted run
        env = setup(args, dsn)
        passes: list[Pass] = []
        for r in range(args.repeats):
            for n in counts if r % 2 == 0 else counts[::-1]:
                log(f"pass {len(passes) + 1}: {n} worker(s), load {os.getloadavg()}")
                p = score_pass(env, n, args.chunk, data_dir, f"{len(passes) + 1}")
                log(f"  {p.seconds:.2f} s, {p.rate:.1f} images/s, per worker {p.per_worker}")
                passes.append(p)
        report(args, env, passes)
    finally:
        from activeseg.worker import runtime

        if runtime.database.cache_info().currsize:
            runtime.database().engine.dispose()
        if not args.keep:
            drop_database(args.pg, DBNAME)
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
