"""Pool a per-pixel uncertainty map into one score per region, and mask labelled regions.

Every function reads the pixel map and the region labels once (``np.bincount`` or
``np.maximum.at``): no loop over regions. Pooled scores are float64 ``[R]``. The reductions run
over blocks of :data:`POOL_BLOCK_PIXELS` pixels, so the float64 and index copies that
``np.bincount`` needs exist for one block, not for the image (288 MB each at 36 Mpx).

Class-balanced pooling weights each pixel by the weight of its *predicted* class, so regions
where the model predicts rare classes rank higher (a per-pixel form of the class-balanced
acquisition of Cai et al. 2021, "Revisiting Superpixels for Active Learning in Semantic
Segmentation with Realistic Annotation Costs", and of inverse-frequency weighting).

Fully labelled regions are represented by a score of ``-inf`` after
:func:`mask_labelled_regions`; :func:`activeseg.uncertainty.selection.select_regions` never
selects a ``-inf`` (or NaN) candidate, whatever the strategy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt

from activeseg.uncertainty.labels import UNLABELLED

__all__ = [
    "PoolHow",
    "class_weights_from_labels",
    "labelled_fraction",
    "majority_class",
    "mask_labelled_regions",
    "open_regions",
    "pool",
    "pool_maps",
    "pool_class_balanced_mean",
    "pool_max",
    "pool_mean",
]

PoolHow = Literal["mean", "max", "class_balanced"]
Scores = npt.NDArray[np.float64]

POOL_BLOCK_PIXELS = 1 << 20
"""Pixels reduced per block: 8 MiB of float64 weights, far below the maps being pooled."""


def _flat_inputs(
    pixel_map: npt.ArrayLike, labels: npt.ArrayLike, n_regions: int, func: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check the inputs and return both as flat arrays of their own dtypes (views if they are
    contiguous; the float64/intp conversions happen per block)."""
    values = np.asarray(pixel_map)
    lab = np.asarray(labels)
    if values.shape != lab.shape or values.ndim != 2:
        raise ValueError(
            f"{func} expects pixel_map and labels of the same shape [H, W], got "
            f"{values.shape} and {lab.shape}"
        )
    if lab.dtype.kind not in "iu":
        raise ValueError(f"{func}: labels must be integer region ids, got dtype {lab.dtype}")
    if n_regions < 1:
        raise ValueError(f"{func}: n_regions must be >= 1, got {n_regions}")
    flat = lab.ravel()
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= n_regions):
        raise ValueError(
            f"{func}: region ids must lie in 0..{n_regions - 1}, got "
            f"{int(flat.min())}..{int(flat.max())}"
        )
    return values.ravel(), flat


def _blocks(size: int) -> Iterator[slice]:
    for start in range(0, size, POOL_BLOCK_PIXELS):
        yield slice(start, start + POOL_BLOCK_PIXELS)


def _region_sums(flat: np.ndarray, n_regions: int, weights: np.ndarray | None = None) -> Scores:
    """``np.bincount(flat, weights, minlength=n_regions)`` as float64, block by block."""
    out = np.zeros(n_regions, np.float64)
    for block in _blocks(flat.size):
        w = None if weights is None else weights[block].astype(np.float64, copy=False)
        out += np.bincount(flat[block].astype(np.intp, copy=False), w, minlength=n_regions)
    return out


def _divide(num: npt.ArrayLike, den: npt.ArrayLike) -> Scores:
    """``num / den`` with NaN where ``den == 0`` (a region without pixels has no score)."""
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    out = np.full(n.shape, np.nan)
    np.divide(n, d, out=out, where=d > 0)
    return out


def pool_mean(pixel_map: npt.ArrayLike, labels: npt.ArrayLike, n_regions: int) -> Scores:
    """Mean of ``pixel_map`` ``[H, W]`` over each region of ``labels`` ``[H, W]`` -> ``[R]``.

    Regions without pixels get NaN.
    """
    values, flat = _flat_inputs(pixel_map, labels, n_regions, "pool_mean")
    return _divide(_region_sums(flat, n_regions, values), _region_sums(flat, n_regions))


def pool_max(pixel_map: npt.ArrayLike, labels: npt.ArrayLike, n_regions: int) -> Scores:
    """Maximum of ``pixel_map`` ``[H, W]`` over each region -> ``[R]``; ``-inf`` if empty.

    Sensitive to single noisy pixels; the mean is the usual choice for acquisition.
    """
    values, flat = _flat_inputs(pixel_map, labels, n_regions, "pool_max")
    out = np.full(n_regions, -np.inf)
    for block in _blocks(flat.size):
        np.maximum.at(out, flat[block], values[block].astype(np.float64, copy=False))
    return out


def class_weights_from_labels(label_counts_per_class: npt.ArrayLike) -> Scores:
    """Inverse-frequency class weights, normalised to mean 1 over the classes.

    Args:
        label_counts_per_class: ``[K]`` labelled pixels per class so far (non-negative).

    Returns:
        float64 ``[K]``: ``w_k ∝ 1 / n_k``; a class without labelled pixels gets the largest
        weight of the others (it is at least as rare as the rarest seen class); mean 1. With no
        labels at all every class weighs 1.
    """
    counts = np.asarray(label_counts_per_class, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"label_counts_per_class must have shape [K], got {counts.shape}")
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError("label_counts_per_class must be finite and >= 0")
    seen = counts > 0
    if not seen.any():
        return np.ones_like(counts)
    weights = np.zeros_like(counts)
    weights[seen] = 1.0 / counts[seen]
    weights[~seen] = weights[seen].max()
    return weights / weights.mean()


def pool_class_balanced_mean(
    pixel_map: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_regions: int,
    predicted_class: npt.ArrayLike,
    class_weights: npt.ArrayLike,
) -> Scores:
    """Weighted mean per region, each pixel weighted by ``class_weights[predicted_class]``.

    ``score_r = sum_{i in r} w_{c(i)} u_i / sum_{i in r} w_{c(i)}`` where ``u`` is
    ``pixel_map`` ``[H, W]``, ``c`` the predicted class ``[H, W]`` (argmax of the mean
    probabilities) and ``w`` the ``[K]`` class weights (see :func:`class_weights_from_labels`).
    Returns ``[R]``; NaN for regions whose weights sum to 0.

    Note: the weights shift the mean towards the uncertainty of pixels predicted as rare
    classes; with equal weights this is :func:`pool_mean`.
    """
    values, flat = _flat_inputs(pixel_map, labels, n_regions, "pool_class_balanced_mean")
    pred = np.asarray(predicted_class)
    if pred.shape != np.shape(labels):
        raise ValueError(
            f"predicted_class must have the shape [H, W] of labels {np.shape(labels)}, "
            f"got {pred.shape}"
        )
    weights = np.asarray(class_weights, dtype=np.float64)
    if weights.ndim != 1:
        raise ValueError(f"class_weights must have shape [K], got {weights.shape}")
    if pred.dtype.kind not in "iu" or (
        pred.size and (int(pred.min()) < 0 or int(pred.max()) >= weights.size)
    ):
        raise ValueError(f"predicted_class must hold class ids in 0..{weights.size - 1}")
    if np.any(weights < 0) or not np.all(np.isfinite(weights)):
        raise ValueError("class_weights must be finite and >= 0")
    pred_flat = pred.ravel()
    num = np.zeros(n_regions, np.float64)
    den = np.zeros(n_regions, np.float64)
    for block in _blocks(flat.size):
        pixel_w = weights[pred_flat[block]]
        index = flat[block].astype(np.intp, copy=False)
        num += np.bincount(index, pixel_w * values[block], minlength=n_regions)
        den += np.bincount(index, pixel_w, minlength=n_regions)
    return _divide(num, den)


def pool(
    pixel_map: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_regions: int,
    how: PoolHow = "mean",
    *,
    predicted_class: npt.ArrayLike | None = None,
    class_weights: npt.ArrayLike | None = None,
) -> Scores:
    """Pool ``pixel_map`` ``[H, W]`` per region: ``how`` is ``mean``, ``max`` or
    ``class_balanced`` (which needs ``predicted_class`` and ``class_weights``). Returns ``[R]``.
    """
    if how == "mean":
        return pool_mean(pixel_map, labels, n_regions)
    if how == "max":
        return pool_max(pixel_map, labels, n_regions)
    if how == "class_balanced":
        if predicted_class is None or class_weights is None:
            raise ValueError(
                'how="class_balanced" needs predicted_class [H, W] and class_weights [K], e.g. '
                "pool(u, labels, R, 'class_balanced', predicted_class=mean_probs.argmax(0), "
                "class_weights=class_weights_from_labels(counts))"
            )
        return pool_class_balanced_mean(
            pixel_map, labels, n_regions, predicted_class, class_weights
        )
    raise ValueError(f"unknown pooling {how!r}; choose 'mean', 'max' or 'class_balanced'")


def labelled_fraction(
    label_mask: npt.ArrayLike,
    labels: npt.ArrayLike,
    n_regions: int,
    ignore_index: int = UNLABELLED,
) -> Scores:
    """Fraction of each region's pixels that already carry a label -> float64 ``[R]`` in [0, 1].

    Args:
        label_mask: ``[H, W]`` class index per pixel, ``ignore_index`` where not labelled yet.
        labels: ``[H, W]`` region ids ``0..R-1``.
        n_regions: R.
        ignore_index: the "not labelled" value.

    Regions without pixels get NaN.
    """
    mask = np.asarray(label_mask)
    labelled = (mask != ignore_index).astype(np.float64)
    return pool_mean(labelled, labels, n_regions)


def mask_labelled_regions(scores: npt.ArrayLike, labelled_fraction: npt.ArrayLike) -> Scores:
    """Return a copy of ``scores`` ``[R]`` with ``-inf`` for every fully labelled region.

    ``labelled_fraction`` ``[R]`` comes from :func:`labelled_fraction`; a region counts as fully
    labelled when its fraction is 1 (NaN fractions, i.e. empty regions, are masked too).
    ``-inf`` is the convention of this package for "never select": every strategy of
    :func:`activeseg.uncertainty.selection.select_regions` skips it, and it sorts last.
    Partially labelled regions keep their score.
    """
    out = np.array(scores, dtype=np.float64, copy=True)
    frac = np.asarray(labelled_fraction, dtype=np.float64)
    if out.shape != frac.shape or out.ndim != 1:
        raise ValueError(
            f"scores and labelled_fraction must both have shape [R], got {out.shape} and "
            f"{frac.shape}"
        )
    out[~(frac < 1.0)] = -np.inf
    return out


def pool_maps(
    maps: Mapping[str, npt.ArrayLike],
    labels: npt.ArrayLike,
    n_regions: int,
    how: PoolHow = "mean",
    *,
    predicted_class: npt.ArrayLike | None = None,
    class_weights: npt.ArrayLike | None = None,
) -> dict[str, Scores]:
    """:func:`pool` of every map in ``maps`` (measure name -> ``[H, W]``): name -> ``[R]``."""
    return {
        name: pool(
            pixel_map,
            labels,
            n_regions,
            how,
            predicted_class=predicted_class,
            class_weights=class_weights,
        )
        for name, pixel_map in maps.items()
    }


def majority_class(
    predicted_class: npt.ArrayLike, labels: npt.ArrayLike, n_regions: int, n_classes: int
) -> npt.NDArray[np.int64]:
    """The most predicted class of each region -> int64 ``[R]`` (ties: the lowest class id;
    an empty region gets 0). ``predicted_class`` and ``labels``: ``[H, W]``."""
    votes = np.bincount(
        np.asarray(labels).ravel() * n_classes + np.asarray(predicted_class).ravel(),
        minlength=n_regions * n_classes,
    ).reshape(n_regions, n_classes)
    return votes.argmax(axis=1)


def open_regions(
    label_mask: npt.ArrayLike, labels: npt.ArrayLike, n_regions: int, ignore_index: int = 255
) -> npt.NDArray[np.bool_]:
    """bool ``[R]``: the regions not fully labelled in ``label_mask`` ``[H, W]`` (an empty
    region, whose fraction is NaN, counts as open)."""
    frac = labelled_fraction(label_mask, labels, n_regions, ignore_index)
    return np.asarray(~(frac >= 1.0), np.bool_)
