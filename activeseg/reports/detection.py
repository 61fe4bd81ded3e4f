"""Error-detection section: which uncertainty measure ranks this model's wrong pixels first?

For every measure, AUROC and AUPR of the per-pixel uncertainty as a detector of the model's
pixel errors (Hendrycks and Gimpel 2017; Mukhoti and Gal 2018), computed with
:func:`activeseg.uncertainty.error_detection_auroc` / ``error_detection_aupr`` on the sampled
held-out pixels; ROC curves for the plot; and a paired bootstrap over *images* (pixels of one
image are not independent, so images are the resampling unit) of the AUROC difference between
the best ensemble measure and the best softmax measure, which decides whether the ensemble's
extra cost buys more than noise.

Pixel-level figures are dominated by the easy background (the majority class, predicted right
with high confidence), so every row is also scored on the *foreground* pixels (true class other
than the majority class of all evaluated labelled pixels) and *per region* (the region's pooled
score against whether it holds a wrong labelled pixel; Spearman against its error fraction).

The verdict (:func:`detection_verdict`) first asks whether any measure finds the errors at all:
a best AUROC below :data:`NEAR_CHANCE_AUROC`, or a bootstrap interval reaching 0.5, means
uncertainty sampling is no better than random regions yet, whatever the ensemble comparison says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from activeseg.reports.collect import (
    ENSEMBLE_ROWS,
    MIN_LABELLED_SHARE,
    SINGLE_PASS_ROW,
    SOFTMAX_ROWS,
    TEMPERATURE_ROW,
    PixelSample,
    RegionSample,
)
from activeseg.uncertainty import error_detection_auroc
from activeseg.uncertainty.calibration import (
    detection_scores,
    error_rank_correlation,
    majority_class,
)
from activeseg.uncertainty.measures import MEASURES

__all__ = [
    "DESCRIPTIONS",
    "NEAR_CHANCE_AUROC",
    "USEFUL_AUROC",
    "bootstrap_auroc_difference",
    "bootstrap_auroc_interval",
    "detection_verdict",
    "error_detection_section",
    "roc_points",
]

DESCRIPTIONS: dict[str, str] = {
    **{
        name: f"{MEASURES[name].label}: {MEASURES[name].formula} ({MEASURES[name].family})"
        for name in SOFTMAX_ROWS + ENSEMBLE_ROWS
    },
    TEMPERATURE_ROW: "H(softmax(z / T)) (temperature-scaled softmax)",
    SINGLE_PASS_ROW: "H(p) of one deterministic pass, vs that pass's own errors",
}
"""Row name -> description: the registry's label and formula, plus the two rows that are
variants of the entropy rather than measures of their own."""

FAMILIES: dict[str, str] = {
    **{name: MEASURES[name].family for name in SOFTMAX_ROWS + ENSEMBLE_ROWS},
    TEMPERATURE_ROW: "softmax",
    SINGLE_PASS_ROW: "single pass",
}

MIN_ERRORS_FOR_VERDICT = 30

NEAR_CHANCE_AUROC = 0.6
"""Below this best AUROC no measure finds the errors: a ranking this close to 0.5 picks wrong
pixels barely more often than a coin, so uncertainty sampling is random selection in disguise."""

USEFUL_AUROC = 0.7
"""From this best AUROC up, a measure ranks errors well enough to steer labelling; between
:data:`NEAR_CHANCE_AUROC` and this it is a weak detector."""

FOREGROUND_DEFINITION = (
    "labelled pixels whose true class is not the majority class of all evaluated labelled "
    "pixels (the background, whose easy pixels dominate pixel-level figures)"
)
REGION_DEFINITION = (
    "each region (the project's superpixels or grid tiles) of the held-out images with at "
    "least {share:.0%} of its pixels labelled; score = the measure's mean over the region (as "
    "the service pools it); positive = it holds a wrong labelled pixel; Spearman = rank "
    "correlation of the score with the region's error fraction"
)


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

    def difference(idx: np.ndarray | None, e: np.ndarray) -> float:
        if idx is None:
            return error_detection_auroc(a, e) - error_detection_auroc(b, e)
        return error_detection_auroc(a[idx], e) - error_detection_auroc(b[idx], e)

    value, out = _image_bootstrap(difference, errors, image_index, n_boot, max_pixels, seed)
    return {"difference": value, **out}


def bootstrap_auroc_interval(
    uncertainty: npt.ArrayLike,
    errors: npt.ArrayLike,
    image_index: npt.ArrayLike,
    *,
    n_boot: int = 200,
    max_pixels: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """AUROC of one measure with a bootstrap interval over images (as
    :func:`bootstrap_auroc_difference`). uncertainty ``[P]``, errors bool ``[P]``,
    image_index int ``[P]``. Returns ``{"auroc", "ci_low", "ci_high", "n_boot", "n_images"}``."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()

    def auroc(idx: np.ndarray | None, e: np.ndarray) -> float:
        return error_detection_auroc(u if idx is None else u[idx], e)

    value, out = _image_bootstrap(auroc, errors, image_index, n_boot, max_pixels, seed)
    return {"auroc": value, **out}


def _image_bootstrap(
    statistic: Callable[[np.ndarray | None, np.ndarray], float],
    errors: npt.ArrayLike,
    image_index: npt.ArrayLike,
    n_boot: int,
    max_pixels: int,
    seed: int,
) -> tuple[float, dict[str, Any]]:
    """``statistic(pixel indices or None for all, errors at them)`` on all pixels, and its
    2.5 / 97.5 percentiles over ``n_boot`` resamples of whole images (pixels thinned first to
    ``max_pixels``; resamples where it is not finite are dropped)."""
    e = np.asarray(errors, dtype=bool).ravel()
    img = np.asarray(image_index).ravel()
    value = statistic(None, e)
    images = np.unique(img)
    out: dict[str, Any] = {
        "ci_low": None,
        "ci_high": None,
        "n_boot": 0,
        "n_images": int(images.size),
    }
    if images.size < 2 or not math.isfinite(value):
        return value, out
    rng = np.random.default_rng(seed)
    pixels = np.arange(e.size)
    if e.size > max_pixels:
        pixels = np.sort(rng.choice(e.size, size=max_pixels, replace=False))
    groups = [pixels[img[pixels] == i] for i in images]
    values = []
    for _ in range(n_boot):
        picked = rng.integers(len(groups), size=len(groups))
        idx = np.concatenate([groups[i] for i in picked])
        v = statistic(idx, e[idx])
        if math.isfinite(v):
            values.append(v)
    if values:
        out["ci_low"], out["ci_high"] = (float(v) for v in np.percentile(values, [2.5, 97.5]))
        out["n_boot"] = len(values)
    return value, out


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and math.isfinite(value)


def _best_row(
    rows: list[dict[str, Any]], scope: str | None = None
) -> tuple[dict[str, Any], float] | None:
    """The row (not the one-pass row) with the highest AUROC at ``scope`` (None = pixels,
    ``"foreground"`` or ``"region"``), and that AUROC; None when no row has one."""
    best: tuple[dict[str, Any], float] | None = None
    for row in rows:
        if row.get("family") == "single pass":
            continue
        value = row.get("auroc") if scope is None else (row.get(scope) or {}).get("auroc")
        if _finite(value) and (best is None or value > best[1]):
            best = (row, float(value))
    return best


def _what_to_do(det: dict[str, Any]) -> str:
    error_rate = det.get("error_rate")
    accuracy = f" at pixel accuracy {1 - error_rate:.3f}" if _finite(error_rate) else ""
    ensemble = (
        "train an ensemble or MC dropout (model method 'ensemble' or 'mc_dropout') and compare "
        "its measures"
        if (det.get("n_samples") or 1) <= 1
        else "the ensemble measures do no better, so more members will not help before the "
        "model itself improves"
    )
    return (
        " What to do: label more regions at random first, since"
        f"{accuracy} the model is too weak for its uncertainty to mean anything; {ensemble}; "
        "and check the held-out labels, since wrong or shifted masks make errors look random."
    )


def detection_verdict(det: dict[str, Any]) -> str:
    """The verdict of an ``error_detection`` section (a JSON-ready dict, see
    :func:`error_detection_section`; ``verdict`` itself is not read).

    Branches, in order: no errors to detect; no measure finds the errors (best pixel AUROC below
    :data:`NEAR_CHANCE_AUROC`, or its bootstrap interval reaching 0.5), with what to do; else the
    best detector, weak below :data:`USEFUL_AUROC`, then warnings when the foreground or the
    regions are near chance, then the ensemble-vs-softmax comparison (softmax is called good
    enough only when the comparison finds no difference and the best softmax AUROC is useful).
    """
    rows = det.get("rows") or []
    found = _best_row(rows)
    if found is None:
        return "No verdict: the held-out pixels hold no errors (or only errors) to detect."
    best, auroc = found
    n_errors = int(det.get("n_errors") or 0)
    few = (
        f" Only {n_errors} wrong pixels were sampled: treat the ranking as anecdotal."
        if n_errors < MIN_ERRORS_FOR_VERDICT
        else ""
    )
    interval = det.get("best") or {}
    lo, hi = interval.get("ci_low"), interval.get("ci_high")
    ci, reaches_chance = "", False
    if interval.get("measure") == best["measure"] and _finite(lo) and _finite(hi):
        ci = f", 95% bootstrap CI over {interval.get('n_images')} images [{lo:.3f}, {hi:.3f}]"
        reaches_chance = lo <= 0.5
    if auroc < NEAR_CHANCE_AUROC or reaches_chance:
        why = (
            "near chance (0.5 is a coin flip)"
            if auroc < NEAR_CHANCE_AUROC
            else "an interval that reaches chance (0.5)"
        )
        return (
            f"No uncertainty measure finds this model's errors: the best, {best['measure']}, "
            f"has AUROC {auroc:.3f}{ci}, {why}. Ranking regions by uncertainty is no better "
            "than picking them at random yet." + few + _what_to_do(det)
        )
    weak = auroc < USEFUL_AUROC
    text = f"Best error detector on this project: {best['measure']} (AUROC {auroc:.3f}{ci})"
    text += (
        f", a weak one (below {USEFUL_AUROC}): uncertainty sampling can gain little over "
        "random regions yet."
        if weak
        else "."
    )
    text += few
    fg = _best_row(rows, "foreground")
    if fg is not None and fg[1] < NEAR_CHANCE_AUROC:
        majority = (det.get("foreground") or {}).get("majority_class")
        text += (
            f" On foreground pixels (true class other than the majority class {majority}) the "
            f"best measure, {fg[0]['measure']}, reaches only AUROC {fg[1]:.3f}: the pixel "
            "figure is carried by the easy background."
        )
    region = _best_row(rows, "region")
    if region is not None and region[1] < NEAR_CHANCE_AUROC:
        text += (
            f" Per region, the best pooled score ({region[0]['measure']}) reaches only AUROC "
            f"{region[1]:.3f} at telling regions that hold an error from clean ones."
        )
    if (det.get("n_samples") or 1) <= 1:
        return text + (
            " Single network: only softmax measures exist; train with method 'mc_dropout' or "
            "'ensemble' to compare them with ensemble measures."
        )
    comparison = det.get("comparison")
    if comparison is None:
        return text
    diff = comparison["difference"]
    lo, hi = comparison.get("ci_low"), comparison.get("ci_high")
    pair = (
        f"the best ensemble measure ({comparison['ensemble']}) vs the best softmax measure "
        f"({comparison['softmax']}): AUROC difference {diff:+.3f}"
    )
    if not (_finite(lo) and _finite(hi)):
        return text + f" Compared, {pair}; too few images for a bootstrap interval, so no claim."
    ci = f"95% bootstrap CI over {comparison['n_images']} images [{lo:+.3f}, {hi:+.3f}]"
    if lo > 0:
        return text + f" The ensemble measures beat softmax by more than noise: {pair}, {ci}."
    if hi < 0:
        return text + f" Softmax beats the ensemble measures by more than noise: {pair}, {ci}."
    softmax_rows = {r["measure"]: r for r in rows}
    softmax_auroc = (softmax_rows.get(comparison["softmax"]) or {}).get("auroc")
    if _finite(softmax_auroc) and softmax_auroc >= USEFUL_AUROC:
        return text + (
            f" The ensemble measures do not beat softmax by more than noise: {pair}, {ci}; "
            "softmax uncertainty is good enough for ranking errors here."
        )
    return text + (
        f" The ensemble measures do not beat softmax by more than noise: {pair}, {ci}; "
        "neither family ranks errors well yet."
    )


def _region_rows(regions: RegionSample) -> dict[str, dict[str, float]]:
    """Per measure: AUROC / AUPR of the pooled score against "holds an error", and Spearman
    against the error fraction."""
    has_error, fraction = regions.has_error, regions.error_fraction
    return {
        name: {
            **detection_scores(values, has_error),
            "spearman": error_rank_correlation(values, fraction),
        }
        for name, values in regions.scores.items()
    }


def error_detection_section(
    sample: PixelSample, *, n_boot: int = 200, seed: int = 0, roc_max_points: int = 200
) -> dict[str, Any]:
    """The report's ``error_detection`` section.

    Keys: ``n_pixels``, ``n_errors``, ``error_rate`` (= the AUPR of an uninformative measure),
    ``n_samples``, ``rows`` [{measure, family, description, auroc, aupr, foreground {auroc,
    aupr}, region {auroc, aupr, spearman} | None}] (softmax, temperature-scaled and ensemble
    measures against the served prediction's errors; the one-pass row against its own errors,
    with no region figures), ``roc`` {measure: {fpr, tpr}} (pixels), ``best`` (the best pixel
    measure's AUROC with a bootstrap interval over images, :func:`bootstrap_auroc_interval`),
    ``foreground`` {definition, majority_class, n_pixels, n_errors, error_rate}, ``regions``
    {definition, kind, n_regions, n_with_error, share_with_error (= the region AUPR of an
    uninformative score), mean_error_fraction} or None without region maps, ``comparison``
    (best ensemble vs best softmax, :func:`bootstrap_auroc_difference`; None for a single
    network) and ``verdict`` (:func:`detection_verdict`).
    """
    errors = sample.errors
    columns: dict[str, tuple[np.ndarray, np.ndarray]] = {
        name: (values, errors) for name, values in sample.measures.items()
    }
    if sample.single_entropy is not None and sample.single_errors is not None:
        columns[SINGLE_PASS_ROW] = (sample.single_entropy, sample.single_errors)
    counts = sample.class_counts
    majority = (
        int(np.argmax(counts))
        if counts is not None and counts.sum() > 0
        else majority_class(sample.labels[sample.labels >= 0])
    )
    foreground = (sample.labels != majority) & (sample.labels >= 0)
    region_rows = _region_rows(sample.regions) if sample.regions is not None else {}
    rows: list[dict[str, Any]] = []
    roc: dict[str, dict[str, list[float]]] = {}
    for name, (values, errs) in columns.items():
        rows.append(
            {
                "measure": name,
                "family": FAMILIES.get(name, "softmax"),
                "description": DESCRIPTIONS.get(name, name),
                **detection_scores(values, errs),
                "foreground": detection_scores(values[foreground], errs[foreground]),
                "region": region_rows.get(name),
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
    found = _best_row(rows)
    best: dict[str, Any] | None = None
    if found is not None:
        best = {
            "measure": found[0]["measure"],
            **bootstrap_auroc_interval(
                sample.measures[found[0]["measure"]],
                errors,
                sample.image_index,
                n_boot=n_boot,
                seed=seed,
            ),
        }
    n_errors = int(errors.sum())
    n_foreground = int(foreground.sum())
    n_fg_errors = int(errors[foreground].sum())
    regions_summary: dict[str, Any] | None = None
    if sample.regions is not None:
        reg = sample.regions
        n_with_error = int(reg.has_error.sum())
        regions_summary = {
            "definition": REGION_DEFINITION.format(share=MIN_LABELLED_SHARE),
            "kind": reg.kind,
            "n_regions": reg.n_regions,
            "n_with_error": n_with_error,
            "share_with_error": n_with_error / reg.n_regions if reg.n_regions else math.nan,
            "mean_error_fraction": float(reg.error_fraction.mean()) if reg.n_regions else math.nan,
        }
    section: dict[str, Any] = {
        "n_pixels": sample.n_pixels,
        "n_errors": n_errors,
        "error_rate": n_errors / sample.n_pixels if sample.n_pixels else math.nan,
        "n_samples": sample.n_samples,
        "single_pass_accuracy": (
            float(1.0 - sample.single_errors.mean())
            if sample.single_errors is not None and sample.single_errors.size
            else None
        ),
        "rows": rows,
        "roc": roc,
        "best": best,
        "foreground": {
            "definition": FOREGROUND_DEFINITION,
            "majority_class": majority,
            "n_pixels": n_foreground,
            "n_errors": n_fg_errors,
            "error_rate": n_fg_errors / n_foreground if n_foreground else math.nan,
        },
        "regions": regions_summary,
        "comparison": comparison,
    }
    section["verdict"] = detection_verdict(section)
    return section
