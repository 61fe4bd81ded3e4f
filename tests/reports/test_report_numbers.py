"""The report's numbers are the uncertainty core's numbers on the same pixels.

A small UNet with fixed (seeded) weights predicts fixed digit canvases. Every figure of the
calibration and error-detection sections is recomputed here independently: probabilities from
``Predictor.predict`` (with and without the temperature), pixels from ``flatten_pixels``,
metrics from ``activeseg.uncertainty``; they must be equal (the streamed calibration sums up to
the order of float additions).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from activeseg.datasets.digits import digits
from activeseg.models.config import ModelConfig
from activeseg.models.evaluation import PixelReservoir, evaluate, jsonable
from activeseg.models.inference import Predictor
from activeseg.models.unet import UNet
from activeseg.reports.build import ReportOptions, model_sections
from activeseg.reports.collect import collect_pixels
from activeseg.reports.detection import (
    NEAR_CHANCE_AUROC,
    bootstrap_auroc_difference,
    bootstrap_auroc_interval,
    detection_verdict,
    roc_points,
)
from activeseg.reports.shift import PERTURBATIONS, perturb
from activeseg.uncertainty import (
    brier_score,
    compute_measures,
    error_detection_aupr,
    error_detection_auroc,
    expected_calibration_error,
    flatten_pixels,
    grid_regions,
    maximum_calibration_error,
    negative_log_likelihood,
)

TEMPERATURE = 1.7
TILE = 1
"""One-pixel regions: each labelled pixel is a region, so every per-region figure must equal
the pixel figure (the region path is checked end to end against an identity; coarser regions
are checked on hand-made arrays in test_scopes.py)."""


def fixed_config(method: str) -> ModelConfig:
    return ModelConfig(
        in_channels=1,
        n_classes=11,
        depth=2,
        base_channels=8,
        dropout=0.3,
        method=method,  # type: ignore[arg-type]
        mc_samples=4,
        batch_size=4,
        device="cpu",
        seed=5,
    )


def fixed_predictor(method: str, temperature: float | None) -> Predictor:
    """The same seeded weights every time: a fixed model, no training."""
    config = fixed_config(method)
    torch.manual_seed(11)
    net = UNet.from_config(config)
    return Predictor([net], config, temperature)


@pytest.fixture(scope="module")
def data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four canvases (uint8 [64, 64]); masks partly unlabelled (255) to exercise the filter."""
    samples = list(digits(4, seed=7))
    masks = []
    for i, s in enumerate(samples):
        mask = s.mask.copy()
        mask[: 8 * (i + 1), :20] = 255
        masks.append(mask)
    return [s.image for s in samples], masks


def independent(method: str, images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, Any]:
    """Calibration and detection figures straight from the core, no report code involved."""
    raw = list(fixed_predictor(method, None).predict(images))  # [S, C, H, W] each
    scaled = list(fixed_predictor(method, TEMPERATURE).predict(images))
    p1, labels = flatten_pixels(np.stack([s.mean(axis=0) for s in raw]), np.stack(masks))
    pt, _ = flatten_pixels(np.stack([s.mean(axis=0) for s in scaled]), np.stack(masks))
    names = ["least_confidence", "margin", "entropy"]
    if raw[0].shape[0] > 1:
        names += ["predictive_entropy", "mutual_information", "variation_ratio"]
    labelled = [m != 255 for m in masks]
    columns = {
        name: np.concatenate(
            [compute_measures(s, names)[name][keep] for s, keep in zip(raw, labelled, strict=True)]
        )
        for name in names
    }
    columns["entropy_t"] = np.concatenate(
        [
            compute_measures(s, ["entropy"])["entropy"][k]
            for s, k in zip(scaled, labelled, strict=True)
        ]
    )
    errors = pt.argmax(axis=1) != labels
    return {"p1": p1, "pt": pt, "labels": labels, "columns": columns, "errors": errors}


@pytest.mark.parametrize("method", ["mc_dropout", "single"])
def test_report_numbers_equal_the_uncertainty_core(method: str, data) -> None:  # type: ignore[no-untyped-def]
    images, masks = data
    tiles = [grid_regions(64, 64, TILE).labels for _ in images]
    sections = model_sections(
        fixed_predictor(method, TEMPERATURE),  # its own temperature must not matter
        images,
        masks,
        split="val",
        temperature=TEMPERATURE,
        options=ReportOptions(n_boot=50, max_shift_images=2),
        region_maps=tiles,
        region_kind=f"grid {TILE}",
    )
    ref = independent(method, images, masks)
    p1, pt, y = ref["p1"], ref["pt"], ref["labels"]
    cal = sections["calibration"]
    assert cal["n_pixels"] == cal["n_pixels_total"] == y.size  # every labelled pixel, no sample
    for key, probs in (("before", p1), ("after", pt)):
        got = cal[key]
        # streamed image by image: the same sums, added in another order
        close = {"rel": 1e-12, "abs": 1e-15}
        assert got["ece"] == pytest.approx(expected_calibration_error(probs, y, 15), **close)
        assert got["ece_adaptive"] == expected_calibration_error(probs, y, 15, adaptive=True)
        assert got["mce"] == pytest.approx(maximum_calibration_error(probs, y, 15), **close)
        assert got["brier"] == pytest.approx(brier_score(probs, y), **close)
        assert got["nll"] == pytest.approx(negative_log_likelihood(probs, y), **close)
        assert got["accuracy"] == np.mean(probs.argmax(axis=1) == y)
        assert got["mean_confidence"] == pytest.approx(
            probs.max(axis=1).mean(dtype=np.float64), **close
        )
        assert sum(got["reliability"]["count"]) == y.size
    assert cal["after"]["nll"] != cal["before"]["nll"]  # the temperature was applied

    det = sections["error_detection"]
    errors = ref["errors"]
    assert det["n_errors"] == int(errors.sum()) and 0 < det["n_errors"] < y.size
    rows = {r["measure"]: r for r in det["rows"]}
    columns = ref["columns"]
    assert set(columns) <= set(rows)
    majority = int(np.argmax(np.bincount(y)))
    fg = y != majority
    assert det["foreground"]["majority_class"] == cal["foreground"]["majority_class"] == majority
    assert det["foreground"]["n_pixels"] == int(fg.sum()) > 0
    for key, probs in (("before", p1), ("after", pt)):
        assert cal["foreground"][key]["ece"] == expected_calibration_error(probs[fg], y[fg], 15)
    assert det["regions"]["n_regions"] == y.size == cal["regions"]["n_regions"]
    assert det["regions"]["n_with_error"] == det["n_errors"]
    for key in ("before", "after"):
        for metric in ("ece", "ece_adaptive", "mce", "accuracy", "mean_confidence"):
            assert cal["regions"][key][metric] == pytest.approx(cal[key][metric], abs=1e-12)
    for name, values in columns.items():
        assert rows[name]["auroc"] == error_detection_auroc(values, errors), name
        assert rows[name]["aupr"] == error_detection_aupr(values, errors), name
        assert rows[name]["foreground"]["auroc"] == error_detection_auroc(values[fg], errors[fg])
        for metric in ("auroc", "aupr"):
            assert rows[name]["region"][metric] == pytest.approx(rows[name][metric], abs=1e-12)
    if method == "single":
        assert "mutual_information" not in rows and det["comparison"] is None
        assert "train an ensemble or MC dropout" in det["verdict"]
    else:
        assert {"mutual_information", "entropy_one_pass"} <= set(rows)
        comp = det["comparison"]
        assert comp["difference"] == pytest.approx(
            rows[comp["ensemble"]]["auroc"] - rows[comp["softmax"]]["auroc"]
        )
        assert comp["ci_low"] <= comp["ci_high"] and comp["n_images"] == 4
    # An untrained network: its uncertainty cannot find its errors, and the verdict says so
    # instead of comparing ensemble and softmax.
    assert det["verdict"] == detection_verdict(det)
    assert det["best"]["auroc"] < NEAR_CHANCE_AUROC
    assert det["verdict"].startswith("No uncertainty measure finds this model's errors")

    shift = sections["shift"]
    assert list(shift["conditions"]) == ["clean", *PERTURBATIONS]
    clean = shift["conditions"]["clean"]
    two = flatten_pixels(
        np.stack([s.mean(axis=0) for s in fixed_predictor(method, None).predict(images[:2])]),
        np.stack(masks[:2]),
    )[0]
    assert clean["mean_max_prob"] == pytest.approx(
        float(two.max(axis=1).mean(dtype=np.float64)), rel=1e-12
    )
    assert shift["conditions"]["uniform_noise"]["accuracy"] is None


def test_pixel_cap_samples_with_the_trainers_reservoir(data) -> None:  # type: ignore[no-untyped-def]
    """The cap keeps the pixels a PixelReservoir of the same seed keeps, fed image by image."""
    images, masks = data
    sample = collect_pixels(
        fixed_predictor("single", None), images, masks, temperature=None, max_pixels=400, seed=3
    )
    reservoir = PixelReservoir(400, 3)
    for index, mask in enumerate(masks):
        labelled = np.flatnonzero(mask.reshape(-1) != 255)
        reservoir.add({"index": np.full(labelled.size, index), "pixel": labelled})
    kept = reservoir.columns
    assert sample.n_pixels == 400
    assert sample.image_index.tolist() == kept["index"].tolist()
    flat = np.concatenate([m.reshape(-1) for m in masks])
    offsets = np.cumsum([0] + [m.size for m in masks])[kept["index"]]
    assert sample.labels.tolist() == flat[offsets + kept["pixel"]].tolist()
    assert sample.n_pixels_total == sum(int((m != 255).sum()) for m in masks)
    assert (sample.labels != 255).all()


SMALL_CAPACITY = 500
"""Far fewer than the thousands of labelled pixels of the four canvases: a true sample."""


@pytest.mark.parametrize("capacity", [None, SMALL_CAPACITY])
@pytest.mark.parametrize(("method", "temperature"), [("mc_dropout", None), ("single", 1.7)])
def test_trainer_metrics_equal_the_report_figures(data, method, temperature, capacity) -> None:  # type: ignore[no-untyped-def]
    """One pipeline: the trainer's metrics (models.evaluation.evaluate, what a retrain stores)
    and the report's figures for the same model and pixels are the same numbers. The trainer
    serves with the temperature, so its figures are the report's "after" and its entropy is
    the report's temperature-scaled entropy row. With more labelled pixels than the sample
    holds, calibration still covers every labelled pixel on both sides (the same stream, so the
    same numbers bit for bit) and error detection the same sampled pixels."""
    images, masks = data
    cap = {} if capacity is None else {"max_detection_pixels": capacity}
    metrics = evaluate(fixed_predictor(method, temperature), images, masks, 11, **cap)
    options = ReportOptions(shift=False, n_boot=10)
    if capacity is not None:
        options = ReportOptions(shift=False, n_boot=10, max_pixels=capacity)
    sections = model_sections(
        fixed_predictor(method, None),
        images,
        masks,
        split="val",
        temperature=temperature,
        options=options,
    )
    section = sections["calibration"]
    cal = section["after" if temperature else "before"]
    n_labelled = sum(int((m != 255).sum()) for m in masks)
    assert metrics["n_labelled_pixels"] == section["n_pixels_total"] == n_labelled
    if capacity is not None:
        assert section["n_pixels"] == capacity < n_labelled
    for key in ("ece", "mce", "brier", "nll"):
        assert metrics[key] == cal[key], key
    assert metrics["calibration_accuracy"] == cal["accuracy"]
    # edges, confidence, accuracy, count (NaN of empty bins as None on both sides)
    assert metrics["reliability"] == jsonable(cal["reliability"])
    assert sum(cal["reliability"]["count"]) == n_labelled
    det = sections["error_detection"]
    rows = {r["measure"]: r for r in det["rows"]}
    assert metrics["error_detection_pixels"] == det["n_pixels"] == section["n_pixels"]
    assert metrics["foreground_pixels"] == det["foreground"]["n_pixels"]
    pairs = (
        {"entropy": "entropy_t"}
        if temperature
        else {n: n for n in rows if n in metrics["error_detection"]}
    )
    assert len(pairs) >= (1 if temperature else 6)
    for trainer_name, report_name in pairs.items():
        row = rows[report_name]
        for scope, theirs in (
            ("error_detection", row),
            ("error_detection_foreground", row["foreground"]),
        ):
            ours = metrics[scope][trainer_name]
            assert ours["auroc"] == pytest.approx(theirs["auroc"], abs=1e-12), trainer_name
            assert ours["aupr"] == pytest.approx(theirs["aupr"], abs=1e-12), trainer_name


def test_perturbations_keep_shape_and_dtype(data) -> None:  # type: ignore[no-untyped-def]
    image = data[0][0]
    for kind in PERTURBATIONS:
        out = perturb(image, kind, np.random.default_rng(0))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert not np.array_equal(out, image), kind
    assert perturb(image, "contrast", np.random.default_rng(0)).std() < 0.5 * image.std()
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(image, "rain", np.random.default_rng(0))


def test_roc_points_and_bootstrap() -> None:
    rng = np.random.default_rng(0)
    errors = rng.random(2000) < 0.2
    perfect = errors + 0.01 * rng.random(2000)
    noise = rng.random(2000)
    roc = roc_points(perfect, errors)
    assert roc["fpr"][0] == 0 and roc["tpr"][-1] == 1 and roc["fpr"][-1] == 1
    assert len(roc["fpr"]) <= 200
    assert roc_points(noise, np.zeros(2000, bool)) == {"fpr": [], "tpr": []}
    images = np.repeat(np.arange(20), 100)
    better = bootstrap_auroc_difference(perfect, noise, errors, images, n_boot=100)
    assert better["ci_low"] > 0.3 and better["n_images"] == 20
    same = bootstrap_auroc_difference(noise, noise, errors, images, n_boot=20)
    assert same["difference"] == 0 and same["ci_low"] == same["ci_high"] == 0
    one = bootstrap_auroc_difference(perfect, noise, errors, np.zeros(2000), n_boot=20)
    assert one["ci_low"] is None and math.isfinite(one["difference"])
    good = bootstrap_auroc_interval(perfect, errors, images, n_boot=100)
    assert good["auroc"] == 1.0 and good["ci_low"] == good["ci_high"] == 1.0
    coin = bootstrap_auroc_interval(noise, errors, images, n_boot=100)
    assert coin["ci_low"] < 0.5 < coin["ci_high"] and coin["n_boot"] == 100
