"""The measure registry: the one definition that settings, reports and the README read."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from activeseg.core.project_config import ProjectSettings
from activeseg.reports.collect import ENSEMBLE_ROWS, SOFTMAX_ROWS
from activeseg.reports.detection import DESCRIPTIONS, FAMILIES
from activeseg.uncertainty.measures import (
    ALL_MEASURES,
    DEFAULT_MEASURE,
    ENSEMBLE_MEASURES,
    MEASURES,
    SOFTMAX_MEASURES,
    compute_measures,
    get_measure,
    measure_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"
BEGIN, END = "<!-- measures:begin", "<!-- measures:end -->"


def test_readme_table_is_the_registry() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("\n", text.index(BEGIN)) + 1
    assert text[start : text.index(END)] == measure_table()


def test_families_and_names_come_from_the_registry() -> None:
    assert SOFTMAX_MEASURES == (
        "least_confidence",
        "margin",
        "entropy",
        "normalised_entropy",
        "ratio",
    )
    assert ENSEMBLE_MEASURES == (
        "predictive_entropy",
        "expected_entropy",
        "mutual_information",
        "variation_ratio",
        "mean_std",
    )
    assert tuple(MEASURES) == ALL_MEASURES
    assert all(MEASURES[n].needs_samples for n in ENSEMBLE_MEASURES)
    assert not any(MEASURES[n].needs_samples for n in SOFTMAX_MEASURES)
    for m in MEASURES.values():
        assert m.label and m.formula and m.reference, m.name


def test_report_rows_read_the_registry() -> None:
    assert SOFTMAX_ROWS == ("least_confidence", "margin", "entropy")
    assert ENSEMBLE_ROWS == ("predictive_entropy", "mutual_information", "variation_ratio")
    assert FAMILIES["mutual_information"] == "ensemble"
    assert FAMILIES["margin"] == "softmax"
    mi = MEASURES["mutual_information"]
    assert DESCRIPTIONS["mutual_information"] == f"{mi.label}: {mi.formula} (ensemble)"


def _one_hot_members(n_classes: int, n_members: int) -> np.ndarray:
    """[S, C, 1, 1]: member s is one-hot on class s mod C (maximal disagreement)."""
    stack = np.zeros((n_members, n_classes, 1, 1), np.float32)
    for s in range(n_members):
        stack[s, s % n_classes] = 1.0
    return stack


@pytest.mark.parametrize("n_classes", [2, 4])
def test_upper_bounds_are_reached(n_classes: int) -> None:
    """Known answers: uniform members reach the softmax and entropy bounds, members one-hot on
    every class in turn reach mutual information log C and variation ratio 1 - 1/S."""
    n_members = n_classes
    uniform = np.full((n_members, n_classes, 1, 1), 1.0 / n_classes, np.float32)
    spread = _one_hot_members(n_classes, n_members)
    got_uniform = compute_measures(uniform, ALL_MEASURES)
    got_spread = compute_measures(spread, ALL_MEASURES)
    for name in ("least_confidence", "entropy", "normalised_entropy", "predictive_entropy"):
        bound = get_measure(name).upper_bound(n_classes, n_members)
        assert float(got_uniform[name][0, 0]) == pytest.approx(bound, abs=1e-6), name
    for name in ("mutual_information", "variation_ratio", "predictive_entropy"):
        bound = get_measure(name).upper_bound(n_classes, n_members)
        assert float(got_spread[name][0, 0]) == pytest.approx(bound, abs=1e-6), name
    assert get_measure("entropy").upper_bound(n_classes) == pytest.approx(math.log(n_classes))
    assert get_measure("least_confidence").upper_bound(n_classes) == 1 - 1 / n_classes
    assert get_measure("variation_ratio").upper_bound(n_classes, 5) == pytest.approx(0.8)


def test_settings_validation_reads_the_registry() -> None:
    assert ProjectSettings().measure == DEFAULT_MEASURE == "entropy"
    for name in ALL_MEASURES:
        assert ProjectSettings(measure=name).measure == name
    with pytest.raises(ValidationError, match="choose one of least_confidence, margin"):
        ProjectSettings(measure="bald")
    with pytest.raises(ValidationError, match="needs several members or samples"):
        ProjectSettings.model_validate({"measure": "mean_std", "model": {"method": "single"}})
    single = ProjectSettings.model_validate({"measure": "ratio", "model": {"method": "single"}})
    assert single.measure == "ratio"


def test_unknown_name_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown measure 'bald'"):
        get_measure("bald")
