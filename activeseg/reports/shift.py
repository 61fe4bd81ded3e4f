"""Shift check: does the model notice when its inputs stop looking like its training data?

The held-out images are perturbed (Gaussian noise, blur, contrast reduction; Hendrycks and
Dietterich 2019 use the same corruption families) and replaced by pure uniform-noise images
(out of distribution: no class is right). On each copy the report measures how much confidence
softmax keeps (mean max probability, share of pixels above 0.9), how calibrated it stays (ECE,
accuracy; labels are unchanged by these pixel-wise perturbations) and how much the uncertainty
measures rise, in particular the ensemble's epistemic mutual information (Ovadia et al. 2019,
"Can You Trust Your Model's Uncertainty?").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import ndimage

from activeseg.reports.collect import PixelSample
from activeseg.reports.wording import change, ratio_change
from activeseg.uncertainty import expected_calibration_error
from activeseg.uncertainty.measures import ENTROPY, MUTUAL_INFORMATION

__all__ = ["CONDITIONS", "PERTURBATIONS", "condition_summary", "perturb", "shift_section"]

NOISE_SIGMA = 30.0
"""Gaussian noise std in grey levels (0-255)."""
BLUR_SIGMA = 2.0
"""Gaussian blur std in pixels."""
CONTRAST_FACTOR = 0.3
"""Contrast kept: ``mean + factor * (x - mean)``."""


def _gaussian_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return image.astype(np.float64) + rng.normal(0.0, NOISE_SIGMA, image.shape)


def _blur(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = (BLUR_SIGMA, BLUR_SIGMA) + (0.0,) * (image.ndim - 2)  # never across channels
    return ndimage.gaussian_filter(image.astype(np.float64), sigma=sigma)


def _contrast(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = image.astype(np.float64)
    mean = x.mean()
    return mean + CONTRAST_FACTOR * (x - mean)


def _uniform_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=image.shape).astype(np.float64)


PERTURBATIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "blur": _blur,
    "contrast": _contrast,
    "uniform_noise": _uniform_noise,
}
"""Perturbation name -> function of a uint8 image ``[H, W]`` / ``[H, W, 3]`` and an RNG."""

OOD_CONDITIONS = frozenset({"uniform_noise"})
"""Conditions whose images have no meaningful labels."""

CONDITIONS: tuple[str, ...] = ("clean", *PERTURBATIONS)

DESCRIPTIONS = {
    "clean": "held-out images as they are",
    "gaussian_noise": f"additive Gaussian noise, std {NOISE_SIGMA:g} grey levels",
    "blur": f"Gaussian blur, std {BLUR_SIGMA:g} px",
    "contrast": f"contrast reduced to {CONTRAST_FACTOR:g}x around the image mean",
    "uniform_noise": "uniform noise images of the same size (out of distribution, no labels)",
}


def perturb(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A perturbed uint8 copy of ``image`` (same shape) by the named perturbation."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; choose from {', '.join(PERTURBATIONS)}")
    out = PERTURBATIONS[kind](image, rng)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values, dtype=np.float64)) if values.size else math.nan


def condition_summary(sample: PixelSample, n_bins: int = 15) -> dict[str, Any]:
    """Confidence, calibration and mean uncertainty of one condition's pixels.

    Keys: ``n_images``, ``n_pixels``, ``mean_max_prob`` (``T = 1``), ``mean_max_prob_t``,
    ``frac_confident`` (max prob > 0.9 at ``T = 1``), ``accuracy``, ``ece`` and ``ece_t`` (None
    without labels), ``mean_measures`` {name: mean over pixels}.
    """
    conf = sample.probs.max(axis=1) if sample.n_pixels else np.zeros(0, np.float32)
    conf_t = sample.probs_t.max(axis=1) if sample.probs_t is not None else None
    labelled = sample.labelled and sample.n_pixels > 0
    return {
        "n_images": sample.n_images,
        "n_pixels": sample.n_pixels,
        "mean_max_prob": _mean(conf),
        "mean_max_prob_t": _mean(conf_t) if conf_t is not None else None,
        "frac_confident": _mean(conf > 0.9),
        "accuracy": float(1.0 - sample.errors.mean()) if labelled else None,
        "ece": expected_calibration_error(sample.probs, sample.labels, n_bins)
        if labelled
        else None,
        "ece_t": expected_calibration_error(sample.probs_t, sample.labels, n_bins)
        if labelled and sample.probs_t is not None
        else None,
        "mean_measures": {name: _mean(values) for name, values in sample.measures.items()},
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not math.isfinite(a) or not math.isfinite(b) or b <= 0:
        return None
    return a / b


def shift_section(samples: dict[str, PixelSample], n_bins: int = 15) -> dict[str, Any]:
    """The report's ``shift`` section from one :class:`PixelSample` per condition (``clean``
    first). Keys: ``conditions`` {name: :func:`condition_summary` + ``description`` +
    ``rise`` {measure: mean / clean mean}}, ``summary`` (sentences)."""
    conditions: dict[str, dict[str, Any]] = {}
    for name, sample in samples.items():
        summary = condition_summary(sample, n_bins)
        summary["description"] = DESCRIPTIONS.get(name, name)
        conditions[name] = summary
    clean = conditions.get("clean")
    if clean is None:
        return {"conditions": conditions, "summary": "no clean reference"}
    for summary in conditions.values():
        summary["rise"] = {
            m: _ratio(v, clean["mean_measures"].get(m)) for m, v in summary["mean_measures"].items()
        }
    sentences = []
    shifted = [n for n in conditions if n != "clean" and n not in OOD_CONDITIONS]
    scored = [n for n in shifted if conditions[n]["accuracy"] is not None]
    if scored and clean["accuracy"] is not None:
        worst = min(scored, key=lambda n: conditions[n]["accuracy"])
        w = conditions[worst]
        text = (
            f"Under {worst.replace('_', ' ')}, accuracy "
            f"{change(clean['accuracy'], w['accuracy'])} while softmax mean max-prob "
            f"{change(clean['mean_max_prob'], w['mean_max_prob'])} (ECE "
            f"{change(clean['ece'], w['ece'])})"
        )
        mi = w["rise"].get(MUTUAL_INFORMATION.name)
        if mi is not None:
            text += f"; mean mutual information {ratio_change(mi)}"
        sentences.append(text + ".")
    for name in (n for n in conditions if n in OOD_CONDITIONS):
        o = conditions[name]
        text = (
            f"On {name.replace('_', ' ')} images (no right answer) softmax keeps mean max-prob "
            f"{o['mean_max_prob']:.3f}, with {100 * o['frac_confident']:.0f}% of pixels above 0.9"
        )
        ent = o["rise"].get(ENTROPY.name)
        mi = o["rise"].get(MUTUAL_INFORMATION.name)
        if ent is not None:
            text += f"; entropy is {ent:.2f}x clean"
        if mi is not None:
            text += f", mutual information {mi:.2f}x clean"
        sentences.append(text + ".")
    return {"conditions": conditions, "summary": " ".join(sentences)}
