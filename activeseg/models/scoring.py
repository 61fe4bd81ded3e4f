"""Score images: per-pixel uncertainty maps and the predicted classes of one model version.

The pure computation behind the ``score_pool`` job: no database, no blob store.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from activeseg.models.inference import ImagePart, Predictor
from activeseg.uncertainty.measures import compute_measures


@dataclass(frozen=True)
class ImageScore:
    """``maps``: measure name -> float32 ``[H, W]``; ``prediction``: uint8 ``[H, W]``, the
    argmax of the mean probability over the S samples."""

    maps: dict[str, np.ndarray]
    prediction: np.ndarray


def score_images(
    predictor: Predictor, images: Iterable[np.ndarray], names: Sequence[str]
) -> Iterator[ImageScore]:
    """One :class:`ImageScore` per image, in input order (images as ``Predictor.predict``
    takes them).

    Small images are scored from their whole stack, batched as ``Predictor.predict`` batches
    them. A tiled image is scored window by window: measures are per pixel, so each window's
    core is measured on its own and written into preallocated full-size maps; the image's
    ``[S, C, H, W]`` stack never exists. Memory then is the maps (``len(names)`` float32
    ``[H, W]``), the uint8 prediction, the normalised input and one window.
    """
    for shape, parts in predictor.predict_parts(images):
        yield _score_parts(shape, parts, names)


def _score_parts(
    shape: tuple[int, int], parts: Iterator[ImagePart], names: Sequence[str]
) -> ImageScore:
    maps: dict[str, np.ndarray] = {}
    prediction = np.empty(shape, np.uint8)
    for (rows, cols), probs in parts:
        part_maps = compute_measures(probs, names)
        part_prediction = probs.mean(axis=0).argmax(axis=0).astype(np.uint8)
        if probs.shape[-2:] == shape:  # the whole image in one part: keep its arrays
            return ImageScore(maps=part_maps, prediction=part_prediction)
        for name, values in part_maps.items():
            if name not in maps:
                maps[name] = np.empty(shape, np.float32)
            maps[name][rows, cols] = values
        prediction[rows, cols] = part_prediction
    return ImageScore(maps=maps, prediction=prediction)
