"""Throughput of the per-pixel uncertainty measures, and their cost in passes over the input.

Usage::

    python benchmarks/uncertainty_throughput.py [--quick] [--size 256] [--repeats 9]

For C = 2, 11, 21 classes it times (a) all softmax measures together (``softmax_measures`` on
``[C, H, W]``) and (b) all ensemble measures together (``ensemble_measures`` on ``[S, C, H, W]``,
S = 5, 20; S = 1 is the softmax case). The baseline "one pass" is ``probs.sum()`` over the same
array in the same process: the time to read every value once. ``passes`` = measure time / one-pass
time (median of the repeats). A second ratio against ``probs.sum(axis=class axis)`` (a cheaper
reduction that writes a per-pixel result) is printed too. Output: a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from activeseg.uncertainty.measures import (  # noqa: E402
    ENSEMBLE_MEASURES,
    SOFTMAX_MEASURES,
    ensemble_measures,
    softmax_measures,
)


def _interleaved_medians(funcs: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat.

    Interleaving makes the measure and its one-pass baseline see the same machine load, so the
    ratio stays meaningful on a shared machine even when absolute times drift.
    """
    for func in funcs:
        func()  # warm-up: page faults, allocator, caches
    times: list[list[float]] = [[] for _ in funcs]
    for _ in range(repeats):
        for func, bucket in zip(funcs, times, strict=True):
            start = time.perf_counter()
            func()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(bucket) for bucket in times]


def _probs(shape: tuple[int, ...], class_axis: int, seed: int) -> np.ndarray:
    """Softmax of random logits (scale 3: a mix of confident and unsure pixels), float32."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(shape, dtype=np.float32) * 3.0
    z -= z.max(axis=class_axis, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=class_axis, keepdims=True)
    return z


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke run)")
    parser.add_argument("--size", type=int, default=256, help="image side H = W")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per cell")
    args = parser.parse_args()
    repeats = args.repeats or (5 if args.quick else 31)
    side = args.size
    n_pixels = side * side

    cells = []
    for n_classes in (2, 11, 21):
        for n_members in (1, 5, 20):
            if n_members == 1:
                probs = _probs((n_classes, side, side), 0, seed=n_classes)
                cells.append(("softmax", n_classes, n_members, probs, 0))
            else:
                probs = _probs((n_members, n_classes, side, side), 1, seed=n_classes + n_members)
                cells.append(("ensemble", n_classes, n_members, probs, 1))

    def run(kind: str, probs: np.ndarray) -> object:
        if kind == "softmax":
            return softmax_measures(probs, SOFTMAX_MEASURES)
        return ensemble_measures(probs, ENSEMBLE_MEASURES)

    # A scoring worker is a long-lived process: warm the allocator (glibc's mmap threshold
    # adapts to the sizes freed) and the caches on every cell before timing anything.
    for kind, _, _, probs, _ in cells:
        run(kind, probs)

    rows = []
    for kind, n_classes, n_members, probs, class_axis in cells:
        t_measure, t_pass, t_axis = _interleaved_medians(
            [partial(run, kind, probs), probs.sum, partial(probs.sum, axis=class_axis)], repeats
        )
        n_names = len(SOFTMAX_MEASURES) if kind == "softmax" else len(ENSEMBLE_MEASURES)
        rows.append(
            (
                f"{kind} (all {n_names})",
                n_classes,
                n_members,
                probs.nbytes / 2**20,
                t_measure * 1e3,
                n_pixels / t_measure / 1e6,
                t_pass * 1e3,
                t_measure / t_pass,
                t_measure / t_axis,
            )
        )

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"# {side}x{side} float32, median of {repeats} interleaved repeats, numpy "
        f"{np.__version__}, {platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {load} (1/5/15 min) at the end"
    )
    print()
    print(
        "| measures | C | S | array MiB | time ms | Mpx/s | one pass ms | passes "
        "| passes vs class-axis sum |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, c, s, mib, ms, mpx, pass_ms, passes, passes_axis in rows:
        print(
            f"| {label} | {c} | {s} | {mib:.1f} | {ms:.2f} | {mpx:.1f} | {pass_ms:.2f} "
            f"| {passes:.2f} | {passes_axis:.2f} |"
        )


if __name__ == "__main__":
    main()
