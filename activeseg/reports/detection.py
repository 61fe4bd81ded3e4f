"""Error-detection section: which uncertainty measure ranks this model's wrong pixels first?

For every measure, AUROC and AUPR of the per-pixel uncertainty as a detector of the model's
pixel errors (Hendrycks and Gimpel 2017; Mukhoti and Gal 2018), computed with
:func:`activeseg.uncertainty.error_detection_auroc` / ``error_detection_aupr`` on the sampled
held-out pixels; ROC curves for the plot; and a paired bootstrap over *images* (pixels of one
image are not independent, so images are the resampling unit) of the AUROC difference between
the best ensemble measure and the best softmax measure, which decides whether the ensemble's
extra cost buys more than noise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from activeseg.reports.collect import (
    ENSEMBLE_ROWS,
    SINGLE_PASS_ROW,
    SOFTMAX_ROWS,
    TEMPERATURE_ROW,
    PixelSample,
)
from activeseg.uncertainty import error_detection_aupr, error_detection_auroc

__all__ = [
    "DESCRIPTIONS",
    "bootstrap_auroc_difference",
    "error_detection_section",
    "roc_points",
]

DESCRIPTIONS: dict[str, str] = {
    "least_confidence": "1 - max p (softmax)",
    "margin": "1 - (p1 - p2) (softmax)",
    "entropy": "H(p) (softmax)",
    TEMPERATURE_ROW: "H(softmax(z / T)) (temperature-scaled softmax)",
    "predictive_entropy": "H(mean_s p_s) (ensemble)",
    "mutual_information": "BALD: H(mean) - mean H (ensemble, epistemic)",
    "variation_ratio": "1 - modal votes / S (ensemble)",
    SINGLE_PASS_ROW: "H(p) of one deterministic pass, vs that pass's own errors",
}

FAMILIES: dict[str, str] = {
    **dict.fromkeys(SOFTMAX_ROWS, "softmax"),
    TEMPERATURE_ROW: "softmax",
    **dict.fromkeys(ENSEMBLE_ROWS, "ensemble"),
    SINGLE_PASS_ROW: "single pass",
}

MIN_ERRORS_FOR_VERDICT = 30


def roc_points(
    uncertainty: npt.ArrayLike, errors: npt.ArrayLike, max_points: int = 200
) -> dict[str, list[float]]:
    """ROC curve of ``uncertainty`` ``[P]`` as a detector of ``errors`` (bool ``[P]``).

    One point per distinct threshold (ties enter together), from (0, 0) to (1, 1), thinned to at
    most ``max_points`` evenly spaced points. Returns ``{"fpr": [...], "tpr": [...]}`` (empty
    lists when there are no errors or no correct pixels).
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=bool).ravel()
    n_pos = int(e.sum())
    n_neg = e.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return {"fpr": [], "tpr": []}
    order = np.argsort(-u, kind="stable")
    u_sorted = u[order]
    tp = np.cumsum(e[order], dtype=np.float64)
    last = np.flatnonzero(np.r_[u_sorted[1:] != u_sorted[:-1], True])
    tpr = np.r_[0.0, tp[last] / n_pos]
    fpr = np.r_[0.0, (last + 1.0 - tp[last]) / n_neg]
    if tpr.size > max_points:
        keep = np.unique(np.linspace(0, tpr.size - 1, max_points).round().astype(np.int64))
        tpr, fpr = tpr[keep], fpr[keep]
    return {"fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}


def bootstrap_auroc_difference(
    first: npt.ArrayLike,
    second: npt.ArrayLike,
    errors: npt.ArrayLike,
    image_index: npt.ArrayLike,
    *,
    n_boot: int = 200,
    max_pixels: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Paired bootstrap over images of ``AUROC(first) - AUROC(second)``.

    Args:
        first, second: uncertainty ``[P]`` of two measures on the same pixels.
        errors: bool ``[P]``; image_index: int ``[P]``, the image of each pixel.
        n_boot: resamples: each draws as many images as there are, with replacement, and keeps
            all their pixels; resamples without both errors and correct pixels are dropped.
        max_pixels: the pixels are first thinned to a uniform sample of this size (speed).
        seed: the RNG seed.

    Returns:
        ``{"difference", "ci_low", "ci_high", "n_boot", "n_images"}``: the difference on all
        pixels and the 2.5 / 97.5 percentiles over resamples (None when fewer than 2 images
        or no valid resample).
    """
    a = np.asarray(first, dtype=np.float64).ravel()
    b = np.asarray(second, dtype=np.float64).ravel()
    e = np.asarray(errors, dtype=bool).ravel()
    img = np.asarray(image_index).ravel()
    difference = error_detection_auroc(a, e) - error_detection_auroc(b, e)
    images = np.unique(img)
    out: dict[str, Any] = {
        "difference": difference,
        "ci_low": None,
        "ci_high": None,
        "n_boot": 0,
        "n_images": int(images.size),
    }
    if images.size < 2 or not math.isfinite(difference):
        return out
    rng = np.random.default_rng(seed)
    if e.size > max_pixels:
        keep = np.sort(rng.choice(e.size, size=max_pixels, replace=False))
        a, b, e, img = a[keep], b[keep], e[keep], img[keep]
    groups = [np.flatnonzero(img == i) for i in images]
    diffs = []
    for _ in range(n_boot):
        picked = rng.integers(len(groups), size=len(groups))
        idx = np.concatenate([groups[i] for i in picked])
        d = error_detection_auroc(a[idx], e[idx]) - error_detection_auroc(b[idx], e[idx])
        if math.isfinite(d):
            diffs.append(d)
    if diffs:
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(diffs, [2.5, 97.5]))
        out["n_boot"] = len(diffs)
    return out


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def _verdict(
    rows: list[dict[str, Any]], comparison: dict[str, Any] | None, n_errors: int, n_samples: int
) -> str:
    ranked = [r for r in rows if r["family"] != "single pass" and r["auroc"] is not None]
    ranked = [r for r in ranked if math.isfinite(r["auroc"])]
    if not ranked:
        return "No verdict: the held-out pixels hold no errors (or only errors) to detect."
    best = max(ranked, key=lambda r: r["auroc"])
    text = f"Best error detector on this project: {best['measure']} (AUROC {_fmt(best['auroc'])})."
    if n_errors < MIN_ERRORS_FOR_VERDICT:
        text += f" Only {n_errors} wrong pixels were sampled: treat the ranking as anecdotal."
    if n_samples <= 1:
        return text + (
            " Single network: only softmax measures exist; train with method 'mc_dropout' or "
            "'ensemble' to compare them with ensemble measures."
        )
    if comparison is None:
        return text
    diff = comparison["difference"]
    lo, hi = comparison["ci_low"], comparison["ci_high"]
    pair = (
        f"the best ensemble measure ({comparison['ensemble']}) vs the best softmax measure "
        f"({comparison['softmax']}): AUROC difference {diff:+.3f}"
    )
    if lo is None or hi is None:
        return text + f" Compared, {pair}; too few images for a bootstrap interval, so no claim."
    ci = f"95% bootstrap CI over {comparison['n_images']} images [{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        return text + f" The ensemble measures beat softmax by more than noise: {pair}, {ci}."
    if hi < 0:
        return text + f" Softmax beats the ensemble measures by more than noise: {pair}, {ci}."
    return text + (
        f" The ensemble measures do not beat softmax by more than noise: {pair}, {ci}; "
        "softmax uncertainty is good enough for ranking errors here."
    )


def error_detection_section(
    sample: PixelSample, *, n_boot: int = 200, seed: int = 0, roc_max_points: int = 200
) -> dict[str, Any]:
    """The report's ``error_detection`` section.

    Keys: ``n_pixels``, ``n_errors``, ``error_rate`` (= the AUPR of an uninformative measure),
    ``rows`` [{measure, family, description, auroc, aupr}] (softmax, temperature-scaled and
    ensemble measures against the served prediction's errors; the one-pass row against its own
    errors), ``roc`` {measure: {fpr, tpr}}, ``comparison`` (best ensemble vs best softmax,
    :func:`bootstrap_auroc_difference`; None for a single network) and ``verdict``.
    """
    errors = sample.errors
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {
        name: (values, errors) for name, values in sample.measures.items()
    }
    if sample.single_entropy is not None and sample.single_errors is not None:
        columns[SINGLE_PASS_ROW] = (sample.single_entropy, sample.single_errors)
    rows: list[dict[str, Any]] = []
    roc: dict[str, dict[str, list[float]]] = {}
    for name, (values, errs) in columns.items():
        rows.append(
            {
                "measure": name,
                "family": FAMILIES.get(name, "softmax"),
                "description": DESCRIPTIONS.get(name, name),
                "auroc": error_detection_auroc(values, errs) if values.size else math.nan,
                "aupr": error_detection_aupr(values, errs) if values.size else math.nan,
            }
        )
        roc[name] = roc_points(values, errs, roc_max_points)

    def best_of(family: str) -> str | None:
        usable = [r for r in rows if r["family"] == family and math.isfinite(r["auroc"])]
        return max(usable, key=lambda r: r["auroc"])["measure"] if usable else None

    comparison: dict[str, Any] | None = None
    best_ens, best_soft = best_of("ensemble"), best_of("softmax")
    if best_ens is not None and best_soft is not None:
        comparison = {
            "ensemble": best_ens,
            "softmax": best_soft,
            **bootstrap_auroc_difference(
                sample.measures[best_ens],
                sample.measures[best_soft],
                errors,
                sample.image_index,
                n_boot=n_boot,
                seed=seed,
            ),
        }
    n_errors = int(errors.sum())
    return {
        "n_pixels": sample.n_pixels,
        "n_errors": n_errors,
        "error_rate": n_errors / sample.n_pixels if sample.n_pixels else math.nan,
        "single_pass_accuracy": (
            float(1.0 - sample.single_errors.mean())
            if sample.single_errors is not None and sample.single_errors.size
            else None
        ),
        "rows": rows,
        "roc": roc,
        "comparison": comparison,
        "verdict": _verdict(rows, comparison, n_errors, sample.n_samples),
    }
