"""Reports that tell the truth: the verdict when nothing works, foreground and per-region
figures on hand-made arrays, no-change sentences, and learning-curve axes that keep a flat curve
flat. Pure numpy and dicts: no model, no database."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from activeseg.models.evaluation import calibration_stream, stream_image
from activeseg.reports.calibration import calibration_section, region_calibration_metrics
from activeseg.reports.collect import PixelSample, RegionSample, _add_regions
from activeseg.reports.detection import detection_verdict, error_detection_section
from activeseg.reports.html import render_html
from activeseg.reports.plots import MIN_MIOU_SPAN, learning_curve_figure, miou_axis_limits
from activeseg.reports.shift import shift_section
from activeseg.reports.wording import change, ratio_change
from activeseg.uncertainty.calibration import (
    error_rank_correlation,
    majority_class,
    region_error_counts,
    reliability_bins,
    reliability_from_confidence,
)

# --------------------------------------------------------------------------------------------
# the verdict, one hand-made section per branch


def row(measure: str, auroc: float | None, family: str = "softmax", **scopes: Any) -> dict:
    return {"measure": measure, "family": family, "auroc": auroc, "aupr": None, **scopes}


def section(
    rows: list[dict],
    *,
    n_samples: int = 1,
    n_errors: int = 500,
    error_rate: float = 0.1,
    best_ci: tuple[float, float] | None = None,
    comparison: dict | None = None,
) -> dict[str, Any]:
    ranked = [r for r in rows if r["family"] != "single pass" and r["auroc"] is not None]
    top = max(ranked, key=lambda r: r["auroc"]) if ranked else None
    best = None
    if top is not None and best_ci is not None:
        best = {"measure": top["measure"], "auroc": top["auroc"], "ci_low": best_ci[0],
                "ci_high": best_ci[1], "n_images": 12}  # fmt: skip
    return {
        "rows": rows,
        "n_samples": n_samples,
        "n_errors": n_errors,
        "error_rate": error_rate,
        "best": best,
        "comparison": comparison,
        "foreground": {"majority_class": 0},
    }


def compare(lo: float | None, hi: float | None, diff: float = 0.01) -> dict[str, Any]:
    return {"ensemble": "mutual_information", "softmax": "entropy", "difference": diff,
            "ci_low": lo, "ci_high": hi, "n_images": 12}  # fmt: skip


def test_no_errors_no_verdict() -> None:
    text = detection_verdict(section([row("entropy", None), row("margin", math.nan)]))
    assert text.startswith("No verdict")


def test_near_chance_auroc_says_so_and_what_to_do() -> None:
    """The report that read 'softmax uncertainty is good enough' at AUROC 0.558."""
    det = section([row("entropy", 0.558), row("margin", 0.541)], error_rate=0.118)
    text = detection_verdict(det)
    assert text.startswith("No uncertainty measure finds this model's errors")
    assert "entropy, has AUROC 0.558" in text and "near chance" in text
    assert "label more regions at random first" in text and "pixel accuracy 0.882" in text
    assert "train an ensemble or MC dropout" in text and "check the held-out labels" in text
    assert "good enough" not in text


def test_near_chance_with_an_ensemble_says_more_members_will_not_help() -> None:
    rows = [row("entropy", 0.55), row("mutual_information", 0.57, "ensemble")]
    text = detection_verdict(section(rows, n_samples=5, comparison=compare(-0.02, 0.06)))
    assert text.startswith("No uncertainty measure") and "mutual_information" in text
    assert "more members will not help" in text and "good enough" not in text


def test_an_interval_reaching_chance_counts_as_chance() -> None:
    text = detection_verdict(section([row("entropy", 0.68)], best_ci=(0.47, 0.81)))
    assert text.startswith("No uncertainty measure")
    assert "[0.470, 0.810]" in text and "reaches chance" in text


def test_weak_detector_never_calls_softmax_good_enough() -> None:
    rows = [row("entropy", 0.65), row("mutual_information", 0.66, "ensemble")]
    det = section(rows, n_samples=5, best_ci=(0.61, 0.7), comparison=compare(-0.02, 0.04))
    text = detection_verdict(det)
    assert text.startswith("Best error detector on this project: mutual_information")
    assert "a weak one" in text and "neither family ranks errors well yet" in text
    assert "good enough" not in text


def test_useful_softmax_is_good_enough_when_the_ensemble_does_not_beat_it() -> None:
    rows = [row("entropy", 0.86), row("mutual_information", 0.87, "ensemble")]
    text = detection_verdict(section(rows, n_samples=5, comparison=compare(-0.02, 0.04)))
    assert "weak" not in text and "good enough for ranking errors here" in text


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [
        (0.02, 0.09, "The ensemble measures beat softmax by more than noise"),
        (-0.09, -0.02, "Softmax beats the ensemble measures by more than noise"),
        (None, None, "too few images for a bootstrap interval, so no claim"),
    ],
)
def test_comparison_branches(lo: float | None, hi: float | None, expected: str) -> None:
    rows = [row("entropy", 0.8), row("mutual_information", 0.85, "ensemble")]
    text = detection_verdict(section(rows, n_samples=5, comparison=compare(lo, hi)))
    assert expected in text and "good enough" not in text


def test_single_network_and_few_errors() -> None:
    text = detection_verdict(section([row("entropy", 0.8)], n_errors=7))
    assert "Only 7 wrong pixels" in text and "Single network" in text


def test_foreground_and_regions_near_chance_are_flagged() -> None:
    rows = [
        row("entropy", 0.9, foreground={"auroc": 0.52}, region={"auroc": 0.55}),
        row("margin", 0.88, foreground={"auroc": 0.57}, region={"auroc": 0.51}),
        row("entropy_one_pass", 0.99, "single pass", foreground={"auroc": 0.99}),
    ]
    text = detection_verdict(section(rows))
    assert text.startswith("Best error detector on this project: entropy (AUROC 0.900")
    assert "best measure, margin, reaches only AUROC 0.570" in text
    assert "carried by the easy background" in text and "majority class 0" in text
    assert "Per region, the best pooled score (entropy) reaches only AUROC 0.550" in text


# --------------------------------------------------------------------------------------------
# foreground and regions: closed forms


def test_majority_class() -> None:
    assert majority_class(np.array([0, 2, 2, 1, 2, 0])) == 2
    assert majority_class(np.array([3, 1, 1, 3])) == 1  # a tie goes to the smaller id
    assert majority_class(np.zeros(0, np.int64)) is None


def test_region_error_counts() -> None:
    regions = np.array([[0, 0, 1, 1], [0, 0, 1, 2]])
    labelled = np.array([[1, 1, 1, 0], [1, 0, 0, 1]], bool)
    errors = np.array([[1, 0, 1, 1], [0, 1, 0, 1]], bool)  # errors where unlabelled don't count
    confidence = np.array([[0.9, 0.8, 0.6, 0.1], [0.7, 0.1, 0.1, 0.5]])
    n_labelled, n_errors, conf_sum = region_error_counts(regions, 3, labelled, errors, confidence)
    assert n_labelled.tolist() == [3, 1, 1] and n_errors.tolist() == [1, 1, 1]
    assert conf_sum == pytest.approx([2.4, 0.6, 0.5])
    with pytest.raises(ValueError, match="region ids"):
        region_error_counts(regions, 2, labelled, errors)


def test_unit_reliability_and_its_pixel_special_case() -> None:
    # two regions at confidence 0.9 with accuracies 0.5 and 1 (bin 9: gap |0.75 - 0.9|), one at
    # 0.3 with accuracy 0 (bin 3: gap 0.3): ECE = 2/3 * 0.15 + 1/3 * 0.3 = 0.2
    diagram = reliability_from_confidence([0.9, 0.9, 0.3], [0.5, 1.0, 0.0], n_bins=10)
    assert diagram.ece == pytest.approx(0.2) and diagram.mce == pytest.approx(0.3)
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0])
    for adaptive in (False, True):
        by_pixel = reliability_bins(probs, labels, 4, adaptive)
        by_unit = reliability_from_confidence(
            probs.max(axis=1), probs.argmax(axis=1) == labels, 4, adaptive
        )
        assert by_unit.ece == by_pixel.ece and by_unit.count.tolist() == by_pixel.count.tolist()
    metrics = region_calibration_metrics(np.array([0.9, 0.9, 0.3]), np.array([0.5, 1.0, 0.0]), 10)
    assert metrics["ece"] == pytest.approx(0.2) and metrics["accuracy"] == pytest.approx(0.5)


def test_error_rank_correlation() -> None:
    assert error_rank_correlation([0.1, 0.5, 0.9], [0.0, 0.2, 0.7]) == pytest.approx(1.0)
    assert error_rank_correlation([0.1, 0.5, 0.9], [0.7, 0.2, 0.0]) == pytest.approx(-1.0)
    assert math.isnan(error_rank_correlation([0.1, 0.5, 0.9], [0.3, 0.3, 0.3]))
    # ranks with a tie: x = (1, 2, 3, 4), y = (1.5, 1.5, 3, 4): rho = 4.5 / sqrt(5 * 4.5)
    rho = error_rank_correlation([1, 2, 3, 4], [0.0, 0.0, 0.5, 0.9])
    assert rho == pytest.approx(4.5 / math.sqrt(5 * 4.5))


def test_regions_of_one_image_pool_over_the_region_and_skip_mostly_unlabelled_ones() -> None:
    regions = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    mask = np.array([[0, 1, 255, 255], [1, 255, 255, 1]], np.uint8)  # right: 1 of 4 labelled
    # one sample, two classes: class 1 wins at x = 0 and 3, class 0 elsewhere
    p1 = np.array([[0.8, 0.3, 0.2, 0.6], [0.6, 0.3, 0.2, 0.9]])
    stack = np.stack([1 - p1, p1])[None]  # [S=1, C=2, H, W]
    maps = {"entropy": np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])}
    parts: dict[str, list[np.ndarray]] = {
        k: [] for k in ("index", "id", "pixels", "labelled", "errors", "conf", "acc", "conf_t",
                        "acc_t")
    }  # fmt: skip
    scores: dict[str, list[np.ndarray]] = {"entropy": []}
    _add_regions(parts, scores, 7, regions, mask, stack, None, maps)
    # region 0: labelled (0, 1, 1) at (0,0), (0,1), (1,0); predicted (1, 0, 1): two wrong
    assert parts["index"][0].tolist() == [7] and parts["id"][0].tolist() == [0]
    assert parts["labelled"][0].tolist() == [3] and parts["errors"][0].tolist() == [2]
    assert parts["conf"][0] == pytest.approx([(0.8 + 0.7 + 0.6) / 3])
    assert parts["acc"][0] == pytest.approx([1 / 3])
    assert scores["entropy"][0] == pytest.approx([(0.1 + 0.2 + 0.5 + 0.6) / 4])  # all 4 pixels


def hand_sample() -> PixelSample:
    """Eight pixels, classes (0 x 5, 1, 1, 2); errors at 3, 5 and 7; three regions."""
    labels = np.array([0, 0, 0, 0, 0, 1, 1, 2])
    errors = np.array([0, 0, 0, 1, 0, 1, 0, 1], bool)
    entropy = np.array([0.1, 0.1, 0.1, 0.8, 0.1, 0.2, 0.5, 0.9], np.float32)
    probs = np.full((8, 3), 0.1, np.float32)
    probs[np.arange(8), np.where(errors, (labels + 1) % 3, labels)] = 0.8
    regions = RegionSample(
        image_index=np.zeros(3, np.int32),
        region_id=np.arange(3, dtype=np.int32),
        n_pixels=np.full(3, 4, np.int64),
        n_labelled=np.full(3, 4, np.int64),
        n_errors=np.array([2, 0, 1]),
        confidence=np.array([0.8, 0.8, 0.8]),
        accuracy=np.array([0.5, 1.0, 0.75]),
        confidence_t=None,
        accuracy_t=None,
        scores={"entropy": np.array([0.9, 0.1, 0.5])},
        kind="grid 2",
    )
    # the calibration sums over these pixels, as collect_pixels streams them (10 bins)
    stream = calibration_stream(3, 10)
    stream_image(stream, probs.T[None, :, :, None], labels[:, None].astype(np.uint8))
    return PixelSample(
        image_index=np.array([0, 0, 0, 0, 1, 1, 1, 1], np.int32),
        labels=labels,
        probs=probs,
        probs_t=None,
        measures={"entropy": entropy},
        errors=errors,
        n_images=2,
        n_pixels_total=8,
        class_counts=np.array([5, 2, 1]),
        regions=regions,
        calibration=stream,
    )


def test_detection_and_calibration_sections_on_hand_made_pixels_and_regions() -> None:
    sample = hand_sample()
    det = error_detection_section(sample, n_boot=20)
    [entropy] = det["rows"]
    # pixels: errors at 0.8, 0.2, 0.9 vs correct 0.1 x 4 and 0.5: (5 + 4 + 5) / 15
    assert entropy["auroc"] == pytest.approx(14 / 15)
    # foreground (classes 1, 2): errors 0.2, 0.9 vs correct 0.5: one pair of two won
    assert det["foreground"]["majority_class"] == 0 and det["foreground"]["n_pixels"] == 3
    assert entropy["foreground"]["auroc"] == pytest.approx(0.5)
    # regions: with errors (0.9, 0.5) vs clean (0.1); error fractions (0.5, 0, 0.25)
    assert entropy["region"] == {"auroc": 1.0, "aupr": 1.0, "spearman": pytest.approx(1.0)}
    assert det["regions"]["n_with_error"] == 2 and det["regions"]["kind"] == "grid 2"
    assert "carried by the easy background" in det["verdict"]
    cal = calibration_section(sample, "val", n_bins=10)
    # all eight pixels at confidence 0.8, five right: one bin, |0.625 - 0.8|
    assert cal["before"]["ece"] == pytest.approx(0.8 - 5 / 8) and cal["after"] is None
    assert cal["before"]["reliability"]["count"][8] == 8
    with pytest.raises(ValueError, match="collected with 10 bins"):
        calibration_section(sample, "val", n_bins=15)
    assert cal["foreground"]["n_pixels"] == 3
    assert cal["foreground"]["before"]["accuracy"] == pytest.approx(1 / 3)
    assert cal["foreground"]["before"]["ece"] == pytest.approx(0.8 - 1 / 3)
    assert cal["regions"]["before"]["ece"] == pytest.approx(abs(0.75 - 0.8))


def test_html_shows_pixel_foreground_and_region_figures_side_by_side() -> None:
    sample = hand_sample()
    report = {
        "error_detection": error_detection_section(sample, n_boot=20),
        "calibration": calibration_section(sample, "val", n_bins=10),
    }
    page = render_html(report, {})
    for header in ("AUROC pixels", "AUROC foreground", "AUROC regions", "Spearman regions",
                   "foreground px, T = 1", "regions, T = 1"):  # fmt: skip
        assert header in page
    assert "<td>0.933</td><td>0.500</td><td>1.000</td>" in page
    assert "not the majority class of all evaluated labelled pixels" in page


# --------------------------------------------------------------------------------------------
# sentences about a change


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (0.882, 0.882, "is unchanged at 0.882"),
        (0.8821, 0.8824, "is unchanged at 0.882"),  # a change the digits cannot show
        (0.8824, 0.8826, "rises from 0.882 to 0.883"),
        (0.9, 0.5, "falls from 0.900 to 0.500"),
        (0.0001, -0.0001, "is unchanged at -0.000"),
    ],
)
def test_change(before: float, after: float, expected: str) -> None:
    assert change(before, after) == expected


@pytest.mark.parametrize(
    ("ratio", "expected"),
    [
        (1.0, "is unchanged at 1.00x clean"),
        (1.004, "is unchanged at 1.00x clean"),
        (0.96, "falls to 0.96x clean"),
        (0.996, "is unchanged at 1.00x clean"),
        (2.314, "rises to 2.31x clean"),
    ],
)
def test_ratio_change(ratio: float, expected: str) -> None:
    assert ratio_change(ratio) == expected


def test_shift_summary_says_unchanged_instead_of_falls() -> None:
    sample = hand_sample()
    sample.measures["mutual_information"] = np.full(8, 0.5, np.float32)
    blurred = hand_sample()
    blurred.measures["mutual_information"] = np.full(8, 0.48, np.float32)
    text = shift_section({"clean": sample, "blur": blurred})["summary"]
    assert "accuracy is unchanged at 0.625" in text
    assert "mean max-prob is unchanged at 0.800" in text
    assert "mean mutual information falls to 0.96x clean" in text
    assert "->" not in text and "rises 0.96x" not in text


# --------------------------------------------------------------------------------------------
# learning-curve axes


def test_miou_axis_limits() -> None:
    assert miou_axis_limits([0.0815, 0.0855]) == pytest.approx((0.0, MIN_MIOU_SPAN))
    assert miou_axis_limits([0.5, 0.51]) == pytest.approx((0.405, 0.605))
    assert miou_axis_limits([0.95, 0.97, None]) == pytest.approx((0.8, 1.0))
    assert miou_axis_limits([0.3, 0.9]) == pytest.approx((0.27, 0.93))
    assert miou_axis_limits([None, math.nan]) == (0.0, 1.0)


def test_a_flat_learning_curve_looks_flat() -> None:
    points = [
        {"version": v, "labelled_fraction": f, "labelled_regions": r, "miou": m}
        for v, f, r, m in ((1, 0.01, 10, 0.0815), (2, 0.02, 20, 0.0855), (3, 0.03, 30, 0.083))
    ]
    baseline = {"curves": [{"label": "random", "points": [
        {"labelled_fraction": 0.01, "labelled_regions": 10, "miou_mean": 0.082, "miou_std": 0.001},
        {"labelled_fraction": 0.03, "labelled_regions": 30, "miou_mean": 0.084, "miou_std": 0.002},
    ]}]}  # fmt: skip
    fig = learning_curve_figure({"points": points, "baseline": baseline})
    for ax in fig.axes:
        low, high = ax.get_ylim()
        assert low == pytest.approx(0.0) and high == pytest.approx(MIN_MIOU_SPAN)


# --------------------------------------------------------------------------------------------
# selected vs random (control share)


def test_rounds_section_and_its_html() -> None:
    from datetime import UTC, datetime

    from activeseg.reports.rounds import rounds_section

    comparison = {"selected_tasks": 9, "control_tasks": 6, "selected_error_rate": 0.3,
                  "control_error_rate": 0.1, "ratio": 3.0, "ci_low": 1.6, "ci_high": 5.2,
                  "verdict": "the queue found 1.6-5.2x more wrong pixels than random"}  # fmt: skip
    summaries: list[dict[str, Any]] = [
        {"number": 1, "model_version_id": None, "measure": "entropy", "strategy": "random",
         "created_at": datetime(2026, 1, 2, tzinfo=UTC), "tasks": {"selected": 10, "control": 0},
         "answered": {"selected": 10, "control": 0}, "labelled_pixels": 2560, "clicks": 12,
         "comparison": {"verdict": "too few control answers"}},
        {"number": 2, "model_version_id": 4, "measure": "entropy", "strategy": "power",
         "created_at": None, "tasks": {"selected": 9, "control": 6},
         "answered": {"selected": 9, "control": 6}, "labelled_pixels": 3840, "clicks": 20,
         "comparison": comparison},
    ]  # fmt: skip
    cumulative = {"tasks": {"selected": 19, "control": 6}, "answered": {"selected": 19,
                  "control": 6}, "labelled_pixels": 6400, "clicks": 32,
                  "comparison": comparison}  # fmt: skip
    section = rounds_section(summaries, cumulative)
    first, second = section["rounds"]
    assert first["created_at"] == "2026-01-02T00:00:00+00:00" and first["ratio"] is None
    assert second["ratio"] == 3.0 and second["ratio_ci"] == [1.6, 5.2]
    assert section["cumulative"]["labelled_pixels"] == 6400
    assert section["summary"] == (
        "Over all 2 rounds so far, the queue found 1.6-5.2x more wrong pixels than random."
    )
    page = render_html({"rounds": section}, {})
    assert "Selected vs random (control share)" in page and "<td>3.00</td>" in page
    assert "[1.60, 5.20]" in page and "too few control answers" in page
    empty = rounds_section([], None)
    assert empty["summary"].startswith("No acquisition round yet")
    assert "Selected vs random" not in render_html({}, {})
