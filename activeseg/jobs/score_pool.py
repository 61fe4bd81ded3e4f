"""score_pool: predict the unlabelled pool with one model version and score every region.

For each pool image: every uncertainty measure the model supports (softmax measures always;
ensemble measures when S > 1) from :func:`activeseg.models.scoring.score_images`, pooled over
the image's stored region map; one ``region_scores`` row per (version, measure, image,
region), one ``image_scores`` row per measure with a heatmap blob for display (its maps, the
predicted classes and the prediction's expected IoU: :func:`encode_heatmaps`). The predictor
applies the version's temperature, fitted on the val images before the version is stored (a
version trained without labelled val images has none: its probabilities are the raw softmax).
Large pools fan out into child jobs of ``chunk_images`` images each, so several workers share
them.

The job never holds the database while it works (see :mod:`activeseg.core.db`): rows are read
in short read sessions, prediction, SLIC and pooling run with no session open, and the scores
of an image are written in transactions of ``SCORE_ROWS_PER_TRANSACTION`` rows. An image's
``image_scores`` rows are written last: they mark its region scores complete.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.heatmaps import decode_heatmaps, encode_heatmaps
from activeseg.core.imaging import decode_image
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.models import load_predictor
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import ensure_region_map, region_count_warning
from activeseg.core.tables import Image, ImageScore, ModelVersion, Project, RegionScore, Split
from activeseg.jobs.runner import JobContext, Waiting
from activeseg.models.scoring import ImageScore as Scored
from activeseg.models.scoring import score_images
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES
from activeseg.uncertainty.pooling import class_weights_from_labels, pool
from activeseg.uncertainty.regions import RegionMap

log = logging.getLogger(__name__)
__all__ = [
    "decode_heatmaps",
    "encode_heatmaps",
    "pool_image_ids",
    "score_pool",
]
CHUNK_IMAGES = 64
MAX_WARNINGS = 20  # region-count warnings kept in a job result (the total is kept too)
SCORE_ROWS_PER_TRANSACTION = 1_000
"""Region-score rows written (or deleted) per write transaction: a few milliseconds of the
SQLite write lock each, where one transaction per image held it for seconds on a 36-Mpx
image (hundreds of thousands of rows)."""


def pool_image_ids(ctx: JobContext, project_id: int) -> list[int]:
    with ctx.db.read_session() as s:
        return list(
            s.scalars(
                select(Image.id)
                .where(
                    Image.project_id == project_id,
                    Image.split == Split.pool.value,
                    Image.labelled_fraction < 1.0,
                )
                .order_by(Image.id)
            )
        )


def score_pool(
    ctx: JobContext,
    model_version_id: int | None = None,
    image_ids: list[int] | None = None,
    chunk_images: int = CHUNK_IMAGES,
) -> dict[str, Any] | Waiting:
    with ctx.db.read_session() as s:
        project = s.get(Project, ctx.project_id)
        assert project is not None
        mv_id = model_version_id or project.active_model_id
        if mv_id is None:
            raise ValueError("this project has no active model version yet; retrain first")
        mv = s.get(ModelVersion, mv_id)
        if mv is None or mv.project_id != project.id:
            raise ValueError(f"model version {mv_id} is not a version of this project")
        settings = project_settings(project)
    if image_ids is None:
        ids = pool_image_ids(ctx, project.id)
        if len(ids) > chunk_images:
            parts = [ids[i : i + chunk_images] for i in range(0, len(ids), chunk_images)]
            for i, part in enumerate(parts):
                ctx.enqueue(
                    "score_pool",
                    {"model_version_id": mv.id, "image_ids": part},
                    request_id=f"{ctx.job_id}-part-{i}",
                    child=True,
                )
            return Waiting(len(parts))
    else:
        ids = image_ids

    started = time.perf_counter()  # throughput (GET /metrics) counts model loading too
    predictor = load_predictor(ctx.store, mv, ctx.settings)
    names = list(SOFTMAX_MEASURES) + (list(ENSEMBLE_MEASURES) if predictor.n_samples > 1 else [])
    n_classes = len(project.classes)
    weights = None
    if settings.pooling == "class_balanced":
        weights = class_weights_from_labels(_labelled_class_counts(ctx, project.id, n_classes))
    with ctx.db.read_session() as s:
        images = list(s.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))

    arrays = (decode_image(ctx.store.get(im.blob_key)) for im in images)
    warnings: list[str] = []
    scored_images = score_images(predictor, arrays, names)
    for done, (image, scored) in enumerate(zip(images, scored_images, strict=True)):
        regions = ensure_region_map(
            ctx.db,
            ctx.store,
            image,
            settings.region_kind,
            settings.region_size,
            settings.slic_sigma,
        )
        warning = region_count_warning(image, regions, settings.region_kind, settings.region_size)
        if warning is not None:
            warnings.append(warning)
        values, region_class = pool_scores(scored, regions, settings, weights, n_classes)
        key = ctx.store.put(encode_heatmaps(scored.maps, scored.prediction, scored.expected_iou))
        means = {name: float(m.mean()) for name, m in scored.maps.items()}
        write_image_scores(ctx.db, mv.id, image.id, values, region_class, means, key)
        ctx.progress((done + 1) / max(len(images), 1), f"scored {done + 1}/{len(images)} images")
    seconds = time.perf_counter() - started
    result = {"model_version_id": mv.id, "images": len(images), "measures": names}
    if images:
        result.update(seconds=round(seconds, 6), images_per_s=len(images) / seconds)
    if warnings:
        result["region_warnings"] = warnings[:MAX_WARNINGS]
        result["region_warnings_total"] = len(warnings)
    return result


def pool_scores(
    scored: Scored,
    regions: RegionMap,
    settings: ProjectSettings,
    weights: np.ndarray | None,
    n_classes: int,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({measure: float64 [R] pooled score}, int64 [R] majority predicted class)`` of one
    image; pure numpy, run with no session open."""
    n = regions.n_regions
    votes = np.bincount(
        regions.labels.ravel() * n_classes + scored.prediction.ravel(), minlength=n * n_classes
    ).reshape(n, n_classes)
    values = {
        name: pool(
            pixel_map,
            regions.labels,
            n,
            settings.pooling,
            predicted_class=scored.prediction,
            class_weights=weights,
        )
        for name, pixel_map in scored.maps.items()
    }
    return values, votes.argmax(axis=1)


def write_image_scores(
    db: Database,
    mv_id: int,
    image_id: int,
    values: dict[str, np.ndarray],
    region_class: np.ndarray,
    means: dict[str, float],
    heatmap_key: str,
) -> None:
    """Replace the scores of (``mv_id``, ``image_id``) in short write transactions.

    Idempotent: a redelivered job first deletes what an earlier delivery wrote. The
    ``image_scores`` rows go first in the deletion and last in the insertion, so a reader
    that sees them sees every region score of the image."""
    _delete_image_scores(db, mv_id, image_id)
    for rows in _region_score_rows(mv_id, image_id, values, region_class):
        with _brief_write(db) as s:
            conn = s.connection()
            conn.exec_driver_sql(_insert_sql(conn.dialect.paramstyle), rows)
    with db.session() as s:
        s.execute(
            insert(ImageScore),
            [
                {
                    "model_version_id": mv_id,
                    "image_id": image_id,
                    "measure": name,
                    "mean": mean,
                    "heatmap_key": heatmap_key,
                    "prediction_key": heatmap_key,
                }
                for name, mean in means.items()
            ],
        )


_SCORE_COLUMNS = ("model_version_id", "measure", "image_id", "region", "value", "predicted_class")


def _insert_sql(paramstyle: str) -> str:
    """The ``region_scores`` INSERT for the driver's positional placeholder. Plain tuples
    through the driver's executemany: a third of the time of the ORM insert of dicts, and
    these rows hold the write lock while they go in."""
    mark = "?" if paramstyle == "qmark" else "%s"
    columns = ", ".join(_SCORE_COLUMNS)
    return f"INSERT INTO {RegionScore.__tablename__} ({columns}) VALUES ({', '.join([mark] * 6)})"


def _region_score_rows(
    mv_id: int, image_id: int, values: dict[str, np.ndarray], region_class: np.ndarray
) -> Iterator[list[tuple[int, str, int, int, float, int]]]:
    """The ``region_scores`` rows of one image as ``_SCORE_COLUMNS`` tuples,
    ``SCORE_ROWS_PER_TRANSACTION`` at a time; each chunk is built before its transaction
    opens."""
    classes = region_class.tolist()
    step = SCORE_ROWS_PER_TRANSACTION
    for name, pooled in values.items():
        scores = pooled.tolist()
        for start in range(0, len(scores), step):
            stop = start + step
            yield [
                (mv_id, name, image_id, region, value, cls)
                for region, value, cls in zip(
                    range(start, stop), scores[start:stop], classes[start:stop], strict=False
                )
            ]


def _delete_image_scores(db: Database, mv_id: int, image_id: int) -> None:
    """Delete what an earlier delivery wrote for the image: its ``image_scores`` first (the
    mark of a complete image), then its region scores a chunk at a time."""
    with db.session() as s:
        s.execute(
            delete(ImageScore).where(
                ImageScore.model_version_id == mv_id, ImageScore.image_id == image_id
            )
        )
    while True:
        batch = (
            select(RegionScore.id)
            .where(RegionScore.model_version_id == mv_id, RegionScore.image_id == image_id)
            .limit(SCORE_ROWS_PER_TRANSACTION)
        )
        with _brief_write(db) as s:
            result = s.execute(delete(RegionScore).where(RegionScore.id.in_(batch)))
        if result.rowcount < SCORE_ROWS_PER_TRANSACTION:  # type: ignore[attr-defined]
            return


@contextmanager
def _brief_write(db: Database) -> Iterator[Session]:
    """A write session of one chunk; on SQLite it then leaves the write lock free for as long
    as it held it. SQLite's lock is not fair: a waiting request polls on a back-off (up to
    100 ms apart) and would mostly find the lock taken again by the next chunk; free half the
    time, it gets the lock within a poll or two."""
    started = time.perf_counter()
    with db.session() as s:
        yield s
    if db.settings.is_sqlite:
        time.sleep(time.perf_counter() - started)


# Class-balanced pooling learns its weights from these splits only: val and test masks are
# held out for evaluation, and letting them steer what is labelled next would leak them.
SELECTION_SPLITS = (Split.pool.value, Split.train.value)


def _labelled_class_counts(ctx: JobContext, project_id: int, n_classes: int) -> np.ndarray:
    """int64 ``[C]`` labelled pixels per class over the pool and train images (never val or
    test: see ``SELECTION_SPLITS``). Masks are decoded after the read session closed."""
    counts = np.zeros(n_classes, np.int64)
    with ctx.db.read_session() as s:
        labelled = list(
            s.execute(
                with_mask_key(
                    select(Image).where(
                        Image.project_id == project_id,
                        Image.labelled_pixels > 0,
                        Image.split.in_(SELECTION_SPLITS),
                    )
                )
            ).all()
        )
    for im, key in labelled:
        mask = read_mask(ctx.store, im, key)
        counts += np.bincount(mask[mask != 255], minlength=n_classes)[:n_classes]
    return counts
