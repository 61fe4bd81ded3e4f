"""Does active learning save labels? Label efficiency of the service's acquisition methods.

Usage::

    python benchmarks/label_efficiency.py --quick     # < 5 min: digits, 1 seed, dominant label
    python benchmarks/label_efficiency.py             # digits + nuclei, 5 seeds, both protocols
        [--datasets digits,nuclei] [--seeds 0,1,2,3,4] [--protocols dominant,exact] [--budget N]
        [--methods random,entropy,margin,bald,ensemble] [--jobs 2]
        [--out benchmarks/out/label_efficiency] [--no-docs] [--analyse-only]

The loop is the service's own computation, run in-process without HTTP, database or broker so
that five seeds, two datasets, two annotator protocols and five methods fit in an hour on two
cores: the same trainer (:func:`activeseg.models.training.train`), predictor and temperature fit
(:mod:`activeseg.models`), per-pixel measures
(:func:`activeseg.uncertainty.measures.compute_measures`), region maps
(:func:`activeseg.uncertainty.regions.slic_regions`), pooling and selection
(:func:`activeseg.uncertainty.selection.select_regions`, stochastic power sampling, at most
``per_image_cap`` regions per image) that ``score_pool`` and ``build_queue`` call.
``activeseg simulate`` runs the same loop end to end through a real service.

For every (dataset, seed, protocol):

1. the data are generated or cut for that seed and split into pool / val / test by a seeded
   permutation (so seeds vary the split, the model initialisation and every draw);
2. round 1 is one random batch of ``budget`` regions, shared by every method (a paired start);
3. each method then trains a model on its labels (cold start, fixed step budget), scores the
   pool, and queues the next ``budget`` regions; a simulated annotator answers them under the
   protocol:

   - ``dominant``: one click per region, the region's majority ground-truth class for all of its
     pixels (what the service's region answer does);
   - ``exact``: the region's exact ground-truth pixels, costing the vertices of their outline
     (:func:`activeseg.uncertainty.annotation_cost.patch_clicks`, the cost the service
     counts for a patch answer);
4. the fully supervised reference is the same network and trainer on every pool region answered
   under the *same* protocol.

Methods: ``random`` (uniform regions), ``entropy`` and ``margin`` (softmax of one network),
``bald`` (MC-dropout mutual information, T samples of the same network), ``ensemble`` (mutual
information of a K = 5 deep ensemble). Every method's learning-curve point is the test mIoU of
*one* network trained on its labels with the same seed and config (for the ensemble, its first
member), so the curves differ only by which regions were labelled.

Outputs under ``--out`` (gitignored): ``curves.csv`` (one row per method and round),
``full.csv``, ``tables.md``, ``label_efficiency.png``; with docs on, ``docs/label_efficiency.png``.
Torch runs one thread per process: on a busy 2-core machine two OpenMP threads per small model
spin against each other.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from activeseg.datasets.digits import DIGITS_MODEL_DEFAULTS  # noqa: E402

log = logging.getLogger("label_efficiency")

IGNORE = 255


@dataclass(frozen=True)
class Method:
    """How a method selects: ``strategy`` and ``measure`` of ``select_regions``, and which
    model produces the probabilities (``single``: one softmax map; ``mc_dropout``: T samples of
    the same network; ``ensemble``: K networks)."""

    strategy: str
    measure: str | None
    model: str


METHODS: dict[str, Method] = {
    "random": Method("random", None, "single"),
    "entropy": Method("power", "entropy", "single"),
    "margin": Method("power", "margin", "single"),
    "bald": Method("power", "mutual_information", "mc_dropout"),
    "ensemble": Method("power", "mutual_information", "ensemble"),
}


@dataclass(frozen=True)
class DatasetPlan:
    """Sizes of one dataset's split, its regions and its budget schedule."""

    pool: int
    val: int
    test: int
    budget: int
    """Regions queued per round."""
    rounds: int
    region_size: int = 12
    tile_size: int = 64
    """nuclei only: side of the tiles cut from the 512 x 512 sample."""
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of :attr:`Plan.model` for this dataset."""


DIGITS_MODEL: dict[str, Any] = dict(DIGITS_MODEL_DEFAULTS)
"""What a digits project gets on import: no flips or rotations (they change a digit's class)."""


@dataclass
class Plan:
    datasets: dict[str, DatasetPlan]
    seeds: list[int]
    protocols: list[str]
    methods: list[str]
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "depth": 2,
            "base_channels": 16,
            "dropout": 0.2,
            "steps": 300,
            "batch_size": 8,
            "patch_size": 48,
            "lr": 3e-3,
            "class_weights": "val",
        }
    )
    mc_samples: int = 8
    ensemble_size: int = 5
    per_image_cap: int = 3
    slic_sigma: float = 1.0

    def model_for(self, dataset: str) -> dict[str, Any]:
        return {**self.model, **self.datasets[dataset].model}


def quick_plan() -> Plan:
    return Plan(
        datasets={
            "digits": DatasetPlan(
                pool=80, val=20, test=100, budget=60, rounds=3, model=DIGITS_MODEL
            )
        },
        seeds=[0],
        protocols=["dominant"],
        methods=list(METHODS),
        model={**Plan({}, [], [], []).model, "steps": 200},
    )


def full_plan() -> Plan:
    return Plan(
        datasets={
            # 64 x 64 canvases, 11 classes; about 22 superpixels each, 3,300 in the pool.
            "digits": DatasetPlan(
                pool=150, val=40, test=200, budget=100, rounds=4, model=DIGITS_MODEL
            ),
            # The 512 x 512 stardist sample cut into 64 tiles of 64 x 64, 2 classes.
            "nuclei": DatasetPlan(
                pool=40, val=8, test=16, budget=30, rounds=4, model={"steps": 200}
            ),
        },
        seeds=[0, 1, 2, 3, 4],
        protocols=["dominant", "exact"],
        methods=list(METHODS),
    )


# --------------------------------------------------------------------------------------------
# data


@dataclass
class Data:
    """One seed's split. Images uint8 ``[H, W]``, masks uint8 ``[H, W]`` (exact truth)."""

    n_classes: int
    pool_images: list[np.ndarray]
    pool_truth: list[np.ndarray]
    val_images: list[np.ndarray]
    val_masks: list[np.ndarray]
    test_images: list[np.ndarray]
    test_masks: list[np.ndarray]
    regions: list[Any]  # RegionMap per pool image
    majority: list[np.ndarray]
    """Per pool image, int64 ``[R]``: each region's majority ground-truth class."""


def make_data(dataset: str, seed: int, plan: Plan) -> Data:
    from activeseg.datasets.digits import digits
    from activeseg.datasets.nuclei import nuclei
    from activeseg.uncertainty.regions import slic_regions

    dp = plan.datasets[dataset]
    total = dp.pool + dp.val + dp.test
    if dataset == "digits":
        data = digits(total, seed=seed)
    elif dataset == "nuclei":
        data = nuclei(seed=seed, tile_size=dp.tile_size)  # tiles in a seeded order
    else:
        raise ValueError(f"unknown dataset {dataset!r}; choose digits or nuclei")
    samples = list(data)
    if len(samples) < total:
        raise ValueError(f"{dataset} has {len(samples)} samples, the plan needs {total}")
    order = np.random.default_rng([seed, 7]).permutation(len(samples))[:total]
    chosen = [samples[i] for i in order]
    pool, val, test = (
        chosen[: dp.pool],
        chosen[dp.pool : dp.pool + dp.val],
        chosen[dp.pool + dp.val :],
    )
    n_classes = len(data.classes)
    regions = [
        slic_regions(s.image, region_size=dp.region_size, sigma=plan.slic_sigma) for s in pool
    ]
    majority = []
    for s, reg in zip(pool, regions, strict=True):
        votes = np.bincount(
            reg.labels.ravel().astype(np.int64) * n_classes + s.mask.ravel(),
            minlength=reg.n_regions * n_classes,
        ).reshape(reg.n_regions, n_classes)
        majority.append(votes.argmax(axis=1))
    return Data(
        n_classes=n_classes,
        pool_images=[s.image for s in pool],
        pool_truth=[s.mask for s in pool],
        val_images=[s.image for s in val],
        val_masks=[s.mask for s in val],
        test_images=[s.image for s in test],
        test_masks=[s.mask for s in test],
        regions=regions,
        majority=majority,
    )


# --------------------------------------------------------------------------------------------
# the simulated annotator


class Labels:
    """One method's labelled pool: masks (255 = unlabelled), and what the answers cost."""

    def __init__(self, data: Data, protocol: str) -> None:
        self.data = data
        self.protocol = protocol
        self.masks = [np.full_like(t, IGNORE) for t in data.pool_truth]
        self.done = [np.zeros(r.n_regions, bool) for r in data.regions]
        self.regions = 0
        self.clicks = 0

    def copy(self) -> Labels:
        other = Labels.__new__(Labels)
        other.data, other.protocol = self.data, self.protocol
        other.masks = [m.copy() for m in self.masks]
        other.done = [d.copy() for d in self.done]
        other.regions, other.clicks = self.regions, self.clicks
        return other

    def answer(self, image: int, region: int) -> None:
        """Label one region as the protocol says, and count its clicks."""
        from activeseg.uncertainty.annotation_cost import patch_clicks

        reg = self.data.regions[image]
        y0, x0, y1, x1 = (int(v) for v in reg.bboxes[region])
        inside = reg.labels[y0:y1, x0:x1] == region
        window = self.masks[image][y0:y1, x0:x1]
        if self.protocol == "dominant":
            window[inside] = self.data.majority[image][region]
            self.clicks += 1
        else:
            truth = self.data.pool_truth[image][y0:y1, x0:x1]
            window[inside] = truth[inside]
            self.clicks += patch_clicks(np.where(inside, truth, IGNORE).astype(np.uint8))
        self.done[image][region] = True
        self.regions += 1

    def pixels(self) -> int:
        return int(sum(int((m != IGNORE).sum()) for m in self.masks))

    def fraction(self) -> float:
        return self.pixels() / sum(m.size for m in self.masks)


def full_labels(data: Data, protocol: str) -> list[np.ndarray]:
    """Every pool region answered under ``protocol`` (the fully supervised reference)."""
    if protocol == "exact":
        return [t.copy() for t in data.pool_truth]
    return [
        maj[reg.labels].astype(np.uint8)
        for maj, reg in zip(data.majority, data.regions, strict=True)
    ]


# --------------------------------------------------------------------------------------------
# models


def model_config(data: Data, plan: Plan, dataset: str, seed: int, kind: str) -> Any:
    from activeseg.models.config import ModelConfig

    return ModelConfig(
        in_channels=1,
        n_classes=data.n_classes,
        method=kind,
        mc_samples=plan.mc_samples,
        ensemble_size=plan.ensemble_size,
        seed=seed,
        device="cpu",
        threads=1,
        **plan.model_for(dataset),
    )


def train_states(config: Any, data: Data, masks: list[np.ndarray]) -> list[Any]:
    from activeseg.models.training import train

    images = [im for im, m in zip(data.pool_images, masks, strict=True) if (m != IGNORE).any()]
    kept = [m for m in masks if (m != IGNORE).any()]
    return train(config, images, kept, data.val_images, data.val_masks).states


def predictor_for(config: Any, states: list[Any], data: Data) -> Any:
    """A predictor as the service serves it: temperature fitted on val."""
    from activeseg.models.checkpoint import build_members
    from activeseg.models.evaluation import fit_temperature_on
    from activeseg.models.inference import Predictor

    predictor = Predictor(build_members(config, states), config)
    predictor.temperature = float(fit_temperature_on(predictor, data.val_images, data.val_masks))
    return predictor


def test_miou(config: Any, state: Any, data: Data) -> float:
    """Test mIoU of one network (eval mode, no dropout), over all test pixels."""
    from activeseg.models.checkpoint import build_members
    from activeseg.models.evaluation import iou_from_confusion
    from activeseg.models.inference import Predictor

    single = config.model_copy(update={"method": "single"})
    predictor = Predictor(build_members(single, [state]), single)
    c = data.n_classes
    confusion = np.zeros((c, c), np.int64)
    for stack, mask in zip(predictor.predict(data.test_images), data.test_masks, strict=True):
        predicted = stack[0].argmax(axis=0)
        confusion += np.bincount(
            mask.ravel().astype(np.int64) * c + predicted.ravel(), minlength=c * c
        ).reshape(c, c)
    return float(iou_from_confusion(confusion)[1])


# --------------------------------------------------------------------------------------------
# selection


def select_next(
    method: Method, labels: Labels, predictor: Any | None, budget: int, plan: Plan, seed: int
) -> list[tuple[int, int]]:
    """The next batch as (pool image, region) pairs, in queue order: score every unlabelled
    region with the method's measure (mean over the region), then ``select_regions``."""
    from activeseg.uncertainty.measures import compute_measures
    from activeseg.uncertainty.pooling import pool_mean
    from activeseg.uncertainty.selection import select_regions

    data = labels.data
    scores: list[np.ndarray] = []
    owners: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    open_images = [i for i, d in enumerate(labels.done) if not d.all()]
    if predictor is None or method.measure is None:
        maps: Any = (None for _ in open_images)
    else:
        maps = (
            compute_measures(stack, [method.measure])[method.measure]
            for stack in predictor.predict(data.pool_images[i] for i in open_images)
        )
    for i, pixel_map in zip(open_images, maps, strict=True):
        reg = data.regions[i]
        value = (
            np.ones(reg.n_regions)
            if pixel_map is None
            else pool_mean(pixel_map, reg.labels, reg.n_regions)
        )
        value = np.where(labels.done[i], -np.inf, value)
        scores.append(value)
        owners.append(np.full(reg.n_regions, i))
        ids.append(np.arange(reg.n_regions))
    picked = select_regions(
        np.concatenate(scores),
        np.concatenate(owners),
        budget,
        strategy=method.strategy,  # type: ignore[arg-type]
        per_image_cap=plan.per_image_cap,
        seed=seed,
    )
    owner, region = np.concatenate(owners), np.concatenate(ids)
    return [(int(owner[p]), int(region[p])) for p in picked]


# --------------------------------------------------------------------------------------------
# one unit of work: (dataset, seed, protocol), every method


def run_unit(dataset: str, seed: int, protocol: str, plan: Plan) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    started = time.monotonic()
    dp = plan.datasets[dataset]
    data = make_data(dataset, seed, plan)
    rows: list[dict[str, Any]] = []

    t0 = time.monotonic()
    single = model_config(data, plan, dataset, seed, "single")
    full_state = train_states(single, data, full_labels(data, protocol))[0]
    full = {
        "dataset": dataset,
        "protocol": protocol,
        "seed": seed,
        "test_miou": test_miou(single, full_state, data),
        "seconds": time.monotonic() - t0,
    }
    log.info("%s/%s seed %s: full supervision %.3f", dataset, protocol, seed, full["test_miou"])

    # Round 1: one random batch for every method (paired start).
    boot = Labels(data, protocol)
    for image, region in select_next(
        METHODS["random"], boot, None, dp.budget, plan, seed=seed * 1000 + 1
    ):
        boot.answer(image, region)
    shared_single: list[Any] | None = None
    for name in plan.methods:
        method = METHODS[name]
        labels = boot.copy()
        config = model_config(data, plan, dataset, seed, method.model)
        for rnd in range(1, dp.rounds + 1):
            t0 = time.monotonic()
            last = rnd == dp.rounds
            if method.model == "ensemble" and not last:
                states = train_states(config, data, labels.masks)
            elif rnd == 1 and shared_single is not None:
                states = shared_single  # the bootstrap model is the same for every method
            else:
                states = train_states(single, data, labels.masks)[:1]
                if rnd == 1:
                    shared_single = states
            train_s = time.monotonic() - t0
            rows.append(
                {
                    "dataset": dataset,
                    "protocol": protocol,
                    "method": name,
                    "seed": seed,
                    "round": rnd,
                    "labelled_regions": labels.regions,
                    "labelled_pixels": labels.pixels(),
                    "labelled_fraction": labels.fraction(),
                    "clicks": labels.clicks,
                    "test_miou": test_miou(single, states[0], data),
                    "train_seconds": train_s,
                }
            )
            if last:
                break
            t0 = time.monotonic()
            predictor = None
            if method.measure is not None:
                predictor = predictor_for(config, states, data)
            for image, region in select_next(
                method, labels, predictor, dp.budget, plan, seed=seed * 1000 + rnd + 1
            ):
                labels.answer(image, region)
            rows[-1]["select_seconds"] = time.monotonic() - t0
        log.info(
            "%s/%s seed %s %s: %s",
            dataset,
            protocol,
            seed,
            name,
            " ".join(f"{r['test_miou']:.3f}" for r in rows if r["method"] == name),
        )
    return {"rows": rows, "full": full, "seconds": time.monotonic() - started}


def run_all(plan: Plan, jobs: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    units = [(d, s, p) for d in plan.datasets for s in plan.seeds for p in plan.protocols]
    # Longest first (digits), so the last unit to finish is a short one.
    units.sort(key=lambda u: -plan.datasets[u[0]].pool * plan.datasets[u[0]].rounds)
    rows: list[dict[str, Any]] = []
    full: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(run_unit, d, s, p, plan): (d, s, p) for d, s, p in units}
        for future in as_completed(futures):
            result = future.result()
            rows.extend(result["rows"])
            full.append(result["full"])
            log.info("unit %s done in %.0f s", futures[future], result["seconds"])
    key = ("dataset", "protocol", "method", "seed", "round")
    rows.sort(key=lambda r: tuple(str(r[k]) for k in key))
    full.sort(key=lambda r: (r["dataset"], r["protocol"], r["seed"]))
    return rows, full


# --------------------------------------------------------------------------------------------
# analysis


def paired_ci(diffs: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided t confidence interval (n - 1 df)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=np.float64)
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def crossing(xs: list[float], ys: list[float], target: float) -> float | None:
    """First x where the piecewise-linear curve (xs, ys) reaches ``target``; None if never."""
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= target:
            if i == 0:
                return x
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (x - x0) * (target - y0) / (y - y0)
    return None


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def aulc(curve: list[dict[str, Any]]) -> float:
    """Area under the learning curve: the mean test mIoU over the rounds (equal region
    budgets per round, so every round weighs the same)."""
    return float(np.mean([float(r["test_miou"]) for r in curve]))


def analyse(rows: list[dict[str, Any]], full: list[dict[str, Any]], plan: Plan) -> str:
    out: list[str] = []
    for dataset in plan.datasets:
        for protocol in plan.protocols:
            mine = [r for r in rows if r["dataset"] == dataset and r["protocol"] == protocol]
            if not mine:
                continue
            ref = {
                int(f["seed"]): float(f["test_miou"])
                for f in full
                if f["dataset"] == dataset and f["protocol"] == protocol
            }
            seeds = sorted(ref)
            full_mean = float(np.mean(list(ref.values())))
            out.append(
                f"#### {dataset}, {protocol} label answers\n\n"
                f"Full supervision (every pool region answered {protocol}): test mIoU "
                f"{full_mean:.3f} ± {np.std(list(ref.values())):.3f} over {len(seeds)} seeds; "
                f"95 % of it: {0.95 * full_mean:.3f}.\n"
            )
            out.append(
                "| method | test mIoU per round (mean over seeds) | labelled pixels at last "
                "round | clicks at last round | AULC | AULC − random [95 % CI] | pixels to 95 % "
                "of full (mean curve) | per seed reached | clicks to 95 % (mean curve) |\n"
                "|---|---|---:|---:|---:|---|---:|---|---:|"
            )
            curves: dict[str, dict[int, list[dict[str, Any]]]] = {}
            for name in plan.methods:
                for seed in seeds:
                    curve = sorted(
                        (r for r in mine if r["method"] == name and int(r["seed"]) == seed),
                        key=lambda r: int(r["round"]),
                    )
                    if curve:
                        curves.setdefault(name, {})[seed] = curve
            for name, per_seed in curves.items():
                rounds = sorted({int(r["round"]) for c in per_seed.values() for r in c})
                mean_miou = [
                    float(np.mean([float(c[i]["test_miou"]) for c in per_seed.values()]))
                    for i in range(len(rounds))
                ]
                mean_frac = [
                    float(np.mean([float(c[i]["labelled_fraction"]) for c in per_seed.values()]))
                    for i in range(len(rounds))
                ]
                mean_clicks = [
                    float(np.mean([float(c[i]["clicks"]) for c in per_seed.values()]))
                    for i in range(len(rounds))
                ]
                target = 0.95 * full_mean
                at = crossing(mean_frac, mean_miou, target)
                clicks_at = crossing(mean_clicks, mean_miou, target)
                reached = []
                for seed, c in per_seed.items():
                    x = crossing(
                        [float(r["labelled_fraction"]) for r in c],
                        [float(r["test_miou"]) for r in c],
                        0.95 * ref[seed],
                    )
                    if x is not None:
                        reached.append(x)
                if name == "random" or "random" not in curves:
                    gain = "–"
                else:
                    diffs = [
                        aulc(per_seed[s]) - aulc(curves["random"][s])
                        for s in per_seed
                        if s in curves["random"]
                    ]
                    m, lo, hi = paired_ci(diffs)
                    if math.isnan(lo):
                        gain = f"{m:+.3f} (one seed: no interval)"
                    else:
                        verdict = (
                            "**better**"
                            if lo > 0
                            else "**worse**"
                            if hi < 0
                            else "no difference shown"
                        )
                        gain = f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}] {verdict}"
                last = [c[-1] for c in per_seed.values()]
                out.append(
                    f"| {name} | {' / '.join(f'{v:.3f}' for v in mean_miou)} | "
                    f"{100 * np.mean([float(r['labelled_fraction']) for r in last]):.1f} % | "
                    f"{np.mean([float(r['clicks']) for r in last]):.0f} | "
                    f"{np.mean([aulc(c) for c in per_seed.values()]):.3f} | {gain} | "
                    + (
                        f"{100 * at:.1f} %"
                        if at is not None
                        else f"not reached (> {100 * mean_frac[-1]:.1f} %)"
                    )
                    + f" | {len(reached)}/{len(per_seed)}"
                    + (f", {100 * np.mean(reached):.1f} % mean" if reached else "")
                    + " | "
                    + (f"{clicks_at:.0f}" if clicks_at is not None else "not reached")
                    + " |"
                )
            out.append("")
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], full: list[dict[str, Any]], plan: Plan, path: Path) -> None:
    """Test mIoU against labelled pixels (top row) and against clicks (bottom row), one column
    per (dataset, protocol); mean ± std over seeds, full supervision and its 95 % dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(d, p) for d in plan.datasets for p in plan.protocols]
    fig, axes = plt.subplots(2, len(panels), figsize=(4.6 * len(panels), 7.6), squeeze=False)
    axis_of = {"labelled_fraction": "labelled pixels of the pool (%)", "clicks": "clicks"}
    for row, (key, label) in enumerate(axis_of.items()):
        scale = 100.0 if key == "labelled_fraction" else 1.0
        for ax, (dataset, protocol) in zip(axes[row], panels, strict=True):
            ref = [
                float(f["test_miou"])
                for f in full
                if f["dataset"] == dataset and f["protocol"] == protocol
            ]
            for name in plan.methods:
                mine = [
                    r
                    for r in rows
                    if r["dataset"] == dataset and r["protocol"] == protocol and r["method"] == name
                ]
                rounds = sorted({int(r["round"]) for r in mine})
                if not rounds:
                    continue
                at = [[r for r in mine if int(r["round"]) == k] for k in rounds]
                xs = [scale * np.mean([float(r[key]) for r in group]) for group in at]
                vals = [[float(r["test_miou"]) for r in group] for group in at]
                m = np.array([np.mean(v) for v in vals])
                sd = np.array([np.std(v) for v in vals])
                ax.plot(xs, m, marker="o", label=name)
                ax.fill_between(xs, m - sd, m + sd, alpha=0.15)
            if ref:
                ax.axhline(np.mean(ref), color="k", ls="--", lw=1, label="full supervision")
                ax.axhline(0.95 * np.mean(ref), color="k", ls=":", lw=1, label="95 % of full")
            ax.set_ylim(0, 1)  # a fixed axis: a flat curve must look flat
            ax.set_title(f"{dataset}, {protocol} answers")
            ax.set_xlabel(label)
            ax.set_ylabel("test mIoU")
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle("Learning curves (mean ± std over seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def read_outputs(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    def load(name: str) -> list[dict[str, Any]]:
        with (out / name).open() as f:
            return list(csv.DictReader(f))

    return load("curves.csv"), load("full.csv")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields: list[str] = []
    for r in rows:
        fields.extend(k for k in r if k not in fields)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 1 seed, dominant answers")
    parser.add_argument("--datasets", help="comma list, e.g. digits,nuclei")
    parser.add_argument("--seeds", help="comma list, e.g. 0,1,2,3,4")
    parser.add_argument("--protocols", help="comma list: dominant,exact")
    parser.add_argument("--methods", help="comma list: " + ",".join(METHODS))
    parser.add_argument("--budget", type=int, help="regions per round, for every dataset")
    parser.add_argument("--jobs", type=int, default=2, help="units run in parallel")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/out/label_efficiency")
    parser.add_argument("--no-docs", action="store_true", help="do not write docs/*.png")
    parser.add_argument(
        "--analyse-only", action="store_true", help="redo tables and plots from --out's files"
    )
    args = parser.parse_args()
    plan = quick_plan() if args.quick else full_plan()
    if args.datasets:
        plan.datasets = {d: full_plan().datasets[d] for d in args.datasets.split(",")}
    if args.seeds:
        plan.seeds = [int(s) for s in args.seeds.split(",")]
    if args.budget:
        plan.datasets = {
            name: replace(dp, budget=args.budget) for name, dp in plan.datasets.items()
        }
    if args.protocols:
        plan.protocols = args.protocols.split(",")
    if args.methods:
        plan.methods = args.methods.split(",")
        if "random" not in plan.methods:
            plan.methods.insert(0, "random")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load_before = os.getloadavg()
    if args.analyse_only:
        rows, full = read_outputs(out)
    else:
        rows, full = run_all(plan, args.jobs)
        write_csv(rows, out / "curves.csv")
        write_csv(full, out / "full.csv")
    wall = time.monotonic() - started
    load_after = os.getloadavg()
    tables = analyse(rows, full, plan)
    plot(rows, full, plan, out / "label_efficiency.png")
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {'--quick' if args.quick else 'full'} plan"
        f"{' (tables redone from saved files)' if args.analyse_only else ''}, wall "
        f"{wall / 60:.1f} min, {os.cpu_count()} CPUs ({platform.processor() or '?'}), --jobs "
        f"{args.jobs}, torch threads 1, load average before {load_before[0]:.1f}, after "
        f"{load_after[0]:.1f}.\n\nPlan: "
        + json.dumps({**asdict(plan), "datasets": {k: asdict(v) for k, v in plan.datasets.items()}})
        + "\n"
    )
    text = header + "\n" + tables + "\n"
    (out / "tables.md").write_text(text)
    print(text)
    if not args.no_docs:
        shutil.copy(out / "label_efficiency.png", ROOT / "docs" / "label_efficiency.png")
        print(f"wrote {ROOT / 'docs' / 'label_efficiency.png'}")


if __name__ == "__main__":
    main()
