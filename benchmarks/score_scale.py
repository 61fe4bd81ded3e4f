"""Scores that scale: score_pool + build_queue on a pool of small synthetic images, PostgreSQL,
the shipped design beside the old one in the same run.

Usage::

    python benchmarks/score_scale.py [--sizes 10000,100000] [--side 32] [--tile 8]
        [--chunk 64] [--batch 20] [--measures-images 2000]
        [--blobs /dev/shm] [--pg postgresql://postgres@127.0.0.1:5432/postgres]

For each pool size N, in a throw-away database (``activeseg_bench_scores``, migrated with
Alembic) and blob folder (under ``--blobs``, tmpfs by default: the blob store fsyncs every
put, the same heatmap blob per image in both designs, and on this machine's disk those fsyncs
alone would take most of the run): N ``side`` x ``side`` grey images (2,000 distinct random
pixel arrays, reused beyond; grid tiles of ``tile``: 16 regions each at the defaults),
their grid region maps (one content-addressed blob), a project (power sampling, cap 3 per
image, ``batch`` regions a round, 10% controls) and an active model version. Then:

1. **new score pass**: the real ``score_pool`` job through the job runner (an inline
   dispatcher, no broker), fanned out into children of ``chunk`` images. The model's
   prediction is replaced by *stored synthetic probabilities*: a softmax of logits made from
   each image's own pixels (a torch forward pass would dominate the time and is the same in
   both designs). Everything after it is the shipped code: the five softmax measures, pooling
   over the region map, the heatmap blob, one ``image_region_scores`` row and one
   ``image_scores`` row per image, and each chunk's ``score_candidates`` row.
2. **new build_queue**: the real job in a child process (a fresh interpreter, so its peak RSS
   is its own): merges the chunks' candidates. Reported: seconds of the job, the child's peak
   RSS (``VmHWM``) and that peak minus the RSS before the job ran (imports, connection).
   The full computation over every score row (``plan_full``, the fallback) is timed too.
3. **old score pass**: the same job with its writes replaced by the old ones (reimplemented
   here as they were: per image, delete the earlier ``image_scores`` rows, delete earlier
   region rows 1,000 at a time, insert one ``region_scores`` row per (measure, region) with the
   old driver-level executemany INSERT in transactions of 1,000 rows, insert one
   ``image_scores`` row per measure), into copies of the old tables made by this script
   (``old_region_scores``, ``old_image_scores``, the old columns, unique constraints and
   index); no candidates.
4. **old build_queue**: the old read loop in a child process: every row of one measure into a
   Python dict, then for every pool image its region map (``ensure_region_map``: a query
   each) and its mask, the candidate lists, and ``plan_round``'s draws. It does not write the
   round (the new job's insert of ``batch`` tasks is a few milliseconds).

Rows and bytes per image: rows of the score tables / N; bytes = ``pg_total_relation_size``
(table, TOAST and indexes) / N after ``VACUUM ANALYZE``. Heatmap blobs are the same in both
designs and reported apart. ``--measures-images`` adds a small pool scored by an ensemble
(S = 4 samples: 10 measures) to show rows per image do not grow with the measures.
Only the smallest size of ``--sizes`` is scored for real (both designs): each larger pool is
the same database extended with more images whose score rows are the scored images' rows
replicated under the new ids by COPY, each chunk's candidates computed by the shipped
functions, and the old rows copied from them (the same values): what score_pool would have
written, without an hour of scoring (on this shared 2-core machine a pass costs 10-30 ms per
image, mostly the heatmap blob and pooling, the same in both designs). The rounds a build
writes are deleted after it, so every build is a first round.

Output: markdown on stdout (progress on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, select, text  # noqa: E402

from activeseg.core.db import Database  # noqa: E402
from activeseg.core.imaging import encode_png  # noqa: E402
from activeseg.core.migrate import upgrade  # noqa: E402
from activeseg.core.project_config import ClassDef, ProjectSettings  # noqa: E402
from activeseg.core.services import auth  # noqa: E402
from activeseg.core.services.projects import create_project  # noqa: E402
from activeseg.core.services.regions import compute_region_map, encode_region_map  # noqa: E402
from activeseg.core.settings import Settings  # noqa: E402
from activeseg.core.storage import open_store  # noqa: E402
from activeseg.core.tables import (  # noqa: E402
    Image,
    ModelState,
    ModelVersion,
    Project,
    RegionSet,
)

DBNAME = "activeseg_bench_scores"
DISTINCT_IMAGES = 2000  # distinct pixel arrays, reused by the rows beyond
N_CLASSES = 3
OLD_DDL = [
    """CREATE TABLE old_region_scores (
        id BIGSERIAL PRIMARY KEY,
        model_version_id INTEGER NOT NULL REFERENCES model_versions(id) ON DELETE CASCADE,
        measure VARCHAR(40) NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        region INTEGER NOT NULL,
        value FLOAT NOT NULL,
        predicted_class INTEGER NOT NULL,
        CONSTRAINT uq_old_region_scores UNIQUE (model_version_id, measure, image_id, region))""",
    "CREATE INDEX ix_old_region_scores_image_id ON old_region_scores (image_id)",
    """CREATE TABLE old_image_scores (
        id SERIAL PRIMARY KEY,
        model_version_id INTEGER NOT NULL REFERENCES model_versions(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        measure VARCHAR(40) NOT NULL,
        mean FLOAT NOT NULL,
        heatmap_key VARCHAR(200) NOT NULL,
        prediction_key VARCHAR(200),
        CONSTRAINT uq_old_image_scores UNIQUE (model_version_id, image_id, measure))""",
    "CREATE INDEX ix_old_image_scores_image_id ON old_image_scores (image_id)",
]
NEW_TABLES = ("image_region_scores", "image_scores", "score_candidates")
OLD_TABLES = ("old_region_scores", "old_image_scores")
OLD_ROWS_PER_TRANSACTION = 1_000


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the stand-in for the model ---------------------------------------------------------------


class StoredProbabilities:
    """A predictor whose probabilities are a softmax of logits made from each image's pixels
    (``n_samples`` of them, for the ensemble measures): deterministic, different per image,
    and cheap, so that the benchmark measures what happens after prediction."""

    def __init__(self, n_samples: int = 1) -> None:
        self.n_samples = n_samples
        self.temperature = None

    def predict_parts(self, images: Iterable[np.ndarray]) -> Iterator[Any]:
        for img in images:
            x = np.asarray(img, np.float32)
            if x.ndim == 3:
                x = x.mean(axis=2)
            x = x / 255.0
            samples = []
            for s in range(self.n_samples):
                logits = np.stack([4 * x, 4 * (1 - x), 3 * np.sin(7 * x + s)])
                e = np.exp(logits - logits.max(axis=0))
                samples.append(e / e.sum(axis=0))
            probs = np.stack(samples).astype(np.float32)  # [S, C, H, W]
            h, w = x.shape
            yield (h, w), iter([((slice(0, h), slice(0, w)), probs)])


_SAMPLES = [1]


def use_stored_probabilities(n_samples: int) -> None:
    from activeseg.jobs import score_pool

    _SAMPLES[0] = n_samples
    score_pool.load_predictor = lambda *a, **k: StoredProbabilities(n_samples)  # type: ignore[assignment]


# --- setup -------------------------------------------------------------------------------------


@dataclass
class Env:
    url: str
    settings: Settings
    db: Database
    pid: int
    mv_id: int
    n: int


def fresh_database(admin_dsn: str, name: str) -> str:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + f"/{name}"


def make_settings(url: str, data_dir: Path) -> Settings:
    return Settings(
        environment="test",
        data_dir=data_dir,
        database_url=url,
        broker_url="filesystem://",
        storage_url=f"file://{data_dir / 'blobs'}",
    )


def setup(args: argparse.Namespace, n: int, data_dir: Path) -> Env:
    dsn = fresh_database(args.pg, DBNAME)
    url = dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    upgrade(url)
    settings = make_settings(url, data_dir)
    db = Database(settings)
    with db.session() as s:
        owner = auth.create_user(s, "bench-owner", "admin")
        project = create_project(
            s,
            owner,
            "bench",
            [ClassDef(id=i, name=f"c{i}") for i in range(N_CLASSES)],
            settings=ProjectSettings(
                region_kind="grid",
                region_size=args.tile,
                batch_size=args.batch,
                per_image_cap=3,
                control_fraction=0.1,
                measure="entropy",
                seed=1,
            ),
        )
        pid = project.id
        mv = ModelVersion(
            project_id=pid,
            version=1,
            state=ModelState.ready.value,
            config={"method": "single", "n_classes": N_CLASSES},
            member_keys=[],
        )
        s.add(mv)
        s.flush()
        project.active_model_id = mv.id
        mv_id = mv.id
        for ddl in OLD_DDL:
            s.execute(text(ddl))
    env = Env(url, settings, db, pid, mv_id, 0)
    add_images(args, env, n)
    return env


def add_images(args: argparse.Namespace, env: Env, n: int) -> list[int]:
    """``n`` more pool images (and their region-map rows); returns their ids."""
    store = open_store(env.settings.storage_url)
    rng = np.random.default_rng(env.n)
    side = args.side
    region_key = store.put(
        encode_region_map(compute_region_map(np.zeros((side, side), np.uint8), "grid", args.tile))
    )
    n_regions = (side // args.tile) ** 2
    t0 = time.perf_counter()
    keys = [
        store.put(encode_png(rng.integers(0, 256, (side, side), dtype=np.uint8)))
        for _ in range(min(n, DISTINCT_IMAGES))
    ]
    added: list[int] = []
    for start in range(env.n, env.n + n, 5000):
        rows = [
            {
                "project_id": env.pid,
                "sha256": hashlib.sha256(f"bench-{i}".encode()).hexdigest(),
                "blob_key": keys[i % len(keys)],
                "filename": f"{i}.png",
                "format": "png",
                "width": side,
                "height": side,
                "channels": 1,
                "size_bytes": side * side,
            }
            for i in range(start, min(env.n + n, start + 5000))
        ]
        with env.db.session() as s:
            ids = list(s.scalars(insert(Image).returning(Image.id), rows))
            maps = [
                {
                    "image_id": i,
                    "kind": "grid",
                    "size": args.tile,
                    "sigma": 0.0,
                    "n_regions": n_regions,
                    "blob_key": region_key,
                }
                for i in ids
            ]
            s.execute(insert(RegionSet), maps)
        added += ids
    env.n += n
    log(f"setup: {n:,} images in {time.perf_counter() - t0:.1f} s (pool {env.n:,})")
    return added


def replicate_scores(env: Env, new_ids: list[int], chunk: int) -> None:
    """What score_pool would write for ``new_ids``, from rows already scored: image
    ``new_ids[k]`` gets the scores of the ``k % scored``-th scored image (same values, its
    own id), by COPY; then each chunk of ``chunk`` images its candidates, computed and
    written by the shipped functions (group_candidates, write_candidates)."""
    from activeseg.core.services.projects import project_settings
    from activeseg.core.services.scores import (
        ChunkCandidates,
        QueueParams,
        ScoredImage,
        group_candidates,
        write_candidates,
    )
    from activeseg.core.tables import ImageRegionScores, ImageScore

    with env.db.read_session() as s:
        params = QueueParams.from_settings(project_settings(s.get(Project, env.pid)))  # type: ignore[arg-type]
        sources = list(
            s.scalars(
                select(ImageRegionScores)
                .where(ImageRegionScores.model_version_id == env.mv_id)
                .order_by(ImageRegionScores.image_id)
            )
        )
        shown = dict(
            s.execute(
                select(ImageScore.image_id, ImageScore.measure).where(
                    ImageScore.model_version_id == env.mv_id
                )
            ).all()
        )
        heat = dict(
            s.execute(
                select(ImageScore.image_id, ImageScore.heatmap_key).where(
                    ImageScore.model_version_id == env.mv_id
                )
            ).all()
        )
    columns = [
        "model_version_id",
        "image_id",
        "region_kind",
        "region_size",
        "region_sigma",
        "labels_revision",
        "n_regions",
        "measures",
        "means",
        "scores",
        "classes",
        "centroids",
        "open_regions",
        "created_at",
    ]
    now = time.strftime("%Y-%m-%d %H:%M:%S+00", time.gmtime())
    t0 = time.perf_counter()
    with psycopg.connect(env.url.replace("+psycopg", "")) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY image_region_scores ({', '.join(columns)}) FROM STDIN") as copy:
            for k, image_id in enumerate(new_ids):
                src = sources[k % len(sources)]
                copy.write_row(
                    (
                        env.mv_id,
                        image_id,
                        src.region_kind,
                        src.region_size,
                        src.region_sigma,
                        src.labels_revision,
                        src.n_regions,
                        json.dumps(src.measures),
                        json.dumps(src.means),
                        src.scores,
                        src.classes,
                        src.centroids,
                        src.open_regions,
                        now,
                    )
                )
        with cur.copy(
            "COPY image_scores (model_version_id, image_id, measure, mean, heatmap_key, "
            "prediction_key) FROM STDIN"
        ) as copy:
            for k, image_id in enumerate(new_ids):
                src = sources[k % len(sources)]
                name = shown[src.image_id]
                key = heat[src.image_id]
                copy.write_row((env.mv_id, image_id, name, src.means[name], key, key))
        conn.commit()
    for start in range(0, len(new_ids), chunk):
        part = new_ids[start : start + chunk]
        items = []
        for k in range(start, start + len(part)):
            item = ScoredImage.from_row(sources[k % len(sources)])
            item.image_id = new_ids[k]
            items.append(item)
        offers = ChunkCandidates.merge(params, [group_candidates(env.mv_id, params, items)])
        write_candidates(env.db, env.mv_id, part, len(part), params, offers)
    log(f"replicated {len(new_ids):,} images' scores in {time.perf_counter() - t0:.1f} s")


def reset_rounds(env: Env) -> None:
    """Forget the rounds a build wrote, so the next build is round 1 again."""
    with env.db.session() as s:
        s.execute(text("DELETE FROM tasks WHERE project_id = :p"), {"p": env.pid})
        s.execute(text("DELETE FROM rounds WHERE project_id = :p"), {"p": env.pid})


# --- the score passes ----------------------------------------------------------------------


def run_score_pass(env: Env, chunk: int) -> float:
    """Seconds of one whole score_pool job (parent and children), inline."""
    from activeseg.core.services.jobs import request_job
    from activeseg.jobs.registry import inline_dispatcher

    store = open_store(env.settings.storage_url)
    with env.db.session() as s:
        job, _ = request_job(
            s,
            project_id=env.pid,
            kind="score_pool",
            params={"model_version_id": env.mv_id, "chunk_images": chunk},
            request_id=f"bench-{time.time_ns()}",
        )
        job_id = int(job.id)
    started = time.perf_counter()
    inline_dispatcher(env.db, store, env.settings)(job_id)
    return time.perf_counter() - started


def old_write(db: Database, mv_id: int, items: list[Any], shown: str) -> None:
    """The old writes of each image (as score_pool wrote them before issue 17)."""
    del shown
    for it in items:
        with db.session() as s:
            s.execute(
                text("DELETE FROM old_image_scores WHERE model_version_id = :m AND image_id = :i"),
                {"m": mv_id, "i": it.image_id},
            )
        while True:
            with db.session() as s:
                res = s.execute(
                    text(
                        "DELETE FROM old_region_scores WHERE id IN (SELECT id FROM "
                        "old_region_scores WHERE model_version_id = :m AND image_id = :i "
                        "LIMIT :n)"
                    ),
                    {"m": mv_id, "i": it.image_id, "n": OLD_ROWS_PER_TRANSACTION},
                )
            if res.rowcount < OLD_ROWS_PER_TRANSACTION:  # type: ignore[attr-defined]
                break
        classes = it.classes.tolist()
        rows = [
            (mv_id, name, it.image_id, region, value, cls)
            for m, name in enumerate(it.measures)
            for region, (value, cls) in enumerate(
                zip(it.scores[m].astype(np.float64).tolist(), classes, strict=True)
            )
        ]
        sql = (
            "INSERT INTO old_region_scores (model_version_id, measure, image_id, region, value, "
            "predicted_class) VALUES (%s, %s, %s, %s, %s, %s)"
        )
        for start in range(0, len(rows), OLD_ROWS_PER_TRANSACTION):
            with db.session() as s:
                s.connection().exec_driver_sql(sql, rows[start : start + OLD_ROWS_PER_TRANSACTION])
        with db.session() as s:
            s.execute(
                text(
                    "INSERT INTO old_image_scores (model_version_id, image_id, measure, mean, "
                    "heatmap_key, prediction_key) VALUES (:m, :i, :measure, :mean, :k, :k)"
                ),
                [
                    {
                        "m": mv_id,
                        "i": it.image_id,
                        "measure": name,
                        "mean": float(it.means[name]),
                        "k": it.heatmap_key,
                    }
                    for name in it.measures
                ],
            )


def restore_score_pool() -> None:
    from importlib import reload

    from activeseg.jobs import score_pool

    reload(score_pool)
    use_stored_probabilities(_SAMPLES[0])


def use_old_writes() -> None:
    """score_pool with the old writes and no candidates."""
    from activeseg.jobs import score_pool

    class NoCandidates(score_pool.QueueParams):  # type: ignore[misc, name-defined]
        @property
        def mergeable(self) -> bool:
            return False

    score_pool._write = old_write  # type: ignore[assignment]
    score_pool.forget_candidates = lambda *a, **k: None  # type: ignore[assignment]
    score_pool.QueueParams = NoCandidates  # type: ignore[misc]


# --- the queue builders (child processes) ------------------------------------------------------


def rss_mib() -> float:
    """Peak resident set of this process image (``VmHWM``: ``ru_maxrss`` would carry the
    parent's peak over the exec that started this child)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_new_build(env_args: dict[str, Any]) -> dict[str, Any]:
    at_start = rss_mib()
    from activeseg.core.services.jobs import request_job
    from activeseg.jobs.build_queue import build_queue
    from activeseg.jobs.runner import run_job

    settings = make_settings(env_args["url"], Path(env_args["data"]))
    db, store = Database(settings), open_store(settings.storage_url)
    with db.session() as s:
        job, _ = request_job(s, project_id=env_args["pid"], kind="build_queue", params={})
        job_id = int(job.id)
        s.execute(select(1))
    before = rss_mib()
    started = time.perf_counter()
    result = run_job(db, store, settings, job_id, build_queue, lambda _: True)
    seconds = time.perf_counter() - started
    assert result is not None
    return {
        "seconds": seconds,
        "peak_mib": rss_mib(),
        "before_mib": before,
        "at_start": at_start,
        "heavy": [m for m in ("torch", "celery", "matplotlib") if m in sys.modules],
        "path": result.get("path"),
        "tasks": result.get("tasks"),
        "chunks": result.get("chunks"),
        "candidates": result.get("candidates"),
    }


def child_full_plan(env_args: dict[str, Any]) -> dict[str, Any]:
    from activeseg.core.services.projects import project_settings
    from activeseg.core.services.scores import QueueParams, plan_full

    settings = make_settings(env_args["url"], Path(env_args["data"]))
    db, store = Database(settings), open_store(settings.storage_url)
    with db.session() as s:
        params = QueueParams.from_settings(project_settings(s.get(Project, env_args["pid"])))  # type: ignore[arg-type]
    before = rss_mib()
    started = time.perf_counter()
    plan = plan_full(db, store, env_args["mv"], params, {})
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mib": rss_mib(),
        "before_mib": before,
        "candidates": plan.candidates,
    }


def child_old_build(env_args: dict[str, Any]) -> dict[str, Any]:
    """The old build_queue read loop and plan (no round written)."""
    from activeseg.core.services.labels import read_mask, with_mask_key
    from activeseg.core.services.projects import project_settings
    from activeseg.core.services.regions import ensure_region_map, region_sigma
    from activeseg.core.tables import Split
    from activeseg.jobs.build_queue import plan_round
    from activeseg.uncertainty.pooling import labelled_fraction

    settings = make_settings(env_args["url"], Path(env_args["data"]))
    db, store = Database(settings), open_store(settings.storage_url)
    with db.session() as s:
        s.execute(select(1))
    before = rss_mib()
    started = time.perf_counter()
    with db.read_session() as s:
        project = s.get(Project, env_args["pid"])
        assert project is not None
        ps = project_settings(project)
        images = list(
            s.execute(
                with_mask_key(
                    select(Image)
                    .where(
                        Image.project_id == project.id,
                        Image.split == Split.pool.value,
                        Image.labelled_fraction < 1.0,
                    )
                    .order_by(Image.id)
                )
            ).all()
        )
    scores_by_image: dict[int, dict[int, tuple[float, int]]] = {}
    with db.read_session() as s:
        for image_id, region, value, cls in s.execute(
            text(
                "SELECT image_id, region, value, predicted_class FROM old_region_scores "
                "WHERE model_version_id = :m AND measure = :measure"
            ),
            {"m": env_args["mv"], "measure": ps.measure},
        ):
            scores_by_image.setdefault(image_id, {})[region] = (value, cls)
    sigma = region_sigma(ps.region_kind, ps.slic_sigma)
    cand_image, cand_region, cand_score, cand_class, centroids = [], [], [], [], []
    for image, mask_key in images:
        regions = ensure_region_map(db, store, image, ps.region_kind, ps.region_size, sigma)
        mask = read_mask(store, image, mask_key)
        frac = labelled_fraction(mask, regions.labels, regions.n_regions)
        scored = scores_by_image.get(image.id)
        if scored is None:
            continue
        cents = regions.centroids
        for r in range(regions.n_regions):
            if frac[r] >= 1.0:
                continue
            value, cls = scored.get(r, (np.nan, -1))
            if not np.isfinite(value):
                continue
            cand_image.append(image.id)
            cand_region.append(r)
            cand_score.append(value)
            cand_class.append(cls)
            centroids.append(cents[r])
    order, _ = plan_round(
        np.asarray(cand_score, np.float64),
        np.unique(np.asarray(cand_image), return_inverse=True)[1],
        np.asarray(centroids, np.float64),
        ps,
        ps.strategy,
        n_control=round(ps.batch_size * ps.control_fraction),
        rng=np.random.default_rng([ps.seed, 1]),
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "peak_mib": rss_mib(),
        "before_mib": before,
        "tasks": int(order.size),
        "candidates": len(cand_score),
    }


CHILDREN = {
    "new-build": child_new_build,
    "full-plan": child_full_plan,
    "old-build": child_old_build,
}


def in_child(kind: str, env: Env) -> dict[str, Any]:
    payload = json.dumps(
        {"url": env.url, "data": str(env.settings.data_dir), "pid": env.pid, "mv": env.mv_id}
    )
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, "--child-args", payload],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- sizes ---------------------------------------------------------------------------------


def table_figures(env: Env, tables: Iterable[str]) -> tuple[int, int]:
    """(rows, bytes) of ``tables`` (bytes: table, TOAST and indexes)."""
    rows = size = 0
    with psycopg.connect(env.url.replace("+psycopg", ""), autocommit=True) as conn:
        for table in tables:
            conn.execute(f"VACUUM ANALYZE {table}")
            rows += conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            size += conn.execute("SELECT pg_total_relation_size(%s)", (table,)).fetchone()[0]  # type: ignore[index]
    return rows, size


def heatmap_bytes(env: Env) -> float:
    """Mean bytes of a heatmap blob (one per scored image; replicated rows share them)."""
    store = open_store(env.settings.storage_url)
    with env.db.read_session() as s:
        keys = set(s.scalars(text("SELECT DISTINCT heatmap_key FROM image_scores")))
    return sum(len(store.get(k)) for k in keys) / max(len(keys), 1)


def copy_old_rows(env: Env, image_ids: list[int]) -> None:
    """The old design's rows of ``image_ids``' new rows (the same values), by COPY."""
    from activeseg.core.services.scores import ScoredImage
    from activeseg.core.tables import ImageRegionScores, ImageScore

    dsn = env.url.replace("+psycopg", "")
    with env.db.read_session() as s:
        heatmaps = dict(s.execute(select(ImageScore.image_id, ImageScore.heatmap_key)).all())
        rows = s.scalars(
            select(ImageRegionScores)
            .where(ImageRegionScores.image_id >= min(image_ids))
            .execution_options(yield_per=2000)
        )
        with psycopg.connect(dsn) as conn, conn.cursor() as cur:
            with cur.copy(
                "COPY old_region_scores (model_version_id, measure, image_id, region, value, "
                "predicted_class) FROM STDIN"
            ) as region_copy:
                images = []
                for row in rows:
                    it = ScoredImage.from_row(row)
                    images.append(it)
                    for m, name in enumerate(it.measures):
                        for region, (value, cls) in enumerate(
                            zip(it.scores[m].tolist(), it.classes.tolist(), strict=True)
                        ):
                            region_copy.write_row(
                                (row.model_version_id, name, it.image_id, region, value, cls)
                            )
            with cur.copy(
                "COPY old_image_scores (model_version_id, image_id, measure, mean, heatmap_key, "
                "prediction_key) FROM STDIN"
            ) as image_copy:
                for it in images:
                    key = heatmaps[it.image_id]
                    for name in it.measures:
                        image_copy.write_row(
                            (env.mv_id, it.image_id, name, it.means[name], key, key)
                        )
            conn.commit()


def measure_pool(env: Env, figures: dict[str, Any]) -> None:
    """Rows/bytes of both designs and the three builds at the current pool size."""
    n = env.n
    figures["new_rows"], figures["new_bytes"] = table_figures(env, NEW_TABLES)
    figures["old_rows"], figures["old_bytes"] = table_figures(env, OLD_TABLES)
    figures["heatmap_bytes"] = heatmap_bytes(env)
    log(f"N={n:,}: new build_queue")
    figures["new_build"] = in_child("new-build", env)
    log(f"new build: {json.dumps(figures['new_build'])}")
    reset_rounds(env)
    log(f"N={n:,}: full computation")
    figures["full"] = in_child("full-plan", env)
    log(f"N={n:,}: old build_queue")
    figures["old_build"] = in_child("old-build", env)


def run_main(args: argparse.Namespace, sizes: list[int], data_dir: Path) -> list[dict[str, Any]]:
    """The smallest pool scored for real by both designs; each larger one by extending it
    with replicated rows (``replicate_scores``; old rows by COPY)."""
    results = []
    env = setup(args, sizes[0], data_dir)
    use_stored_probabilities(1)
    log(f"N={env.n:,}: new score pass")
    new_s = run_score_pass(env, args.chunk)
    log(f"N={env.n:,}: new score pass {new_s:.1f} s; old score pass")
    use_old_writes()
    old_s = run_score_pass(env, args.chunk)
    restore_score_pool()
    log(f"N={env.n:,}: old score pass {old_s:.1f} s")
    figures: dict[str, Any] = {"n": env.n, "measures": 5, "new_s": new_s, "old_s": old_s}
    measure_pool(env, figures)
    results.append(figures)
    for n in sizes[1:]:
        added = add_images(args, env, n - env.n)
        replicate_scores(env, added, args.chunk)
        copy_old_rows(env, added)
        figures = {"n": env.n, "measures": 5, "new_s": None, "old_s": None}
        measure_pool(env, figures)
        results.append(figures)
    env.db.dispose()
    return results


def run_measures(args: argparse.Namespace, n: int, data_dir: Path) -> dict[str, Any]:
    """A small pool scored by an ensemble of 4 samples (10 measures), both designs."""
    env = setup(args, n, data_dir)
    use_stored_probabilities(4)
    log(f"N={n:,}, 10 measures: new score pass")
    new_s = run_score_pass(env, args.chunk)
    use_old_writes()
    log(f"N={n:,}, 10 measures: old score pass")
    old_s = run_score_pass(env, args.chunk)
    restore_score_pool()
    figures: dict[str, Any] = {"n": n, "measures": 10, "new_s": new_s, "old_s": old_s}
    figures["new_rows"], figures["new_bytes"] = table_figures(env, NEW_TABLES)
    figures["old_rows"], figures["old_bytes"] = table_figures(env, OLD_TABLES)
    figures["heatmap_bytes"] = heatmap_bytes(env)
    env.db.dispose()
    return figures


def report(
    args: argparse.Namespace,
    results: list[dict[str, Any]],
    measures: dict[str, Any] | None,
    total_s: float,
) -> None:
    with psycopg.connect(args.pg, autocommit=True) as conn:
        pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"PostgreSQL {pg_version}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"load average at the end {load}; images {args.side}x{args.side}, grid tiles of "
        f"{args.tile} ({(args.side // args.tile) ** 2} regions), chunks of {args.chunk} images, "
        f"batch {args.batch} (10% controls), cap 3, power sampling; prediction replaced by "
        f"stored synthetic probabilities; whole run {total_s / 60:.1f} min\n"
    )

    def mib(b: dict[str, Any]) -> str:
        return f"{b['peak_mib']:.0f} (+{b['peak_mib'] - b['before_mib']:.0f})"

    def per_s(n: int, seconds: float | None) -> str:
        if seconds is None:
            return "replicated (not run)"
        return f"{seconds:.1f} ({n / seconds:.0f}/s)"

    print("Score storage (5 softmax measures unless said):\n")
    print("| pool | measures | design | score pass s (images/s) | rows/image | bytes/image |")
    print("|---:|---:|---|---:|---:|---:|")
    for r in [*results, *([measures] if measures else [])]:
        n = r["n"]
        for design in ("new", "old"):
            print(
                f"| {n:,} | {r['measures']} | {design} | {per_s(n, r[design + '_s'])} | "
                f"{r[design + '_rows'] / n:.3f} | {r[design + '_bytes'] / n:,.0f} |"
            )
    print()
    print(
        "Queue builder (a child process; peak RSS (VmHWM) of the whole process, and + what "
        "the build added):\n"
    )
    print("| pool | builder | seconds | peak RSS MiB | read |")
    print("|---:|---|---:|---:|---|")
    for r in results:
        nb, fp, ob = r["new_build"], r["full"], r["old_build"]
        print(
            f"| {r['n']:,} | new build_queue job ({nb['path']}) | {nb['seconds']:.2f} | "
            f"{mib(nb)} | {nb['chunks']} chunk rows, {nb['candidates']:,} entries |"
        )
        print(
            f"| {r['n']:,} | new full computation (fallback) | {fp['seconds']:.2f} | {mib(fp)} | "
            f"every score row ({fp['candidates']:,} candidates) |"
        )
        print(
            f"| {r['n']:,} | old read loop | {ob['seconds']:.2f} | {mib(ob)} | every score row "
            f"of one measure, every image's region map and mask ({ob['candidates']:,} "
            "candidates) |"
        )
    print()
    for r in [*results, *([measures] if measures else [])]:
        print(
            f"- pool {r['n']:,}, {r['measures']} measures: heatmap blob "
            f"{r['heatmap_bytes']:,.0f} bytes/image (the same in both designs)"
        )
    if len(results) >= 2:
        a, b = results[0], results[-1]
        ratio = b["new_build"]["seconds"] / a["new_build"]["seconds"]
        print(
            f"- new build_queue: {b['n'] / a['n']:.0f}x the pool costs {ratio:.2f}x the time "
            f"({a['new_build']['seconds']:.2f} s -> {b['new_build']['seconds']:.2f} s)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="the first is scored for real")
    parser.add_argument("--side", type=int, default=32)
    parser.add_argument("--tile", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=64)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--measures-images", type=int, default=2000, help="0: skip")
    parser.add_argument("--blobs", default="/dev/shm", help="folder for the throw-away blobs")
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--child", choices=sorted(CHILDREN))
    parser.add_argument("--child-args")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](json.loads(args.child_args))))
        return
    started = time.perf_counter()
    sizes = sorted(int(x) for x in args.sizes.split(",") if x)
    with tempfile.TemporaryDirectory(prefix="activeseg-bench-scores-", dir=args.blobs) as tmp:
        results = run_main(args, sizes, Path(tmp) / "main")
    measures = None
    if args.measures_images:
        with tempfile.TemporaryDirectory(prefix="activeseg-bench-scores-", dir=args.blobs) as tmp:
            measures = run_measures(args, args.measures_images, Path(tmp) / "measures")
    report(args, results, measures, time.perf_counter() - started)
    with psycopg.connect(args.pg, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DBNAME}"')


if __name__ == "__main__":
    main()
