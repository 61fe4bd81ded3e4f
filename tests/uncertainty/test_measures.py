"""Per-pixel measures: known answers, shapes, dtypes, and agreement with textbook versions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activeseg.uncertainty import measures as m
from activeseg.uncertainty.measures import (
    ALL_MEASURES,
    ENSEMBLE_MEASURES,
    SOFTMAX_MEASURES,
    compute_measures,
    ensemble_measures,
    entropy,
    expected_entropy,
    least_confidence,
    margin,
    mean_std,
    mutual_information,
    normalised_entropy,
    predictive_entropy,
    ratio,
    softmax_measures,
    variation_ratio,
)
from tests.uncertainty.helpers import (
    naive_ensemble_measures,
    naive_softmax_measures,
    random_probs,
)


def test_measure_name_tuples() -> None:
    assert ALL_MEASURES == SOFTMAX_MEASURES + ENSEMBLE_MEASURES
    assert len(set(ALL_MEASURES)) == 10


@pytest.mark.parametrize("n_classes", [2, 5, 21])
def test_uniform_probabilities(n_classes: int) -> None:
    p = np.full((n_classes, 3, 4), 1.0 / n_classes, np.float32)
    np.testing.assert_allclose(entropy(p), math.log(n_classes), rtol=1e-6)
    np.testing.assert_allclose(normalised_entropy(p), 1.0, rtol=1e-6)
    np.testing.assert_allclose(margin(p), 1.0, rtol=1e-6)
    np.testing.assert_allclose(least_confidence(p), 1 - 1 / n_classes, rtol=1e-6)
    np.testing.assert_allclose(ratio(p), 1.0, rtol=1e-6)


def test_one_hot_gives_zero_for_every_softmax_measure() -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=(2, 5, 6))
    p = np.moveaxis(np.eye(4, dtype=np.float32)[labels], -1, -3)  # [2, 4, 5, 6]
    for name, value in softmax_measures(p).items():
        assert value.shape == (2, 5, 6), name
        np.testing.assert_array_equal(value, 0.0, err_msg=name)


def test_hand_example() -> None:
    p = np.array([0.5, 0.3, 0.2], np.float32)[:, None, None]
    out = softmax_measures(p)
    expected_h = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert out["least_confidence"][0, 0] == pytest.approx(0.5, abs=1e-6)
    assert out["margin"][0, 0] == pytest.approx(0.8, abs=1e-6)
    assert out["ratio"][0, 0] == pytest.approx(0.6, abs=1e-6)
    assert out["entropy"][0, 0] == pytest.approx(expected_h, abs=1e-6)
    assert out["normalised_entropy"][0, 0] == pytest.approx(expected_h / math.log(3), abs=1e-6)


def test_tie_for_the_maximum_gives_margin_one_ratio_one() -> None:
    p = np.array([0.4, 0.4, 0.2], np.float32)[:, None, None]
    assert margin(p)[0, 0] == pytest.approx(1.0)
    assert ratio(p)[0, 0] == pytest.approx(1.0)


@pytest.mark.parametrize("n_classes", [2, 3, 7, 21])
@pytest.mark.parametrize("lead", [(), (3,)])
def test_softmax_measures_match_textbook(n_classes: int, lead: tuple[int, ...]) -> None:
    p = random_probs(np.random.default_rng(n_classes), (*lead, n_classes, 17, 13), -3)
    got = softmax_measures(p)
    expected = naive_softmax_measures(p)
    assert list(got) == list(SOFTMAX_MEASURES)
    for name in SOFTMAX_MEASURES:
        assert got[name].dtype == np.float32
        assert got[name].shape == (*lead, 17, 13)
        np.testing.assert_allclose(got[name], expected[name], atol=2e-6, err_msg=name)
        single = getattr(m, name)(p)
        np.testing.assert_array_equal(single, got[name], err_msg=name)


@pytest.mark.parametrize("n_members", [2, 5])
@pytest.mark.parametrize("n_classes", [2, 3, 11])
def test_ensemble_measures_match_textbook(n_members: int, n_classes: int) -> None:
    rng = np.random.default_rng(10 * n_members + n_classes)
    p = random_probs(rng, (2, n_members, n_classes, 9, 11), -3)
    got = ensemble_measures(p)
    expected = naive_ensemble_measures(p)
    assert list(got) == list(ENSEMBLE_MEASURES)
    for name in ENSEMBLE_MEASURES:
        assert got[name].dtype == np.float32
        assert got[name].shape == (2, 9, 11)
        np.testing.assert_allclose(got[name], expected[name], atol=3e-6, err_msg=name)
        np.testing.assert_array_equal(getattr(m, name)(p), got[name], err_msg=name)


def test_float64_input_gives_float32_output() -> None:
    p = random_probs(np.random.default_rng(1), (4, 5, 5), 0).astype(np.float64)
    assert entropy(p).dtype == np.float32
    assert mutual_information(np.stack([p, p])).dtype == np.float32


def test_class_axis_argument() -> None:
    p = random_probs(np.random.default_rng(2), (6, 7, 5), -1)  # channel-last [H, W, C]
    np.testing.assert_allclose(entropy(p, axis=-1), entropy(np.moveaxis(p, -1, 0)), atol=1e-7)
    np.testing.assert_allclose(margin(p, axis=2), margin(np.moveaxis(p, -1, 0)), atol=1e-7)


def test_identical_members_have_no_epistemic_uncertainty() -> None:
    p = random_probs(np.random.default_rng(3), (5, 8, 8), 0)
    stack = np.stack([p] * 4)
    out = ensemble_measures(stack)
    np.testing.assert_allclose(out["mutual_information"], 0.0, atol=1e-6)
    np.testing.assert_array_equal(out["variation_ratio"], 0.0)
    np.testing.assert_allclose(out["mean_std"], 0.0, atol=1e-6)
    np.testing.assert_allclose(out["predictive_entropy"], entropy(p), atol=1e-6)
    np.testing.assert_allclose(out["expected_entropy"], entropy(p), atol=1e-6)


def test_two_members_disagreeing_completely() -> None:
    stack = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)[:, :, None, None]  # [S=2, C=2, 1, 1]
    out = ensemble_measures(stack)
    assert out["mutual_information"][0, 0] == pytest.approx(math.log(2), abs=1e-6)
    assert out["predictive_entropy"][0, 0] == pytest.approx(math.log(2), abs=1e-6)
    assert out["expected_entropy"][0, 0] == pytest.approx(0.0, abs=1e-7)
    assert out["variation_ratio"][0, 0] == pytest.approx(0.5)
    assert out["mean_std"][0, 0] == pytest.approx(0.5)


def test_variation_ratio_hand_vote() -> None:
    # 5 members over 3 classes voting 0, 0, 0, 1, 2: modal share 3/5.
    votes = [0, 0, 0, 1, 2]
    stack = np.full((5, 3, 1, 1), 0.1, np.float32)
    for s, c in enumerate(votes):
        stack[s, c] = 0.8
    assert variation_ratio(stack)[0, 0] == pytest.approx(0.4, abs=1e-6)


def test_variation_ratio_tied_member_votes_for_each_tied_class() -> None:
    stack = np.array([[0.5, 0.5], [0.0, 1.0]], np.float32)[:, :, None, None]
    # Member 0 votes for both classes, member 1 for class 1: class 1 has 2 of 2 votes.
    assert variation_ratio(stack)[0, 0] == pytest.approx(0.0)


def test_mean_std_closed_form_for_two_members() -> None:
    rng = np.random.default_rng(4)
    p, q = random_probs(rng, (2, 6, 4, 4), 1)
    expected = np.abs(p - q).mean(axis=0) / 2  # std of two values = |a - b| / 2
    np.testing.assert_allclose(mean_std(np.stack([p, q])), expected, atol=1e-6)


def test_predictive_and_expected_entropy_by_hand() -> None:
    stack = np.array([[0.9, 0.1], [0.5, 0.5]], np.float32)[:, :, None, None]
    h = lambda *ps: -sum(x * math.log(x) for x in ps)  # noqa: E731
    assert predictive_entropy(stack)[0, 0] == pytest.approx(h(0.7, 0.3), abs=1e-6)
    assert expected_entropy(stack)[0, 0] == pytest.approx((h(0.9, 0.1) + h(0.5, 0.5)) / 2, abs=1e-6)


def test_exact_zeros_take_the_safe_path() -> None:
    rng = np.random.default_rng(5)
    p = random_probs(rng, (4, 30, 30), 0)
    # A few pixels with exact zeros (partial recompute) ...
    p[:, 0, :3] = np.array([1.0, 0.0, 0.0, 0.0], np.float32)[:, None]
    got = softmax_measures(p)
    assert np.all(np.isfinite(got["entropy"]))
    np.testing.assert_allclose(got["entropy"], naive_softmax_measures(p)["entropy"], atol=2e-6)
    # ... and most pixels with zeros (whole-block recompute).
    hard = np.zeros_like(p)
    hard[1] = 1.0
    hard[:, :2] = p[:, :2]
    np.testing.assert_allclose(entropy(hard), naive_softmax_measures(hard)["entropy"], atol=2e-6)
    stack = np.stack([hard, p])
    np.testing.assert_allclose(
        ensemble_measures(stack)["expected_entropy"],
        naive_ensemble_measures(stack)["expected_entropy"],
        atol=2e-6,
    )


def test_exact_zeros_with_leading_batch_dimensions() -> None:
    rng = np.random.default_rng(12)
    p = random_probs(rng, (3, 4, 9, 8), 1)  # [B=3, C, H, W]
    p[1, :, 2, 3] = [0.0, 1.0, 0.0, 0.0]
    p[2, :, 0, 0] = [0.5, 0.5, 0.0, 0.0]
    got = entropy(p)
    np.testing.assert_allclose(got, naive_softmax_measures(p)["entropy"], atol=2e-6)
    assert got[1, 2, 3] == 0.0 and got[2, 0, 0] == pytest.approx(math.log(2))
    stack = random_probs(rng, (2, 3, 4, 9, 8), 2)  # [B=2, S=3, C, H, W]
    stack[1, 2, :, 4, 4] = [0.0, 0.0, 1.0, 0.0]
    np.testing.assert_allclose(
        expected_entropy(stack), naive_ensemble_measures(stack)["expected_entropy"], atol=2e-6
    )


def test_results_do_not_depend_on_the_block_size(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(6)
    soft = random_probs(rng, (7, 40, 33), 0)
    ens = random_probs(rng, (3, 7, 40, 33), 1)
    big_soft, big_ens = softmax_measures(soft), ensemble_measures(ens)
    monkeypatch.setattr(m, "BLOCK_ELEMENTS", 7 * 100)
    monkeypatch.setattr(m, "_MIN_BLOCK_PIXELS", 37)  # blocks of 100 and 37 pixels, ragged end
    for name, value in softmax_measures(soft).items():
        np.testing.assert_allclose(value, big_soft[name], atol=1e-7, err_msg=name)
    for name, value in ensemble_measures(ens).items():
        np.testing.assert_allclose(value, big_ens[name], atol=1e-7, err_msg=name)


def test_outputs_are_not_scratch_memory() -> None:
    rng = np.random.default_rng(7)
    a = random_probs(rng, (3, 8, 8), 0)
    b = random_probs(rng, (3, 8, 8), 0)
    first = softmax_measures(a)
    kept = {k: v.copy() for k, v in first.items()}
    softmax_measures(b)
    ensemble_measures(np.stack([a, b]))
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])


def test_compute_measures_single_model_equals_direct_measures() -> None:
    p = random_probs(np.random.default_rng(8), (5, 12, 10), 0)
    out = compute_measures(p[None], ["entropy", "margin"])
    assert list(out) == ["entropy", "margin"]
    np.testing.assert_array_equal(out["entropy"], entropy(p))
    np.testing.assert_array_equal(out["margin"], margin(p))


def test_compute_measures_uses_the_mean_for_softmax_measures() -> None:
    stack = random_probs(np.random.default_rng(9), (4, 5, 6, 7), 1)
    out = compute_measures(stack, ALL_MEASURES)
    assert list(out) == list(ALL_MEASURES)
    mean = stack.mean(axis=0)
    np.testing.assert_allclose(out["entropy"], entropy(mean), atol=1e-6)
    np.testing.assert_allclose(out["least_confidence"], least_confidence(mean), atol=1e-6)
    np.testing.assert_allclose(out["predictive_entropy"], out["entropy"], atol=1e-6)
    np.testing.assert_allclose(out["mutual_information"], mutual_information(stack), atol=1e-7)


def test_compute_measures_rejects_ensemble_measures_for_one_member() -> None:
    p = random_probs(np.random.default_rng(10), (1, 3, 4, 4), 1)
    with pytest.raises(ValueError, match=r"S >= 2"):
        compute_measures(p, ["mutual_information"])


@pytest.mark.parametrize(
    ("call", "pattern"),
    [
        (lambda: compute_measures(np.ones((3, 4, 4)), ["entropy"]), r"\[S, C, H, W\]"),
        (lambda: compute_measures(np.ones((1, 3, 4, 4)), ["nope"]), "unknown"),
        (lambda: entropy(np.ones((1, 4, 4))), r"\[\.\.\., C, H, W\].*C >= 2"),
        (lambda: entropy(np.ones((3, 4, 4)), axis=5), "out of range"),
        (lambda: mutual_information(np.ones((3, 4, 4))), r"\[\.\.\., S, C, H, W\]"),
        (lambda: softmax_measures(np.ones((3, 4, 4)), ["mutual_information"]), "unknown"),
        (lambda: ensemble_measures(np.ones((2, 3, 4, 4)), ["entropy"]), "unknown"),
        (lambda: entropy(np.array([["a", "b"]])), "dtype"),
    ],
)
def test_invalid_input_is_rejected(call: object, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        call()  # type: ignore[operator]


def test_bare_string_name_means_one_measure_and_repeats_are_ignored() -> None:
    p = random_probs(np.random.default_rng(11), (3, 4, 4), 0)
    assert list(softmax_measures(p, "entropy")) == ["entropy"]
    stack = np.stack([p, p[::-1]])
    once = ensemble_measures(stack, ["variation_ratio"])["variation_ratio"]
    twice = ensemble_measures(stack, ["variation_ratio", "variation_ratio"])
    assert list(twice) == ["variation_ratio"]
    np.testing.assert_array_equal(twice["variation_ratio"], once)
