"""Learning-curve section: mIoU per model version against labelling effort, with a baseline.

The project's own curve has one point per model version up to the reported one: its labelled
pixels (what it was trained on), the regions labelled through tasks by then, the acquisition
rounds opened by then, and its mIoU (``metrics["test"]["miou"]`` when the project has labelled
test images, else the val ``miou``; each point says which).

A baseline is a ``curve.csv`` written by ``activeseg simulate`` (columns of
:data:`activeseg.admin.simulation.CSV_FIELDS`; at least ``round``, ``labelled_fraction``,
``labelled_regions`` and ``test_miou``), attached with ``POST /projects/{id}/baseline``: the
curves it holds (usually ``random``) are averaged over seeds per round and drawn next to the
project's curve.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from typing import Any

import numpy as np

__all__ = [
    "BASELINE_COLUMNS",
    "MAX_BASELINE_ROWS",
    "aggregate_baseline",
    "interpolate",
    "learning_curve_section",
    "parse_baseline_csv",
    "version_miou",
]

BASELINE_COLUMNS = ("round", "labelled_fraction", "labelled_regions", "test_miou")
"""Columns a baseline CSV must have (``activeseg simulate`` writes them)."""

MAX_BASELINE_ROWS = 100_000


def version_miou(metrics: dict[str, Any]) -> tuple[float | None, str | None]:
    """``(mIoU, split)`` of a version's stored metrics: test when present, else val."""
    test = metrics.get("test")
    if isinstance(test, dict) and test.get("miou") is not None:
        return float(test["miou"]), "test"
    if metrics.get("miou") is not None:
        return float(metrics["miou"]), "val"
    return None, None


def _number(value: str, column: str, line: int) -> float:
    try:
        out = float(value)
    except ValueError:
        raise ValueError(
            f"line {line}: column {column!r} must be a number, got {value!r}"
        ) from None
    if not math.isfinite(out):
        raise ValueError(f"line {line}: column {column!r} must be finite, got {value!r}")
    return out


def parse_baseline_csv(text: str) -> list[dict[str, Any]]:
    """Rows of a simulate ``curve.csv``: ``label``, ``strategy``, ``seed``, ``round`` (int),
    ``labelled_fraction``, ``labelled_regions``, ``labelled_pixels`` (when present) and
    ``test_miou`` (float). Rows without a test mIoU are dropped.

    Raises:
        ValueError: not a CSV with the needed columns, a non-numeric value, or no usable row;
            the message names what is wrong and the expected header.
    """
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = reader.fieldnames or []
    missing = [c for c in BASELINE_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"baseline CSV lacks column(s) {missing}; expected the curve.csv that "
            "`activeseg simulate --strategy random --out DIR` writes, with a header like "
            "'label,dataset,measure,strategy,region_kind,seed,round,labelled_regions,"
            "labelled_pixels,labelled_fraction,test_miou,val_miou,model_version'"
        )
    rows: list[dict[str, Any]] = []
    for line, raw in enumerate(reader, start=2):
        if len(rows) >= MAX_BASELINE_ROWS:
            raise ValueError(f"baseline CSV has more than {MAX_BASELINE_ROWS} rows")
        if raw.get("test_miou") in (None, ""):
            continue
        row: dict[str, Any] = {
            "label": (raw.get("label") or raw.get("strategy") or "baseline").strip(),
            "strategy": (raw.get("strategy") or "").strip(),
            "seed": (raw.get("seed") or "").strip(),
            "round": int(_number(raw["round"], "round", line)),
            "labelled_fraction": _number(raw["labelled_fraction"], "labelled_fraction", line),
            "labelled_regions": _number(raw["labelled_regions"], "labelled_regions", line),
            "test_miou": _number(raw["test_miou"], "test_miou", line),
        }
        if raw.get("labelled_pixels") not in (None, ""):
            row["labelled_pixels"] = _number(raw["labelled_pixels"], "labelled_pixels", line)
        rows.append(row)
    if not rows:
        raise ValueError("baseline CSV has no row with a test_miou value")
    return rows


def aggregate_baseline(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per label, per round: mean labelled fraction / regions and mean +- std of test mIoU over
    seeds. Returns ``[{"label", "strategy", "points": [{round, labelled_fraction,
    labelled_regions, miou_mean, miou_std, n}]}]`` sorted by label."""
    grouped: dict[str, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        grouped[row["label"]][row["round"]].append(row)
    curves = []
    for label in sorted(grouped):
        points = []
        for rnd in sorted(grouped[label]):
            at = grouped[label][rnd]
            mious = np.array([r["test_miou"] for r in at], dtype=np.float64)
            points.append(
                {
                    "round": rnd,
                    "labelled_fraction": float(np.mean([r["labelled_fraction"] for r in at])),
                    "labelled_regions": float(np.mean([r["labelled_regions"] for r in at])),
                    "miou_mean": float(mious.mean()),
                    "miou_std": float(mious.std()),
                    "n": len(at),
                }
            )
        strategy = next((r["strategy"] for r in rows if r["label"] == label), "")
        curves.append({"label": label, "strategy": strategy, "points": points})
    return curves


def interpolate(xs: list[float], ys: list[float], x: float) -> float | None:
    """Linear interpolation of the curve ``(xs, ys)`` (sorted by x) at ``x``; None outside."""
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def learning_curve_section(
    versions: list[dict[str, Any]],
    total_pixels: int,
    baseline_rows: list[dict[str, Any]] | None = None,
    baseline_source: str | None = None,
) -> dict[str, Any]:
    """The report's ``learning_curve`` section.

    Args:
        versions: one dict per model version, oldest first: ``id``, ``version``,
            ``labelled_pixels``, ``labelled_regions``, ``rounds`` (acquisition rounds opened
            before it was trained) and ``metrics`` (the version's stored metrics).
        total_pixels: pixels of the images it could have been trained on (pool + train), for
            the labelled fraction.
        baseline_rows: parsed baseline CSV rows (:func:`parse_baseline_csv`), or None.
        baseline_source: where the baseline came from (a blob key), for the record.

    Returns:
        ``{"points": [...], "total_pixels", "baseline": {"source", "curves"} | None,
        "summary"}``; each point: ``model_version_id``, ``version``, ``rounds``,
        ``labelled_pixels``, ``labelled_fraction``, ``labelled_regions``, ``miou``, ``split``.
    """
    points = []
    for v in versions:
        miou, split = version_miou(v.get("metrics") or {})
        pixels = int(v.get("labelled_pixels") or 0)
        points.append(
            {
                "model_version_id": v["id"],
                "version": v["version"],
                "rounds": int(v.get("rounds") or 0),
                "labelled_pixels": pixels,
                "labelled_fraction": pixels / total_pixels if total_pixels else None,
                "labelled_regions": int(v.get("labelled_regions") or 0),
                "miou": miou,
                "split": split,
            }
        )
    baseline = None
    summary = ""
    usable = [p for p in points if p["miou"] is not None]
    if usable:
        last = usable[-1]
        frac = last["labelled_fraction"]
        summary = f"Version {last['version']} reaches {last['split']} mIoU {last['miou']:.3f}"
        if frac is not None:
            summary += f" with {100 * frac:.1f}% of the pixels labelled"
        summary += f" ({last['labelled_regions']} regions through tasks)."
    if baseline_rows:
        curves = aggregate_baseline(baseline_rows)
        baseline = {"source": baseline_source, "curves": curves}
        random = next((c for c in curves if c["strategy"] == "random"), None)
        if usable and random is not None and usable[-1]["labelled_fraction"] is not None:
            xs = [p["labelled_fraction"] for p in random["points"]]
            ys = [p["miou_mean"] for p in random["points"]]
            order = np.argsort(xs)
            at = interpolate(
                [xs[i] for i in order], [ys[i] for i in order], usable[-1]["labelled_fraction"]
            )
            if at is None:
                summary += (
                    " The random baseline does not cover this labelled fraction "
                    f"({100 * min(xs):.1f}-{100 * max(xs):.1f}%)."
                )
            else:
                summary += (
                    f" The random baseline ({random['label']}) reaches test mIoU {at:.3f} at the "
                    "same labelled fraction (interpolated, mean over its seeds)."
                )
    return {
        "points": points,
        "total_pixels": total_pixels,
        "baseline": baseline,
        "summary": summary or "No model version with an mIoU yet.",
    }
