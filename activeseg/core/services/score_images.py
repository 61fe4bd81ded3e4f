"""Pictures of the active model's stored scores of an image: the uncertainty heatmap of one
measure (optionally over the image) and the predicted classes (in class colours or raw ids).

The maps are the ``score_pool`` job's heatmap blob (:mod:`activeseg.core.heatmaps`); drawing
them needs numpy only, no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import NotFound
from activeseg.core.heatmaps import decode_heatmaps
from activeseg.core.imaging import decode_image, display_image, encode_png
from activeseg.core.render import colourise, heat_colours, overlay
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, ImageScore, Project

OVERLAY_ALPHA = 0.55
"""Weight of the heatmap where it is drawn over the image."""


@dataclass(frozen=True)
class ActiveScores:
    """Where an image's scores by its project's active model are, and what draws them."""

    image_id: int
    image_key: str  # blob key of the image file
    heatmap_key: str  # blob key of the score_pool heatmaps (activeseg.core.heatmaps)
    classes: list[Any]  # the project's class definitions (ids, names, colours)


def active_scores(session: Session, image: Image) -> ActiveScores:
    """The active model's scores of ``image``; NotFound while there is no active model or
    it has not scored the image yet."""
    project = session.get(Project, image.project_id)
    assert project is not None
    key = None
    if project.active_model_id is not None:
        key = session.scalar(
            select(ImageScore.heatmap_key)
            .where(
                ImageScore.image_id == image.id,
                ImageScore.model_version_id == project.active_model_id,
            )
            .limit(1)
        )
    if key is None:
        raise NotFound(f"image {image.id} has not been scored by the active model yet")
    return ActiveScores(image.id, image.blob_key, key, list(project.classes))


def uncertainty_png(
    store: BlobStore, scores: ActiveScores, measure: str, over_image: bool = False
) -> bytes:
    """PNG of ``measure``'s per-pixel uncertainty in inferno colours (bright = unsure),
    blended over the image with ``over_image``; NotFound (naming those there are) for a
    measure the scoring did not compute."""
    maps = decode_heatmaps(store.get(scores.heatmap_key))
    if measure not in maps or measure == "prediction":
        known = sorted(k for k in maps if k != "prediction")
        raise NotFound(f"measure {measure!r} was not computed; available: {', '.join(known)}")
    rgb = heat_colours(maps[measure].astype(np.float32))
    if over_image:
        image = display_image(decode_image(store.get(scores.image_key)))
        rgb = overlay(image, rgb, alpha=OVERLAY_ALPHA)
    return encode_png(rgb)


def prediction_png(store: BlobStore, scores: ActiveScores, raw: bool = False) -> bytes:
    """PNG of the predicted class per pixel: class colours, or with ``raw`` an index PNG of
    the class ids."""
    prediction = decode_heatmaps(store.get(scores.heatmap_key), ["prediction"])["prediction"]
    prediction = prediction.astype(np.uint8)
    return encode_png(prediction if raw else colourise(prediction, scores.classes))
