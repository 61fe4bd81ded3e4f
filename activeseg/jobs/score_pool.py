"""score_pool: predict the unlabelled pool with one model version and score every region.

For each pool image: every uncertainty measure the model supports (softmax measures always;
ensemble measures when S > 1) from :func:`activeseg.models.scoring.score_images`, pooled over
the image's stored region map. Per (version, image) two rows, however many measures and
regions (:mod:`activeseg.core.services.scores`): one ``image_region_scores`` row (every
measure's pooled scores as one float32 array, the majority predicted class, the region
centres, the regions still open to labelling) and one ``image_scores`` row naming the heatmap
blob for display (its maps, the predicted classes and the prediction's expected IoU:
:func:`encode_heatmaps`). The predictor applies the version's temperature, fitted on the val
images before the version is stored (a version trained without labelled val images has none:
its probabilities are the raw softmax). Large pools fan out into child jobs of
``chunk_images`` images each, so several workers share them.

Each chunk also stores its candidates for the next queue (a ``score_candidates`` row: its
best selection keys after the per-image rules and its best control draws, drawn with keys
hashed from (seed, version, image, region)); ``build_queue`` merges the chunks' rows instead
of reading every score. The row is written last: it marks the chunk complete. A redelivered
chunk writes the same rows again, once.

The job never holds the database while it works (see :mod:`activeseg.core.db`): rows are read
in short read sessions, prediction, SLIC and pooling run with no session open, and the rows
are written in short transactions of up to ``WRITE_BATCH_IMAGES`` images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.heatmaps import decode_heatmaps, encode_heatmaps
from activeseg.core.imaging import decode_image
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.models import load_predictor
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import (
    REGION_MAPS,
    ensure_region_map,
    region_count_warning,
    region_sigma,
)
from activeseg.core.services.scores import (
    WRITE_BATCH_BYTES,
    ChunkCandidates,
    ImageCandidates,
    QueueParams,
    ScoredImage,
    forget_candidates,
    group_candidates,
    replace_scores,
    write_candidates,
)
from activeseg.core.tables import Image, ModelVersion, Project, RegionSet, Split
from activeseg.jobs.runner import JobContext, Waiting
from activeseg.models.scoring import ImageScore as Scored
from activeseg.models.scoring import score_images
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES
from activeseg.uncertainty.pooling import class_weights_from_labels, labelled_fraction, pool
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
WRITE_BATCH_IMAGES = 64
"""Images whose rows go in one write transaction (fewer when their arrays pass
``WRITE_BATCH_BYTES``): two rows per image, a few milliseconds of the SQLite write lock. Each
batch's candidates are computed together (vectorised) before it is written."""


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
        rows = list(
            s.execute(with_mask_key(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))
        )
    images = [im for im, _ in rows]
    mask_keys = {im.id: key for im, key in rows}
    params = QueueParams.from_settings(settings)
    spec = (
        settings.region_kind,
        settings.region_size,
        region_sigma(settings.region_kind, settings.slic_sigma),
    )
    offers = params.mergeable and params.measure in names
    if ids:
        forget_candidates(ctx.db, mv.id, ids)
    maps = _region_maps(ctx, images, spec)

    arrays = (decode_image(ctx.store.get(im.blob_key)) for im in images)
    warnings: list[str] = []
    offered: list[ImageCandidates] = []
    pending: list[ScoredImage] = []
    scored_images = score_images(predictor, arrays, names)
    for done, (image, scored) in enumerate(zip(images, scored_images, strict=True)):
        regions = maps(image)
        warning = region_count_warning(image, regions, settings.region_kind, settings.region_size)
        if warning is not None:
            warnings.append(warning)
        values, region_class = pool_scores(scored, regions, settings, weights, n_classes)
        key = ctx.store.put(encode_heatmaps(scored.maps, scored.prediction, scored.expected_iou))
        item = ScoredImage.build(
            image.id,
            image.current_revision,
            values,
            region_class,
            regions.centroids,
            _open_regions(ctx, image, mask_keys[image.id], regions),
            spec,
            means={name: float(m.mean()) for name, m in scored.maps.items()},
            heatmap_key=key,
        )
        pending.append(item)
        if (
            len(pending) >= WRITE_BATCH_IMAGES
            or sum(p.nbytes() for p in pending) >= WRITE_BATCH_BYTES
        ):
            if offers:
                offered.append(group_candidates(mv.id, params, pending))
            _write(ctx.db, mv.id, pending, settings.measure)
            pending = []
        ctx.progress((done + 1) / max(len(images), 1), f"scored {done + 1}/{len(images)} images")
    if offers and pending:
        offered.append(group_candidates(mv.id, params, pending))
    _write(ctx.db, mv.id, pending, settings.measure)
    if offers and ids:
        write_candidates(
            ctx.db, mv.id, ids, len(images), params, ChunkCandidates.merge(params, offered)
        )
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "model_version_id": mv.id,
        "images": len(images),
        "measures": names,
        "candidates": offers,
    }
    if images:
        result.update(seconds=round(seconds, 6), images_per_s=len(images) / seconds)
    if warnings:
        result["region_warnings"] = warnings[:MAX_WARNINGS]
        result["region_warnings_total"] = len(warnings)
    return result


def _region_maps(
    ctx: JobContext, images: list[Image], spec: tuple[str, int, float]
) -> Callable[[Image], RegionMap]:
    """A function image -> its region map: the chunk's stored maps are looked up in one read
    (not one per image); a missing map is computed with :func:`ensure_region_map`."""
    kind, size, sigma = spec
    with ctx.db.read_session() as s:
        stored = dict(
            s.execute(
                select(RegionSet.image_id, RegionSet.blob_key).where(
                    RegionSet.image_id.in_([im.id for im in images]),
                    RegionSet.kind == kind,
                    RegionSet.size == size,
                    RegionSet.sigma == sigma,
                )
            ).all()
        )

    def region_map(image: Image) -> RegionMap:
        key = stored.get(image.id)
        if key is not None:
            return REGION_MAPS.get(ctx.store, key)
        return ensure_region_map(ctx.db, ctx.store, image, kind, size, sigma)

    return region_map


def _open_regions(
    ctx: JobContext, image: Image, mask_key: str | None, regions: RegionMap
) -> np.ndarray:
    """bool ``[R]``: regions not fully labelled by the image's mask (read with its row)."""
    if image.labelled_pixels == 0 and mask_key is None:
        return np.ones(regions.n_regions, np.bool_)
    frac = labelled_fraction(
        read_mask(ctx.store, image, mask_key), regions.labels, regions.n_regions
    )
    return np.asarray(~(frac >= 1.0), np.bool_)


def _write(db: Database, mv_id: int, items: list[ScoredImage], shown: str) -> None:
    """The rows of ``items`` in one brief write transaction (:func:`replace_scores`)."""
    if items:
        with _brief_write(db) as s:
            replace_scores(s, mv_id, items, shown)


@contextmanager
def _brief_write(db: Database) -> Iterator[Session]:
    """A write session of one batch; on SQLite it then leaves the write lock free for as long
    as it held it. SQLite's lock is not fair: a waiting request polls on a back-off (up to
    100 ms apart) and would mostly find the lock taken again by the next batch; free half the
    time, it gets the lock within a poll or two."""
    started = time.perf_counter()
    with db.session() as s:
        yield s
    if db.settings.is_sqlite:
        time.sleep(time.perf_counter() - started)


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
