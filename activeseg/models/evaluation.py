"""Evaluate a model version on labelled images: segmentation quality, calibration, and how well
each uncertainty measure predicts the model's own errors.

Everything streams image by image: the confusion matrix and the calibration bins are running
sums, and the pixels for error detection (which needs a ranking over all pixels) are a uniform
sample of bounded size (bottom-k of a random key per pixel, a streaming reservoir).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from activeseg.models.inference import Predictor
from activeseg.uncertainty import calibration
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES, compute_measures

logger = logging.getLogger(__name__)

MAX_DETECTION_PIXELS = 200_000
"""Pixels kept for the error-detection AUROC/AUPR and for temperature fitting."""


class PixelReservoir:
    """A uniform random sample of at most ``capacity`` pixels from a stream of images.

    Each pixel gets a random key and the ``capacity`` smallest keys are kept (bottom-k
    sampling), so the sample is uniform without replacement whatever the number of images.
    Columns are named 1-D arrays ``[P]`` (or ``[P, C]``) that are sampled together.
    """

    def __init__(self, capacity: int, seed: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        self.keys = np.zeros(0, dtype=np.float64)
        self.columns: dict[str, np.ndarray] = {}
        self.seen = 0

    def add(self, columns: dict[str, np.ndarray]) -> None:
        """Add the pixels of one image: every column has the same first dimension P."""
        n = len(next(iter(columns.values())))
        self.seen += n
        if n == 0:
            return
        keys = np.concatenate([self.keys, self.rng.random(n)])
        merged = {
            name: np.concatenate([self.columns[name], values]) if name in self.columns else values
            for name, values in columns.items()
        }
        if keys.size > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys = keys[keep]
            merged = {name: values[keep] for name, values in merged.items()}
        self.keys = keys
        self.columns = merged


def jsonable(value: Any) -> Any:
    """Numpy scalars and arrays to Python floats/ints/lists, NaN and infinities to None."""
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.bool_ | bool):
        return bool(value)
    if isinstance(value, np.integer | int):
        return int(value)
    if isinstance(value, np.floating | float):
        return float(value) if math.isfinite(float(value)) else None
    return value


def iou_from_confusion(confusion: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Per-class IoU ``[C]`` (NaN where a class is neither labelled nor predicted), mIoU over the
    other classes, and pixel accuracy, from ``confusion[true, predicted]`` ``[C, C]``."""
    intersection = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, np.nan)
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else math.nan
    total = confusion.sum()
    accuracy = float(intersection.sum() / total) if total else math.nan
    return iou, miou, accuracy


def available_measures(
    n_samples: int, measures: Sequence[str] | None
) -> tuple[list[str], list[str]]:
    """Split requested measures into those a stack of ``n_samples`` supports and the rest.

    Default: every softmax measure, plus every ensemble measure when ``n_samples > 1``.
    """
    if measures is None:
        measures = list(SOFTMAX_MEASURES) + (list(ENSEMBLE_MEASURES) if n_samples > 1 else [])
    known = set(SOFTMAX_MEASURES) | set(ENSEMBLE_MEASURES)
    unknown = [name for name in measures if name not in known]
    if unknown:
        raise ValueError(
            f"unknown uncertainty measure(s) {unknown}; choose from "
            f"{', '.join(SOFTMAX_MEASURES + ENSEMBLE_MEASURES)}"
        )
    usable = [name for name in measures if name in SOFTMAX_MEASURES or n_samples > 1]
    skipped = [name for name in measures if name not in usable]
    return usable, skipped


def calibration_stream(n_classes: int, n_bins: int) -> calibration.CalibrationAccumulator:
    """The running calibration sums over every labelled pixel (equal-width bins, unlabelled
    pixels skipped) that both the trainer's metrics (:func:`evaluate`) and the report's
    calibration section read, so their figures are the same numbers whatever the pixel count."""
    return calibration.CalibrationAccumulator(n_classes, n_bins, UNLABELLED)


def stream_image(
    accumulator: calibration.CalibrationAccumulator, stack: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Add one image to ``accumulator``: the predictive distribution, the mean over S of the
    float32 probabilities ``stack`` ``[S, C, H, W]``, against ``mask`` uint8 ``[H, W]``.

    Returns that distribution ``[C, H, W]`` (the caller's predictions are its argmax), so the
    trainer and the report average the samples in one place and stream identical values.
    """
    mean = stack.mean(axis=0)
    accumulator.update(mean, mask)
    return mean


def calibration_figures(result: calibration.CalibrationResult) -> dict[str, Any]:
    """ECE, MCE, Brier, NLL, accuracy, mean confidence and the equal-width reliability diagram
    (``{edges, confidence, accuracy, count}`` lists) of a :func:`calibration_stream`, as plain
    Python values (NaN stays NaN, e.g. before any labelled pixel; :func:`jsonable` maps it to
    None)."""
    diagram = result["reliability"]
    return {
        "ece": result["ece"],
        "mce": result["mce"],
        "brier": result["brier"],
        "nll": result["nll"],
        "accuracy": result["accuracy"],
        "mean_confidence": result["mean_confidence"],
        "reliability": {
            "edges": diagram.edges.tolist(),
            "confidence": diagram.confidence.tolist(),
            "accuracy": diagram.accuracy.tolist(),
            "count": diagram.count.tolist(),
        },
    }


def evaluate(
    predictor: Predictor,
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    n_classes: int,
    measures: Sequence[str] | None = None,
    *,
    batch_size: int | None = None,
    n_bins: int = 15,
    max_detection_pixels: int = MAX_DETECTION_PIXELS,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of ``predictor`` on labelled images, as a JSON-ready dict (NaN -> None).

    ``images``: uint8 ``[H, W]`` or ``[H, W, 3]``; ``masks``: uint8 ``[H, W]`` (255 = not
    labelled; those pixels count nowhere). Segmentation quality and calibration use the mean
    over the S samples (the predictive distribution). Keys: ``miou``, ``iou_per_class`` [C],
    ``pixel_accuracy``, ``confusion`` [C][C] (rows = truth), ``ece``, ``mce``, ``brier``,
    ``nll``, ``calibration_accuracy``, ``reliability`` {edges, confidence, accuracy, count},
    ``error_detection`` {measure: {auroc, aupr}} on a uniform sample of at most
    ``max_detection_pixels`` labelled pixels (an error = argmax differs from the label),
    ``skipped_measures``, ``n_images``, ``n_labelled_pixels``, ``n_samples``, ``temperature``.

    Foreground figures (pixel-level ones are dominated by the easy background):
    ``background_class`` is the majority class of all evaluated labelled pixels (from the
    confusion matrix), the *foreground* every labelled pixel of another true class; on the
    sampled foreground pixels: ``foreground_pixels`` (how many), ``foreground_ece``
    (equal-width bins), ``foreground_accuracy`` and ``error_detection_foreground`` {measure:
    {auroc, aupr}}.
    """
    names, skipped = available_measures(predictor.n_samples, measures)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    accumulator = calibration_stream(n_classes, n_bins)
    reservoir = PixelReservoir(max_detection_pixels, seed)
    n_images = 0
    for index, (stack, mask) in enumerate(
        zip(predictor.predict(images, batch_size), masks, strict=True)
    ):
        if mask.shape != stack.shape[-2:]:
            raise ValueError(
                f"mask {index} has shape {mask.shape}, its image {tuple(stack.shape[-2:])}"
            )
        if stack.shape[1] != n_classes:
            raise ValueError(f"model predicts {stack.shape[1]} classes, expected {n_classes}")
        n_images += 1
        labelled = mask != UNLABELLED
        truth = mask[labelled].astype(np.int64)
        if truth.size and int(truth.max()) >= n_classes:
            raise ValueError(f"mask {index} holds class id {int(truth.max())} >= {n_classes}")
        mean = stream_image(accumulator, stack, mask)  # [C, H, W]
        predicted = mean.argmax(axis=0)[labelled]
        confusion += np.bincount(
            truth * n_classes + predicted, minlength=n_classes * n_classes
        ).reshape(n_classes, n_classes)
        if truth.size:
            maps = compute_measures(stack, names) if names else {}
            columns = {name: maps[name][labelled] for name in names}
            columns["_errors"] = predicted != truth
            # kept for the foreground figures, whose class is known only at the end
            columns["_truth"] = truth
            columns["_confidence"] = mean.max(axis=0)[labelled]
            reservoir.add(columns)

    iou, miou, pixel_accuracy = iou_from_confusion(confusion)
    cal = calibration_figures(accumulator.result())
    detection: dict[str, dict[str, float]] = {}
    detection_fg: dict[str, dict[str, float]] = {}
    errors = reservoir.columns.get("_errors")
    per_class = confusion.sum(axis=1)
    majority = int(np.argmax(per_class)) if per_class.sum() else None
    fg = reservoir.columns["_truth"] != majority if errors is not None else np.zeros(0, dtype=bool)
    for name in names:
        if errors is None:
            detection[name] = detection_fg[name] = calibration.detection_scores([], [])
            continue
        scores = reservoir.columns[name]
        detection[name] = calibration.detection_scores(scores, errors)
        detection_fg[name] = calibration.detection_scores(scores[fg], errors[fg])
    fg_ece, fg_accuracy = math.nan, math.nan
    if errors is not None and fg.any():
        fg_correct = ~errors[fg]
        fg_ece = calibration.reliability_from_confidence(
            reservoir.columns["_confidence"][fg], fg_correct, n_bins
        ).ece
        fg_accuracy = float(fg_correct.mean())
    return jsonable(
        {
            "n_images": n_images,
            "n_labelled_pixels": int(confusion.sum()),
            "n_samples": predictor.n_samples,
            "temperature": predictor.temperature,
            "miou": miou,
            "iou_per_class": iou,
            "pixel_accuracy": pixel_accuracy,
            "confusion": confusion,
            "ece": cal["ece"],
            "mce": cal["mce"],
            "brier": cal["brier"],
            "nll": cal["nll"],
            "calibration_accuracy": cal["accuracy"],
            "reliability": cal["reliability"],
            "error_detection": detection,
            "error_detection_pixels": int(reservoir.keys.size),
            "background_class": majority,
            "foreground_pixels": int(fg.sum()),
            "foreground_ece": fg_ece,
            "foreground_accuracy": fg_accuracy,
            "error_detection_foreground": detection_fg,
            "skipped_measures": skipped,
        }
    )


def fit_temperature_on(
    predictor: Predictor,
    images: Iterable[np.ndarray],
    masks: Iterable[np.ndarray],
    *,
    max_pixels: int = MAX_DETECTION_PIXELS,
    seed: int = 0,
    batch_size: int | None = None,
) -> float:
    """Fit this version's temperature (Guo et al. 2017) on labelled validation pixels.

    Fits exactly what the predictor serves: with one sample, the NLL of ``softmax(z / T)``;
    with S > 1 (ensemble members or MC-dropout masks, the same masks ``predict`` draws), the
    NLL of ``mean_s softmax(z_s / T)`` (``calibration.fit_temperature_mixture``). Keeps a
    seeded uniform sample of at most ``max_pixels`` labelled pixels: memory ``[P, S, C]``
    float32 logits, e.g. 200,000 x 10 x 11 = 88 MB.
    """
    n_samples = predictor.n_samples
    reservoir = PixelReservoir(max_pixels, seed)
    for logits, mask in zip(
        predictor.predict_logits(images, batch_size, reduce="none"), masks, strict=True
    ):
        # logits [S, C, H, W] -> per labelled pixel [P, S, C]
        labelled = mask != UNLABELLED
        table = np.ascontiguousarray(logits[:, :, labelled].transpose(2, 0, 1))
        labels = mask[labelled].astype(np.int64)
        reservoir.add({"logits": table, "labels": labels})
    if "labels" not in reservoir.columns or reservoir.keys.size == 0:
        raise ValueError("fit_temperature_on needs at least one labelled validation pixel")
    table, labels = reservoir.columns["logits"], reservoir.columns["labels"]
    if n_samples == 1:
        temperature = calibration.fit_temperature(table[:, 0, :], labels)
    else:
        temperature = calibration.fit_temperature_mixture(table, labels)
    logger.info(
        "fitted temperature",
        extra={
            "temperature": temperature,
            "pixels": int(reservoir.keys.size),
            "samples": n_samples,
        },
    )
    return temperature
