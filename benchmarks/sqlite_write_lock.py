"""How long another writer waits on embedded SQLite while a scoring job writes region scores.

Usage: python benchmarks/sqlite_write_lock.py [--regions 35000] [--quick] [--baseline-s 2]

SQLite has one write lock, and :meth:`activeseg.core.db.Database.session` takes it up front
(``BEGIN IMMEDIATE``). A scoring job writes one ``region_scores`` row per (measure, region):
a 36-Mpx image of ~35,000 superpixels and 5 measures is 175,000 rows. Written in one
transaction, that holds the lock for seconds, and every annotator's request that writes (a
lease, a submit) waits behind it. The shipped path,
:func:`activeseg.jobs.score_pool.write_image_scores`, writes ``SCORE_ROWS_PER_TRANSACTION``
rows per transaction and then leaves the lock free for as long as it held it. This script
shows what that buys, and why those rows go in as tuples through the driver's executemany.

In one process, on a throw-away data dir (schema by ``activeseg.core.migrate.upgrade``, with
a real user, project, images and model version made through the ORM, so foreign keys stay
on as in production):

1. a background thread commits a one-row ``UPDATE users`` every 10 ms and records each
   transaction's latency: the "other writer";
2. for each variant, the thread runs alone for a baseline window, then the job writes the
   scores of one image (R regions x 5 measures) while the thread keeps going; each variant
   writes a fresh image ("first write"), then the same image again ("rewrite": a redelivered
   job deletes the earlier rows first). Variants: the shipped code as it ships; the shipped
   code with ``SCORE_ROWS_PER_TRANSACTION`` set to all rows (restored after), which still
   writes one transaction per measure, as the shipped code never spans two; and one
   transaction for the whole image (delete and insert, driver executemany), as before the
   writes were chunked;
3. with the thread stopped, 5,000 rows inserted as ORM ``insert(RegionScore)`` of dicts
   against driver executemany of tuples, best of 3 each.

Output: markdown on stdout. Latencies are wall-clock and include the thread's own scheduling,
so a loaded machine raises the baseline too: compare rows with the baseline of the same run.
"Job write s" is the job's wall time, including the shipped path's pauses between chunks.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from sqlalchemy import delete, insert, update

from activeseg.core.db import Database
from activeseg.core.migrate import upgrade
from activeseg.core.settings import Settings
from activeseg.core.tables import Image, ModelVersion, Project, RegionScore, User
from activeseg.jobs import score_pool

MEASURES = ("entropy", "margin", "least_confidence", "bald", "variance")
WRITER_PERIOD_S = 0.010
BASELINE_S = 2.0
INSERT_ROWS = 5_000
INSERT_REPEATS = 3
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
    "INSERT INTO region_scores (model_version_id, measure, image_id, region, value, "
    "predicted_class) VALUES (?, ?, ?, ?, ?, ?)"
)


def image_scores(image_id: int, n_regions: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({measure: float64 [R] score}, int64 [R] predicted class)``, as pooling gives them."""
    rng = np.random.default_rng(image_id)
    values = {name: rng.random(n_regions) for name in MEASURES}
    return values, rng.integers(0, 4, n_regions)


def write_shipped(db: Database, mv_id: int, image_id: int, n_regions: int) -> float:
    """Seconds to write one image's scores through the shipped job code."""
    values, region_class = image_scores(image_id, n_regions)
    means = {name: float(v.mean()) for name, v in values.items()}
    started = time.perf_counter()
    score_pool.write_image_scores(db, mv_id, image_id, values, region_class, means, "bench/h")
    return time.perf_counter() - started


def write_one_transaction(db: Database, mv_id: int, image_id: int, n_regions: int) -> float:
    """Seconds to replace one image's region scores in a single transaction (delete, then
    insert every row), as before the writes were chunked. Rows are built outside it."""
    values, region_class = image_scores(image_id, n_regions)
    started = time.perf_counter()
    classes = region_class.tolist()
    rows = [
        (mv_id, name, image_id, region, value, cls)
        for name, pooled in values.items()
        for region, (value, cls) in enumerate(zip(pooled.tolist(), classes, strict=True))
    ]
    with db.session() as s:
        s.execute(
            delete(RegionScore).where(
                RegionScore.model_version_id == mv_id, RegionScore.image_id == image_id
            )
        )
        s.connection().exec_driver_sql(INSERT_SQL, rows)
    return time.perf_counter() - started


@contextmanager
def rows_per_transaction(rows: int) -> Iterator[None]:
    """Set the shipped module constant for a while, as a deployment could; restored after."""
    shipped = score_pool.SCORE_ROWS_PER_TRANSACTION
    score_pool.SCORE_ROWS_PER_TRANSACTION = rows
    try:
        yield
    finally:
        score_pool.SCORE_ROWS_PER_TRANSACTION = shipped


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


def lock_variants(n_regions: int) -> list[tuple[str, int, WriteFn]]:
    """(label, ``SCORE_ROWS_PER_TRANSACTION``, write function) of each variant. The shipped
    path never lets a transaction span two measures, so the constant set to all rows gives
    one transaction per measure (and one for the whole delete); the last variant is truly
    one transaction for the image."""
    shipped = score_pool.SCORE_ROWS_PER_TRANSACTION
    all_rows = n_regions * len(MEASURES)
    return [
        (f"shipped, {shipped:,} rows per transaction", shipped, write_shipped),
        (
            f"shipped, constant = {all_rows:,}: one transaction per measure",
            all_rows,
            write_shipped,
        ),
        ("one transaction per image (as before chunking)", shipped, write_one_transaction),
    ]


def lock_results(db: Database, fixture: Fixture, n_regions: int, baseline_s: float) -> list[Result]:
    """Each variant writes a fresh image, then the same image again (a redelivered job).
    The last image of the fixture is left to :func:`insert_speed`."""
    variants = lock_variants(n_regions)
    writer = OtherWriter(db, fixture.user_id)
    writer.start()
    results = []
    try:
        for (label, rows, write), image_id in zip(variants, fixture.image_ids[:-1], strict=True):
            run = partial(write, db, fixture.mv_id, image_id, n_regions)
            with rows_per_transaction(rows):
                for kind in ("first write", "rewrite"):
                    results.append(measure_variant(writer, f"{label}, {kind}", run, baseline_s))
    finally:
        writer.stop.set()
        writer.join()
    return results


def insert_orm(db: Database, mv_id: int, image_id: int, measure: str) -> float:
    rows = [
        {
            "model_version_id": mv_id,
            "measure": measure,
            "image_id": image_id,
            "region": r,
            "value": 0.5,
            "predicted_class": 0,
        }
        for r in range(INSERT_ROWS)
    ]
    started = time.perf_counter()
    with db.session() as s:
        s.execute(insert(RegionScore), rows)
    return time.perf_counter() - started


def insert_driver(db: Database, mv_id: int, image_id: int, measure: str) -> float:
    rows = [(mv_id, measure, image_id, r, 0.5, 0) for r in range(INSERT_ROWS)]
    started = time.perf_counter()
    with db.session() as s:
        s.connection().exec_driver_sql(INSERT_SQL, rows)
    return time.perf_counter() - started


def insert_speed(db: Database, fixture: Fixture) -> tuple[float, float]:
    """Best of ``INSERT_REPEATS`` seconds for each insert path; a fresh measure name per
    insert keeps the rows unique."""
    mv_id, image_id = fixture.mv_id, fixture.image_ids[-1]
    orm = [insert_orm(db, mv_id, image_id, f"orm{i}") for i in range(INSERT_REPEATS)]
    driver = [insert_driver(db, mv_id, image_id, f"drv{i}") for i in range(INSERT_REPEATS)]
    return min(orm), min(driver)


def print_report(n_regions: int, results: list[Result], orm_s: float, driver_s: float) -> None:
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
    print(
        f"\nInsert of {INSERT_ROWS:,} region_scores rows, best of {INSERT_REPEATS}: "
        f"ORM insert(RegionScore) of dicts {orm_s * 1000:.0f} ms; "
        f"driver executemany of tuples {driver_s * 1000:.0f} ms "
        f"({orm_s / driver_s:.1f}x faster)"
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
            results = lock_results(db, fixture, n_regions, args.baseline_s)
            orm_s, driver_s = insert_speed(db, fixture)
        finally:
            db.dispose()
    print_report(n_regions, results, orm_s, driver_s)


if __name__ == "__main__":
    main()
