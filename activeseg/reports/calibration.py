"""Calibration section: how far the predicted confidence is from the observed accuracy, before
(``T = 1``) and after the version's temperature (Guo et al. 2017).

ECE with equal-width bins (Naeini et al. 2015), MCE, multi-class Brier score, NLL, accuracy,
mean confidence and the reliability diagram (per bin: mean confidence, accuracy, pixel count)
are read from the calibration sums that :func:`activeseg.reports.collect.collect_pixels` streams
over *every* labelled pixel with the trainer's own functions
(:func:`activeseg.models.evaluation.calibration_stream`,
:func:`activeseg.models.evaluation.calibration_figures`): they are exact, and equal the metrics a
retrain stores, whatever the number of pixels. Only the ECE with adaptive, equal-mass bins
(Nixon et al. 2019), which needs every confidence at once, comes from the sampled pixels (exact
too when every labelled pixel fits in the sample).

The same figures on the *foreground* pixels (true class other than the majority class of all
evaluated labelled pixels), where the easy, confident background does not hide a miscalibration,
and per *region* (each region counts once with its mean confidence and fraction of right pixels
over its labelled pixels: :func:`activeseg.uncertainty.calibration.reliability_from_confidence`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.models.evaluation import calibration_figures
from activeseg.reports.collect import DEFAULT_BINS, PixelSample, RegionSample
from activeseg.uncertainty import (
    ReliabilityDiagram,
    brier_score,
    negative_log_likelihood,
    reliability_bins,
)
from activeseg.uncertainty.calibration import (
    CalibrationAccumulator,
    majority_class,
    reliability_from_confidence,
)

__all__ = [
    "DEFAULT_BINS",
    "calibration_metrics",
    "calibration_section",
    "diagram_dict",
    "region_calibration_metrics",
    "streamed_calibration_metrics",
]


def diagram_dict(diagram: ReliabilityDiagram) -> dict[str, Any]:
    """A reliability diagram as JSON-ready lists ``[B + 1]`` edges and ``[B]`` per-bin values."""
    return {
        "edges": diagram.edges.tolist(),
        "confidence": diagram.confidence.tolist(),
        "accuracy": diagram.accuracy.tolist(),
        "count": diagram.count.tolist(),
    }


def calibration_metrics(
    probs: npt.NDArray[np.floating], labels: npt.NDArray[np.int64], n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """ECE (equal-width and adaptive), MCE, Brier, NLL, accuracy and mean confidence of
    probabilities ``[P, C]`` against labels ``[P]``, plus the equal-width reliability diagram."""
    if labels.size == 0:
        nan = math.nan
        return {
            "ece": nan,
            "ece_adaptive": nan,
            "mce": nan,
            "brier": nan,
            "nll": nan,
            "accuracy": nan,
            "mean_confidence": nan,
            "reliability": None,
        }
    equal = reliability_bins(probs, labels, n_bins, adaptive=False)
    adaptive = reliability_bins(probs, labels, n_bins, adaptive=True)
    return {
        "ece": equal.ece,
        "ece_adaptive": adaptive.ece,
        "mce": equal.mce,
        "brier": brier_score(probs, labels),
        "nll": negative_log_likelihood(probs, labels),
        "accuracy": float(np.mean(probs.argmax(axis=1) == labels)),
        "mean_confidence": float(np.mean(probs.max(axis=1), dtype=np.float64)),
        "reliability": diagram_dict(equal),
    }


def streamed_calibration_metrics(
    stream: CalibrationAccumulator,
    probs: npt.NDArray[np.floating],
    labels: npt.NDArray[np.int64],
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """:func:`calibration_metrics`' figures with everything but the adaptive ECE read from
    ``stream`` (every labelled pixel, the trainer's sums); the adaptive ECE from the sampled
    probabilities ``[P, C]`` and labels ``[P]``."""
    if stream.n_bins != n_bins:
        raise ValueError(f"the pixels were collected with {stream.n_bins} bins, not {n_bins}")
    result = stream.result()
    figures = calibration_figures(result)
    adaptive = reliability_bins(probs, labels, n_bins, adaptive=True) if labels.size else None
    return {
        "ece": figures["ece"],
        "ece_adaptive": adaptive.ece if adaptive is not None else math.nan,
        "mce": figures["mce"],
        "brier": figures["brier"],
        "nll": figures["nll"],
        "accuracy": figures["accuracy"],
        "mean_confidence": figures["mean_confidence"],
        "reliability": figures["reliability"] if result["n_pixels"] else None,
    }


def region_calibration_metrics(
    confidence: npt.NDArray[np.float64],
    accuracy: npt.NDArray[np.float64],
    n_bins: int = DEFAULT_BINS,
) -> dict[str, Any]:
    """ECE (equal-width and adaptive), MCE, mean accuracy and mean confidence of regions: each
    region's mean confidence ``[R]`` against its fraction of right pixels ``[R]``, one region one
    unit. (Brier and NLL are per-pixel quantities and have no region version here.)"""
    if confidence.size == 0:
        return {
            "ece": math.nan,
            "ece_adaptive": math.nan,
            "mce": math.nan,
            "accuracy": math.nan,
            "mean_confidence": math.nan,
        }
    equal = reliability_from_confidence(confidence, accuracy, n_bins)
    return {
        "ece": equal.ece,
        "ece_adaptive": reliability_from_confidence(confidence, accuracy, n_bins, True).ece,
        "mce": equal.mce,
        "accuracy": float(accuracy.mean()),
        "mean_confidence": float(confidence.mean()),
    }


def _regions(regions: RegionSample | None, n_bins: int) -> dict[str, Any] | None:
    if regions is None:
        return None
    after = None
    if regions.confidence_t is not None and regions.accuracy_t is not None:
        after = region_calibration_metrics(regions.confidence_t, regions.accuracy_t, n_bins)
    return {
        "kind": regions.kind,
        "n_regions": regions.n_regions,
        "before": region_calibration_metrics(regions.confidence, regions.accuracy, n_bins),
        "after": after,
    }


def _without_diagram(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if k != "reliability"}


def calibration_section(
    sample: PixelSample, split: str, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """The report's ``calibration`` section for held-out ``split`` pixels.

    Keys: ``split``, ``n_images``, ``n_pixels`` (sampled) and ``n_pixels_total``, ``n_bins``,
    ``temperature``, ``before`` (``T = 1``) and ``after`` (fitted T; None without one), each
    from :func:`streamed_calibration_metrics` (over every labelled pixel: ``sample`` must come
    from :func:`activeseg.reports.collect.collect_pixels` with masks, ``n_bins`` as collected),
    ``foreground`` {majority_class, n_pixels, before, after} (:func:`calibration_metrics`
    without the diagram, on the sampled foreground pixels), ``regions`` {kind, n_regions,
    before, after} (:func:`region_calibration_metrics`; None without region maps) and ``note``.
    """
    if sample.calibration is None or (sample.probs_t is not None and sample.calibration_t is None):
        raise ValueError("the calibration section needs the calibration sums of labelled pixels")
    before = streamed_calibration_metrics(sample.calibration, sample.probs, sample.labels, n_bins)
    after = (
        streamed_calibration_metrics(sample.calibration_t, sample.probs_t, sample.labels, n_bins)
        if sample.probs_t is not None and sample.calibration_t is not None
        else None
    )
    counts = sample.class_counts
    majority = (
        int(np.argmax(counts))
        if counts is not None and counts.sum() > 0
        else majority_class(sample.labels[sample.labels >= 0])
    )
    fg = sample.labels != majority
    foreground = {
        "majority_class": majority,
        "n_pixels": int(fg.sum()),
        "before": _without_diagram(
            calibration_metrics(sample.probs[fg], sample.labels[fg], n_bins)
        ),
        "after": _without_diagram(
            calibration_metrics(sample.probs_t[fg], sample.labels[fg], n_bins)
        )
        if sample.probs_t is not None
        else None,
    }
    if sample.temperature is None:
        note = "this version has no fitted temperature (no labelled val images at training)"
    elif split == "val":
        note = (
            "the temperature was fitted on these val pixels, so 'after' is in-sample for T "
            "(one parameter); label some test images for an out-of-sample check"
        )
    else:
        note = f"the temperature was fitted on val; these {split} pixels are out-of-sample"
    return {
        "split": split,
        "n_images": sample.n_images,
        "n_pixels": sample.n_pixels,
        "n_pixels_total": sample.n_pixels_total,
        "n_bins": n_bins,
        "temperature": sample.temperature,
        "before": before,
        "after": after,
        "foreground": foreground,
        "regions": _regions(sample.regions, n_bins),
        "note": note,
    }
