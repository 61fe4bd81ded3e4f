"""Does the queue find the model's errors better than chance? Selected versus control tasks.

Every round with a model queues a few *control* tasks drawn uniformly at random from the
candidates the selection passed over (:func:`activeseg.uncertainty.selection.draw_controls`),
hidden among the selected ones. Once answered, each task says how many pixels it labelled and
how many of those the model had predicted wrongly. The error rate of a group is pooled over
its tasks, and the queue's worth is the ratio of the two rates:

    rate = sum(wrong pixels) / sum(answered pixels)       (over the group's tasks)
    ratio = rate(selected tasks) / rate(control tasks)

1 = the measure picks errors no better than random; 3 = three times as many wrong pixels per
labelled pixel. Pixels of one task are not independent (one region, one annotator, one
image), so the confidence interval resamples *tasks*, not pixels: a cluster bootstrap (Efron
and Tibshirani 1993, ch. 13; Field and Welsh 2007, "Bootstrapping clustered data"), each group
resampled with replacement on its own, ``n_resamples`` times, the ratio recomputed each time,
and the 2.5th and 97.5th percentiles taken as order statistics (``method="inverted_cdf"``, no
interpolation, so infinite resampled ratios cannot turn into NaN). Seeded: the same input and
seed give the same interval.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["ErrorRateComparison", "compare_error_rates"]

MIN_CONTROL_TASKS = 5  # fewer answered controls than this: no comparison is attempted
_CHUNK = 250  # resamples per vectorised step (bounds memory to _CHUNK x tasks)


@dataclass(frozen=True)
class ErrorRateComparison:
    """The comparison of one round (or of all rounds so far).

    ``ratio``, ``ci_low`` and ``ci_high`` are None when undefined: no control errors (division
    by zero, or an unbounded upper end) or too few controls.
    """

    selected_tasks: int
    control_tasks: int
    selected_error_rate: float | None
    control_error_rate: float | None
    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    verdict: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rate(wrong: npt.NDArray[np.float64], total: npt.NDArray[np.float64]) -> float | None:
    t = float(total.sum())
    return float(wrong.sum()) / t if t > 0 else None


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _bootstrap_rates(
    wrong: npt.NDArray[np.float64],
    total: npt.NDArray[np.float64],
    n_resamples: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.float64]:
    """float ``[n_resamples]`` pooled rates of task resamples (NaN where nothing answered)."""
    n = wrong.shape[0]
    out = np.empty(n_resamples, np.float64)
    for start in range(0, n_resamples, _CHUNK):
        size = min(_CHUNK, n_resamples - start)
        idx = rng.integers(0, n, size=(size, n))  # [size, n] task indices
        w, t = wrong[idx].sum(axis=1), total[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[start : start + size] = w / t
    return out


def compare_error_rates(
    selected_wrong: npt.ArrayLike,
    selected_total: npt.ArrayLike,
    control_wrong: npt.ArrayLike,
    control_total: npt.ArrayLike,
    seed: int = 0,
    n_resamples: int = 2000,
    min_control: int = MIN_CONTROL_TASKS,
) -> ErrorRateComparison:
    """Compare the pooled error rate of selected tasks with that of control tasks.

    Args:
        selected_wrong: ``[n_s]`` wrongly predicted pixels per answered selected task.
        selected_total: ``[n_s]`` answered pixels per selected task.
        control_wrong: ``[n_c]`` the same for control tasks.
        control_total: ``[n_c]``.
        seed: seed of the bootstrap's ``np.random.default_rng``.
        n_resamples: bootstrap resamples.
        min_control: fewer control tasks than this (or none with answered pixels) gives the
            verdict "too few control answers" and no ratio.

    Returns:
        An :class:`ErrorRateComparison` whose ``verdict`` reads e.g. "the queue found 3.1x
        [2.4, 3.9] more wrong pixels than random", "no difference shown (1.2x [0.8, 1.9])"
        when the interval holds 1, or "too few control answers (3 of at least 5)".
    """
    sw, st = np.asarray(selected_wrong, np.float64), np.asarray(selected_total, np.float64)
    cw, ct = np.asarray(control_wrong, np.float64), np.asarray(control_total, np.float64)
    if sw.shape != st.shape or cw.shape != ct.shape or sw.ndim != 1 or cw.ndim != 1:
        raise ValueError(
            "give per-task 1-D arrays, wrong and total of the same length per group; got "
            f"{sw.shape}, {st.shape}, {cw.shape}, {ct.shape}"
        )
    if np.any(sw < 0) or np.any(cw < 0) or np.any(sw > st) or np.any(cw > ct):
        raise ValueError("wrong pixels must lie in 0..answered pixels for every task")
    sel_rate, ctl_rate = _rate(sw, st), _rate(cw, ct)

    def result(
        verdict: str,
        ratio: float | None = None,
        low: float | None = None,
        high: float | None = None,
    ) -> ErrorRateComparison:
        return ErrorRateComparison(
            selected_tasks=int(sw.shape[0]),
            control_tasks=int(cw.shape[0]),
            selected_error_rate=sel_rate,
            control_error_rate=ctl_rate,
            ratio=ratio,
            ci_low=low,
            ci_high=high,
            verdict=verdict,
        )

    if cw.shape[0] < min_control or ctl_rate is None:
        return result(f"too few control answers ({cw.shape[0]} of at least {min_control})")
    if sel_rate is None:
        return result("no selected answers yet")
    if ctl_rate == 0:
        return result(
            f"random found no wrong pixels in {cw.shape[0]} control answers; the queue's "
            f"error rate is {sel_rate:.3f}"
        )
    rng = np.random.default_rng(seed)
    sel_boot = _bootstrap_rates(sw, st, n_resamples, rng)
    ctl_boot = _bootstrap_rates(cw, ct, n_resamples, rng)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = sel_boot / ctl_boot  # inf where a resample drew only error-free controls
    ratios = ratios[~np.isnan(ratios)]
    if ratios.size == 0:  # every resample drew tasks without answered pixels
        return result("no interval: the answered tasks label no pixels", sel_rate / ctl_rate)
    low, high = np.percentile(ratios, [2.5, 97.5], method="inverted_cdf")
    ratio = sel_rate / ctl_rate
    lo_txt = f"{low:.1f}"
    hi_txt = f"{high:.1f}" if np.isfinite(high) else "inf"
    interval = f"{ratio:.1f}x [{lo_txt}, {hi_txt}]"
    if low <= 1.0 <= high:
        verdict = f"no difference shown ({interval})"
    elif ratio > 1:
        verdict = f"the queue found {interval} more wrong pixels than random"
    else:
        verdict = f"the queue found {interval} as many wrong pixels as random (fewer)"
    return result(verdict, ratio, _finite(low), _finite(high))
