"""Per-pixel calibration and error-detection metrics, and temperature scaling.

Answers "is the softmax output a usable measure of uncertainty?" on labelled pixels:

- calibration: reliability diagram, expected and maximum calibration error (Naeini, Cooper and
  Hauskrecht 2015, "Obtaining Well Calibrated Probabilities Using Bayesian Binning"; Guo et al.
  2017, "On Calibration of Modern Neural Networks"), equal-width or adaptive (equal-mass) bins
  (Nixon et al. 2019, "Measuring Calibration in Deep Learning"), Brier score (Brier 1950) and
  negative log-likelihood, also as a streaming accumulator over images;
- error detection: does a pixel's uncertainty rank the model's errors first? AUROC (Mann-Whitney
  U), area under the precision-recall curve (average precision, errors as positives; Hendrycks
  and Gimpel 2017) and PAvPU (Mukhoti and Gal 2018, "Evaluating Bayesian Deep Learning Methods
  for Semantic Segmentation");
- foreground and regions: the majority class of the labelled pixels (:func:`majority_class`)
  marks the easy background that dominates pixel-level figures; per-region error counts
  (:func:`region_error_counts`), the unit-level reliability diagram
  (:func:`reliability_from_confidence`) and the rank correlation of a pooled score with a
  region's error fraction (:func:`error_rank_correlation`) give the same questions per region;
- temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on held-out logits by
  minimising the NLL of ``softmax(z / T)``, or of ``mean_s softmax(z_s / T)`` for S samples.

Inputs are named for what they are: ``probs`` are probabilities, ``logits`` are logits; nothing
is guessed. Ignored pixels (``ignore_index``, 255 by default) are dropped by
:func:`flatten_pixels` before any metric. Metrics are float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata

from activeseg.uncertainty.labels import UNLABELLED

__all__ = [
    "CalibrationAccumulator",
    "CalibrationResult",
    "ReliabilityDiagram",
    "apply_temperature",
    "brier_score",
    "detection_scores",
    "error_detection_aupr",
    "error_detection_auroc",
    "error_rank_correlation",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperature_mixture",
    "flatten_pixels",
    "log_softmax",
    "majority_class",
    "maximum_calibration_error",
    "negative_log_likelihood",
    "pavpu",
    "region_error_counts",
    "reliability_bins",
    "reliability_from_confidence",
    "softmax",
]

FloatArray = npt.NDArray[np.floating]
LabelArray = npt.NDArray[np.int64]

NLL_EPS = 1e-12
"""Probabilities are clipped to ``[NLL_EPS, 1]`` inside the NLL's logarithm."""

_NLL_CHUNK_VALUES = 1 << 20
"""Logits per chunk while :func:`fit_temperature` evaluates the NLL (bounds its scratch)."""


# --------------------------------------------------------------------------------------------
# softmax and temperature


def _float(x: npt.ArrayLike) -> FloatArray:
    arr = np.asarray(x)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    return arr


def log_softmax(logits: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Numerically stable ``log softmax(logits)`` along ``axis`` (max subtracted first).

    Keeps a float input dtype (float32 stays float32); other inputs become float64.
    """
    z = _float(logits)
    shifted = z - np.max(z, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


def softmax(logits: npt.ArrayLike, axis: int = -1) -> FloatArray:
    """Numerically stable softmax of ``logits`` along ``axis`` (max subtracted first).

    Works for any shape, e.g. ``[P, C]`` with ``axis=-1`` or ``[S, C, H, W]`` with ``axis=1``.
    """
    z = _float(logits)
    e = np.exp(z - np.max(z, axis=axis, keepdims=True))
    e /= np.sum(e, axis=axis, keepdims=True)
    return e


def apply_temperature(logits: npt.ArrayLike, temperature: float, axis: int = -1) -> FloatArray:
    """Temperature-scaled probabilities ``softmax(logits / T)`` along the class ``axis``.

    Guo et al. 2017. ``T > 1`` softens over-confident predictions; ``T = 1`` is the plain
    softmax. The argmax, hence the accuracy, does not change.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    z = _float(logits)
    return softmax(z / np.asarray(temperature, dtype=z.dtype), axis=axis)


def fit_temperature(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Fit the temperature that minimises the NLL of ``softmax(logits / T)`` (Guo et al. 2017).

    Args:
        logits: ``[P, C]`` logits of labelled held-out pixels (not probabilities).
        labels: ``[P]`` class indices in ``0..C-1`` (drop ignored pixels first, see
            :func:`flatten_pixels`).
        bounds: search interval for ``T``; the search runs over ``log T`` with
            ``scipy.optimize.minimize_scalar(method="bounded")``.

    Returns:
        ``T`` (a float inside ``bounds``).

    The NLL ``mean(logsumexp(z / T) - z_y / T)`` is evaluated from max-shifted logits (so
    ``exp`` never overflows) in float64, in row chunks of about a million values, so memory
    stays ``O(P)`` beyond the logits themselves.
    """
    z = _float(logits)
    y = _labels(labels, z, "fit_temperature")
    lo, hi = bounds
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    n_pix, n_classes = z.shape
    if n_pix == 0:
        raise ValueError("fit_temperature needs at least one labelled pixel")
    row_max = z.max(axis=1).astype(np.float64)
    # mean of (z_y - max z) / T  =  mean_shift_y / T
    mean_shift_y = float(np.mean(z[np.arange(n_pix), y] - row_max, dtype=np.float64))
    step = max(1, _NLL_CHUNK_VALUES // n_classes)

    def nll(log_t: float) -> float:
        inv_t = math.exp(-log_t)
        total = 0.0
        for start in range(0, n_pix, step):
            # float64: float32 rounding noise would move the minimum of this flat curve by ~1e-4
            chunk = z[start : start + step].astype(np.float64)
            chunk -= row_max[start : start + step, None]
            chunk *= inv_t
            np.exp(chunk, out=chunk)
            total += float(np.log(chunk.sum(axis=1, dtype=np.float64)).sum())
        return total / n_pix - mean_shift_y * inv_t

    res = minimize_scalar(
        nll, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(res.x))


def fit_temperature_mixture(
    logits: npt.ArrayLike,
    labels: npt.ArrayLike,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    """Fit the ``T`` that minimises the NLL of the mixture ``mean_s softmax(z_s / T)``.

    An ensemble (Lakshminarayanan et al. 2017) or MC-dropout model (Gal and Ghahramani 2016)
    serves the mean of its S temperature-scaled softmaxes; fitting ``T`` on the mean logits
    (:func:`fit_temperature`) calibrates a different distribution. This fits the one served.

    Args:
        logits: ``[P, S, C]`` logits of labelled held-out pixels: S samples (members or dropout
            masks) per pixel.
        labels: ``[P]`` class indices in ``0..C-1``.
        bounds: search interval for ``T``, searched over ``log T`` as in
            :func:`fit_temperature`.

    Returns:
        ``T`` (a float inside ``bounds``). With ``S = 1`` it is :func:`fit_temperature`'s fit.

    NLL per pixel: ``log S - logsumexp_s(z_{s,y} / T - logsumexp_c(z_{s,c} / T))``, from
    max-shifted logits in float64, in chunks of about a million values (memory ``O(P)`` beyond
    the logits themselves).
    """
    z = _float(logits)
    if z.ndim != 3:
        raise ValueError(f"fit_temperature_mixture expects logits [P, S, C], got {z.shape}")
    n_pix, n_samples, n_classes = z.shape
    y = _labels(labels, z[:, 0, :], "fit_temperature_mixture")
    lo, hi = bounds
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")
    if n_pix == 0:
        raise ValueError("fit_temperature_mixture needs at least one labelled pixel")
    step = max(1, _NLL_CHUNK_VALUES // (n_samples * n_classes))
    log_s = math.log(n_samples)

    def nll(log_t: float) -> float:
        inv_t = math.exp(-log_t)
        total = 0.0
        for start in range(0, n_pix, step):
            chunk = z[start : start + step].astype(np.float64)  # [p, S, C]
            chunk -= chunk.max(axis=2, keepdims=True)
            chunk *= inv_t
            rows = np.arange(chunk.shape[0])
            true = chunk[rows, :, y[start : start + step]]  # [p, S]
            log_norm = np.log(np.exp(chunk).sum(axis=2))  # [p, S], each >= 0 after the shift
            log_p = true - log_norm  # log softmax of the label, per sample
            peak = log_p.max(axis=1, keepdims=True)
            log_mix = peak[:, 0] + np.log(np.exp(log_p - peak).sum(axis=1)) - log_s
            total -= float(log_mix.sum())
        return total / n_pix

    res = minimize_scalar(
        nll, bounds=(math.log(lo), math.log(hi)), method="bounded", options={"xatol": 1e-6}
    )
    return float(math.exp(res.x))


# --------------------------------------------------------------------------------------------
# pixels


def _labels(labels: npt.ArrayLike, probs: FloatArray, func: str) -> LabelArray:
    y = np.asarray(labels)
    if probs.ndim != 2:
        raise ValueError(f"{func} expects probs/logits of shape [P, C], got {probs.shape}")
    if y.shape != probs.shape[:1]:
        raise ValueError(f"{func} expects labels of shape [P] = {probs.shape[:1]}, got {y.shape}")
    if y.dtype.kind not in "iu":
        raise ValueError(f"{func}: labels must be integer class ids, got dtype {y.dtype}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= probs.shape[1]):
        raise ValueError(
            f"{func}: labels must lie in 0..{probs.shape[1] - 1} (drop ignored pixels with "
            f"flatten_pixels first), got {int(y.min())}..{int(y.max())}"
        )
    return y.astype(np.int64, copy=False)


def flatten_pixels(
    probs: npt.ArrayLike, labels: npt.ArrayLike, ignore_index: int = UNLABELLED
) -> tuple[FloatArray, LabelArray]:
    """Turn class maps into a table of labelled pixels.

    Args:
        probs: ``[C, H, W]`` or ``[N, C, H, W]`` (probabilities, or logits: the values are only
            moved, not interpreted).
        labels: ``[H, W]`` or ``[N, H, W]`` class index per pixel, ``ignore_index`` = unlabelled.
        ignore_index: label of pixels to drop.

    Returns:
        ``(probs [P, C], labels [P] int64)`` for the P labelled pixels.
    """
    p = np.asarray(probs)
    y = np.asarray(labels)
    if p.ndim == 3:
        p = p[None]
        y = y[None] if y.ndim == 2 else y
    if p.ndim != 4 or y.shape != (p.shape[0],) + p.shape[2:]:
        raise ValueError(
            "flatten_pixels expects probs [C, H, W] with labels [H, W], or probs [N, C, H, W] "
            f"with labels [N, H, W]; got {p.shape} and {y.shape}"
        )
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    n_classes = p.shape[1]
    keep = (y != ignore_index).ravel()
    table = np.moveaxis(p, 1, -1).reshape(-1, n_classes)[keep]
    flat_labels = y.ravel()[keep].astype(np.int64)
    if flat_labels.size and (flat_labels.min() < 0 or flat_labels.max() >= n_classes):
        raise ValueError(
            f"labels must lie in 0..{n_classes - 1} or equal ignore_index={ignore_index}"
        )
    return _float(table), flat_labels


# --------------------------------------------------------------------------------------------
# reliability and calibration errors


@dataclass(frozen=True, eq=False)
class ReliabilityDiagram:
    """Per-bin statistics of confidence (max probability) against accuracy.

    Attributes:
        edges: float64 ``[B + 1]`` bin boundaries in confidence. Equal-width: ``0, 1/B, .., 1``
            (bin ``b`` holds ``edges[b] <= conf < edges[b+1]``, the last bin includes 1).
            Adaptive: the lowest confidence in each bin, then 1.
        confidence: float64 ``[B]`` mean confidence per bin (NaN for an empty bin).
        accuracy: float64 ``[B]`` fraction of correct argmax predictions per bin (NaN if empty).
        count: int64 ``[B]`` pixels per bin; sums to P.
    """

    edges: npt.NDArray[np.float64]
    confidence: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]
    count: npt.NDArray[np.int64]

    @property
    def ece(self) -> float:
        """Expected calibration error ``sum_b n_b / P * |acc_b - conf_b|`` (NaN if P = 0)."""
        total = int(self.count.sum())
        if total == 0:
            return math.nan
        gap = np.abs(self.accuracy - self.confidence)
        filled = self.count > 0
        return float(np.sum(self.count[filled] * gap[filled]) / total)

    @property
    def mce(self) -> float:
        """Maximum calibration error ``max_b |acc_b - conf_b|`` over non-empty bins."""
        filled = self.count > 0
        if not filled.any():
            return math.nan
        return float(np.max(np.abs(self.accuracy - self.confidence)[filled]))


def _bin_stats(
    bins: npt.NDArray[np.intp],
    conf: FloatArray,
    correct: npt.NDArray[np.bool_] | npt.NDArray[np.float64],
    n_bins: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    count = np.bincount(bins, minlength=n_bins).astype(np.int64)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins).astype(np.float64)
    correct_sum = np.bincount(bins, weights=correct, minlength=n_bins).astype(np.float64)
    return count, conf_sum, correct_sum


def _diagram(
    edges: npt.NDArray[np.float64],
    count: npt.NDArray[np.int64],
    conf_sum: npt.NDArray[np.float64],
    correct_sum: npt.NDArray[np.float64],
) -> ReliabilityDiagram:
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, conf_sum / count, np.nan)
        accuracy = np.where(count > 0, correct_sum / count, np.nan)
    return ReliabilityDiagram(edges=edges, confidence=confidence, accuracy=accuracy, count=count)


def _equal_width_bins(conf: FloatArray, n_bins: int) -> npt.NDArray[np.intp]:
    return np.minimum((np.asarray(conf) * n_bins).astype(np.intp), n_bins - 1).clip(0)


def reliability_bins(
    probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = 15, adaptive: bool = False
) -> ReliabilityDiagram:
    """Reliability diagram of probabilities ``[P, C]`` against labels ``[P]``.

    Confidence = max probability, prediction = its argmax. ``adaptive=False``: ``n_bins``
    equal-width bins on ``[0, 1]`` (Naeini et al. 2015; Guo et al. 2017). ``adaptive=True``:
    equal-mass bins, each holding ``P / n_bins`` pixels (+-1) by confidence rank (Nixon et al.
    2019), which keeps every bin populated when confidences crowd near 1.
    """
    p = _float(probs)
    y = _labels(labels, p, "reliability_bins")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    n_pix = p.shape[0]
    conf = p.max(axis=1).astype(np.float64) if n_pix else np.zeros(0)
    correct = p.argmax(axis=1) == y if n_pix else np.zeros(0, bool)
    return reliability_from_confidence(conf, correct, n_bins, adaptive)


def reliability_from_confidence(
    confidence: npt.ArrayLike,
    accuracy: npt.ArrayLike,
    n_bins: int = 15,
    adaptive: bool = False,
) -> ReliabilityDiagram:
    """Reliability diagram of units with a confidence and an accuracy each.

    Args:
        confidence: float ``[N]`` in ``[0, 1]``: a pixel's max probability, or a region's mean
            max probability over its labelled pixels.
        accuracy: ``[N]`` in ``[0, 1]``: bool (a pixel's argmax is right) or float (a region's
            fraction of right pixels).
        n_bins, adaptive: as :func:`reliability_bins`, of which this is the binning step (each
            unit counts once, so regions weigh the same whatever their size).

    Returns:
        The :class:`ReliabilityDiagram`; its ``ece`` is ``sum_b N_b / N * |acc_b - conf_b|``.
    """
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    correct = np.asarray(accuracy, dtype=np.float64).ravel()
    if conf.shape != correct.shape:
        raise ValueError(
            f"confidence and accuracy must have the same shape [N], got {conf.shape} and "
            f"{correct.shape}"
        )
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    n_pix = conf.size
    if not adaptive:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        bins = _equal_width_bins(conf, n_bins)
    else:
        order = np.argsort(conf, kind="stable")
        bins = np.empty(n_pix, np.intp)
        bins[order] = (np.arange(n_pix, dtype=np.int64) * n_bins) // max(n_pix, 1)
        starts = -(-np.arange(n_bins, dtype=np.int64) * n_pix // n_bins)  # ceil(b * P / B)
        sorted_conf = conf[order]
        edges = np.empty(n_bins + 1)
        edges[:-1] = sorted_conf[np.minimum(starts, n_pix - 1)] if n_pix else 0.0
        edges[0] = 0.0
        edges[-1] = 1.0
    count, conf_sum, correct_sum = _bin_stats(bins, conf, correct, n_bins)
    return _diagram(edges, count, conf_sum, correct_sum)


def expected_calibration_error(
    probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = 15, adaptive: bool = False
) -> float:
    """ECE ``sum_b n_b / P * |acc_b - conf_b|`` (Naeini et al. 2015); probs ``[P, C]``,
    labels ``[P]``. NaN when P = 0. See :func:`reliability_bins` for the binning."""
    return reliability_bins(probs, labels, n_bins, adaptive).ece


def maximum_calibration_error(
    probs: npt.ArrayLike, labels: npt.ArrayLike, n_bins: int = 15, adaptive: bool = False
) -> float:
    """MCE ``max_b |acc_b - conf_b|`` over non-empty bins (Naeini et al. 2015)."""
    return reliability_bins(probs, labels, n_bins, adaptive).mce


def _brier_and_nll_sums(p: FloatArray, y: LabelArray) -> tuple[float, float]:
    rows = np.arange(p.shape[0])
    p_true = p[rows, y].astype(np.float64)
    sq = np.einsum("pc,pc->p", p, p, dtype=np.float64)
    brier = float(np.sum(sq - 2.0 * p_true + 1.0))
    nll = float(-np.sum(np.log(np.clip(p_true, NLL_EPS, 1.0))))
    return brier, nll


def brier_score(probs: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Multi-class Brier score ``mean_i sum_c (p_ic - [y_i = c])^2`` in ``[0, 2]`` (Brier 1950).

    probs ``[P, C]``, labels ``[P]``; NaN when P = 0.
    """
    p = _float(probs)
    y = _labels(labels, p, "brier_score")
    if p.shape[0] == 0:
        return math.nan
    return _brier_and_nll_sums(p, y)[0] / p.shape[0]


def negative_log_likelihood(probs: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Mean ``-log p_y`` (natural log) with ``p_y`` clipped to ``[1e-12, 1]``; NaN when P = 0."""
    p = _float(probs)
    y = _labels(labels, p, "negative_log_likelihood")
    if p.shape[0] == 0:
        return math.nan
    return _brier_and_nll_sums(p, y)[1] / p.shape[0]


class CalibrationResult(TypedDict):
    """What :meth:`CalibrationAccumulator.result` returns."""

    ece: float
    mce: float
    brier: float
    nll: float
    accuracy: float
    mean_confidence: float
    n_pixels: int
    reliability: ReliabilityDiagram


class CalibrationAccumulator:
    """Streaming calibration metrics: feed one image at a time, read the totals at the end.

    Keeps per-bin sums (equal-width bins) and running sums of Brier, NLL and correct pixels,
    so a whole validation set is evaluated in ``O(B)`` memory. The result equals the batch
    functions on all pixels at once (up to float rounding). Adaptive bins need all confidences
    and are therefore batch-only (:func:`reliability_bins`).

    Example::

        acc = CalibrationAccumulator(n_classes=21)
        for probs, mask in validation:        # probs [C, H, W], mask [H, W]
            acc.update(probs, mask)
        report = acc.result()                  # {"ece": ..., "brier": ..., ...}
    """

    def __init__(self, n_classes: int, n_bins: int = 15, ignore_index: int = UNLABELLED) -> None:
        if n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {n_classes}")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}")
        self.n_classes = n_classes
        self.n_bins = n_bins
        self.ignore_index = ignore_index
        self._count = np.zeros(n_bins, np.int64)
        self._conf_sum = np.zeros(n_bins)
        self._correct_sum = np.zeros(n_bins)
        self._brier = 0.0
        self._nll = 0.0

    def update(self, probs: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Add one image: probabilities ``[C, H, W]`` (or a batch ``[N, C, H, W]``) and
        labels ``[H, W]`` (``[N, H, W]``) with ``ignore_index`` for unlabelled pixels."""
        p, y = flatten_pixels(probs, labels, self.ignore_index)
        if p.shape[1] != self.n_classes:
            raise ValueError(f"expected {self.n_classes} classes, got probs with {p.shape[1]}")
        if p.shape[0] == 0:
            return
        conf = p.max(axis=1).astype(np.float64)
        correct = p.argmax(axis=1) == y
        count, conf_sum, correct_sum = _bin_stats(
            _equal_width_bins(conf, self.n_bins), conf, correct, self.n_bins
        )
        self._count += count
        self._conf_sum += conf_sum
        self._correct_sum += correct_sum
        brier, nll = _brier_and_nll_sums(p, y)
        self._brier += brier
        self._nll += nll

    def result(self) -> CalibrationResult:
        """Metrics over every pixel seen so far (NaN before the first labelled pixel)."""
        diagram = _diagram(
            np.linspace(0.0, 1.0, self.n_bins + 1),
            self._count.copy(),
            self._conf_sum.copy(),
            self._correct_sum.copy(),
        )
        total = int(self._count.sum())
        per = (lambda v: v / total) if total else (lambda v: math.nan)
        return CalibrationResult(
            ece=diagram.ece,
            mce=diagram.mce,
            brier=per(self._brier),
            nll=per(self._nll),
            accuracy=per(float(self._correct_sum.sum())),
            mean_confidence=per(float(self._conf_sum.sum())),
            n_pixels=total,
            reliability=diagram,
        )


# --------------------------------------------------------------------------------------------
# error detection


def _detection_inputs(
    uncertainty: npt.ArrayLike, errors: npt.ArrayLike, func: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(errors).ravel()
    if u.shape != e.shape:
        raise ValueError(
            f"{func} expects uncertainty and errors of the same shape [P], got "
            f"{np.shape(uncertainty)} and {np.shape(errors)}"
        )
    if (
        e.dtype != np.bool_
        and e.size
        and (e.dtype.kind not in "iu" or not np.isin(e, (0, 1)).all())
    ):
        raise ValueError(f"{func}: errors must be boolean (True = the prediction is wrong)")
    e = e.astype(bool, copy=False)
    if np.isnan(u).any():
        raise ValueError(f"{func}: uncertainty contains NaN")
    return u, e


def error_detection_auroc(uncertainty: npt.ArrayLike, errors: npt.ArrayLike) -> float:
    """AUROC of uncertainty ``[P]`` as a detector of wrong predictions ``errors`` (bool ``[P]``).

    The probability that a random error has a higher uncertainty than a random correct pixel,
    ties counting one half: the Mann-Whitney U statistic from average ranks, ``O(P log P)``.
    1 = perfect, 0.5 = uninformative (e.g. constant uncertainty), 0 = inverted.
    Returns NaN when there are no errors or only errors (AUROC is undefined).
    """
    u, e = _detection_inputs(uncertainty, errors, "error_detection_auroc")
    n_pos = int(e.sum())
    n_neg = e.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(u, method="average")
    u_stat = float(ranks[e].sum()) - n_pos * (n_pos + 1) / 2.0
    return u_stat / (n_pos * n_neg)


def error_detection_aupr(uncertainty: npt.ArrayLike, errors: npt.ArrayLike) -> float:
    """Area under the precision-recall curve for detecting errors (errors are the positives).

    Average precision ``sum_n (R_n - R_{n-1}) P_n`` over the distinct uncertainty thresholds,
    from high to low; tied uncertainties enter together (one threshold), so the result does not
    depend on the order of tied pixels. Sorting plus cumulative sums, ``O(P log P)``.
    1 = perfect; a constant uncertainty gives the error rate. Returns NaN when there are no
    errors or only errors (no ranking to assess).
    """
    u, e = _detection_inputs(uncertainty, errors, "error_detection_aupr")
    n_pos = int(e.sum())
    if n_pos == 0 or n_pos == e.size:
        return math.nan
    order = np.argsort(-u, kind="stable")
    u_sorted = u[order]
    tp = np.cumsum(e[order], dtype=np.float64)
    # The last index of every run of equal uncertainty: one point per distinct threshold.
    last = np.flatnonzero(np.r_[u_sorted[1:] != u_sorted[:-1], True])
    tp_at = tp[last]
    precision = tp_at / (last + 1.0)
    recall = tp_at / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def detection_scores(uncertainty: npt.ArrayLike, errors: npt.ArrayLike) -> dict[str, float]:
    """``{"auroc", "aupr"}`` of ``uncertainty`` ``[P]`` as a detector of ``errors`` (bool
    ``[P]``), NaN for no pixels: the one place a measure's error-detection figures are computed,
    for the trainer's metrics (``activeseg.models.evaluation``) and the reports alike."""
    u = np.asarray(uncertainty)
    if u.size == 0:
        return {"auroc": math.nan, "aupr": math.nan}
    return {"auroc": error_detection_auroc(u, errors), "aupr": error_detection_aupr(u, errors)}


def pavpu(uncertainty: npt.ArrayLike, errors: npt.ArrayLike, threshold: float) -> float:
    """Patch accuracy vs patch uncertainty, per pixel (Mukhoti and Gal 2018).

    A pixel is *uncertain* when ``uncertainty >= threshold`` and *inaccurate* when ``errors``.
    ``PAvPU = (n_accurate_certain + n_inaccurate_uncertain) / n``: the fraction of pixels where
    the uncertainty "agrees" with correctness. In ``[0, 1]``; NaN only when ``n = 0`` (with no
    errors it is simply the fraction of certain pixels). Apply it to per-region means and
    per-region error rates (thresholded) for the paper's patch version.
    """
    u, e = _detection_inputs(uncertainty, errors, "pavpu")
    if u.size == 0:
        return math.nan
    uncertain = u >= threshold
    agree = np.count_nonzero(uncertain == e)
    return agree / u.size


def error_rank_correlation(uncertainty: npt.ArrayLike, error_fraction: npt.ArrayLike) -> float:
    """Spearman rank correlation of uncertainty ``[R]`` with the error fraction ``[R]``.

    For units that hold many pixels (regions): does a higher pooled score go with a larger
    share of wrong pixels, not only with holding one? Average ranks for ties (Spearman 1904).
    In ``[-1, 1]``; NaN when there are fewer than two units or either column is constant.
    """
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    f = np.asarray(error_fraction, dtype=np.float64).ravel()
    if u.shape != f.shape:
        raise ValueError(
            f"error_rank_correlation expects two columns of the same shape [R], got {u.shape} "
            f"and {f.shape}"
        )
    if u.size < 2 or np.isnan(u).any() or np.isnan(f).any():
        return math.nan
    ru, rf = rankdata(u), rankdata(f)
    ru -= ru.mean()
    rf -= rf.mean()
    denominator = math.sqrt(float(np.dot(ru, ru)) * float(np.dot(rf, rf)))
    return float(np.dot(ru, rf)) / denominator if denominator > 0 else math.nan


# --------------------------------------------------------------------------------------------
# foreground and regions: the same metrics where easy background does not dominate


def majority_class(labels: npt.ArrayLike) -> int | None:
    """The most frequent class id among labelled pixels ``[P]`` (ties: the smallest id), or
    None when there is none.

    Its pixels are the report's *background*: on a typical segmentation set they are the
    bulk of the pixels and the easiest ones, so pixel-level ECE and AUROC mostly measure them.
    The *foreground* is every labelled pixel whose true class is another one.
    """
    y = np.asarray(labels).ravel()
    if y.size == 0:
        return None
    if y.dtype.kind not in "iu" or int(y.min()) < 0:
        raise ValueError("majority_class expects non-negative integer class ids")
    return int(np.argmax(np.bincount(y.astype(np.int64))))


def region_error_counts(
    region_labels: npt.ArrayLike,
    n_regions: int,
    labelled: npt.ArrayLike,
    errors: npt.ArrayLike,
    confidence: npt.ArrayLike | None = None,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Per region of one image: labelled pixels, wrong pixels and summed confidence.

    Args:
        region_labels: int ``[H, W]`` region id per pixel, ids ``0..R-1``.
        n_regions: R.
        labelled: bool ``[H, W]``: the pixel has a label (only those count).
        errors: bool ``[H, W]``: the prediction is wrong (read only where labelled).
        confidence: float ``[H, W]`` max probability per pixel, or None.

    Returns:
        ``(n_labelled [R] int64, n_errors [R] int64, confidence_sum [R] float64)``; the error
        fraction of region r is ``n_errors[r] / n_labelled[r]``, its mean confidence
        ``confidence_sum[r] / n_labelled[r]`` (zeros when ``confidence`` is None).
    """
    ids = np.asarray(region_labels).ravel()
    keep = np.asarray(labelled, dtype=bool).ravel()
    wrong = np.asarray(errors, dtype=bool).ravel()
    if not (ids.shape == keep.shape == wrong.shape):
        raise ValueError(
            "region_error_counts expects region_labels, labelled and errors of one shape "
            f"[H, W], got {np.shape(region_labels)}, {np.shape(labelled)}, {np.shape(errors)}"
        )
    if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= n_regions):
        raise ValueError(f"region ids must lie in 0..{n_regions - 1}")
    at = ids[keep].astype(np.intp)
    n_labelled = np.bincount(at, minlength=n_regions).astype(np.int64)
    n_errors = np.bincount(at[wrong[keep]], minlength=n_regions).astype(np.int64)
    conf_sum: npt.NDArray[np.float64] = np.zeros(n_regions)
    if confidence is not None:
        conf = np.asarray(confidence, dtype=np.float64).ravel()
        if conf.shape != ids.shape:
            raise ValueError(f"confidence must have shape {np.shape(region_labels)}")
        conf_sum = np.bincount(at, weights=conf[keep], minlength=n_regions).astype(np.float64)
    return n_labelled, n_errors, conf_sum
