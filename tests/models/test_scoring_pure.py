"""Scoring one image with no session and no blob store: probabilities -> per-pixel measures ->
region scores, with answers in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activeseg.models.scoring import score_probabilities, score_regions
from activeseg.uncertainty.pooling import class_weights_from_labels, majority_class, open_regions
from activeseg.uncertainty.regions import grid_regions


def two_class_probs(p1: np.ndarray) -> np.ndarray:
    """``[1, 2, H, W]``: one sample whose class-1 probability is ``p1`` ``[H, W]``."""
    return np.stack([1.0 - p1, p1])[None].astype(np.float32)


def entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_region_scores_of_a_hand_made_probability_map() -> None:
    # A 4x4 image in four 2x2 tiles: tile 0 all p=0.5, tile 1 all p=0.9, tile 2 all p=0.2,
    # tile 3 half p=0.9 (top row) and half p=0.5 (bottom row).
    p1 = np.empty((4, 4))
    p1[:2, :2], p1[:2, 2:], p1[2:, :2] = 0.5, 0.9, 0.2
    p1[2, 2:], p1[3, 2:] = 0.9, 0.5
    scored = score_probabilities(two_class_probs(p1), ["least_confidence", "margin", "entropy"])
    regions = grid_regions(4, 4, 2)
    out = score_regions(scored, regions, "mean", None, n_classes=2)

    np.testing.assert_allclose(out.values["least_confidence"], [0.5, 0.1, 0.2, 0.3], atol=1e-6)
    # margin 1 - |p1 - p0| = 1 - |2p - 1|
    np.testing.assert_allclose(out.values["margin"], [1.0, 0.2, 0.4, 0.6], atol=1e-6)
    expected_entropy = [
        math.log(2),
        entropy(0.9),
        entropy(0.2),
        (entropy(0.9) + math.log(2)) / 2,
    ]
    np.testing.assert_allclose(out.values["entropy"], expected_entropy, atol=1e-6)
    # argmax ties (p=0.5) go to class 0; tile 3 has 2 pixels of class 1 and 2 of class 0.
    assert out.classes.tolist() == [0, 1, 0, 0]
    assert out.means["least_confidence"] == pytest.approx((0.5 + 0.1 + 0.2 + 0.3) / 4, abs=1e-6)
    assert scored.prediction.dtype == np.uint8
    assert scored.prediction.tolist()[0] == [0, 0, 1, 1]


def test_class_balanced_region_scores_weight_pixels_by_their_predicted_class() -> None:
    # One 2x2 tile: three pixels predicted class 0 (p1 = 0.2), one class 1 (p1 = 0.9).
    p1 = np.array([[0.2, 0.2], [0.2, 0.9]])
    scored = score_probabilities(two_class_probs(p1), ["least_confidence"])
    weights = np.array([1.0, 3.0])
    out = score_regions(scored, grid_regions(2, 2, 2), "class_balanced", weights, n_classes=2)
    # weighted mean: (3 * 1 * 0.2 + 1 * 3 * 0.1) / (3 * 1 + 1 * 3)
    assert out.values["least_confidence"][0] == pytest.approx((0.6 + 0.3) / 6, abs=1e-6)
    assert class_weights_from_labels([300, 100]).shape == (2,)


def test_expected_iou_of_a_certain_prediction_is_one() -> None:
    p1 = np.zeros((4, 4))
    p1[:, 2:] = 1.0
    scored = score_probabilities(two_class_probs(p1), ["entropy"])
    assert scored.expected_iou == pytest.approx(1.0)
    np.testing.assert_allclose(scored.maps["entropy"], 0.0, atol=1e-6)


def test_ensemble_samples_are_averaged_before_the_prediction() -> None:
    # Two samples that disagree (p1 = 0.9 and 0.2): the mean 0.55 predicts class 1.
    probs = np.concatenate(
        [two_class_probs(np.full((2, 2), 0.9)), two_class_probs(np.full((2, 2), 0.2))]
    )
    scored = score_probabilities(probs, ["predictive_entropy", "mutual_information"])
    assert (scored.prediction == 1).all()
    mi = entropy(0.55) - (entropy(0.9) + entropy(0.2)) / 2
    np.testing.assert_allclose(scored.maps["mutual_information"], mi, atol=1e-5)


def test_majority_class_and_open_regions() -> None:
    labels = grid_regions(2, 4, 2).labels  # two tiles: columns 0-1 and 2-3
    prediction = np.array([[2, 2, 1, 0], [2, 1, 0, 0]])
    assert majority_class(prediction, labels, 2, 3).tolist() == [2, 0]
    mask = np.array([[1, 1, 255, 0], [0, 1, 0, 0]], np.uint8)
    assert open_regions(mask, labels, 2).tolist() == [False, True]
