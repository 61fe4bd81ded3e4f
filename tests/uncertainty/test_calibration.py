"""Calibration, error detection and temperature scaling: known answers and streaming = batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activeseg.uncertainty import calibration
from activeseg.uncertainty.calibration import (
    CalibrationAccumulator,
    apply_temperature,
    brier_score,
    error_detection_aupr,
    error_detection_auroc,
    expected_calibration_error,
    fit_temperature,
    flatten_pixels,
    log_softmax,
    maximum_calibration_error,
    negative_log_likelihood,
    pavpu,
    reliability_bins,
    softmax,
)


def sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row of probs [P, C], drawn from that row's distribution."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1)) * cdf[:, -1:]
    return (u > cdf).sum(axis=1)


def calibrated_set(n: int = 200_000, n_classes: int = 5, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    probs = softmax(rng.standard_normal((n, n_classes)) * 2.0)
    return probs, sample_labels(rng, probs)


# --------------------------------------------------------------------------------------------
# calibration


def test_ece_of_a_calibrated_set_is_near_zero() -> None:
    probs, labels = calibrated_set()
    assert expected_calibration_error(probs, labels) < 0.01
    assert expected_calibration_error(probs, labels, adaptive=True) < 0.01


def test_ece_of_an_over_confident_set_is_large() -> None:
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((100_000, 5)) * 2.0
    labels = sample_labels(rng, softmax(logits))
    over = softmax(logits * 3.0)  # same argmax, far too sharp
    assert expected_calibration_error(over, labels) > 0.1
    assert maximum_calibration_error(over, labels) >= expected_calibration_error(over, labels)


def test_ece_hand_example() -> None:
    # Two pixels at confidence 0.9 (one right), two at 0.6 (both right); 10 equal bins.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 1, 1, 1])
    diagram = reliability_bins(probs, labels, n_bins=10)
    assert diagram.count.sum() == 4
    assert diagram.count[9] == 2 and diagram.count[6] == 2
    assert diagram.accuracy[9] == pytest.approx(0.5) and diagram.accuracy[6] == pytest.approx(1.0)
    # ECE = 0.5 * |0.5 - 0.9| + 0.5 * |1.0 - 0.6| = 0.4; MCE = 0.4
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    assert maximum_calibration_error(probs, labels, n_bins=10) == pytest.approx(0.4)
    assert np.isnan(diagram.confidence[0])


def test_reliability_bins_counts_and_adaptive_mass() -> None:
    probs, labels = calibrated_set(10_007, seed=2)
    equal = reliability_bins(probs, labels, n_bins=15)
    assert equal.count.sum() == 10_007
    np.testing.assert_allclose(equal.edges, np.linspace(0, 1, 16))
    adaptive = reliability_bins(probs, labels, n_bins=15, adaptive=True)
    assert adaptive.count.sum() == 10_007
    assert adaptive.count.max() - adaptive.count.min() <= 1
    assert np.all(np.diff(adaptive.edges) >= 0)
    # Confidence means grow with the bin index.
    assert np.all(np.diff(adaptive.confidence) > 0)


def test_brier_and_nll_known_values() -> None:
    onehot = np.eye(3)[[0, 2, 1]]
    assert brier_score(onehot, np.array([0, 2, 1])) == pytest.approx(0.0)
    assert negative_log_likelihood(onehot, np.array([0, 2, 1])) == pytest.approx(0.0)
    uniform = np.full((4, 4), 0.25)
    labels = np.array([0, 1, 2, 3])
    # (1 - 1/4)^2 + 3 * (1/4)^2 = 0.75
    assert brier_score(uniform, labels) == pytest.approx(0.75)
    assert negative_log_likelihood(uniform, labels) == pytest.approx(math.log(4))
    # fully wrong and certain: Brier 2, NLL capped by the clip
    assert brier_score(onehot, np.array([1, 0, 2])) == pytest.approx(2.0)
    assert negative_log_likelihood(onehot, np.array([1, 0, 2])) == pytest.approx(-math.log(1e-12))


def test_flatten_pixels_drops_ignored_and_keeps_order() -> None:
    probs = np.arange(2 * 2 * 3, dtype=np.float64).reshape(2, 2, 3)  # [C=2, H=2, W=3]
    labels = np.array([[0, 255, 1], [1, 0, 255]])
    p, y = flatten_pixels(probs, labels)
    np.testing.assert_array_equal(y, [0, 1, 1, 0])
    np.testing.assert_array_equal(p, [[0, 6], [2, 8], [3, 9], [4, 10]])
    pb, yb = flatten_pixels(np.stack([probs, probs]), np.stack([labels, labels]))
    assert pb.shape == (8, 2) and yb.shape == (8,)
    with pytest.raises(ValueError, match="labels"):
        flatten_pixels(probs, np.array([[0, 5, 1], [1, 0, 255]]))
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        flatten_pixels(probs, labels[:1])


def test_streaming_equals_batch() -> None:
    rng = np.random.default_rng(3)
    acc = CalibrationAccumulator(n_classes=4, n_bins=15)
    all_probs, all_labels = [], []
    for _ in range(6):
        h, w = rng.integers(5, 20, size=2)
        probs = softmax(rng.standard_normal((4, h, w)) * 3, axis=0)
        labels = rng.integers(0, 4, size=(h, w))
        labels[rng.random((h, w)) < 0.3] = 255
        acc.update(probs, labels)
        all_probs.append(np.moveaxis(probs, 0, -1).reshape(-1, 4))
        all_labels.append(labels.ravel())
    p_all = np.concatenate(all_probs)
    y_all = np.concatenate(all_labels)
    keep = y_all != 255
    p, y = p_all[keep], y_all[keep]
    res = acc.result()
    assert res["n_pixels"] == y.size
    assert res["ece"] == pytest.approx(expected_calibration_error(p, y), abs=1e-12)
    assert res["mce"] == pytest.approx(maximum_calibration_error(p, y), abs=1e-12)
    assert res["brier"] == pytest.approx(brier_score(p, y), rel=1e-12)
    assert res["nll"] == pytest.approx(negative_log_likelihood(p, y), rel=1e-12)
    assert res["accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert res["mean_confidence"] == pytest.approx(np.mean(p.max(1)), rel=1e-12)
    np.testing.assert_array_equal(res["reliability"].count, reliability_bins(p, y).count)


def test_empty_accumulator_gives_nan() -> None:
    res = CalibrationAccumulator(3).result()
    assert res["n_pixels"] == 0 and math.isnan(res["ece"]) and math.isnan(res["brier"])
    assert math.isnan(res["mean_confidence"])


# --------------------------------------------------------------------------------------------
# softmax and temperature


def test_softmax_is_stable_and_log_softmax_matches() -> None:
    z = np.array([[1000.0, 0.0, -1000.0], [1.0, 2.0, 3.0]])
    p = softmax(z)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(log_softmax(z)[1], np.log(p[1]))
    assert log_softmax(z)[0, 2] == pytest.approx(-2000.0)
    assert softmax(z.astype(np.float32)).dtype == np.float32


def test_apply_temperature() -> None:
    z = np.random.default_rng(4).standard_normal((3, 4, 5))  # [C, H, W]
    np.testing.assert_allclose(apply_temperature(z, 1.0, axis=0), softmax(z, axis=0))
    np.testing.assert_allclose(apply_temperature(z, 2.0, axis=0), softmax(z / 2.0, axis=0))
    flat = apply_temperature(z, 1e6, axis=0)
    np.testing.assert_allclose(flat, 1 / 3, atol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(z, 0.0)


def test_fit_temperature_recovers_a_known_temperature() -> None:
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((40_000, 6)) * 4.0
    labels = sample_labels(rng, softmax(logits / 2.5))
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.05)
    # Calibrated logits need no scaling.
    assert fit_temperature(logits / 2.5, labels) == pytest.approx(1.0, rel=0.05)
    # And scaling helps: NLL at the fitted T is below the NLL at T = 1.
    assert negative_log_likelihood(apply_temperature(logits, t), labels) < (
        negative_log_likelihood(softmax(logits), labels)
    )


def test_fit_temperature_in_chunks_equals_in_one_go(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    logits = (rng.standard_normal((3001, 4)) * 3).astype(np.float32)
    labels = sample_labels(rng, softmax(logits.astype(np.float64) / 1.7))
    whole = fit_temperature(logits, labels)
    monkeypatch.setattr(calibration, "_NLL_CHUNK_VALUES", 4 * 250)  # 13 chunks, ragged end
    assert fit_temperature(logits, labels) == pytest.approx(whole, rel=1e-6)


def test_fit_temperature_validates() -> None:
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 1]), bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match="labels"):
        fit_temperature(np.zeros((2, 2)), np.array([0, 2]))


# --------------------------------------------------------------------------------------------
# error detection


def brute_force_auroc(u: np.ndarray, e: np.ndarray) -> float:
    pos, neg = u[e], u[~e]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def brute_force_ap(u: np.ndarray, e: np.ndarray) -> float:
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(u)[::-1]:
        flagged = u >= t
        tp = np.sum(flagged & e)
        recall = tp / e.sum()
        ap += (recall - prev_recall) * tp / flagged.sum()
        prev_recall = recall
    return ap


def test_auroc_known_answers() -> None:
    e = np.array([True, True, False, False, False])
    assert error_detection_auroc([0.9, 0.8, 0.1, 0.2, 0.3], e) == pytest.approx(1.0)
    assert error_detection_auroc([0.1, 0.2, 0.9, 0.8, 0.7], e) == pytest.approx(0.0)
    assert error_detection_auroc(np.full(5, 0.3), e) == pytest.approx(0.5)


def test_auroc_and_aupr_match_brute_force_with_ties() -> None:
    rng = np.random.default_rng(6)
    u = rng.integers(0, 6, size=300).astype(float)  # many ties
    e = rng.random(300) < 0.2 + 0.1 * u
    assert error_detection_auroc(u, e) == pytest.approx(brute_force_auroc(u, e), abs=1e-12)
    assert error_detection_aupr(u, e) == pytest.approx(brute_force_ap(u, e), abs=1e-12)
    # Independent of the order of tied pixels.
    perm = rng.permutation(300)
    assert error_detection_aupr(u[perm], e[perm]) == pytest.approx(error_detection_aupr(u, e))


def test_aupr_known_answers() -> None:
    e = np.array([True, False, True, False])
    assert error_detection_aupr([0.9, 0.1, 0.8, 0.2], e) == pytest.approx(1.0)
    assert error_detection_aupr(np.ones(4), e) == pytest.approx(0.5)  # the error rate
    # ranking: error, correct, error, correct -> AP = (1/1 + 2/3) / 2
    assert error_detection_aupr([0.9, 0.8, 0.7, 0.1], e) == pytest.approx((1 + 2 / 3) / 2)


def test_detection_degenerate_cases_are_nan() -> None:
    for f in (error_detection_auroc, error_detection_aupr):
        assert math.isnan(f([0.1, 0.2], [False, False]))
        assert math.isnan(f([0.1, 0.2], [True, True]))
    with pytest.raises(ValueError, match="boolean"):
        error_detection_auroc([0.1, 0.2], [0.5, 1.0])


def test_pavpu_hand_example() -> None:
    u = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.05])
    e = np.array([True, False, False, True, True, False])
    # threshold 0.5: uncertain = [T, T, F, F, T, F]
    # accurate-certain: idx 2, 5 -> 2; inaccurate-uncertain: idx 0, 4 -> 2; n = 6
    assert pavpu(u, e, 0.5) == pytest.approx(4 / 6)
    assert pavpu(u, np.zeros(6, bool), 0.5) == pytest.approx(3 / 6)
    assert math.isnan(pavpu([], [], 0.5))
