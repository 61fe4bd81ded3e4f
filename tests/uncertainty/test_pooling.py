"""Pooling per region and masking of labelled regions."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.pooling import (
    class_weights_from_labels,
    labelled_fraction,
    mask_labelled_regions,
    pool,
    pool_class_balanced_mean,
    pool_max,
    pool_mean,
)
from activeseg.uncertainty.regions import grid_regions
from activeseg.uncertainty.selection import STRATEGIES, Strategy, select_regions


def loop_pool(values: np.ndarray, labels: np.ndarray, n: int, reduce: str) -> np.ndarray:
    """Reference: one boolean mask per region."""
    out = np.empty(n)
    for r in range(n):
        sel = values[labels == r].astype(np.float64)
        out[r] = getattr(np, reduce)(sel) if sel.size else np.nan
    return out


def test_mean_and_max_equal_a_loop_over_regions() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 37, size=(40, 50))
    values = rng.random((40, 50)).astype(np.float32)
    np.testing.assert_allclose(pool_mean(values, labels, 37), loop_pool(values, labels, 37, "mean"))
    np.testing.assert_array_equal(
        pool_max(values, labels, 37), loop_pool(values, labels, 37, "max")
    )
    np.testing.assert_allclose(pool(values, labels, 37, "mean"), pool_mean(values, labels, 37))
    np.testing.assert_array_equal(pool(values, labels, 37, "max"), pool_max(values, labels, 37))


def test_empty_region_gets_nan_mean_and_minus_inf_max() -> None:
    labels = np.array([[0, 0], [2, 2]])
    values = np.array([[1.0, 3.0], [5.0, 7.0]])
    np.testing.assert_array_equal(pool_mean(values, labels, 3), [2.0, np.nan, 6.0])
    np.testing.assert_array_equal(pool_max(values, labels, 3), [3.0, -np.inf, 7.0])


def test_class_balanced_closed_form() -> None:
    # One region, 4 pixels: uncertainties 1, 2, 3, 4; predicted classes 0, 0, 1, 1;
    # weights w0 = 1, w1 = 3 -> (1 + 2 + 3*3 + 3*4) / (1 + 1 + 3 + 3) = 24 / 8 = 3.
    values = np.array([[1.0, 2.0], [3.0, 4.0]])
    labels = np.zeros((2, 2), int)
    pred = np.array([[0, 0], [1, 1]])
    out = pool_class_balanced_mean(values, labels, 1, pred, np.array([1.0, 3.0]))
    assert out[0] == pytest.approx(3.0)
    # Equal weights reduce to the plain mean.
    same = pool(values, labels, 1, "class_balanced", predicted_class=pred, class_weights=[2, 2])
    assert same[0] == pytest.approx(2.5)


def test_class_balanced_needs_its_inputs() -> None:
    with pytest.raises(ValueError, match="predicted_class"):
        pool(np.ones((2, 2)), np.zeros((2, 2), int), 1, "class_balanced")
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(np.ones((2, 2)), np.zeros((2, 2), int), 1, "median")  # type: ignore[arg-type]


def test_class_weights_inverse_frequency_mean_one() -> None:
    w = class_weights_from_labels([100, 10, 0])
    # 1/100, 1/10, and the unseen class gets the max 1/10; normalised to mean 1.
    np.testing.assert_allclose(w, np.array([0.01, 0.1, 0.1]) / 0.07)
    assert w.mean() == pytest.approx(1.0)
    np.testing.assert_array_equal(class_weights_from_labels([0, 0]), [1.0, 1.0])
    with pytest.raises(ValueError):
        class_weights_from_labels([-1, 3])


def test_labelled_fraction_and_masking() -> None:
    rm = grid_regions(4, 4, 2)  # 4 tiles of 4 pixels
    mask = np.full((4, 4), 255)
    mask[0:2, 0:2] = 1  # tile 0 fully labelled
    mask[0, 2] = 0  # tile 1: 1 of 4 labelled
    frac = labelled_fraction(mask, rm.labels, rm.n_regions)
    np.testing.assert_allclose(frac, [1.0, 0.25, 0.0, 0.0])
    scores = np.array([0.9, 0.5, 0.2, 0.1])
    masked = mask_labelled_regions(scores, frac)
    np.testing.assert_array_equal(masked, [-np.inf, 0.5, 0.2, 0.1])
    np.testing.assert_array_equal(scores, [0.9, 0.5, 0.2, 0.1])  # input untouched


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_fully_labelled_regions_are_never_selected(strategy: Strategy) -> None:
    rng = np.random.default_rng(1)
    scores = rng.random(30) + 0.01
    frac = np.where(np.arange(30) % 3 == 0, 1.0, rng.random(30) * 0.9)
    masked = mask_labelled_regions(scores, frac)
    for seed in range(5):
        chosen = select_regions(masked, np.arange(30) // 5, 30, strategy, seed=seed)
        assert chosen.size == 20
        assert not np.any(chosen % 3 == 0)


def test_pool_validates_shapes_and_ids() -> None:
    with pytest.raises(ValueError, match="same shape"):
        pool_mean(np.ones((2, 3)), np.zeros((3, 2), int), 1)
    with pytest.raises(ValueError, match=r"0\.\.1"):
        pool_mean(np.ones((2, 2)), np.full((2, 2), 2), 2)
