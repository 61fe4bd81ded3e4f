"""Per-pixel uncertainty measures from explicit probability arrays.

Two families, both reducing the class axis of a probability map to one number per pixel:

- softmax-based, from the probabilities of one model ``[..., C, H, W]``: least confidence
  ``1 - p1``, margin ``1 - (p1 - p2)``, entropy ``H(p)`` (natural log), normalised entropy
  ``H(p) / log C`` and ratio ``p2 / p1``, where ``p1 >= p2`` are the two largest probabilities
  (Settles 2009, "Active Learning Literature Survey");
- ensemble-based, from S members or MC-dropout samples ``[..., S, C, H, W]``: predictive entropy
  ``H(mean_s p_s)``, expected entropy ``mean_s H(p_s)``, mutual information (BALD, Houlsby et al.
  2011; Gal, Islam and Ghahramani 2017, "Deep Bayesian Active Learning with Image Data")
  ``H(mean) - mean H``, variation ratio (Freeman 1965; Gal et al. 2017) and the mean over classes
  of the standard deviation over samples (Kampffmeyer et al. 2016).

Inputs are always probabilities (the caller applies the softmax, optionally temperature-scaled,
see :mod:`activeseg.uncertainty.calibration`); nothing here guesses whether an array holds logits.
Every array is read as float32 and every result is float32. ``0 * log 0`` is taken as 0: where a
pixel holds an exact zero, its logarithms are recomputed from probabilities clipped to
``[EPS, 1]`` while the factor in front stays the raw probability, so a zero contributes exactly
zero (and never NaN). Results are clipped to their documented ranges against rounding.

Cost: the work is split into blocks of pixels (:data:`BLOCK_ELEMENTS` values per block) that stay
in cache while several measures read them, one top-2 and one logarithm per value are shared by
all requested measures, and scratch buffers are reused between blocks.
``benchmarks/uncertainty_throughput.py`` reports the cost in passes over the input array.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ALL_MEASURES",
    "BLOCK_ELEMENTS",
    "DEFAULT_MEASURE",
    "ENSEMBLE_MEASURES",
    "EPS",
    "MEASURES",
    "SOFTMAX_MEASURES",
    "Measure",
    "compute_measures",
    "ensemble_measures",
    "entropy",
    "expected_entropy",
    "get_measure",
    "least_confidence",
    "margin",
    "mean_std",
    "measure_table",
    "mutual_information",
    "normalised_entropy",
    "predictive_entropy",
    "ratio",
    "softmax_measures",
    "variation_ratio",
]

FloatMap = npt.NDArray[np.float32]

Family = Literal["softmax", "ensemble"]


@dataclass(frozen=True)
class Measure:
    """One uncertainty measure: the single definition settings, reports and docs read.

    Attributes:
        name: the identifier in settings, API responses and stored scores.
        family: ``"softmax"`` (one model's probabilities) or ``"ensemble"`` (S >= 2 members or
            MC-dropout samples).
        label: a human name for reports and docs.
        formula: the per-pixel formula as text (``p1 >= p2`` the two largest probabilities,
            ``p_s`` member s, ``H`` the natural-log entropy).
        range: the range as text; 0 always means certain.
        reference: the paper(s) it comes from.
        reported: a row of the per-version report's error-detection table (the report keeps
            to the three classic measures of each family).
    """

    name: str
    family: Family
    label: str
    formula: str
    range: str
    reference: str
    reported: bool = False

    @property
    def needs_samples(self) -> bool:
        """True when the measure needs several members or samples (``S >= 2``)."""
        return self.family == "ensemble"

    def upper_bound(self, n_classes: int, n_samples: int = 1) -> float:
        """The largest value the measure takes with ``n_classes`` classes and ``n_samples``
        members or samples (the right end of :attr:`range`)."""
        return _UPPER[self.range](n_classes, n_samples)


_UPPER: dict[str, Callable[[int, int], float]] = {
    "[0, 1]": lambda c, s: 1.0,
    "[0, 1 - 1/C]": lambda c, s: 1.0 - 1.0 / c,
    "[0, log C]": lambda c, s: math.log(c),
    "[0, 1 - 1/S]": lambda c, s: 1.0 - 1.0 / max(s, 1),
    "[0, 0.5]": lambda c, s: 0.5,
}

_SETTLES = "Settles 2009, Active Learning Literature Survey"
_GAL = "Gal, Islam and Ghahramani 2017, Deep Bayesian Active Learning with Image Data"

LEAST_CONFIDENCE = Measure(
    "least_confidence", "softmax", "least confidence", "1 - p1", "[0, 1 - 1/C]", _SETTLES, True
)
MARGIN = Measure(
    "margin",
    "softmax",
    "margin",
    "1 - (p1 - p2)",
    "[0, 1]",
    "Scheffer, Decomain and Wrobel 2001; " + _SETTLES,
    True,
)
ENTROPY = Measure(
    "entropy",
    "softmax",
    "entropy",
    "H(p) = -sum_c p_c log p_c",
    "[0, log C]",
    "Shannon 1948; " + _SETTLES,
    True,
)
NORMALISED_ENTROPY = Measure(
    "normalised_entropy", "softmax", "normalised entropy", "H(p) / log C", "[0, 1]", _SETTLES
)
RATIO = Measure("ratio", "softmax", "ratio of the top two", "p2 / p1", "[0, 1]", _SETTLES)
PREDICTIVE_ENTROPY = Measure(
    "predictive_entropy",
    "ensemble",
    "predictive entropy",
    "H(mean_s p_s)",
    "[0, log C]",
    _GAL,
    True,
)
EXPECTED_ENTROPY = Measure(
    "expected_entropy",
    "ensemble",
    "expected entropy (aleatoric part)",
    "mean_s H(p_s)",
    "[0, log C]",
    "Depeweg et al. 2018, Decomposition of Uncertainty in Bayesian Deep Learning",
)
MUTUAL_INFORMATION = Measure(
    "mutual_information",
    "ensemble",
    "mutual information (BALD, epistemic)",
    "H(mean_s p_s) - mean_s H(p_s)",
    "[0, log C]",
    "Houlsby et al. 2011, Bayesian Active Learning for Classification and Preference "
    "Learning; " + _GAL,
    True,
)
VARIATION_RATIO = Measure(
    "variation_ratio",
    "ensemble",
    "variation ratio",
    "1 - (votes of the modal class) / S",
    "[0, 1 - 1/S]",
    "Freeman 1965; " + _GAL,
    True,
)
MEAN_STD = Measure(
    "mean_std",
    "ensemble",
    "mean standard deviation",
    "mean_c std_s p_{s,c}",
    "[0, 0.5]",
    "Kampffmeyer, Salberg and Jenssen 2016",
)

MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        LEAST_CONFIDENCE,
        MARGIN,
        ENTROPY,
        NORMALISED_ENTROPY,
        RATIO,
        PREDICTIVE_ENTROPY,
        EXPECTED_ENTROPY,
        MUTUAL_INFORMATION,
        VARIATION_RATIO,
        MEAN_STD,
    )
}
"""Every measure by name, softmax ones first: the registry."""

DEFAULT_MEASURE = ENTROPY.name
"""The acquisition measure of a new project (works for a single network too)."""

SOFTMAX_MEASURES: tuple[str, ...] = tuple(n for n, m in MEASURES.items() if m.family == "softmax")
ENSEMBLE_MEASURES: tuple[str, ...] = tuple(n for n, m in MEASURES.items() if m.family == "ensemble")
ALL_MEASURES: tuple[str, ...] = SOFTMAX_MEASURES + ENSEMBLE_MEASURES


def get_measure(name: str) -> Measure:
    """The measure called ``name``; ValueError naming the choices when there is none."""
    try:
        return MEASURES[name]
    except KeyError:
        raise ValueError(
            f"unknown measure {name!r}; choose one of {', '.join(ALL_MEASURES)}"
        ) from None


def measure_table() -> str:
    """The Markdown table of every measure (the README's table is checked against it)."""
    lines = [
        "| measure | label | family | needs samples | formula | range | reference |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in MEASURES.values():
        samples = "yes" if m.needs_samples else "no"
        lines.append(
            f"| `{m.name}` | {m.label} | {m.family} | {samples} | `{m.formula}` | {m.range} "
            f"| {m.reference} |"
        )
    return "\n".join(lines) + "\n"


EPS = 1e-12
"""Lower clip of probabilities inside logarithms (representable in float32)."""

BLOCK_ELEMENTS = 1 << 19
"""Probability values processed per block (2 MiB of float32): large enough that the Python
overhead per block is small, small enough that a block and its scratch stay in the L2/L3 cache."""

_MIN_BLOCK_PIXELS = 1024


# --------------------------------------------------------------------------------------------
# validation helpers


def _check_names(names: Iterable[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if isinstance(names, str):
        # A bare string is almost always a forgotten 1-tuple: ("entropy",).
        names = (names,)
    out = tuple(dict.fromkeys(names))  # drop repeats, keep order
    unknown = [n for n in out if n not in allowed]
    if unknown:
        raise ValueError(
            f"unknown {what} measure(s) {unknown}; choose from {', '.join(allowed)}, "
            f'e.g. names=("{allowed[0]}",)'
        )
    return out


def _as_float32(probs: npt.ArrayLike) -> FloatMap:
    arr = np.asarray(probs)
    if arr.dtype.kind not in "fiub":
        raise ValueError(f"probabilities must be a real numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _softmax_view(probs: npt.ArrayLike, axis: int, func: str) -> tuple[FloatMap, tuple[int, ...]]:
    """Return probs as a ``[B, C, P]`` view and the output shape (``probs.shape`` minus axis)."""
    arr = _as_float32(probs)
    if arr.ndim < 1:
        raise ValueError(f"{func} expects probs of shape [..., C, H, W], got a scalar")
    if not -arr.ndim <= axis < arr.ndim:
        raise ValueError(
            f"{func}: class axis {axis} out of range for probs of shape {arr.shape}; "
            "expected probs of shape [..., C, H, W] with axis=-3"
        )
    ax = axis % arr.ndim
    n_classes = arr.shape[ax]
    if n_classes < 2:
        raise ValueError(
            f"{func} expects probs of shape [..., C, H, W] with C >= 2 classes on axis {axis}, "
            f"got shape {arr.shape}"
        )
    lead = math.prod(arr.shape[:ax])
    trail = math.prod(arr.shape[ax + 1 :])
    out_shape = arr.shape[:ax] + arr.shape[ax + 1 :]
    return arr.reshape(lead, n_classes, trail), out_shape


def _ensemble_view(probs: npt.ArrayLike, func: str) -> tuple[FloatMap, tuple[int, ...]]:
    """Return probs ``[..., S, C, H, W]`` as a ``[B, S, C, H*W]`` view and the out shape."""
    arr = _as_float32(probs)
    if arr.ndim < 4:
        raise ValueError(
            f"{func} expects member probabilities of shape [..., S, C, H, W] (S members or "
            f"samples, C >= 2 classes), got shape {arr.shape}"
        )
    n_members, n_classes, height, width = arr.shape[-4:]
    if n_members < 1 or n_classes < 2:
        raise ValueError(
            f"{func} expects member probabilities of shape [..., S, C, H, W] with S >= 1 and "
            f"C >= 2, got shape {arr.shape}"
        )
    lead = math.prod(arr.shape[:-4])
    out_shape = arr.shape[:-4] + (height, width)
    return arr.reshape(lead, n_members, n_classes, height * width), out_shape


def _block_pixels(values_per_pixel: int) -> int:
    """Pixels per block so that a block holds about :data:`BLOCK_ELEMENTS` values."""
    return max(_MIN_BLOCK_PIXELS, BLOCK_ELEMENTS // max(values_per_pixel, 1))


# --------------------------------------------------------------------------------------------
# scratch memory


class _Workspace(threading.local):
    """Per-thread scratch buffers, reused across blocks and calls.

    Allocating and freeing megabytes of temporaries per image makes glibc hand pages back to
    the kernel and fault them in again (measured: up to 5x slower on the benchmark). The
    buffers only ever grow to the largest block seen, about 3 x :data:`BLOCK_ELEMENTS` float32
    values per thread.
    """

    def __init__(self) -> None:
        self.buffers: dict[str, npt.NDArray[np.uint8]] = {}


_WORKSPACE = _Workspace()


def _scratch(role: str, shape: tuple[int, ...], dtype: type[np.generic]) -> np.ndarray:
    """A scratch array of ``shape`` for ``role``; its content is garbage. Never returned."""
    dt = np.dtype(dtype)
    nbytes = math.prod(shape) * dt.itemsize
    buf = _WORKSPACE.buffers.get(role)
    if buf is None or buf.nbytes < nbytes:
        buf = np.empty(max(nbytes, 64), np.uint8)
        _WORKSPACE.buffers[role] = buf
    return buf[:nbytes].view(dt).reshape(shape)


# --------------------------------------------------------------------------------------------
# shared kernels


def _top2(block: FloatMap) -> tuple[FloatMap, FloatMap]:
    """Largest and second largest value over axis 1 of ``block`` ``[B, C, n]``, each ``[B, n]``.

    One sweep over the classes with three elementwise min/max per value, on rows of one block
    that stay in cache; a sort or ``np.partition`` along the strided class axis costs ~10x more.
    A tie counts twice, so a pixel with two equal maxima has ``p2 == p1``. Returns scratch views.
    """
    lead, n_classes, n = block.shape
    top1 = _scratch("top1", (lead, n), np.float32)
    top2 = _scratch("top2", (lead, n), np.float32)
    tmp = _scratch("top2_tmp", (lead, n), np.float32)
    np.maximum(block[:, 0], block[:, 1], out=top1)
    np.minimum(block[:, 0], block[:, 1], out=top2)
    for c in range(2, n_classes):
        x = block[:, c]
        np.minimum(top1, x, out=tmp)  # x if it falls below the current maximum
        np.maximum(top1, x, out=top1)
        np.maximum(top2, tmp, out=top2)
    return top1, top2


def _plogp_sum(block: FloatMap, role: str, subscripts: str, out: FloatMap) -> None:
    """``out [B, n] = sum p * log(clip(p, EPS, 1))`` over the axes that ``subscripts`` sums.

    Fast path: the logarithm of the raw block. It is exact wherever every ``p > 0``; a pixel
    with an exact zero gives ``0 * -inf = nan`` and is recomputed from clipped values (the whole
    block if many pixels are affected, e.g. one-hot predictions).
    """
    logs = _scratch(role, block.shape, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        np.log(block, out=logs)
        np.einsum(subscripts, block, logs, out=out)
    bad = ~np.isfinite(out)
    n_bad = int(np.count_nonzero(bad))
    if n_bad == 0:
        return
    if n_bad * 8 > bad.size:
        np.clip(block, EPS, 1.0, out=logs)
        np.log(logs, out=logs)
        np.einsum(subscripts, block, logs, out=out)
        return
    # Few pixels: gather their values, one [K] row per bad (leading index, pixel).
    lead_idx, pix_idx = np.nonzero(bad)
    sub = block.reshape(out.shape[0], -1, out.shape[1])[lead_idx, :, pix_idx]  # [k, K]
    out[lead_idx, pix_idx] = np.einsum("kj,kj->k", sub, np.log(np.clip(sub, EPS, 1.0)))


# --------------------------------------------------------------------------------------------
# softmax measures


def softmax_measures(
    probs: npt.ArrayLike,
    names: Iterable[str] = SOFTMAX_MEASURES,
    *,
    axis: int = -3,
) -> dict[str, FloatMap]:
    """Compute several softmax-based measures at once, sharing one top-2 and one logarithm.

    Args:
        probs: probabilities ``[..., C, H, W]`` (class axis ``axis``, default -3), ``C >= 2``,
            summing to 1 over the class axis. Not logits.
        names: any of :data:`SOFTMAX_MEASURES`.
        axis: the class axis.

    Returns:
        ``{name: float32 array [..., H, W]}`` (``probs.shape`` without the class axis), in the
        order of ``names``. Ranges: least confidence ``[0, 1 - 1/C]``, margin ``[0, 1]``, entropy
        ``[0, log C]``, normalised entropy and ratio ``[0, 1]``; 0 means certain.
    """
    wanted = _check_names(names, SOFTMAX_MEASURES, "softmax")
    view, out_shape = _softmax_view(probs, axis, "softmax_measures")
    lead, n_classes, n_pix = view.shape
    need_top2 = "margin" in wanted or "ratio" in wanted
    need_top1 = need_top2 or "least_confidence" in wanted
    need_entropy = "entropy" in wanted or "normalised_entropy" in wanted

    def alloc(flag: bool) -> FloatMap | None:
        return np.empty((lead, n_pix), np.float32) if flag else None

    least = alloc("least_confidence" in wanted)
    marg = alloc("margin" in wanted)
    rat = alloc("ratio" in wanted)
    ent = alloc(need_entropy)
    step = _block_pixels(lead * n_classes)
    for start in range(0, n_pix, step):
        stop = min(start + step, n_pix)
        block = view[:, :, start:stop]
        if need_top2:
            top1, top2 = _top2(block)
        elif need_top1:
            top1 = _scratch("top1", (lead, stop - start), np.float32)
            np.max(block, axis=1, out=top1)
        if least is not None:
            np.subtract(np.float32(1.0), top1, out=least[:, start:stop])
        if marg is not None:
            m = np.subtract(top2, top1, out=marg[:, start:stop])
            m += np.float32(1.0)
        if rat is not None:
            np.clip(top1, EPS, 1.0, out=top1)  # an all-zero pixel must not divide by 0
            np.divide(top2, top1, out=rat[:, start:stop])
        if ent is not None:
            _plogp_sum(block, "log", "bcn,bcn->bn", ent[:, start:stop])

    result: dict[str, FloatMap] = {}
    if ent is not None:
        np.negative(ent, out=ent)
        np.clip(ent, 0.0, math.log(n_classes), out=ent)  # rounding: -1e-8 for one-hot pixels
    for name in wanted:
        if name == "least_confidence" and least is not None:
            out = np.clip(least, 0.0, 1.0, out=least)
        elif name == "margin" and marg is not None:
            out = np.clip(marg, 0.0, 1.0, out=marg)
        elif name == "ratio" and rat is not None:
            out = np.clip(rat, 0.0, 1.0, out=rat)
        elif name == "entropy" and ent is not None:
            out = ent if "normalised_entropy" not in wanted else ent.copy()
        elif name == "normalised_entropy" and ent is not None:
            out = np.multiply(ent, np.float32(1.0 / math.log(n_classes)))
            np.clip(out, 0.0, 1.0, out=out)
        else:  # pragma: no cover - every wanted name has its buffer
            raise AssertionError(name)
        result[name] = out.reshape(out_shape)
    return result


def least_confidence(probs: npt.ArrayLike, axis: int = -3) -> FloatMap:
    """Least confidence ``1 - max_c p_c``: probs ``[..., C, H, W]`` -> float32 ``[..., H, W]``.

    Settles 2009. 0 for a one-hot pixel, ``1 - 1/C`` for a uniform one.
    """
    return softmax_measures(probs, ("least_confidence",), axis=axis)["least_confidence"]


def margin(probs: npt.ArrayLike, axis: int = -3) -> FloatMap:
    """Margin ``1 - (p1 - p2)`` of the two largest probabilities, in ``[0, 1]``.

    probs ``[..., C, H, W]`` -> float32 ``[..., H, W]``. Scheffer et al. 2001; Settles 2009.
    """
    return softmax_measures(probs, ("margin",), axis=axis)["margin"]


def entropy(probs: npt.ArrayLike, axis: int = -3) -> FloatMap:
    """Shannon entropy ``-sum_c p_c log p_c`` (natural log, ``0 log 0 = 0``), in ``[0, log C]``.

    probs ``[..., C, H, W]`` -> float32 ``[..., H, W]``. Shannon 1948; Settles 2009.
    """
    return softmax_measures(probs, ("entropy",), axis=axis)["entropy"]


def normalised_entropy(probs: npt.ArrayLike, axis: int = -3) -> FloatMap:
    """Entropy divided by ``log C``, in ``[0, 1]`` whatever the number of classes.

    probs ``[..., C, H, W]`` -> float32 ``[..., H, W]``.
    """
    return softmax_measures(probs, ("normalised_entropy",), axis=axis)["normalised_entropy"]


def ratio(probs: npt.ArrayLike, axis: int = -3) -> FloatMap:
    """Ratio ``p2 / p1`` of the second largest to the largest probability, in ``[0, 1]``.

    probs ``[..., C, H, W]`` -> float32 ``[..., H, W]``. 0 for a one-hot pixel, 1 for a tie.
    """
    return softmax_measures(probs, ("ratio",), axis=axis)["ratio"]


# --------------------------------------------------------------------------------------------
# ensemble measures


def _ensemble(
    view: FloatMap, wanted: tuple[str, ...], want_mean: bool
) -> tuple[dict[str, FloatMap], FloatMap | None]:
    """Ensemble measures of ``view`` ``[B, S, C, P]``; each result ``[B, P]``; mean ``[B, C, P]``.

    One block of pixels of all members at a time: the mean over members, the member entropies
    (one logarithm per value), the squared deviations from the mean (for the std) and the votes
    all read the block while it is in cache.
    """
    lead, n_members, n_classes, n_pix = view.shape
    need_pe = "predictive_entropy" in wanted or "mutual_information" in wanted
    need_ee = "expected_entropy" in wanted or "mutual_information" in wanted
    need_std = "mean_std" in wanted
    need_votes = "variation_ratio" in wanted
    inv_s = np.float32(1.0 / n_members)

    def alloc(flag: bool) -> FloatMap | None:
        return np.empty((lead, n_pix), np.float32) if flag else None

    mean = np.empty((lead, n_classes, n_pix), np.float32) if want_mean else None
    pe, ee, std, vr = alloc(need_pe), alloc(need_ee), alloc(need_std), alloc(need_votes)
    vote_dtype = np.int16 if n_members < np.iinfo(np.int16).max else np.int64

    step = _block_pixels(lead * n_members * n_classes)
    for start in range(0, n_pix, step):
        stop = min(start + step, n_pix)
        n = stop - start
        block = view[..., start:stop]  # [B, S, C, n]
        if need_pe or need_std or mean is not None:
            mean_blk = (
                mean[:, :, start:stop]
                if mean is not None
                else _scratch("mean", (lead, n_classes, n), np.float32)
            )
            np.add.reduce(block, axis=1, out=mean_blk)
            mean_blk *= inv_s
        if pe is not None:
            _plogp_sum(mean_blk, "log_mean", "bcn,bcn->bn", pe[:, start:stop])
        if ee is not None:
            _plogp_sum(block, "log", "bscn,bscn->bn", ee[:, start:stop])
        if std is not None:
            # Two-pass variance about the block's mean: no E[p^2] - E[p]^2 cancellation, so
            # members that agree give ~1e-8, not ~3e-4. The 1/sqrt(S) is applied once at the end.
            d = _scratch("diff", block.shape, np.float32)
            np.subtract(block, mean_blk[:, None], out=d)
            var = _scratch("var", (lead, n_classes, n), np.float32)
            np.einsum("bscn,bscn->bcn", d, d, out=var)
            np.sqrt(var, out=var)
            np.add.reduce(var, axis=1, out=std[:, start:stop])
        if vr is not None:
            # A member votes for every class equal to its maximum: exact float ties are rare,
            # and unlike a first-index argmax this is invariant under a permutation of classes.
            peak = _scratch("peak", (lead, n_members, 1, n), np.float32)
            np.max(block, axis=2, keepdims=True, out=peak)
            eq = _scratch("votes", block.shape, np.bool_)
            np.equal(block, peak, out=eq)
            counts = _scratch("counts", (lead, n_classes, n), vote_dtype)
            np.add.reduce(eq, axis=1, dtype=vote_dtype, out=counts)
            modal = _scratch("modal", (lead, n), vote_dtype)
            np.max(counts, axis=1, out=modal)
            np.divide(modal, np.float32(n_members), out=vr[:, start:stop], casting="unsafe")

    result: dict[str, FloatMap] = {}
    log_c = math.log(n_classes)
    if pe is not None:
        np.negative(pe, out=pe)
        np.clip(pe, 0.0, log_c, out=pe)
    if ee is not None:
        ee *= -inv_s
        np.clip(ee, 0.0, log_c, out=ee)
    for name in wanted:
        if name == "predictive_entropy" and pe is not None:
            result[name] = pe if "mutual_information" not in wanted else pe.copy()
        elif name == "expected_entropy" and ee is not None:
            result[name] = ee if "mutual_information" not in wanted else ee.copy()
        elif name == "mutual_information" and pe is not None and ee is not None:
            mi = np.subtract(pe, ee)
            np.clip(mi, 0.0, log_c, out=mi)  # H(mean) >= mean H (Jensen); clip rounding
            result[name] = mi
        elif name == "variation_ratio" and vr is not None:
            np.subtract(np.float32(1.0), vr, out=vr)
            np.clip(vr, 0.0, 1.0, out=vr)
            result[name] = vr
        elif name == "mean_std" and std is not None:
            std *= np.float32(1.0 / (n_classes * math.sqrt(n_members)))
            np.clip(std, 0.0, 0.5, out=std)
            result[name] = std
        else:  # pragma: no cover - every wanted name has its buffer
            raise AssertionError(name)
    return result, mean


def ensemble_measures(
    probs: npt.ArrayLike, names: Iterable[str] = ENSEMBLE_MEASURES
) -> dict[str, FloatMap]:
    """Compute several ensemble-based measures at once, sharing the work over the members.

    Args:
        probs: member probabilities ``[..., S, C, H, W]``: S ensemble members (Lakshminarayanan
            et al. 2017) or MC-dropout samples (Gal and Ghahramani 2016), C >= 2 classes.
            Not logits. ``S == 1`` is accepted (mutual information, variation ratio and mean std
            are then 0) but carries no epistemic information.
        names: any of :data:`ENSEMBLE_MEASURES`.

    Returns:
        ``{name: float32 array [..., H, W]}`` in the order of ``names``:

        - ``predictive_entropy``: ``H(mean_s p_s)``, in ``[0, log C]``;
        - ``expected_entropy``: ``mean_s H(p_s)``, in ``[0, log C]``;
        - ``mutual_information``: BALD ``H(mean) - mean H`` (Houlsby et al. 2011; Gal et al.
          2017), clipped at 0, in ``[0, log C]``;
        - ``variation_ratio``: ``1 - (votes of the modal class) / S`` where each member votes for
          its most probable class (all of them on an exact tie), in ``[0, 1 - 1/S]``;
        - ``mean_std``: ``mean_c std_s p_{s,c}`` (population std, ddof 0; Kampffmeyer et al.
          2016), in ``[0, 0.5]``.
    """
    wanted = _check_names(names, ENSEMBLE_MEASURES, "ensemble")
    view, out_shape = _ensemble_view(probs, "ensemble_measures")
    result, _ = _ensemble(view, wanted, want_mean=False)
    return {name: arr.reshape(out_shape) for name, arr in result.items()}


def predictive_entropy(probs: npt.ArrayLike) -> FloatMap:
    """Entropy of the mean prediction ``H(mean_s p_s)``: ``[..., S, C, H, W]`` -> ``[..., H, W]``.

    Total (aleatoric + epistemic) uncertainty; Gal et al. 2017.
    """
    return ensemble_measures(probs, ("predictive_entropy",))["predictive_entropy"]


def expected_entropy(probs: npt.ArrayLike) -> FloatMap:
    """Mean member entropy ``mean_s H(p_s)``: ``[..., S, C, H, W]`` -> ``[..., H, W]``.

    The aleatoric part of the predictive entropy (Depeweg et al. 2018).
    """
    return ensemble_measures(probs, ("expected_entropy",))["expected_entropy"]


def mutual_information(probs: npt.ArrayLike) -> FloatMap:
    """BALD mutual information ``H(mean_s p_s) - mean_s H(p_s)``, clipped at 0.

    probs ``[..., S, C, H, W]`` -> float32 ``[..., H, W]``. Houlsby et al. 2011 ("Bayesian Active
    Learning for Classification and Preference Learning"); Gal, Islam and Ghahramani 2017
    ("Deep Bayesian Active Learning with Image Data"). 0 when all members agree; ``log 2`` for
    two members that are one-hot on different classes.
    """
    return ensemble_measures(probs, ("mutual_information",))["mutual_information"]


def variation_ratio(probs: npt.ArrayLike) -> FloatMap:
    """Variation ratio ``1 - f_m / S``, ``f_m`` = members voting for the modal class.

    probs ``[..., S, C, H, W]`` -> float32 ``[..., H, W]``. Freeman 1965; Gal et al. 2017. A
    member whose maximum is tied between classes votes for each tied class.
    """
    return ensemble_measures(probs, ("variation_ratio",))["variation_ratio"]


def mean_std(probs: npt.ArrayLike) -> FloatMap:
    """Mean over classes of the (population) std over members: ``mean_c std_s p_{s,c}``.

    probs ``[..., S, C, H, W]`` -> float32 ``[..., H, W]``. Kampffmeyer, Salberg and Jenssen 2016.
    Two members ``p`` and ``q`` give ``mean_c |p_c - q_c| / 2``.
    """
    return ensemble_measures(probs, ("mean_std",))["mean_std"]


# --------------------------------------------------------------------------------------------
# one image, any measures


def compute_measures(stack: npt.ArrayLike, names: Iterable[str]) -> dict[str, FloatMap]:
    """Compute the requested measures of one image's probability stack.

    This is what the scoring worker calls per image: memory stays ``O(S * C * H * W)`` of one
    image, never of the pool.

    Args:
        stack: ``[S, C, H, W]`` probabilities of one image: S ensemble members or MC-dropout
            samples, ``S == 1`` for a single model.
        names: any of :data:`ALL_MEASURES`. Softmax measures are computed on the mean over S
            (the predictive distribution; for ``S == 1`` the model's own probabilities).
            Ensemble measures need ``S >= 2``.

    Returns:
        ``{name: float32 [H, W]}`` in the order of ``names``.

    Raises:
        ValueError: wrong shape, unknown name, or an ensemble measure with ``S < 2``.
    """
    wanted = _check_names(names, ALL_MEASURES, "uncertainty")
    arr = _as_float32(stack)
    if arr.ndim != 4:
        raise ValueError(
            f"compute_measures expects one image's stack of shape [S, C, H, W] "
            f"(S = 1 for a single model), got shape {arr.shape}"
        )
    n_members = arr.shape[0]
    soft = tuple(n for n in wanted if n in SOFTMAX_MEASURES)
    ens = tuple(n for n in wanted if n in ENSEMBLE_MEASURES)
    if ens and n_members < 2:
        raise ValueError(
            f"ensemble measure(s) {list(ens)} need a stack of S >= 2 members or MC-dropout "
            f"samples, got S = {n_members} (shape {arr.shape}); use a softmax measure "
            f"({', '.join(SOFTMAX_MEASURES)}) for a single model"
        )
    out: dict[str, FloatMap] = {}
    mean: FloatMap | None = None
    if ens:
        view, out_shape = _ensemble_view(arr, "compute_measures")
        res, mean_flat = _ensemble(view, ens, want_mean=bool(soft))
        out.update({k: v.reshape(out_shape) for k, v in res.items()})
        if mean_flat is not None:
            mean = mean_flat.reshape(arr.shape[1:])
    if soft:
        if mean is None:
            mean = arr[0] if n_members == 1 else np.mean(arr, axis=0, dtype=np.float32)
        out.update(softmax_measures(mean, soft))
    return {name: out[name] for name in wanted}
