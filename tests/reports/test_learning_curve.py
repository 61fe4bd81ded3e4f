"""Learning-curve section and baseline CSVs (the curve.csv that `activeseg simulate` writes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.admin.simulation import write_csv
from activeseg.reports.learning_curve import (
    aggregate_baseline,
    learning_curve_section,
    parse_baseline_csv,
    version_miou,
)


def simulate_rows() -> list[dict[str, object]]:
    rows = []
    for seed, offset in ((0, 0.0), (1, 0.1)):
        for rnd in (1, 2, 3):
            rows.append(
                {
                    "label": "random (grid)",
                    "dataset": "digits",
                    "measure": "entropy",
                    "strategy": "random",
                    "region_kind": "grid",
                    "seed": seed,
                    "round": rnd,
                    "labelled_regions": 10 * rnd,
                    "labelled_pixels": 1000 * rnd,
                    "labelled_fraction": 0.1 * rnd,
                    "test_miou": 0.2 * rnd + offset,
                    "val_miou": 0.5,
                    "model_version": rnd,
                }
            )
    rows.append({**rows[0], "round": 4, "test_miou": None})  # no test figure: dropped
    return rows


def test_simulate_csv_round_trips_into_mean_and_std(tmp_path: Path) -> None:
    path = tmp_path / "curve.csv"
    write_csv(simulate_rows(), path)
    rows = parse_baseline_csv(path.read_text())
    assert len(rows) == 6
    [curve] = aggregate_baseline(rows)
    assert curve["label"] == "random (grid)" and curve["strategy"] == "random"
    first = curve["points"][0]
    assert first["round"] == 1 and first["n"] == 2
    assert first["miou_mean"] == pytest.approx(0.25) and first["miou_std"] == pytest.approx(0.05)
    assert first["labelled_fraction"] == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,b\n1,2\n", "lacks column"),
        ("round,labelled_fraction,labelled_regions,test_miou\n1,x,3,0.5\n", "must be a number"),
        ("round,labelled_fraction,labelled_regions,test_miou\n1,0.1,3,\n", "no row"),
        ("round,labelled_fraction,labelled_regions,test_miou\n1,nan,3,0.2\n", "finite"),
    ],
)
def test_bad_baselines_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_baseline_csv(text)


def test_section_uses_test_miou_else_val_and_compares_with_random(tmp_path: Path) -> None:
    assert version_miou({"miou": 0.4, "test": {"miou": 0.5}}) == (0.5, "test")
    assert version_miou({"miou": 0.4}) == (0.4, "val")
    assert version_miou({}) == (None, None)
    versions = [
        {"id": 7, "version": 1, "labelled_pixels": 1000, "labelled_regions": 10, "rounds": 1,
         "metrics": {"miou": 0.3}},
        {"id": 9, "version": 2, "labelled_pixels": 1500, "labelled_regions": 15, "rounds": 2,
         "metrics": {"miou": 0.3, "test": {"miou": 0.45}}},
    ]  # fmt: skip
    path = tmp_path / "curve.csv"
    write_csv(simulate_rows(), path)
    section = learning_curve_section(versions, 10_000, parse_baseline_csv(path.read_text()), "k")
    points = section["points"]
    assert [p["split"] for p in points] == ["val", "test"]
    assert points[1]["labelled_fraction"] == pytest.approx(0.15)
    assert section["baseline"]["source"] == "k"
    # random at 15 %: halfway between 0.25 (10 %) and 0.45 (20 %)
    assert "0.350" in section["summary"] and "0.450" in section["summary"]
    empty = learning_curve_section([], 0)
    assert empty["points"] == [] and empty["baseline"] is None
