"""Report plots as PNG bytes (matplotlib's Agg canvas; no pyplot, so no global figure state and
safe in a worker thread). Each function takes a report section (a JSON-ready dict) and returns
the encoded PNG; :func:`report_plots` makes every plot a report has data for."""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from activeseg.uncertainty.measures import (
    ENTROPY,
    MUTUAL_INFORMATION,
    PREDICTIVE_ENTROPY,
    VARIATION_RATIO,
)

__all__ = [
    "MIN_MIOU_SPAN",
    "PLOT_NAMES",
    "learning_curve_figure",
    "learning_curve_png",
    "miou_axis_limits",
    "reliability_png",
    "report_plots",
    "roc_png",
    "set_miou_axis",
    "shift_png",
]

PLOT_NAMES = ("reliability", "error_detection_roc", "shift", "learning_curve")
DPI = 100

MIN_MIOU_SPAN = 0.2
"""Smallest mIoU range a learning-curve axis shows. Matplotlib's automatic limits hug the data,
so a curve that moves 0.004 (0.0815 to 0.0855) fills the plot and looks steep; with at least
this span such a curve looks as flat as it is, while real progress still fills the axis."""


def miou_axis_limits(
    values: Iterable[float | None], min_span: float = MIN_MIOU_SPAN
) -> tuple[float, float]:
    """``(low, high)`` for an mIoU axis showing ``values`` (None and NaN skipped).

    The data range plus 5% on each side, widened to at least ``min_span`` around its middle,
    then moved (not shrunk) to lie inside ``[0, 1]``; ``(0, 1)`` without data.
    """
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return 0.0, 1.0
    low, high = min(finite), max(finite)
    pad = 0.05 * (high - low)
    low, high = low - pad, high + pad
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = middle - min_span / 2, middle + min_span / 2
    if low < 0:
        low, high = 0.0, high - low
    if high > 1:
        low, high = low - (high - 1), 1.0
    return max(low, 0.0), min(high, 1.0)


def set_miou_axis(
    ax: Axes, values: Iterable[float | None], min_span: float = MIN_MIOU_SPAN
) -> None:
    """Set the y limits of an mIoU axis ``ax`` with :func:`miou_axis_limits`; for every plot of
    mIoU against labelling effort (reports, ``activeseg simulate``, benchmarks)."""
    ax.set_ylim(*miou_axis_limits(values, min_span))


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _f(value: Any) -> str:
    return "n/a" if value is None or not math.isfinite(float(value)) else f"{float(value):.3f}"


def _finite(values: list[Any]) -> np.ndarray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _reliability_axes(top: Axes, bottom: Axes, metrics: dict[str, Any], title: str) -> None:
    rel = metrics["reliability"]
    edges = np.asarray(rel["edges"], dtype=np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    acc = _finite(rel["accuracy"])
    conf = _finite(rel["confidence"])
    count = np.asarray(rel["count"], dtype=np.float64)
    filled = count > 0
    top.bar(
        centres[filled],
        acc[filled],
        width=width[filled] * 0.95,
        color="#4c78a8",
        edgecolor="#1f3b57",
        label="accuracy in bin",
    )
    top.errorbar(
        centres[filled],
        conf[filled],
        xerr=width[filled] * 0.45,
        fmt="none",
        ecolor="#e45756",
        elinewidth=2.5,
        label="mean confidence in bin",
    )
    top.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(
        f"{title}\nECE {_f(metrics['ece'])} (adaptive {_f(metrics['ece_adaptive'])}), "
        f"MCE {_f(metrics['mce'])}",
        fontsize=10,
    )
    top.legend(fontsize=7, loc="upper left")
    bottom.bar(centres, np.maximum(count, 0.5), width=width * 0.95, color="#72b7b2")
    bottom.set_yscale("log")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("confidence (max probability)")
    bottom.set_ylabel("pixels")


def reliability_png(calibration: dict[str, Any]) -> bytes:
    """Reliability diagrams before (``T = 1``) and after temperature scaling, with bin counts."""
    panels = [("before", "T = 1 (plain softmax)")]
    if calibration.get("after") is not None:
        panels.append(("after", f"T = {float(calibration['temperature']):.3g} (fitted)"))
    fig = Figure(figsize=(5.2 * len(panels), 5.6))
    grid = fig.add_gridspec(2, len(panels), height_ratios=[3, 1])
    for col, (key, title) in enumerate(panels):
        top = fig.add_subplot(grid[0, col])
        bottom = fig.add_subplot(grid[1, col], sharex=top)
        _reliability_axes(top, bottom, calibration[key], title)
    fig.suptitle(
        f"Reliability on {calibration['n_pixels']} {calibration['split']} pixels "
        f"({calibration['n_images']} images)",
        fontsize=11,
    )
    fig.tight_layout()
    return _png(fig)


def roc_png(detection: dict[str, Any]) -> bytes:
    """ROC curves of every measure as a detector of the model's pixel errors."""
    fig = Figure(figsize=(6.4, 5.4))
    ax = fig.add_subplot()
    styles = {"softmax": "-", "ensemble": "--", "single pass": ":"}
    for row in detection["rows"]:
        curve = detection["roc"].get(row["measure"]) or {}
        if not curve.get("fpr"):
            continue
        label = f"{row['measure']} ({_f(row['auroc'])})"
        ax.plot(curve["fpr"], curve["tpr"], styles.get(row["family"], "-"), lw=1.6, label=label)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate (correct pixels flagged)")
    ax.set_ylabel("true positive rate (errors found)")
    ax.set_title(
        f"Error detection: {detection['n_errors']} errors in {detection['n_pixels']} pixels\n"
        "(legend: AUROC; dashed = ensemble, dotted = one pass vs its own errors)",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def shift_png(shift: dict[str, Any]) -> bytes:
    """Per condition: softmax confidence vs accuracy, and the rise of the uncertainty measures."""
    conditions = shift["conditions"]
    names = list(conditions)
    fig = Figure(figsize=(11, 4.4))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(len(names))
    conf = _finite([conditions[n]["mean_max_prob"] for n in names])
    acc = _finite([conditions[n]["accuracy"] for n in names])
    left.bar(x - 0.2, conf, 0.4, label="mean max-prob (softmax)", color="#e45756")
    left.bar(x + 0.2, np.nan_to_num(acc), 0.4, label="accuracy", color="#4c78a8")
    for i, value in enumerate(acc):
        if not math.isfinite(value):
            left.text(x[i] + 0.2, 0.02, "no labels", rotation=90, fontsize=7, ha="center")
    left.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    left.set_ylim(0, 1.05)
    left.set_title("Does softmax confidence follow accuracy?", fontsize=10)
    left.legend(fontsize=8)
    measures = [
        m
        for m in (
            measure.name
            for measure in (ENTROPY, MUTUAL_INFORMATION, VARIATION_RATIO, PREDICTIVE_ENTROPY)
        )
        if m in conditions[names[0]].get("rise", {})
    ]
    width = 0.8 / max(len(measures), 1)
    for j, m in enumerate(measures):
        rise = _finite([conditions[n]["rise"].get(m) for n in names])
        right.bar(x - 0.4 + width * (j + 0.5), rise, width, label=m)
    right.axhline(1.0, color="grey", lw=1)
    right.set_xticks(x, [n.replace("_", "\n") for n in names], fontsize=8)
    right.set_ylabel("mean uncertainty / clean mean")
    right.set_title("How much does uncertainty rise?", fontsize=10)
    right.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def learning_curve_png(curve: dict[str, Any]) -> bytes:
    """mIoU vs labelled pixel fraction and vs labelled regions: this project and its baseline."""
    return _png(learning_curve_figure(curve))


def learning_curve_figure(curve: dict[str, Any]) -> Figure:
    """The figure of :func:`learning_curve_png` (two axes, mIoU limits from
    :func:`set_miou_axis`)."""
    fig = Figure(figsize=(11, 4.2))
    axes = [fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)]
    pts = [p for p in curve["points"] if p["miou"] is not None]
    shown: list[float | None] = [p["miou"] for p in pts]
    for c in (curve.get("baseline") or {}).get("curves", []):
        for p in c["points"]:
            shown += [p["miou_mean"] - p["miou_std"], p["miou_mean"] + p["miou_std"]]
    for ax, key, scale in ((axes[0], "labelled_fraction", 100.0), (axes[1], "labelled_regions", 1)):
        for c in (curve.get("baseline") or {}).get("curves", []):
            xs = np.array([p[key] for p in c["points"]], dtype=np.float64) * scale
            m = np.array([p["miou_mean"] for p in c["points"]])
            sd = np.array([p["miou_std"] for p in c["points"]])
            order = np.argsort(xs)
            ax.plot(xs[order], m[order], "--", marker=".", label=f"baseline: {c['label']}")
            ax.fill_between(xs[order], (m - sd)[order], (m + sd)[order], alpha=0.15)
        usable = [p for p in pts if p[key] is not None]
        if usable:
            xs = np.array([p[key] for p in usable], dtype=np.float64) * scale
            ax.plot(
                xs,
                [p["miou"] for p in usable],
                marker="o",
                lw=2,
                color="black",
                label="this project",
            )
            for p, xv in zip(usable, xs, strict=True):
                ax.annotate(
                    f"v{p['version']}",
                    (xv, p["miou"]),
                    fontsize=7,
                    textcoords="offset points",
                    xytext=(3, 3),
                )
        ax.set_ylabel("mIoU (test when labelled, else val)")
        set_miou_axis(ax, shown)
        ax.grid(alpha=0.3)
    axes[0].set_xlabel("labelled pixels (% of pool + train)")
    axes[1].set_xlabel("labelled regions (through tasks)")
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Learning curve", fontsize=11)
    fig.tight_layout()
    return fig


def report_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """``{name: PNG bytes}`` for every section of ``report`` that has data (:data:`PLOT_NAMES`)."""
    plots: dict[str, bytes] = {}
    cal = report.get("calibration")
    if cal and cal.get("before", {}).get("reliability"):
        plots["reliability"] = reliability_png(cal)
    det = report.get("error_detection")
    if det and det.get("rows"):
        plots["error_detection_roc"] = roc_png(det)
    shift = report.get("shift")
    if shift and shift.get("conditions"):
        plots["shift"] = shift_png(shift)
    curve = report.get("learning_curve")
    if curve and (curve.get("points") or curve.get("baseline")):
        plots["learning_curve"] = learning_curve_png(curve)
    return plots
