from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from activeseg.models.checkpoint import build_predictor, state_to_bytes
from activeseg.models.evaluation import (
    PixelReservoir,
    evaluate,
    fit_temperature_on,
    iou_from_confusion,
    jsonable,
)
from activeseg.models.inference import Predictor
from activeseg.models.training import train
from activeseg.models.unet import UNet
from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES
from tests.models.conftest import tiny_config


class IntensityClassifier(nn.Module):
    """Predicts class ``round(pixel / 100)`` with logit margin ``scale``; [B,1,H,W] -> [B,3,H,W]."""

    def __init__(self, scale: float = 20.0) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        classes = torch.round(x[:, 0] * 255.0 / 100.0).long().clamp(0, 2)
        return nn.functional.one_hot(classes, 3).permute(0, 3, 1, 2).float() * self.scale


def encoded(mask: np.ndarray) -> np.ndarray:
    """An image whose pixel value encodes a class: class c -> 100 * c."""
    return (np.where(mask == 255, 0, mask) * 100).astype(np.uint8)


def test_perfect_prediction_scores_one() -> None:
    config = tiny_config(n_classes=3)
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 3, size=(12, 17)).astype(np.uint8) for _ in range(3)]
    masks[1][:4] = 255
    report = evaluate(
        Predictor([IntensityClassifier()], config), [encoded(m) for m in masks], masks, 3
    )
    assert report["miou"] == 1.0 and report["pixel_accuracy"] == 1.0
    assert report["iou_per_class"] == [1.0, 1.0, 1.0]
    assert report["n_labelled_pixels"] == sum(int((m != 255).sum()) for m in masks)
    assert report["ece"] == pytest.approx(0.0, abs=1e-6)
    assert report["nll"] == pytest.approx(0.0, abs=1e-6)
    # no errors at all: error detection is undefined, reported as None (JSON null)
    assert set(report["error_detection"]) == set(SOFTMAX_MEASURES)
    assert report["error_detection"]["entropy"]["auroc"] is None
    assert report["skipped_measures"] == []
    json.dumps(report, allow_nan=False)


def test_metrics_match_a_hand_computation() -> None:
    config = tiny_config(n_classes=3)
    mask = np.array([[0, 1], [1, 255]], dtype=np.uint8)
    prediction = np.array([[0, 0], [1, 1]], dtype=np.uint8)
    report = evaluate(
        Predictor([IntensityClassifier(scale=2.0)], config), [encoded(prediction)], [mask], 3
    )
    # labelled pixels: (0 -> 0), (1 -> 0), (1 -> 1)
    assert report["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    assert report["iou_per_class"] == [0.5, 0.5, None]
    assert report["miou"] == 0.5
    assert report["pixel_accuracy"] == pytest.approx(2 / 3)
    # probabilities with a logit margin of 2: p_top = e^2 / (e^2 + 2)
    top = np.exp(2.0) / (np.exp(2.0) + 2.0)
    other = 1.0 / (np.exp(2.0) + 2.0)
    assert report["nll"] == pytest.approx((-np.log(top) * 2 - np.log(other)) / 3, rel=1e-5)
    assert report["ece"] == pytest.approx(abs(top - 2 / 3), rel=1e-5)
    brier = ((1 - top) ** 2 + 2 * other**2) * 2 / 3 + (top**2 + (1 - other) ** 2 + other**2) / 3
    assert report["brier"] == pytest.approx(brier, rel=1e-5)
    # one error, all pixels equally confident: AUROC 0.5
    assert report["error_detection"]["least_confidence"]["auroc"] == pytest.approx(0.5)


def test_ensemble_measures_are_reported_when_there_are_samples(digit_data) -> None:
    images, masks = digit_data
    config = tiny_config(method="mc_dropout", mc_samples=3, dropout=0.3)
    predictor = build_predictor(
        config, [state_to_bytes(s) for s in train(config, images, masks).states]
    )
    report = evaluate(predictor, images[:2], masks[:2], 11, max_detection_pixels=500)
    assert set(report["error_detection"]) == set(SOFTMAX_MEASURES + ENSEMBLE_MEASURES)
    assert report["error_detection_pixels"] == 500
    assert 0.0 <= report["error_detection"]["mutual_information"]["auroc"] <= 1.0
    json.dumps(report, allow_nan=False)
    single = tiny_config()
    report = evaluate(
        Predictor([UNet.from_config(single)], single),
        images[:1],
        masks[:1],
        11,
        measures=["entropy", "mutual_information"],
    )
    assert report["skipped_measures"] == ["mutual_information"]


def test_fit_temperature_recovers_a_known_temperature() -> None:
    # A model whose logits are 3x too confident on data labelled from softmax(logits / 3).
    config = tiny_config(n_classes=3)
    rng = np.random.default_rng(0)

    class Fixed(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = torch.stack([x[:, 0] * 6.0, 3.0 - x[:, 0] * 6.0, torch.zeros_like(x[:, 0])], 1)
            return z * 3.0

    images = [rng.integers(0, 256, size=(64, 64), dtype=np.uint8) for _ in range(4)]
    masks = []
    for image in images:
        x = image.astype(np.float32) / 255.0
        true_logits = np.stack([x * 6.0, 3.0 - x * 6.0, np.zeros_like(x)])
        p = np.exp(true_logits) / np.exp(true_logits).sum(0)
        u = rng.random(x.shape)
        masks.append((u[None] > np.cumsum(p, 0)).sum(0).astype(np.uint8))
    temperature = fit_temperature_on(Predictor([Fixed()], config), images, masks, seed=0)
    assert temperature == pytest.approx(3.0, rel=0.1)


def test_pixel_reservoir_is_bounded_and_uniform() -> None:
    reservoir = PixelReservoir(capacity=1000, seed=0)
    for start in range(0, 20_000, 500):
        reservoir.add({"value": np.arange(start, start + 500)})
    kept = reservoir.columns["value"]
    assert kept.size == 1000 and reservoir.seen == 20_000 and np.unique(kept).size == 1000
    assert 8_000 < kept.mean() < 12_000


def test_helpers() -> None:
    iou, miou, accuracy = iou_from_confusion(np.array([[3, 1], [0, 0]]))
    assert np.allclose(iou, [0.75, 0.0]) and miou == 0.375 and accuracy == 0.75
    assert jsonable({"a": np.float32(np.nan), "b": np.arange(2), "c": (np.int64(3),)}) == {
        "a": None,
        "b": [0, 1],
        "c": [3],
    }


def test_foreground_figures_match_a_hand_computation() -> None:
    config = tiny_config(n_classes=3)
    mask = np.array([[0, 0, 0], [0, 1, 2]], dtype=np.uint8)
    prediction = np.array([[0, 0, 0], [1, 1, 0]], dtype=np.uint8)
    report = evaluate(
        Predictor([IntensityClassifier(scale=2.0)], config), [encoded(prediction)], [mask], 3
    )
    # class 0 holds 4 of the 6 labelled pixels: it is the background; the foreground is the
    # class-1 pixel (right) and the class-2 pixel (wrong), both at confidence p_top
    top = np.exp(2.0) / (np.exp(2.0) + 2.0)
    assert report["background_class"] == 0 and report["foreground_pixels"] == 2
    assert report["foreground_accuracy"] == 0.5
    assert report["foreground_ece"] == pytest.approx(abs(top - 0.5), rel=1e-6)
    # one background error (0 -> 1) is not in the foreground; equal confidence: AUROC 0.5
    assert report["error_detection_foreground"]["entropy"]["auroc"] == pytest.approx(0.5)
    json.dumps(report, allow_nan=False)
