"""How long another writer waits on embedded SQLite while a scoring job writes region scores.

Usage: python benchmarks/sqlite_write_lock.py [--regions 35000] [--quick] [--baseline-s 2]

SQLite has one write lock, and :meth:`activeseg.core.db.Database.session` takes it up front
(``BEGIN IMMEDIATE``). Before issue 17 a scoring job wrote one ``region_scores`` row per
(measure, region): a 36-Mpx image of ~35,000 superpixels and 5 measures was 175,000 rows,
written 1,000 rows per transaction with a pause as long between them, because one
transaction held the lock for seconds. Since issue 17 the job writes one
``image_region_scores`` row per image (every measure's scores in one float32 array) and one
``image_scores`` row (:func:`activeseg.jobs.score_pool._write`). This script shows what
each costs the other writer.

In one process, on a throw-away data dir (schema by ``activeseg.core.migrate.upgrade``, with
a real user, project, images and model version made through the ORM, so foreign keys stay
on as in production; the old design's table is made by this script, ``old_region_scores``,
with the old columns, unique constraint and index):

1. a background thread commits a one-row ``UPDATE users`` every 10 ms and records each
   transaction's latency: the "other writer";
2. for each variant, the thread runs alone for a baseline window, then the job writes the
   scores of one image (R regions x 5 measures) while the thread keeps going; each variant
   writes a fresh image ("first write"), then the same image again ("rewrite": a redelivered
   job replaces the earlier rows). Variants: the shipped code (two rows); the old design's
   chunked writes (1,000 rows per transaction, driver executemany, a pause as long as each
   transaction after it); the old rows in one transaction per image.

Output: markdown on stdout. Latencies are wall-clock and include the thread's own scheduling,
so a loaded machine raises the baseline too: compare rows with the baseline of the same run.
"Job write s" is the job's wall time, including the pauses between chunks.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import text, update

from activeseg.core.db import Database
from activeseg.core.migrate import upgrade
from activeseg.core.services.scores import ScoredImage
from activeseg.core.settings import Settings
from activeseg.core.tables import Image, ModelVersion, Project, User
from activeseg.jobs import score_pool

MEASURES = ("entropy", "margin", "least_confidence", "bald", "variance")
WRITER_PERIOD_S = 0.010
BASELINE_S = 2.0
OLD_ROWS_PER_TRANSACTION = 1_000
OLD_DDL = (
    """CREATE TABLE old_region_scores (
        id INTEGER PRIMARY KEY,
        model_version_id INTEGER NOT NULL REFERENCES model_versions(id) ON DELETE CASCADE,
        measure VARCHAR(40) NOT NULL,
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        region INTEGER NOT NULL,
        value FLOAT NOT NULL,
        predicted_class INTEGER NOT NULL,
        CONSTRAINT uq_old_region_scores UNIQUE (model_version_id, measure, image_id, region))""",
    "CREATE INDEX ix_old_region_scores_image_id ON old_region_scores (image_id)",
)
WriteFn = Callable[[Database, int, int, int], float]


@dataclass(frozen=True)
class Fixture:
    """Ids of the rows that the region scores reference."""

    user_id: int
    mv_id: int
    image_ids: list[int]


@dataclass(frozen=True)
class Result:
    variant: str
    other_p99_ms: float
    other_max_ms: float
    baseline_p99_ms: float
    write_s: float


class OtherWriter(threading.Thread):
    """Commits a one-row write every ``WRITER_PERIOD_S`` and records ``(start, latency)``
    of each transaction, so a phase's samples are those that started inside its window."""

    def __init__(self, db: Database, user_id: int) -> None:
        super().__init__(daemon=True)
        self.db, self.user_id = db, user_id
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.recorded = threading.Condition()

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            with self.db.session() as s:
                s.execute(update(User).where(User.id == self.user_id).values(active=True))
            with self.recorded:
                self.samples.append((started, time.perf_counter() - started))
                self.recorded.notify_all()
            time.sleep(WRITER_PERIOD_S)

    def wait_past(self, moment: float) -> None:
        """Until a transaction that started after ``moment`` is recorded: then every one that
        overlaps the time before it is too (a wait still blocked at ``moment`` included)."""
        with self.recorded:
            self.recorded.wait_for(lambda: bool(self.samples) and self.samples[-1][0] > moment, 120)

    def latencies_ms(self, start: float, end: float, *, whole: bool) -> np.ndarray:
        """Latencies of the transactions inside ``[start, end)``: wholly inside when
        ``whole``, else any that overlap it (a wait that began just before counts too)."""
        samples = list(self.samples)
        if whole:
            picked = [lat for t, lat in samples if t >= start and t + lat <= end]
        else:
            picked = [lat for t, lat in samples if t < end and t + lat > start]
        return 1000 * np.array(picked)


def make_fixture(db: Database, n_images: int) -> Fixture:
    """A user, a project, ``n_images`` images and a model version, through the ORM."""
    with db.session() as s:
        user = User(name="bench", role="admin")
        project = Project(name="bench", classes=[], settings={})
        s.add_all([user, project])
        s.flush()
        images = [
            Image(
                project_id=project.id,
                sha256=f"{i:064d}",
                blob_key=f"bench/{i}",
                filename=f"{i}.png",
                format="png",
                width=6000,
                height=6000,
                channels=3,
                size_bytes=0,
            )
            for i in range(n_images)
        ]
        mv = ModelVersion(project_id=project.id, version=1, config={})
        s.add_all([*images, mv])
        s.flush()
        return Fixture(user.id, mv.id, [im.id for im in images])


INSERT_SQL = (
    "INSERT INTO old_region_scores (model_version_id, measure, image_id, region, value, "
    "predicted_class) VALUES (?, ?, ?, ?, ?, ?)"
)


def image_scores(image_id: int, n_regions: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({measure: float64 [R] score}, int64 [R] predicted class)``, as pooling gives them."""
    rng = np.random.default_rng(image_id)
    values = {name: rng.random(n_regions) for name in MEASURES}
    return values, rng.integers(0, 4, n_regions)


def write_shipped(db: Database, mv_id: int, image_id: int, n_regions: int) -> float:
    """Seconds to write one image's scores through the shipped job code (two rows)."""
    values, region_class = image_scores(image_id, n_regions)
    item = ScoredImage.build(
        image_id,
        0,
        values,
        region_class,
        np.zeros((n_regions, 2)),
        np.ones(n_regions, np.bool_),
        ("superpixel", 16, 0.0),
        means={name: float(v.mean()) for name, v in values.items()},
        heatmap_key="bench/h",
    )
    started = time.perf_counter()
    score_pool._write(db, mv_id, [item], "entropy")
    return time.perf_counter() - started


def _old_rows(mv_id: int, image_id: int, n_regions: int) -> list[tuple[Any, ...]]:
    values, region_class = image_scores(image_id, n_regions)
    classes = region_class.tolist()
    return [
        (mv_id, name, image_id, region, value, cls)
        for name, pooled in values.items()
        for region, (value, cls) in enumerate(zip(pooled.tolist(), classes, strict=True))
    ]


def write_old_chunked(db: Database, mv_id: int, image_id: int, n_regions: int) -> float:
    """Seconds of the old design's writes: earlier rows deleted 1,000 at a time, then the
    rows inserted 1,000 per transaction (never spanning two measures), each transaction
    followed by a pause as long (the old job left the lock free as long as it held it)."""
    started = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        with db.session() as s:
            res = s.execute(
                text(
                    "DELETE FROM old_region_scores WHERE id IN (SELECT id FROM old_region_scores "
                    "WHERE model_version_id = :m AND image_id = :i LIMIT :n)"
                ),
                {"m": mv_id, "i": image_id, "n": OLD_ROWS_PER_TRANSACTION},
            )
        time.sleep(time.perf_counter() - t0)
        if res.rowcount < OLD_ROWS_PER_TRANSACTION:
            break
    rows = _old_rows(mv_id, image_id, n_regions)
    for m in range(len(MEASURES)):
        measure = rows[m * n_regions : (m + 1) * n_regions]
        for start in range(0, n_regions, OLD_ROWS_PER_TRANSACTION):
            t0 = time.perf_counter()
            with db.session() as s:
                s.connection().exec_driver_sql(
                    INSERT_SQL, measure[start : start + OLD_ROWS_PER_TRANSACTION]
                )
            time.sleep(time.perf_counter() - t0)
    return time.perf_counter() - started


def write_one_transaction(db: Database, mv_id: int, image_id: int, n_regions: int) -> float:
    """Seconds to replace one image's old rows in a single transaction (delete, then insert
    every row), as before the old writes were chunked. Rows are built outside it."""
    rows = _old_rows(mv_id, image_id, n_regions)
    started = time.perf_counter()
    with db.session() as s:
        s.execute(
            text("DELETE FROM old_region_scores WHERE model_version_id = :m AND image_id = :i"),
            {"m": mv_id, "i": image_id},
        )
        s.connection().exec_driver_sql(INSERT_SQL, rows)
    return time.perf_counter() - started


def measure_variant(
    writer: OtherWriter, variant: str, write: Callable[[], float], baseline_s: float
) -> Result:
    """The other writer alone for ``baseline_s``, then while ``write`` runs."""
    base_start = time.perf_counter()
    time.sleep(baseline_s)
    base_end = time.perf_counter()
    write_s = write()
    write_end = time.perf_counter()
    writer.wait_past(write_end)
    during = writer.latencies_ms(base_end, write_end, whole=False)
    baseline = writer.latencies_ms(base_start, base_end, whole=True)
    return Result(
        variant,
        float(np.percentile(during, 99)),
        float(during.max()),
        float(np.percentile(baseline, 99)),
        write_s,
    )


def lock_variants(n_regions: int) -> list[tuple[str, WriteFn]]:
    """(label, write function) of each variant."""
    rows = n_regions * len(MEASURES)
    return [
        ("shipped: one image_region_scores row + one image_scores row", write_shipped),
        (
            f"old: {rows:,} region_scores rows, {OLD_ROWS_PER_TRANSACTION:,} per transaction",
            write_old_chunked,
        ),
        (f"old: {rows:,} region_scores rows in one transaction", write_one_transaction),
    ]


def lock_results(db: Database, fixture: Fixture, n_regions: int, baseline_s: float) -> list[Result]:
    """Each variant writes a fresh image, then the same image again (a redelivered job)."""
    variants = lock_variants(n_regions)
    writer = OtherWriter(db, fixture.user_id)
    writer.start()
    results = []
    try:
        for (label, write), image_id in zip(variants, fixture.image_ids, strict=False):
            run = partial(write, db, fixture.mv_id, image_id, n_regions)
            for kind in ("first write", "rewrite"):
                results.append(measure_variant(writer, f"{label}, {kind}", run, baseline_s))
    finally:
        writer.stop.set()
        writer.join()
    return results


def print_report(n_regions: int, results: list[Result]) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"SQLite {sqlite3.sqlite_version}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load}; {n_regions:,} regions x "
        f"{len(MEASURES)} measures = {n_regions * len(MEASURES):,} rows; other writer every "
        f"{WRITER_PERIOD_S * 1000:.0f} ms\n"
    )
    print("| writes | other-writer p99 ms | max ms | baseline p99 ms | job write s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r.variant} | {r.other_p99_ms:.1f} | {r.other_max_ms:.1f} | "
            f"{r.baseline_p99_ms:.1f} | {r.write_s:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--regions", type=int, default=35_000, help="regions per image")
    parser.add_argument("--quick", action="store_true", help="5,000 regions")
    parser.add_argument("--baseline-s", type=float, default=BASELINE_S)
    args = parser.parse_args()
    n_regions = 5_000 if args.quick else args.regions
    with tempfile.TemporaryDirectory(prefix="activeseg-bench-") as tmp:
        settings = Settings(data_dir=Path(tmp), database_url="", storage_url="")
        upgrade(settings.database_url)
        db = Database(settings)
        try:
            fixture = make_fixture(db, n_images=4)
            with db.session() as s:
                for ddl in OLD_DDL:
                    s.execute(text(ddl))
            results = lock_results(db, fixture, n_regions, args.baseline_s)
        finally:
            db.dispose()
    print_report(n_regions, results)


if __name__ == "__main__":
    main()
