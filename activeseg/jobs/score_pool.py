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
from typing import Any

from activeseg.core.heatmaps import decode_heatmaps, encode_heatmaps
from activeseg.core.imaging import decode_image
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.models import load_predictor
from activeseg.core.services.pool import (
    ScoreBatches,
    images_with_mask_keys,
    open_regions_of,
    pool_image_ids,
    region_map_lookup,
    selection_class_counts,
)
from activeseg.core.services.pool import write_batch as _write
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import region_count_warning, region_sigma
from activeseg.core.services.scores import (
    QueueParams,
    ScoredImage,
    forget_candidates,
    write_candidates,
)
from activeseg.core.tables import Image, ModelVersion, Project
from activeseg.jobs.runner import JobContext, Waiting
from activeseg.models.scoring import ImageScore, score_images, score_regions
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES
from activeseg.uncertainty.pooling import class_weights_from_labels
from activeseg.uncertainty.regions import RegionMap

log = logging.getLogger(__name__)
__all__ = [
    "_write",
    "decode_heatmaps",
    "encode_heatmaps",
    "pool_image_ids",
    "score_pool",
]
CHUNK_IMAGES = 64
MAX_WARNINGS = 20  # region-count warnings kept in a job result (the total is kept too)


def score_pool(
    ctx: JobContext,
    model_version_id: int | None = None,
    image_ids: list[int] | None = None,
    chunk_images: int = CHUNK_IMAGES,
) -> dict[str, Any] | Waiting:
    project_id, mv, settings, n_classes = _version_to_score(ctx, model_version_id)
    if image_ids is None:
        ids = pool_image_ids(ctx.db, project_id)
        if len(ids) > chunk_images:
            return _fan_out(ctx, mv.id, ids, chunk_images)
    else:
        ids = image_ids
    started = time.perf_counter()  # throughput (GET /metrics) counts model loading too
    predictor = load_predictor(ctx.store, mv, ctx.settings)
    names = list(SOFTMAX_MEASURES) + (list(ENSEMBLE_MEASURES) if predictor.n_samples > 1 else [])
    chunk = _Chunk(ctx, project_id, mv.id, settings, n_classes, names)
    rows = images_with_mask_keys(ctx.db, ids)
    images = [im for im, _ in rows]
    mask_keys = {im.id: key for im, key in rows}
    if ids:
        forget_candidates(ctx.db, mv.id, ids)
    regions_of = region_map_lookup(ctx.db, ctx.store, images, chunk.spec)
    arrays = (decode_image(ctx.store.get(im.blob_key)) for im in images)
    for done, (image, scored) in enumerate(
        zip(images, score_images(predictor, arrays, names), strict=True)
    ):
        chunk.add(image, mask_keys[image.id], regions_of(image), scored)
        ctx.progress((done + 1) / max(len(images), 1), f"scored {done + 1}/{len(images)} images")
    chunk.finish(ids, len(images))
    seconds = time.perf_counter() - started
    return _result(mv.id, names, chunk, len(images), seconds)


def _version_to_score(
    ctx: JobContext, model_version_id: int | None
) -> tuple[int, ModelVersion, ProjectSettings, int]:
    """``(project id, version, settings, number of classes)``: the requested version, else
    the active one; a version of another project is refused."""
    with ctx.db.read_session() as s:
        project = s.get(Project, ctx.project_id)
        assert project is not None
        mv_id = model_version_id or project.active_model_id
        if mv_id is None:
            raise ValueError("this project has no active model version yet; retrain first")
        mv = s.get(ModelVersion, mv_id)
        if mv is None or mv.project_id != project.id:
            raise ValueError(f"model version {mv_id} is not a version of this project")
        return project.id, mv, project_settings(project), len(project.classes)


def _fan_out(ctx: JobContext, mv_id: int, ids: list[int], chunk_images: int) -> Waiting:
    """One child job per ``chunk_images`` images; this job waits for them."""
    parts = [ids[i : i + chunk_images] for i in range(0, len(ids), chunk_images)]
    for i, part in enumerate(parts):
        ctx.enqueue(
            "score_pool",
            {"model_version_id": mv_id, "image_ids": part},
            request_id=f"{ctx.job_id}-part-{i}",
            child=True,
        )
    return Waiting(len(parts))


class _Chunk:
    """One chunk's scoring state: turns each image's :class:`ImageScore` into its stored
    rows (region scores, heatmap blob) and writes them in batches (:class:`ScoreBatches`)."""

    def __init__(
        self,
        ctx: JobContext,
        project_id: int,
        mv_id: int,
        settings: ProjectSettings,
        n_classes: int,
        names: list[str],
    ) -> None:
        self.ctx = ctx
        self.mv_id = mv_id
        self.settings = settings
        self.n_classes = n_classes
        self.params = QueueParams.from_settings(settings)
        self.spec = (
            settings.region_kind,
            settings.region_size,
            region_sigma(settings.region_kind, settings.slic_sigma),
        )
        self.offers = self.params.mergeable and self.params.measure in names
        self.weights = None
        if settings.pooling == "class_balanced":
            counts = selection_class_counts(ctx.db, ctx.store, project_id, n_classes)
            self.weights = class_weights_from_labels(counts)
        # _write looked up now, not at import: benchmarks/score_scale.py swaps it.
        self.batches = ScoreBatches(
            ctx.db, mv_id, self.params, settings.measure, self.offers, write=_write
        )
        self.warnings: list[str] = []

    def add(
        self, image: Image, mask_key: str | None, regions: RegionMap, scored: ImageScore
    ) -> None:
        warning = region_count_warning(
            image, regions, self.settings.region_kind, self.settings.region_size
        )
        if warning is not None:
            self.warnings.append(warning)
        pooled = score_regions(scored, regions, self.settings.pooling, self.weights, self.n_classes)
        store = self.ctx.store
        key = store.put(encode_heatmaps(scored.maps, scored.prediction, scored.expected_iou))
        item = ScoredImage.build(
            image.id,
            image.current_revision,
            pooled.values,
            pooled.classes,
            regions.centroids,
            open_regions_of(store, image, mask_key, regions),
            self.spec,
            means=pooled.means,
            heatmap_key=key,
        )
        self.batches.add(item)

    def finish(self, ids: list[int], n_images: int) -> None:
        """Write the last batch, then the chunk's candidates: the row that marks it complete."""
        self.batches.flush()
        if self.offers and ids:
            write_candidates(
                self.ctx.db, self.mv_id, ids, n_images, self.params, self.batches.candidates()
            )


def _result(
    mv_id: int, names: list[str], chunk: _Chunk, n_images: int, seconds: float
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "model_version_id": mv_id,
        "images": n_images,
        "measures": names,
        "candidates": chunk.offers,
    }
    if n_images:
        result.update(seconds=round(seconds, 6), images_per_s=n_images / seconds)
    if chunk.warnings:
        result["region_warnings"] = chunk.warnings[:MAX_WARNINGS]
        result["region_warnings_total"] = len(chunk.warnings)
    return result
