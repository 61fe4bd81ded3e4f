"""score_pool: predict the unlabelled pool with one model version and score every region.

For each pool image: probabilities ``[S, C, H, W]`` from the predictor, every uncertainty
measure the model supports (softmax measures always; ensemble measures when S > 1), pooled
over the image's stored region map; one ``region_scores`` row per (version, measure, image,
region), one ``image_scores`` row per measure with a heatmap blob for display. Large pools
fan out into child jobs of ``chunk_images`` images each, so several workers share them.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from sqlalchemy import delete, insert, select

from activeseg.core.heatmaps import decode_heatmaps, encode_heatmaps
from activeseg.core.imaging import decode_image
from activeseg.core.services.labels import current_mask
from activeseg.core.services.models import load_predictor
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import region_count_warning, region_set
from activeseg.core.tables import Image, ImageScore, ModelVersion, Project, RegionScore, Split
from activeseg.jobs.runner import JobContext, Waiting
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES, compute_measures
from activeseg.uncertainty.pooling import class_weights_from_labels, pool

log = logging.getLogger(__name__)
__all__ = ["decode_heatmaps", "encode_heatmaps", "pool_image_ids", "score_pool"]
CHUNK_IMAGES = 64
MAX_WARNINGS = 20  # region-count warnings kept in a job result (the total is kept too)


def pool_image_ids(ctx: JobContext, project_id: int) -> list[int]:
    with ctx.db.session() as s:
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
    with ctx.db.session() as s:
        project = s.get(Project, ctx.project_id)
        assert project is not None
        mv_id = model_version_id or project.active_model_id
        if mv_id is None:
            raise ValueError("this project has no active model version yet; retrain first")
        mv = s.get(ModelVersion, mv_id)
        if mv is None or mv.project_id != project.id:
            raise ValueError(f"model version {mv_id} is not a version of this project")
        s.expunge(mv)
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

    images: list[Image] = []
    with ctx.db.session() as s:
        images = list(s.scalars(select(Image).where(Image.id.in_(ids)).order_by(Image.id)))
        for im in images:
            s.expunge(im)

    def arrays():  # type: ignore[no-untyped-def]
        for im in images:
            yield decode_image(ctx.store.get(im.blob_key))

    warnings: list[str] = []
    for done, (image, stack) in enumerate(zip(images, predictor.predict(arrays()), strict=True)):
        maps = compute_measures(stack, names)
        prediction = stack.mean(axis=0).argmax(axis=0).astype(np.uint8)
        with ctx.db.session() as s:
            _, regions = region_set(
                s,
                ctx.store,
                image,
                settings.region_kind,
                settings.region_size,
                settings.slic_sigma,
            )
        warning = region_count_warning(image, regions, settings.region_kind, settings.region_size)
        if warning is not None:
            warnings.append(warning)
        n = regions.n_regions
        votes = np.bincount(
            regions.labels.ravel() * n_classes + prediction.ravel(), minlength=n * n_classes
        ).reshape(n, n_classes)
        region_class = votes.argmax(axis=1)
        rows: list[dict[str, Any]] = []
        for name, pixel_map in maps.items():
            pooled = pool(
                pixel_map,
                regions.labels,
                n,
                settings.pooling,
                predicted_class=prediction,
                class_weights=weights,
            )
            rows.extend(
                {
                    "model_version_id": mv.id,
                    "measure": name,
                    "image_id": image.id,
                    "region": r,
                    "value": float(pooled[r]),
                    "predicted_class": int(region_class[r]),
                }
                for r in range(n)
            )
        key = ctx.store.put(encode_heatmaps(maps, prediction))
        with ctx.db.session() as s:
            # Idempotent: a redelivered job rewrites this image's rows instead of adding more.
            s.execute(
                delete(RegionScore).where(
                    RegionScore.model_version_id == mv.id, RegionScore.image_id == image.id
                )
            )
            s.execute(
                delete(ImageScore).where(
                    ImageScore.model_version_id == mv.id, ImageScore.image_id == image.id
                )
            )
            s.execute(insert(RegionScore), rows)
            s.execute(
                insert(ImageScore),
                [
                    {
                        "model_version_id": mv.id,
                        "image_id": image.id,
                        "measure": name,
                        "mean": float(m.mean()),
                        "heatmap_key": key,
                        "prediction_key": key,
                    }
                    for name, m in maps.items()
                ],
            )
        ctx.progress((done + 1) / max(len(images), 1), f"scored {done + 1}/{len(images)} images")
    seconds = time.perf_counter() - started
    result = {"model_version_id": mv.id, "images": len(images), "measures": names}
    if images:
        result.update(seconds=round(seconds, 6), images_per_s=len(images) / seconds)
    if warnings:
        result["region_warnings"] = warnings[:MAX_WARNINGS]
        result["region_warnings_total"] = len(warnings)
    return result


# Class-balanced pooling learns its weights from these splits only: val and test masks are
# held out for evaluation, and letting them steer what is labelled next would leak them.
SELECTION_SPLITS = (Split.pool.value, Split.train.value)


def _labelled_class_counts(ctx: JobContext, project_id: int, n_classes: int) -> np.ndarray:
    """int64 ``[C]`` labelled pixels per class over the pool and train images (never val or
    test: see ``SELECTION_SPLITS``)."""
    counts = np.zeros(n_classes, np.int64)
    with ctx.db.session() as s:
        labelled = list(
            s.scalars(
                select(Image).where(
                    Image.project_id == project_id,
                    Image.labelled_pixels > 0,
                    Image.split.in_(SELECTION_SPLITS),
                )
            )
        )
        for im in labelled:
            mask = current_mask(s, ctx.store, im)
            counts += np.bincount(mask[mask != 255], minlength=n_classes)[:n_classes]
    return counts
