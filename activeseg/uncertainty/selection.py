"""Select a batch of regions to label from their scores.

A plain top-k picks many near-duplicate regions (neighbours in one uncertain image). Following
Kirsch et al. 2023 ("Stochastic Batch Acquisition: A Simple Baseline for Deep Active Learning",
TMLR), the default samples the batch without replacement with probabilities that grow with the
score:

- ``power``: ``p ∝ score ** beta`` (the paper's recommended default);
- ``softmax``: ``p ∝ exp(beta * score)``;
- ``softrank``: ``p ∝ rank ** -beta``, rank 1 = highest score (ties share the lower rank);
- ``top_k``: the k highest scores (ties: lower index first), deterministic;
- ``random``: uniform, ignoring scores (the baseline every strategy must beat).

Sampling without replacement is vectorised with the Gumbel-top-k trick (Kool, van Hoof and
Welling 2019, "Stochastic Beams and Where to Find Them"): ``key = log p + Gumbel noise``, sort
descending. A greedy pass then walks that order once, skipping candidates of an image that
already holds ``per_image_cap`` selected regions or closer than ``min_distance`` to a region
selected in the same image (with the cap alone this pass is vectorised). The returned order is
the queue priority order.

Eligibility: a candidate with score NaN or ``-inf`` (fully labelled, see
:func:`activeseg.uncertainty.pooling.mask_labelled_regions`) is never selected. A score of 0
(or below) carries no uncertainty: only ``random`` may select it.

Mergeable draws. The Gumbel noise may be given instead of drawn (``noise``): with
:func:`hashed_gumbel` it is a pure function of (seed, salt, stream, image id, region), so any
subset of the candidates gets the same keys wherever it is scored. The greedy pass only
compares regions of one image, so a candidate's fate depends on its own image alone: the
candidates that survive the per-image rules in a part of the pool holding whole images are
exactly the global survivors of those images, and the global top ``k`` is the top ``k`` of
the parts' top ``k`` (:func:`ranked_selection`). Controls are merged the same way with the
depth bound of :func:`ranked_controls`. ``softrank`` ranks every candidate of the pool
against the others: it has no mergeable form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

__all__ = [
    "MERGEABLE_STRATEGIES",
    "STRATEGIES",
    "Seed",
    "Strategy",
    "control_depth",
    "draw_controls",
    "hashed_gumbel",
    "interleave",
    "ranked_controls",
    "ranked_selection",
    "select_regions",
]

Strategy = Literal["top_k", "random", "power", "softmax", "softrank"]
# Anything np.random.default_rng takes: an int, a sequence of ints such as (project seed, round
# number), or a Generator (used as is, so several draws can share one stream).
Seed = int | Sequence[int] | np.random.Generator
STRATEGIES: tuple[str, ...] = ("top_k", "random", "power", "softmax", "softrank")
MERGEABLE_STRATEGIES: tuple[str, ...] = ("top_k", "random", "power", "softmax")

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def _splitmix_int(x: int) -> int:
    """SplitMix64's finaliser on a Python int (Steele, Lea and Flood 2014)."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & _MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & _MASK64
    return x ^ (x >> 31)


def _splitmix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The same finaliser on uint64 arrays (numpy's uint64 arithmetic wraps modulo 2**64)."""
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return np.asarray(x ^ (x >> np.uint64(31)), dtype=np.uint64)


def hashed_gumbel(
    seed: int, salt: int, image_ids: npt.ArrayLike, regions: npt.ArrayLike, stream: int = 0
) -> npt.NDArray[np.float64]:
    """Gumbel(0, 1) noise, one value per (image id, region), that is a pure function of
    ``(seed, salt, stream, image id, region)``: a SplitMix64 hash chain mapped to a uniform in
    (0, 1) (53 bits, never 0 or 1), then ``-log(-log u)``. Any subset of candidates, scored in
    any part of the pool, in any order, gets the same noise.

    Args:
        seed: the project's seed; salt: what makes draws differ (the model version);
        image_ids, regions: int ``[N]``; stream: separates independent draws (selection 0,
            controls 1).
    """
    ids = np.asarray(image_ids, dtype=np.int64)
    reg = np.asarray(regions, dtype=np.int64)
    if ids.shape != reg.shape or ids.ndim != 1:
        raise ValueError(
            f"image_ids and regions must both have shape [N], got {ids.shape}, {reg.shape}"
        )
    head = _splitmix_int(
        _splitmix_int(_splitmix_int(seed & _MASK64) ^ (salt & _MASK64)) ^ (stream & _MASK64)
    )
    h = _splitmix(np.uint64(head) ^ ids.astype(np.uint64))
    h = _splitmix(h ^ reg.astype(np.uint64))
    u = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return np.asarray(-np.log(-np.log(u)), dtype=np.float64)


def _sort_keys(
    scores: npt.NDArray[np.float64],
    strategy: str,
    beta: float,
    rng: np.random.Generator | None,
    noise: npt.NDArray[np.float64] | None = None,
) -> npt.NDArray[np.float64]:
    """Keys whose descending order is the sampled order (``scores`` are the eligible ones);
    the Gumbel noise is ``noise`` when given, else drawn from ``rng``."""
    if strategy == "top_k":
        return scores
    if noise is None:
        assert rng is not None
        noise = np.asarray(rng.gumbel(size=scores.shape[0]))
    gumbel: npt.NDArray[np.float64] = np.asarray(noise, dtype=np.float64)
    if strategy == "random":
        return gumbel
    if strategy == "power":
        return np.asarray(beta * np.log(scores) + gumbel, dtype=np.float64)
    if strategy == "softmax":
        return np.asarray(beta * scores + gumbel, dtype=np.float64)
    # softrank
    ranks = np.asarray(rankdata(-scores, method="min"), dtype=np.float64)
    return -beta * np.log(ranks) + gumbel


def select_regions(
    scores: npt.ArrayLike,
    image_index: npt.ArrayLike,
    k: int,
    strategy: Strategy = "power",
    per_image_cap: int | None = None,
    min_distance: float | None = None,
    centroids: npt.ArrayLike | None = None,
    beta: float = 1.0,
    seed: Seed = 0,
    noise: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """Choose up to ``k`` candidate regions, in priority order.

    Args:
        scores: float ``[N]`` pooled uncertainty per candidate region (higher = more useful);
            NaN or ``-inf`` = never select.
        image_index: int ``[N]`` image of each candidate (for the cap and the distance rule).
        k: batch size.
        strategy: see the module docstring; ``power`` by default (Kirsch et al. 2023).
        per_image_cap: at most this many regions per image.
        min_distance: selected regions of the same image keep centroids at least this many
            pixels apart. Needs ``centroids``.
        centroids: float ``[N, 2]`` ``(y, x)`` region centres
            (:attr:`activeseg.uncertainty.regions.RegionMap.centroids`).
        beta: sharpness (``>= 0``; 0 = uniform among eligible candidates; large = top-k).
            Ignored by ``top_k`` and ``random``.
        seed: seed of ``np.random.default_rng`` (an int, a sequence of ints, or a Generator
            that is drawn from); the same inputs and seed give the same batch.
        noise: float ``[N]`` Gumbel noise per candidate (e.g. :func:`hashed_gumbel`) used
            instead of drawing from ``seed`` (which is then not drawn from).

    Returns:
        int64 indices into the candidate arrays, in selection (queue priority) order; fewer
        than ``k`` when not enough eligible candidates pass the rules. Ties of the keys go to
        the lower index.
    """
    s = np.asarray(scores, dtype=np.float64)
    img = np.asarray(image_index)
    if s.ndim != 1 or img.shape != s.shape:
        raise ValueError(
            f"scores and image_index must both have shape [N], got {s.shape} and {img.shape}"
        )
    if img.dtype.kind not in "iu":
        raise ValueError(f"image_index must be integer, got dtype {img.dtype}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if not (np.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta must be a finite number >= 0, got {beta}")
    if np.any(s == np.inf):
        raise ValueError("scores must not be +inf (use -inf or NaN for 'never select')")
    if per_image_cap is not None and per_image_cap < 1:
        raise ValueError(f"per_image_cap must be >= 1 or None, got {per_image_cap}")
    cents: npt.NDArray[np.float64] | None = None
    if min_distance is not None:
        if not min_distance >= 0:
            raise ValueError(f"min_distance must be >= 0, got {min_distance}")
        if centroids is None:
            raise ValueError("min_distance needs centroids [N, 2] (y, x) of the candidates")
        cents = np.asarray(centroids, dtype=np.float64)
        if cents.shape != (s.shape[0], 2):
            raise ValueError(
                f"centroids must have shape [N, 2] = {(s.shape[0], 2)}, got {cents.shape}"
            )

    gumbel = _check_noise(noise, s.shape[0])
    eligible = np.isfinite(s)
    if strategy != "random":
        eligible &= s > 0
    candidates = np.flatnonzero(eligible)
    if k == 0 or candidates.size == 0:
        return np.empty(0, np.int64)
    rng = np.random.default_rng(seed) if gumbel is None else None
    keys = _sort_keys(
        s[candidates], strategy, float(beta), rng, None if gumbel is None else gumbel[candidates]
    )
    order = candidates[np.argsort(-keys, kind="stable")].astype(np.int64)
    if cents is None or min_distance is None:
        if per_image_cap is not None:
            order = order[_rank_within_image(img[order]) < per_image_cap]
        return order[:k]
    return _greedy_spread(order, img, k, float(min_distance), cents, per_image_cap)


def _check_noise(noise: npt.ArrayLike | None, n: int) -> npt.NDArray[np.float64] | None:
    if noise is None:
        return None
    g = np.asarray(noise, dtype=np.float64)
    if g.shape != (n,):
        raise ValueError(f"noise must have shape [N] = {(n,)}, got {g.shape}")
    if not np.all(np.isfinite(g)):
        raise ValueError("noise must be finite")
    return g


def ranked_selection(
    scores: npt.ArrayLike,
    image_index: npt.ArrayLike,
    k: int,
    noise: npt.ArrayLike,
    strategy: Strategy = "power",
    per_image_cap: int | None = None,
    min_distance: float | None = None,
    centroids: npt.ArrayLike | None = None,
    beta: float = 1.0,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], bool]:
    """:func:`select_regions` with given noise, and what a merge needs: the sort key of each
    selected candidate and whether nothing was cut after the last one.

    Run on a part of the pool that holds whole images, the result is the part's share of the
    global selection cut at ``k``: merging parts = sorting their entries by (key descending,
    then the candidates' global order) and keeping ``k``, exact as long as no incomplete part
    has its last entry before the ``k``-th merged one.

    Returns:
        ``(indices, keys, complete)``: int64 ``[<= k]`` in order, float64 keys (descending),
        and ``complete`` = fewer than ``k`` candidates passed the rules (or ``k == 0``).
    """
    if strategy not in MERGEABLE_STRATEGIES:
        raise ValueError(f"strategy {strategy!r} ranks over the whole pool: it cannot be merged")
    s = np.asarray(scores, dtype=np.float64)
    g = _check_noise(noise, s.shape[0])
    assert g is not None
    picked = select_regions(
        s,
        image_index,
        k,
        strategy=strategy,
        per_image_cap=per_image_cap,
        min_distance=min_distance,
        centroids=centroids,
        beta=beta,
        noise=g,
    )
    keys = _sort_keys(s[picked], strategy, float(beta), None, g[picked])
    return picked, np.asarray(keys, np.float64), bool(picked.size < k or k == 0)


def control_depth(n_selected: int, n_control: int) -> int:
    """How many control entries a part of the pool keeps (:func:`ranked_controls`)."""
    return n_selected + 2 * n_control if n_control > 0 else 0


def ranked_controls(
    scores: npt.ArrayLike,
    image_index: npt.ArrayLike,
    n_selected: int,
    n_control: int,
    noise: npt.ArrayLike,
    per_image_cap: int | None = None,
) -> tuple[npt.NDArray[np.int64], bool]:
    """The entries of a part of the pool (whole images) that :func:`draw_controls` can reach
    once the global selection is known, in draw order: the eligible candidates (finite score)
    by descending noise, at most ``2 * per_image_cap`` per image, at most
    ``control_depth(n_selected, n_control)`` in all.

    Why that is enough: the selection holds at most ``per_image_cap`` regions of an image, so
    a control is among its image's first ``2 * cap`` draws; before it in the whole draw order
    come at most ``n_selected`` selected regions, ``n_control - 1`` controls and, per image
    already holding ``cap`` controls (at most ``(n_control - 1) / cap`` images), at most
    ``cap`` more kept entries: fewer than ``n_selected + 2 * n_control`` in all.

    Returns:
        ``(indices, complete)``: int64 indices in draw order, and ``complete`` = nothing was
        cut by the depth (cuts by the per-image bound never matter).
    """
    s = np.asarray(scores, dtype=np.float64)
    g = _check_noise(noise, s.shape[0])
    assert g is not None
    img = np.asarray(image_index)
    depth = control_depth(n_selected, n_control)
    candidates = np.flatnonzero(np.isfinite(s))
    if depth == 0 or candidates.size == 0:
        return np.empty(0, np.int64), True
    order = candidates[np.argsort(-g[candidates], kind="stable")].astype(np.int64)
    if per_image_cap is not None:
        order = order[_rank_within_image(img[order]) < 2 * per_image_cap]
    return order[:depth], bool(order.size <= depth)


def _rank_within_image(image_of: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    """For a sequence of image ids, how many earlier entries share each entry's image.

    ``[3, 5, 3, 3, 5] -> [0, 0, 1, 2, 1]``: a stable sort by image, then the position inside
    each run. Vectorised, so the per-image cap needs no loop.
    """
    n = image_of.shape[0]
    perm = np.argsort(image_of, kind="stable")
    sorted_ids = image_of[perm]
    run_start = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    run_length = np.diff(np.r_[run_start, n])
    position = np.arange(n, dtype=np.int64) - np.repeat(run_start, run_length)
    rank = np.empty(n, np.int64)
    rank[perm] = position
    return rank


def _greedy_spread(
    order: npt.NDArray[np.int64],
    image_index: npt.NDArray[np.integer],
    k: int,
    min_distance: float,
    centroids: npt.NDArray[np.float64],
    per_image_cap: int | None,
) -> npt.NDArray[np.int64]:
    """One greedy pass over the sampled order, skipping candidates of a full image or too close
    to a region already selected in the same image. The loop runs over visited candidates (at
    most N, usually about k), each compared with the few already selected in its image."""
    cap = per_image_cap if per_image_cap is not None else k
    min_d2 = min_distance**2
    chosen_centres: dict[int, list[tuple[float, float]]] = {}
    selected: list[int] = []
    images = image_index[order].tolist()
    centres = centroids[order].tolist()
    for idx, image, (y, x) in zip(order.tolist(), images, centres, strict=True):
        others = chosen_centres.setdefault(image, [])
        if len(others) >= cap:
            continue
        if any((y - oy) ** 2 + (x - ox) ** 2 < min_d2 for oy, ox in others):
            continue
        others.append((y, x))
        selected.append(idx)
        if len(selected) == k:
            break
    return np.asarray(selected, dtype=np.int64)


def draw_controls(
    scores: npt.ArrayLike,
    image_index: npt.ArrayLike,
    selected: npt.ArrayLike,
    k: int,
    per_image_cap: int | None = None,
    seed: Seed = 0,
    noise: npt.ArrayLike | None = None,
) -> npt.NDArray[np.int64]:
    """Draw ``k`` control candidates uniformly at random among the eligible ones not selected.

    Controls are the yardstick of a queue: what a random choice would have found in the same
    round, labelled by the same annotators. Eligible = finite score (as for ``random``).

    Args:
        scores: float ``[N]`` pooled scores (NaN or ``-inf`` = not eligible).
        image_index: int ``[N]`` image of each candidate.
        selected: int ``[M]`` indices already selected (never drawn again).
        k: number of controls.
        per_image_cap: at most this many controls per image (the selection's cap, applied to
            the controls on their own so that they stay a uniform draw of the pool).
        seed: as in :func:`select_regions`.
        noise: as in :func:`select_regions` (the draw's own noise, not the selection's).

    Returns:
        int64 ``[<= k]`` candidate indices in draw order.
    """
    s = np.array(scores, dtype=np.float64)
    s[np.asarray(selected, dtype=np.int64)] = np.nan
    return select_regions(
        s,
        image_index,
        k,
        strategy="random",
        per_image_cap=per_image_cap,
        seed=seed,
        noise=noise,
    )


def interleave(
    selected: npt.ArrayLike, controls: npt.ArrayLike, seed: Seed = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Put the controls at uniformly random positions of the lease order; the selected keep
    their sampled order among themselves.

    Args:
        selected: int ``[M]`` in sampled (priority) order.
        controls: int ``[Q]``.
        seed: as in :func:`select_regions`.

    Returns:
        ``(order, is_control)``: int64 ``[M + Q]`` the lease order, bool ``[M + Q]`` True where
        the entry is a control. Every subset of positions is equally likely to hold the
        controls, so annotators cannot tell them by position and a round cut short holds both
        kinds in proportion (in expectation).
    """
    sel = np.asarray(selected, dtype=np.int64)
    ctl = np.asarray(controls, dtype=np.int64)
    rng = np.random.default_rng(seed)
    total = sel.size + ctl.size
    is_control = np.zeros(total, np.bool_)
    is_control[rng.choice(total, size=ctl.size, replace=False)] = True
    order = np.empty(total, np.int64)
    order[~is_control] = sel
    order[is_control] = ctl[rng.permutation(ctl.size)]
    return order, is_control
