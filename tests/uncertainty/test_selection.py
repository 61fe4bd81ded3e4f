"""Batch selection: order, caps, distances, reproducibility and the sampling distribution."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.selection import STRATEGIES, Strategy, select_regions


def candidates(n: int = 60, n_images: int = 6, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    scores = rng.random(n) + 0.05
    image = np.arange(n) % n_images
    centroids = rng.random((n, 2)) * 100
    return scores, image, centroids


def test_top_k_order_is_exact() -> None:
    scores = np.array([0.2, 0.9, 0.5, 0.9, 0.1])
    out = select_regions(scores, np.zeros(5, int), 4, "top_k")
    np.testing.assert_array_equal(out, [1, 3, 2, 0])  # tie 0.9: lower index first
    assert out.dtype == np.int64


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_per_image_cap_is_respected(strategy: Strategy) -> None:
    scores, image, _ = candidates()
    out = select_regions(scores, image, 20, strategy, per_image_cap=2, seed=3)
    assert out.size == 12  # 6 images x 2
    assert np.bincount(image[out]).max() <= 2
    assert len(set(out.tolist())) == out.size


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_min_distance_is_respected(strategy: Strategy) -> None:
    scores, image, cents = candidates(200, 4)
    out = select_regions(scores, image, 40, strategy, min_distance=25.0, centroids=cents, seed=1)
    assert out.size > 4
    for a in range(out.size):
        for b in range(a + 1, out.size):
            i, j = out[a], out[b]
            if image[i] == image[j]:
                assert np.hypot(*(cents[i] - cents[j])) >= 25.0


def test_min_distance_and_cap_keep_top_k_order_otherwise() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    image = np.array([0, 0, 0, 1])
    cents = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [0.0, 0.0]])
    out = select_regions(scores, image, 4, "top_k", min_distance=5.0, centroids=cents)
    np.testing.assert_array_equal(out, [0, 2, 3])  # 1 is too close to 0 in image 0


def test_cap_and_distance_together_are_one_greedy_pass() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    image = np.zeros(5, int)
    cents = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0], [20.0, 0.0], [30.0, 0.0]])
    out = select_regions(
        scores, image, 5, "top_k", per_image_cap=3, min_distance=5.0, centroids=cents
    )
    # 1 is skipped for distance and does not use up the cap: 0, 2, 3 are kept.
    np.testing.assert_array_equal(out, [0, 2, 3])


def test_same_seed_same_batch_different_seed_different_batch() -> None:
    scores, image, _ = candidates(500, 10)
    strategies: tuple[Strategy, ...] = ("power", "softmax", "softrank", "random")
    for strategy in strategies:
        a = select_regions(scores, image, 20, strategy, seed=7)
        b = select_regions(scores, image, 20, strategy, seed=7)
        c = select_regions(scores, image, 20, strategy, seed=8)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c), strategy


def test_huge_beta_approaches_top_k() -> None:
    scores, image, _ = candidates(100, 5)
    top = select_regions(scores, image, 15, "top_k")
    sharp: tuple[Strategy, ...] = ("power", "softmax", "softrank")
    for strategy in sharp:
        out = select_regions(scores, image, 15, strategy, beta=1e6, seed=2)
        np.testing.assert_array_equal(out, top, err_msg=strategy)


@pytest.mark.parametrize(
    ("strategy", "scores", "p_first_is_best"),
    [
        ("power", [1.0, 3.0], 0.75),  # p ∝ score
        ("softmax", [1.0, 1.0 + np.log(3.0)], 0.75),  # p ∝ exp(score)
        ("softrank", [0.2, 0.9], 2 / 3),  # p ∝ 1 / rank: 1 vs 1/2
        ("random", [0.2, 0.9], 0.5),
    ],
)
def test_first_pick_follows_the_sampling_distribution(
    strategy: Strategy, scores: list[float], p_first_is_best: float
) -> None:
    trials = 4000
    hits = sum(
        select_regions(np.array(scores), np.zeros(2, int), 1, strategy, seed=s)[0] == 1
        for s in range(trials)
    )
    # 4 standard errors
    tol = 4 * np.sqrt(p_first_is_best * (1 - p_first_is_best) / trials)
    assert abs(hits / trials - p_first_is_best) < tol


def test_never_selects_minus_inf_or_nan_and_zero_only_at_random() -> None:
    scores = np.array([-np.inf, np.nan, 0.0, 0.5, 0.0, 0.2])
    image = np.zeros(6, int)
    scored: tuple[Strategy, ...] = ("top_k", "power", "softmax", "softrank")
    for strategy in scored:
        out = select_regions(scores, image, 6, strategy, seed=0)
        assert sorted(out.tolist()) == [3, 5], strategy
    picked_zero = set()
    for seed in range(20):
        out = select_regions(scores, image, 6, "random", seed=seed)
        assert set(out.tolist()) == {2, 3, 4, 5}
        picked_zero.add(int(out[0]))
    assert picked_zero & {2, 4}


def test_returns_fewer_than_k_when_short() -> None:
    scores = np.array([0.3, -np.inf, 0.1])
    assert select_regions(scores, np.zeros(3, int), 10).size == 2
    assert select_regions(scores, np.zeros(3, int), 0).size == 0
    assert select_regions(np.array([-np.inf]), np.zeros(1, int), 3).size == 0


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"k": -1}, "k must"),
        ({"strategy": "greedy"}, "unknown strategy"),
        ({"beta": -1.0}, "beta"),
        ({"per_image_cap": 0}, "per_image_cap"),
        ({"min_distance": 3.0}, "centroids"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, object], pattern: str) -> None:
    args: dict[str, object] = {"k": 2, **kwargs}
    with pytest.raises(ValueError, match=pattern):
        select_regions(np.array([0.1, 0.2]), np.array([0, 1]), **args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\+inf"):
        select_regions(np.array([np.inf, 0.2]), np.array([0, 1]), 1)
