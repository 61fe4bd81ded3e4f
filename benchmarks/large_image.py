"""Scoring one large image (issue 14): time and peak memory of each stage, on one CPU thread.

Usage::

    python benchmarks/large_image.py [--quick] [--size 6000] [--baseline-size 2048]
                                     [--methods mc_dropout,single]

A synthetic RGB image (smooth colour waves plus Gaussian noise, fixed seed, nothing downloaded)
is scored by the project's default ``ModelConfig`` (UNet depth 4, 16 base channels; untrained
weights: speed does not depend on them) with ``torch.set_num_threads(1)``. Stages, each in its
own spawned process so that one stage's memory does not inflate another's peak RSS
(``resource.getrusage().ru_maxrss``):

- ``score``: ``score_images`` (tiled inference + all measures + the prediction), per method;
- ``slic``: ``slic_regions`` at the project defaults (region size 16, sigma 1), tiled;
- ``pool``: ``pool`` of every measure map over the regions (mean, and one class-balanced).

Baseline in the same run: the untiled path against the tiled path on ``--baseline-size``
(ratio of Mpx/s), so the cost of the window overlap is visible. The target: a 36-Mpx image
scored in under 30 s, peak RSS under 2 GiB. Output: Markdown on stdout.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N_CLASSES = 5
REGION_SIZE = 16
SLIC_SIGMA = 1.0
TARGET_S = 30.0
TARGET_GIB = 2.0
BAND_ROWS = 256


def synthetic_image(size: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[size, size, 3]``: smooth colour waves of several scales plus noise (sigma 12).

    Made in bands of rows so that no float copy of the whole image inflates the peak RSS.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.uint8)
    x = np.arange(size, dtype=np.float32)
    periods = rng.uniform(40.0, 400.0, size=(3, 4)).astype(np.float32)
    phases = rng.uniform(0.0, 6.3, size=(3, 4)).astype(np.float32)
    for y0 in range(0, size, BAND_ROWS):
        y = np.arange(y0, min(y0 + BAND_ROWS, size), dtype=np.float32)[:, None]
        for c in range(3):
            p, q = periods[c], phases[c]
            wave = np.sin(y / p[0] + q[0]) * np.cos(x / p[1] + q[1])
            wave += np.sin((x + y) / p[2] + q[2]) * np.cos((x - y) / p[3] + q[3])
            noise = rng.standard_normal(wave.shape, dtype=np.float32) * 12.0
            image[y0 : y0 + len(y), :, c] = np.clip(128.0 + 55.0 * wave + noise, 0, 255)
    return image


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_s() -> float:
    """CPU seconds of this process: on a shared machine, a one-thread stage's CPU time is what
    its wall time would be alone (wall time also counts waiting for a core)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _predictor(method: str, tiled: bool, mc_samples: int) -> Any:
    import torch

    from activeseg.models.config import ModelConfig
    from activeseg.models.inference import Predictor
    from activeseg.models.unet import UNet

    config = ModelConfig(
        in_channels=3, n_classes=N_CLASSES, method=method, mc_samples=mc_samples, device="cpu"
    )
    torch.manual_seed(0)
    nets = [UNet.from_config(config) for _ in range(config.n_members)]
    # tiled: every image window by window (0), as the default does above 1 Mpx; else never.
    return Predictor(nets, config, max_untiled_pixels=0 if tiled else None)


T = TypeVar("T")


def _measured(work: Callable[[], T]) -> tuple[T, dict[str, float]]:
    """Run ``work`` once: its result, and its wall and CPU seconds with this process's peak
    RSS before and after (MiB)."""
    before, cpu = _peak_mib(), _cpu_s()
    start = time.perf_counter()
    result = work()
    seconds = time.perf_counter() - start
    stats = {"seconds": seconds, "cpu_s": _cpu_s() - cpu, "peak_mib": _peak_mib()}
    return result, {**stats, "before_mib": before}


def stage_score(size: int, method: str, tiled: bool, mc_samples: int) -> dict[str, float]:
    from activeseg.models.scoring import score_images
    from activeseg.uncertainty.measures import ENSEMBLE_MEASURES, SOFTMAX_MEASURES

    predictor = _predictor(method, tiled, mc_samples)
    names = SOFTMAX_MEASURES + (ENSEMBLE_MEASURES if predictor.n_samples > 1 else ())
    list(score_images(predictor, [synthetic_image(64, seed=1)], names))  # warm-up
    image = synthetic_image(size)
    (score,), stats = _measured(lambda: list(score_images(predictor, [image], names)))
    assert len(score.maps) == len(names) and score.prediction.shape == image.shape[:2]
    return stats


def stage_slic(size: int) -> dict[str, float]:
    from activeseg.uncertainty.regions import slic_regions

    image = synthetic_image(size)
    regions, stats = _measured(
        lambda: slic_regions(image, region_size=REGION_SIZE, sigma=SLIC_SIGMA)
    )
    return {**stats, "regions": regions.n_regions}


def stage_pool(size: int) -> dict[str, float]:
    """Pool ten float32 maps (as many as MC dropout scores) over ``size / 16`` px tiles."""
    from activeseg.uncertainty.pooling import class_weights_from_labels, pool
    from activeseg.uncertainty.regions import grid_regions

    rng = np.random.default_rng(0)
    maps = [rng.random((size, size), dtype=np.float32) for _ in range(10)]
    prediction = rng.integers(0, N_CLASSES, (size, size), dtype=np.uint8)
    regions = grid_regions(size, size, REGION_SIZE)  # as many regions as SLIC aims at
    weights = class_weights_from_labels(np.arange(1, N_CLASSES + 1))

    def pool_all() -> None:
        for pixel_map in maps:
            pool(pixel_map, regions.labels, regions.n_regions, "mean")
        labels, n = regions.labels, regions.n_regions
        pool(maps[0], labels, n, "class_balanced", **_cb(prediction, weights))

    return _measured(pool_all)[1]


def _cb(prediction: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    return {"predicted_class": prediction, "class_weights": weights}


STAGES = {"score": stage_score, "slic": stage_slic, "pool": stage_pool}


def _child(name: str, args: tuple[Any, ...]) -> dict[str, float]:
    import torch

    torch.set_num_threads(1)
    return STAGES[name](*args)


def run_stage(name: str, *args: Any) -> dict[str, float]:
    """Run one stage in a fresh spawned process (its own peak RSS) and return its figures."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, maxtasksperchild=1) as workers:
        return workers.apply(_child, (name, args))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1280 px image, 768 px baseline")
    parser.add_argument("--size", type=int, default=6000)
    parser.add_argument("--baseline-size", type=int, default=2048)
    parser.add_argument("--methods", default="mc_dropout,single")
    parser.add_argument(
        "--mc-samples",
        type=int,
        default=10,
        help="T (default 10, the config default); fewer keeps the memory profile (all ten "
        "measures) and runs faster",
    )
    parser.add_argument("--skip-baseline", action="store_true")
    args = parser.parse_args()
    t = args.mc_samples
    size, base = (1280, 768) if args.quick else (args.size, args.baseline_size)
    methods = args.methods.split(",")
    mpx, base_mpx = size * size / 1e6, base * base / 1e6
    print(f"- Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    print(
        f"- Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"1-minute load {os.getloadavg()[0]:.1f} at the start; torch threads 1"
    )
    print(f"\n### {size}x{size} RGB ({mpx:.1f} Mpx), {N_CLASSES} classes\n")
    print("| stage | wall s | CPU s | Mpx/s (CPU) | peak RSS MiB | RSS before stage MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    rows = [(_label(m, t), run_stage("score", size, m, True, t)) for m in methods]
    rows.append(("slic_regions (size 16, sigma 1)", run_stage("slic", size)))
    rows.append(("pool (10 maps mean + 1 class-balanced)", run_stage("pool", size)))
    for label, r in rows:
        print(
            f"| {label} | {r['seconds']:.1f} | {r['cpu_s']:.1f} | {mpx / r['cpu_s']:.2f} | "
            f"{r['peak_mib']:.0f} | {r['before_mib']:.0f} |"
        )
    _targets(rows[: len(methods)], mpx)
    if args.skip_baseline:
        return
    print(f"\n### Tiling overhead at {base}x{base} ({base_mpx:.1f} Mpx)\n")
    print(
        "| method | untiled CPU s | tiled CPU s | untiled Mpx/s | tiled Mpx/s | tiled / untiled "
        "| peak MiB u/t |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for m in methods:
        # untiled, tiled, untiled, tiled: the faster of two runs each (a shared machine).
        runs = [run_stage("score", base, m, tiled, t) for tiled in (False, True, False, True)]
        u = min(runs[0::2], key=lambda r: r["cpu_s"])
        v = min(runs[1::2], key=lambda r: r["cpu_s"])
        print(
            f"| {_label(m, t)} | {u['cpu_s']:.1f} | {v['cpu_s']:.1f} | "
            f"{base_mpx / u['cpu_s']:.2f} | {base_mpx / v['cpu_s']:.2f} | "
            f"{u['cpu_s'] / v['cpu_s']:.2f} | {u['peak_mib']:.0f} / {v['peak_mib']:.0f} |"
        )


def _label(method: str, mc_samples: int) -> str:
    return f"score_images, {method}" + (f" T={mc_samples}" if method == "mc_dropout" else "")


def _targets(rows: list[tuple[str, dict[str, float]]], mpx: float) -> None:
    """CPU seconds and GiB against the target, time scaled to 36 Mpx for a smaller image."""
    print(f"\n### Target ({TARGET_S:.0f} s and {TARGET_GIB:.0f} GiB for 36 Mpx)\n")
    for label, r in rows:
        seconds = r["cpu_s"] * 36.0 / mpx  # one thread alone: its CPU time
        peak_gib = r["peak_mib"] / 1024
        ok = seconds < TARGET_S and peak_gib < TARGET_GIB
        scaled = "" if mpx >= 36.0 else f" (scaled from {mpx:.1f} Mpx; memory not scaled)"
        print(
            f"- {label}: {seconds:.0f} s{scaled}, {seconds / TARGET_S:.1f}x the time target; "
            f"peak {peak_gib:.2f} GiB: {'met' if ok else 'not met'}"
        )


if __name__ == "__main__":
    main()
