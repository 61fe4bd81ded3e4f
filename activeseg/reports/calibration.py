"""Calibration section: how far the predicted confidence is from the observed accuracy, before
(``T = 1``) and after the version's temperature (Guo et al. 2017).

Every number comes from :mod:`activeseg.uncertainty.calibration` on the same sampled pixels:
ECE with equal-width bins (Naeini et al. 2015) and with adaptive, equal-mass bins (Nixon et al.
2019), MCE, multi-class Brier score, NLL, accuracy, and the reliability diagram (per bin: mean
confidence, accuracy, pixel count).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.reports.collect import PixelSample
from activeseg.uncertainty import (
    ReliabilityDiagram,
    brier_score,
    negative_log_likelihood,
    reliability_bins,
)

__all__ = ["DEFAULT_BINS", "calibration_metrics", "calibration_section", "diagram_dict"]

DEFAULT_BINS = 15


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


def calibration_section(
    sample: PixelSample, split: str, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """The report's ``calibration`` section for held-out ``split`` pixels.

    Keys: ``split``, ``n_images``, ``n_pixels`` (sampled) and ``n_pixels_total``, ``n_bins``,
    ``temperature``, ``before`` (``T = 1``) and ``after`` (fitted T; None without one), each
    from :func:`calibration_metrics`, and ``note``.
    """
    before = calibration_metrics(sample.probs, sample.labels, n_bins)
    after = (
        calibration_metrics(sample.probs_t, sample.labels, n_bins)
        if sample.probs_t is not None
        else None
    )
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
        "note": note,
    }
