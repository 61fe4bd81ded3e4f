"""The expected per-image mIoU of a prediction under its (temperature-scaled) probabilities:
closed-form cases worked by hand, tiled equal to untiled, the temperature applied."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from activeseg.models.inference import Predictor
from activeseg.models.scoring import ExpectedIou, ScoringStopped, expected_iou, score_images
from activeseg.uncertainty.calibration import apply_temperature
from tests.models.conftest import tiny_config
from tests.models.test_tiled_scoring import calibrated_unet, wavy_image


def two_class(p1: list[float]) -> np.ndarray:
    """float64 [2, 1, N]: class 1 has probability ``p1`` at each pixel, class 0 the rest."""
    p = np.asarray(p1, np.float64)[None, None]
    return np.concatenate([1 - p, p])


def test_two_classes_by_hand() -> None:
    # p1 = .9 .8 .3 .1 -> predicted 1 1 0 0.
    # class 1: TP = .9 + .8 = 1.7, FP = .1 + .2 = .3, FN = .3 + .1 = .4 -> 1.7 / 2.4
    # class 0: TP = .7 + .9 = 1.6, FP = .3 + .1 = .4, FN = .1 + .2 = .3 -> 1.6 / 2.3
    probs = two_class([0.9, 0.8, 0.3, 0.1])
    assert expected_iou(probs) == pytest.approx((1.7 / 2.4 + 1.6 / 2.3) / 2, abs=1e-12)


def test_a_class_predicted_nowhere_counts_with_the_probability_that_it_is_there() -> None:
    # Three pixels, all predicted class 0 with p0 = 1 except pixel 2: p = (.8, .1, .1).
    # class 0: TP = 1 + 1 + .8 = 2.8, FP = .2, FN = 0 -> 2.8 / 3.0, weight 1.
    # class 1 and 2: TP = 0 -> IoU 0; each present with P = 1 - (1 - .1) = .1.
    probs = np.zeros((3, 1, 3))
    probs[0] = 1.0
    probs[:, 0, 2] = [0.8, 0.1, 0.1]
    want = (2.8 / 3.0) / (1 + 0.1 + 0.1)
    assert expected_iou(probs) == pytest.approx(want, abs=1e-12)
    # A class with probability exactly 0 everywhere is surely absent: a confident, correct
    # prediction of a one-class image scores 1, not 1/3.
    certain = np.zeros((3, 4, 4))
    certain[1] = 1.0
    assert expected_iou(certain) == 1.0


def test_an_untrained_near_uniform_model_scores_about_one_ninth_not_one() -> None:
    # p = 1/3 everywhere, argmax class 0: IoU_0 = (N/3) / N = 1/3; classes 1 and 2 have
    # TP = 0 and are present almost surely (1 - (2/3)^N), so the mean is 1/9.
    probs = np.full((3, 10, 10), 1 / 3)
    assert expected_iou(probs) == pytest.approx(1 / 9, abs=1e-12)
    weak = np.stack([np.full((8, 8), 0.4), np.full((8, 8), 0.35), np.full((8, 8), 0.25)])
    assert expected_iou(weak) == pytest.approx(0.4 / 3, abs=1e-6)  # absent: (3/4)^64 ~ 1e-8


def test_a_model_that_misses_the_small_class_is_not_scored_by_its_confident_background() -> None:
    # 95 background pixels at p_bg = .999, 5 foreground pixels the model half sees (p_fg = .3):
    # nothing is painted foreground. Per pixel the model is mostly sure, so 1 - mean
    # normalised entropy (the score Label Studio was shown before) is about 0.95.
    p_fg = np.r_[np.full(95, 0.001), np.full(5, 0.3)][None]
    probs = np.concatenate([1 - p_fg, p_fg])[:, None, :]
    entropy = -(probs * np.log(probs)).sum(axis=0) / np.log(2)
    assert 1 - entropy.mean() == pytest.approx(0.945, abs=1e-3)
    # Expected IoU: background TP = 95 * .999 + 5 * .7 = 98.405 of a union of 100; the
    # foreground is painted nowhere (IoU 0) and present with P = 1 - .999^95 * .7^5.
    present = 1 - 0.999**95 * 0.7**5
    assert expected_iou(probs) == pytest.approx(0.98405 / (1 + present), abs=1e-9)
    assert expected_iou(probs) < 0.55


def test_the_mean_over_samples_is_what_is_scored_and_given_predictions_are_used() -> None:
    probs = two_class([0.9, 0.8, 0.3, 0.1])
    forced = np.array([[1, 1, 1, 0]])  # pixel 2 painted class 1 although p1 = .3
    # class 1: TP = 2.0, FP = .1 + .2 + .7 = 1.0, FN = .1 -> 2 / 3.1
    # class 0: TP = .9, FP = .1, FN = .1 + .2 + .7 = 1.0 -> .9 / 2.0
    assert expected_iou(probs, forced) == pytest.approx((2 / 3.1 + 0.9 / 2) / 2, abs=1e-12)


def test_sums_over_parts_equal_the_whole_image() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, size=(4, 30, 41))
    probs = apply_temperature(logits, 1.0, axis=0)
    whole = expected_iou(probs)
    sums = ExpectedIou(4)
    for rows in (slice(0, 7), slice(7, 30)):
        for cols in (slice(0, 20), slice(20, 41)):
            part = probs[:, rows, cols]
            sums.add(part, part.argmax(axis=0))
    assert sums.value() == pytest.approx(whole, abs=1e-12)
    assert 0.0 < whole < 1.0


def test_bad_shapes_are_refused_and_no_pixels_is_nan() -> None:
    sums = ExpectedIou(3)
    assert math.isnan(sums.value())
    with pytest.raises(ValueError, match=r"\[C=3, h, w\]"):
        sums.add(np.zeros((2, 4, 4)), np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        sums.add(np.zeros((3, 4, 4)), np.zeros((4, 5), np.uint8))


def test_tiled_scoring_keeps_per_class_sums_and_equals_untiled() -> None:
    image = wavy_image(90, 77, seed=3)
    config = tiny_config(method="mc_dropout", depth=1, mc_samples=4, dropout=0.5, n_classes=3)
    net = calibrated_unet(config, image)
    plain = Predictor([net], config, 1.7, max_untiled_pixels=None)
    tiled = Predictor([net], config, 1.7, max_untiled_pixels=0, tile=32, tile_margin=8)
    (want,) = score_images(plain, [image], ())
    (got,) = score_images(tiled, [image], ())
    stack = next(plain.predict([image]))
    by_hand = expected_iou(stack.mean(axis=0))
    assert want.expected_iou == pytest.approx(by_hand, abs=1e-6)
    assert got.expected_iou == pytest.approx(want.expected_iou, abs=1e-6)
    assert 0.05 < want.expected_iou < 0.95  # an untrained network: far from sure


def test_the_predictors_temperature_is_applied() -> None:
    image = wavy_image(40, 36, seed=1)
    config = tiny_config(depth=1, n_classes=3)
    torch.manual_seed(0)
    net = calibrated_unet(config, image)
    logits = next(Predictor([net], config).predict_logits([image]))  # [C, H, W], unscaled
    scores = {}
    for temperature in (0.5, 1.0, 3.0):
        (scored,) = score_images(Predictor([net], config, temperature), [image], ())
        want = expected_iou(apply_temperature(logits.astype(np.float64), temperature, axis=0))
        assert scored.expected_iou == pytest.approx(want, abs=1e-5)
        scores[temperature] = scored.expected_iou
    # A hotter softmax is less sure of every pixel: a lower expected IoU.
    assert scores[0.5] > scores[1.0] > scores[3.0]


def test_stop_abandons_a_tiled_image_between_windows_and_spares_an_untiled_one() -> None:
    image = wavy_image(64, 64, seed=2)
    config = tiny_config(depth=1, n_classes=3)
    net = calibrated_unet(config, image)
    tiled = Predictor([net], config, max_untiled_pixels=0, tile=32, tile_margin=8)
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return len(asked) >= 2

    with pytest.raises(ScoringStopped):
        list(score_images(tiled, [image], (), stop=stop))
    assert len(asked) == 2  # asked after each window; the third never ran
    plain = Predictor([net], config, max_untiled_pixels=None)
    (scored,) = score_images(plain, [image], (), stop=lambda: True)
    assert scored.prediction.shape == (64, 64)
