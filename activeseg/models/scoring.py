"""Score images: per-pixel uncertainty maps and the predicted classes of one model version.

The pure computation behind the ``score_pool`` job and Label Studio's on-demand predictions:
no database, no blob store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from activeseg.models.inference import ImagePart, Predictor
from activeseg.uncertainty.measures import compute_measures
from activeseg.uncertainty.pooling import PoolHow, majority_class, pool_maps
from activeseg.uncertainty.regions import RegionMap


@dataclass(frozen=True)
class ImageScore:
    """``maps``: measure name -> float32 ``[H, W]``; ``prediction``: uint8 ``[H, W]``, the
    argmax of the mean probability over the S samples; ``expected_iou``: the prediction's
    expected per-image mIoU under that mean probability (:class:`ExpectedIou`)."""

    maps: dict[str, np.ndarray]
    prediction: np.ndarray
    expected_iou: float


class ScoringStopped(Exception):
    """``stop()`` said to give up on a tiled image between two of its windows."""


@dataclass
class ExpectedIou:
    """The expected per-image mIoU of a prediction, accumulated part by part.

    The pixels' true classes are taken as independent draws from the model's (temperature-
    scaled, sample-mean) probabilities ``p``: if those are calibrated, this is what the
    image's mIoU (mean over the classes predicted or present, as
    :func:`activeseg.models.evaluation.iou_from_confusion` averages) should be. With ``pred``
    the argmax at each pixel, for each class c:

    - ``E[TP_c] = sum_{pred=c} p_c``, ``E[FP_c] = sum_{pred=c} (1 - p_c)``,
      ``E[FN_c] = sum_{pred!=c} p_c``; ``IoU_c = E[TP_c] / (E[TP_c] + E[FP_c] + E[FN_c])``
      (a ratio of expectations: the expected ratio up to O(1/N) for N independent pixels);
    - class c counts in the mean with the probability that it is predicted or present:
      1 when the prediction paints it, else ``P(some pixel is c) = 1 - prod_i (1 - p_ic)``.
      A softmax is never 0, so without this weight a class the model sees nowhere (a
      ``1e-6`` probability per pixel) would enter the mean as a sure IoU of 0, and a perfect,
      confident prediction of an image that shows two of three classes would score 2/3.

    The result is ``sum_c w_c IoU_c / sum_c w_c``. Only per-class sums are kept (float64
    ``[C]``), so a tiled image adds its windows one by one and gets the value of the whole.
    An untrained 3-class network (``p`` near 1/3 everywhere, one class painted) scores
    about 1/9; it is not ``1 - uncertainty``, which a near-uniform softmax also keeps high.
    """

    n_classes: int
    predicted: np.ndarray = field(init=False)  # pixels painted c
    hits: np.ndarray = field(init=False)  # E[TP_c] = sum_{pred=c} p_c
    mass: np.ndarray = field(init=False)  # sum_i p_ic = E[TP_c] + E[FN_c]
    log_absent: np.ndarray = field(init=False)  # sum_i log(1 - p_ic) = log P(no pixel is c)

    def __post_init__(self) -> None:
        if self.n_classes < 1:
            raise ValueError(f"n_classes must be >= 1, got {self.n_classes}")
        for name in ("predicted", "hits", "mass", "log_absent"):
            setattr(self, name, np.zeros(self.n_classes, np.float64))

    def add(self, probs: np.ndarray, prediction: np.ndarray) -> None:
        """Add the pixels of one part: ``probs`` float ``[C, h, w]`` (the mean over the S
        samples), ``prediction`` int ``[h, w]`` (its argmax)."""
        if probs.ndim != 3 or probs.shape[0] != self.n_classes:
            raise ValueError(
                f"expected probabilities [C={self.n_classes}, h, w], got shape {probs.shape}"
            )
        if prediction.shape != probs.shape[1:]:
            raise ValueError(
                f"prediction {prediction.shape} does not match probabilities {probs.shape}"
            )
        p = np.clip(probs.reshape(self.n_classes, -1), 0.0, 1.0)  # float32 rounding past 1
        pred = prediction.reshape(-1).astype(np.intp)
        chosen = np.take_along_axis(p, pred[None], axis=0)[0]
        self.predicted += np.bincount(pred, minlength=self.n_classes)[: self.n_classes]
        self.hits += np.bincount(pred, weights=chosen, minlength=self.n_classes)[: self.n_classes]
        self.mass += p.sum(axis=1, dtype=np.float64)
        with np.errstate(divide="ignore"):  # p = 1: that class is surely present
            self.log_absent += np.log1p(-p).sum(axis=1, dtype=np.float64)

    def value(self) -> float:
        """The expected mIoU in [0, 1]; NaN before any pixel was added."""
        union = self.predicted + self.mass - self.hits  # E[TP + FP + FN]
        if not self.predicted.any():
            return float("nan")
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, self.hits / union, 0.0)
        weight = np.where(self.predicted > 0, 1.0, -np.expm1(self.log_absent))
        return float(np.clip((weight * iou).sum() / weight.sum(), 0.0, 1.0))


def expected_iou(probs: np.ndarray, prediction: np.ndarray | None = None) -> float:
    """:class:`ExpectedIou` of one whole image: ``probs`` float ``[C, H, W]`` (already the
    mean over samples, temperature-scaled), ``prediction`` its argmax (computed if None)."""
    sums = ExpectedIou(probs.shape[0])
    sums.add(probs, probs.argmax(axis=0) if prediction is None else prediction)
    return sums.value()


def score_images(
    predictor: Predictor,
    images: Iterable[np.ndarray],
    names: Sequence[str],
    *,
    stop: Callable[[], bool] | None = None,
) -> Iterator[ImageScore]:
    """One :class:`ImageScore` per image, in input order (images as ``Predictor.predict``
    takes them).

    Small images are scored from their whole stack, batched as ``Predictor.predict`` batches
    them. A tiled image is scored window by window: measures are per pixel, so each window's
    core is measured on its own and written into preallocated full-size maps, and the
    expected IoU keeps per-class sums; the image's ``[S, C, H, W]`` stack never exists.
    Memory then is the maps (``len(names)`` float32 ``[H, W]``), the uint8 prediction, the
    normalised input and one window.

    ``stop``: asked after each window of a tiled image; True raises :class:`ScoringStopped`
    before the next window runs (a caller's time budget; untiled images are one step).
    """
    for shape, parts in predictor.predict_parts(images):
        yield _score_parts(shape, parts, names, stop)


def _score_parts(
    shape: tuple[int, int],
    parts: Iterator[ImagePart],
    names: Sequence[str],
    stop: Callable[[], bool] | None,
) -> ImageScore:
    maps: dict[str, np.ndarray] = {}
    prediction = np.empty(shape, np.uint8)
    sums: ExpectedIou | None = None
    for (rows, cols), probs in parts:
        part_maps, mean, part_prediction = _measure_part(probs, names)
        if sums is None:
            sums = ExpectedIou(probs.shape[1])
        sums.add(mean, part_prediction)
        if probs.shape[-2:] == shape:  # the whole image in one part: keep its arrays
            return ImageScore(part_maps, part_prediction, sums.value())
        for name, values in part_maps.items():
            if name not in maps:
                maps[name] = np.empty(shape, np.float32)
            maps[name][rows, cols] = values
        prediction[rows, cols] = part_prediction
        if stop is not None and stop():
            raise ScoringStopped
    assert sums is not None, "an image without parts"
    return ImageScore(maps=maps, prediction=prediction, expected_iou=sums.value())


def _measure_part(
    probs: np.ndarray, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """``(maps, mean probability [C, h, w], prediction uint8 [h, w])`` of ``probs``
    ``[S, C, h, w]``."""
    maps = compute_measures(probs, names)
    mean = probs[0] if probs.shape[0] == 1 else probs.mean(axis=0)
    return maps, mean, mean.argmax(axis=0).astype(np.uint8)


def score_probabilities(probs: np.ndarray, names: Sequence[str]) -> ImageScore:
    """The :class:`ImageScore` of one whole image from its probabilities ``probs``
    ``[S, C, H, W]`` (S samples or members, temperature already applied): what
    :func:`score_images` yields for an untiled image, without a predictor."""
    maps, mean, prediction = _measure_part(probs, names)
    return ImageScore(maps, prediction, expected_iou(mean, prediction))


@dataclass(frozen=True)
class RegionScores:
    """One image's scores per region: ``values``: measure -> float64 ``[R]`` (pooled map);
    ``classes``: int64 ``[R]`` majority predicted class; ``means``: measure -> mean of the
    pixel map over the image (the image-level figure shown in lists)."""

    values: dict[str, np.ndarray]
    classes: np.ndarray
    means: dict[str, float]


def score_regions(
    scored: ImageScore,
    regions: RegionMap,
    how: PoolHow = "mean",
    class_weights: np.ndarray | None = None,
    n_classes: int | None = None,
) -> RegionScores:
    """Pool an image's maps over its region map (``how``, with ``class_weights`` ``[C]`` for
    ``class_balanced``) and take each region's majority predicted class (``n_classes``: the
    project's classes; default: the largest predicted id + 1). Pure numpy, no session."""
    n = regions.n_regions
    classes = n_classes if n_classes is not None else int(scored.prediction.max()) + 1
    return RegionScores(
        values=pool_maps(
            scored.maps,
            regions.labels,
            n,
            how,
            predicted_class=scored.prediction,
            class_weights=class_weights,
        ),
        classes=majority_class(scored.prediction, regions.labels, n, classes),
        means={name: float(m.mean()) for name, m in scored.maps.items()},
    )
