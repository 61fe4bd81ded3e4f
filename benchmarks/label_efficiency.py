"""Does active learning pay off? Label efficiency of the service's acquisition measures.

Usage::

    python benchmarks/label_efficiency.py --quick      # < 5 min: digits, 1 seed, superpixels
    python benchmarks/label_efficiency.py              # digits + nuclei, 3 seeds, both regions
        [--datasets digits,nuclei] [--seeds 0,1,2] [--regions superpixel,grid] [--jobs 2]
        [--out benchmarks/out/label_efficiency] [--no-docs] [--analyse-only]

For every (dataset, seed) it starts one real embedded service (``activeseg serve``: API, a
Celery worker, SQLite, blob folder; :func:`activeseg.client.simulate.embedded_service`) and runs
:func:`activeseg.client.simulate.simulate_seed` (the loop of ``activeseg simulate``: bootstrap
queue, a simulated annotator answers every region from the ground truth, retrain, re-score,
re-queue) once per acquisition method and region kind, each in its own project on the same
data split, with the same budget schedule (``budget`` regions per round, ``rounds`` rounds):

- ``random``: regions drawn at random (the baseline), single network;
- ``entropy``: softmax entropy, single network (one forward pass per image);
- ``margin``: softmax margin ``1 - (p1 - p2)``, single network;
- ``bald``: MC-dropout mutual information (BALD, T samples per image).

Selection is the service's default stochastic power sampling (``strategy=power``). Every
retrain warm-starts from the previous version, as the service does. The fully supervised
reference is trained directly with :mod:`activeseg.models` on every pool label of the same
split (same network, the best val-loss epoch of ``full_epochs``, temperature fitted on val) and
evaluated on the same test images.

Outputs under ``--out`` (gitignored): ``curves.csv`` (one row per simulated round),
``full.csv``, ``reports.jsonl`` (the stored report of each run's last model version),
``label_efficiency.png``, ``tables.md``; with docs on, ``docs/label_efficiency.png`` and the
report plots of the digits BALD run (``docs/error_detection_roc.png``, ``docs/reliability.png``).
Torch runs on one thread per process (``OMP_NUM_THREADS=1``): on a busy 2-core machine two
OpenMP threads per tiny model spin against each other.
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
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from activeseg.client.simulate import (  # noqa: E402
    CSV_FIELDS,
    SimulationConfig,
    embedded_service,
    simulate_seed,
)

log = logging.getLogger("label_efficiency")

METHODS: dict[str, dict[str, str]] = {
    "random": {"measure": "entropy", "strategy": "random", "method": "single"},
    "entropy": {"measure": "entropy", "strategy": "power", "method": "single"},
    "margin": {"measure": "margin", "strategy": "power", "method": "single"},
    "bald": {"measure": "mutual_information", "strategy": "power", "method": "mc_dropout"},
}
"""Acquisition method -> project settings. Softmax measures use one forward pass (a single
network); BALD needs the MC-dropout samples."""


@dataclass(frozen=True)
class DatasetPlan:
    count: int
    budget: int
    rounds: int
    region_size: int = 12
    model: dict[str, Any] = field(default_factory=dict)
    """Overrides of :attr:`Plan.model` for this dataset."""


DIGITS_MODEL = {"augment": False, "class_weighted": True}
"""Flips and rotations change a digit's class (6 / 9), so no augmentation; 86 % of the pixels
are background, so inverse-frequency class weights."""


@dataclass
class Plan:
    datasets: dict[str, DatasetPlan]
    seeds: list[int]
    regions: list[str]
    methods: list[str]
    model: dict[str, Any] = field(
        default_factory=lambda: {
            "depth": 3,
            "base_channels": 8,
            "dropout": 0.2,
            "mc_samples": 8,
            "epochs": 30,
            "patience": None,
            "batch_size": 8,
            "patch_size": 64,
            "lr": 3e-3,
        }
    )
    full_epochs: int = 40

    def model_for(self, dataset: str) -> dict[str, Any]:
        return {**self.model, **self.datasets[dataset].model}


def quick_plan() -> Plan:
    return Plan(
        datasets={"digits": DatasetPlan(count=60, budget=30, rounds=3, model=DIGITS_MODEL)},
        seeds=[0],
        regions=["superpixel"],
        methods=list(METHODS),
    )


def full_plan() -> Plan:
    return Plan(
        datasets={
            # 100 canvases of 64 x 64: 70 pool, 10 val, 20 test.
            "digits": DatasetPlan(count=100, budget=50, rounds=5, model=DIGITS_MODEL),
            # 16 tiles of 128 x 128 (all the stardist sample has): 11 pool, 2 val, 3 test.
            "nuclei": DatasetPlan(count=16, budget=30, rounds=5),
        },
        seeds=[0, 1, 2],
        regions=["superpixel", "grid"],
        methods=list(METHODS),
    )


# --------------------------------------------------------------------------------------------
# one (dataset, seed): simulations through the real service, and the fully supervised model


def _last_report(client: Any) -> tuple[dict[str, Any], int]:
    """The report of the newest model version of the newest project (the run just finished)."""
    projects = client.get("/projects", params={"limit": 500})["data"]
    pid = max(p["id"] for p in projects)
    models = client.get(f"/projects/{pid}/models")["data"]
    mv = max(models, key=lambda m: m["version"])
    for _ in range(600):
        r = client.request("GET", f"/models/{mv['id']}/report")
        if r.status_code == 200:
            return r.json(), mv["id"]
        time.sleep(0.5)
    raise TimeoutError(f"no report for model version {mv['id']}")


def full_supervision(dataset: str, seed: int, plan: Plan) -> dict[str, Any]:
    """Train on every pool label of the split simulate uses; test mIoU on its test images."""
    import torch

    from activeseg.core.services.importer import split_for
    from activeseg.datasets.registry import load_dataset
    from activeseg.models.checkpoint import build_members
    from activeseg.models.config import ModelConfig
    from activeseg.models.evaluation import evaluate, fit_temperature_on
    from activeseg.models.inference import Predictor
    from activeseg.models.training import train

    torch.set_num_threads(1)
    dp = plan.datasets[dataset]
    data = load_dataset(dataset, count=dp.count, seed=seed)
    samples = list(data)
    split = [
        split_for(i, len(samples), SimulationConfig.val_fraction, SimulationConfig.test_fraction)
        for i in range(len(samples))
    ]
    pick = {
        name: [s for s, sp in zip(samples, split, strict=True) if sp.value == name]
        for name in ("pool", "val", "test")
    }
    model = {**plan.model_for(dataset), "epochs": plan.full_epochs}
    config = ModelConfig(
        in_channels=data.in_channels,
        n_classes=len(data.classes),
        method="single",
        seed=seed,
        device="cpu",
        threads=1,
        **{k: v for k, v in model.items() if k != "mc_samples"},
    )
    started = time.monotonic()
    result = train(
        config,
        [s.image for s in pick["pool"]],
        [s.mask for s in pick["pool"]],
        [s.image for s in pick["val"]],
        [s.mask for s in pick["val"]],
    )
    predictor = Predictor(build_members(config, result.states), config)
    predictor.temperature = fit_temperature_on(
        predictor, [s.image for s in pick["val"]], [s.mask for s in pick["val"]]
    )
    test = evaluate(
        predictor,
        [s.image for s in pick["test"]],
        [s.mask for s in pick["test"]],
        len(data.classes),
    )
    return {
        "dataset": dataset,
        "seed": seed,
        "test_miou": test["miou"],
        "pool_images": len(pick["pool"]),
        "test_images": len(pick["test"]),
        "train_s": round(time.monotonic() - started, 1),
    }


def run_unit(dataset: str, seed: int, plan: Plan, workdir: str) -> dict[str, Any]:
    """All simulations of one (dataset, seed) against one embedded service, then the fully
    supervised reference. Runs in its own process."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {dataset}/{seed} %(message)s")
    dp = plan.datasets[dataset]
    rows: list[dict[str, Any]] = []
    reports: list[dict[str, Any]] = []
    started = time.monotonic()
    with embedded_service(Path(workdir) / f"{dataset}-{seed}") as client:
        for kind in plan.regions:
            for name in plan.methods:
                spec = METHODS[name]
                cfg = SimulationConfig(
                    dataset=dataset,
                    count=dp.count,
                    measure=spec["measure"],
                    strategy=spec["strategy"],
                    region_kind=kind,
                    region_size=dp.region_size,
                    rounds=dp.rounds,
                    budget=dp.budget,
                    seeds=[seed],
                    model={**plan.model_for(dataset), "method": spec["method"]},
                )
                t0 = time.monotonic()
                got = simulate_seed(client, cfg, seed)
                for row in got:
                    row["method"] = name
                    row["seconds"] = round(time.monotonic() - t0, 1)
                rows.extend(got)
                report, _ = _last_report(client)
                reports.append(
                    {"dataset": dataset, "seed": seed, "method": name, "region_kind": kind,
                     "report": report}
                )  # fmt: skip
                log.info("%s %s done in %.0f s", name, kind, time.monotonic() - t0)
    full = full_supervision(dataset, seed, plan)
    return {
        "rows": rows,
        "reports": reports,
        "full": full,
        "seconds": time.monotonic() - started,
    }


# --------------------------------------------------------------------------------------------
# analysis


def _f(x: float | None, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(values: list[float], digits: int = 3) -> str:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{np.mean(vals):.{digits}f} ± {np.std(vals):.{digits}f}"


def crossing(xs: list[float], ys: list[float], target: float) -> tuple[float | None, str]:
    """First labelled fraction where the curve reaches ``target`` (linear interpolation between
    rounds), and how: ``"interp"``, ``"first"`` (already at round 1: an upper bound) or
    ``"never"``."""
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if y >= target:
            if i == 0:
                return x, "first"
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (target - y0) * (x - x0) / (y - y0), "interp"
    return None, "never"


def analyse(
    rows: list[dict[str, Any]], full: list[dict[str, Any]], plan: Plan
) -> tuple[str, dict[str, Any]]:
    """Markdown tables and a summary dict."""
    out: list[str] = []
    summary: dict[str, Any] = {}
    full_by = {(f["dataset"], f["seed"]): f["test_miou"] for f in full}
    out.append("### Labelled fraction needed for 95 % of the fully supervised test mIoU\n")
    out.append(
        "| dataset | regions | method | full mIoU | 95 % target | fraction needed (mean curve)"
        " | per seed | mIoU at last round | labelled at last round |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|")
    for dataset in plan.datasets:
        fulls = [full_by[(dataset, s)] for s in plan.seeds if (dataset, s) in full_by]
        target = 0.95 * float(np.mean(fulls))
        for kind in plan.regions:
            for name in plan.methods:
                mine = [
                    r
                    for r in rows
                    if r["dataset"] == dataset and r["region_kind"] == kind and r["method"] == name
                ]
                if not mine:
                    continue
                rounds = sorted({int(r["round"]) for r in mine})
                xs = [
                    float(np.mean([r["labelled_fraction"] for r in mine if r["round"] == k]))
                    for k in rounds
                ]
                ys = [
                    float(np.mean([r["test_miou"] for r in mine if r["round"] == k]))
                    for k in rounds
                ]
                x, how = crossing(xs, ys, target)
                per_seed = []
                for seed in plan.seeds:
                    sr = sorted(
                        (r for r in mine if r["seed"] == seed), key=lambda r: int(r["round"])
                    )
                    if not sr or (dataset, seed) not in full_by:
                        continue
                    xs_s = [r["labelled_fraction"] for r in sr]
                    ys_s = [r["test_miou"] for r in sr]
                    per_seed.append(crossing(xs_s, ys_s, 0.95 * full_by[(dataset, seed)])[0])
                reached = [p for p in per_seed if p is not None]
                need = {
                    "interp": f"{100 * x:.1f} %" if x is not None else "",
                    "first": f"≤ {100 * x:.1f} %" if x is not None else "",
                    "never": f"not reached (> {100 * xs[-1]:.1f} %)",
                }[how]
                seeds_txt = f"{len(reached)}/{len(per_seed)} reached"
                if reached:
                    seeds_txt += f", {_pm([100 * p for p in reached], 1)} %"
                last = [r["test_miou"] for r in mine if r["round"] == rounds[-1]]
                out.append(
                    f"| {dataset} | {kind} | {name} | {_pm(fulls)} | {target:.3f} | {need} | "
                    f"{seeds_txt} | {_pm(last)} | {100 * xs[-1]:.1f} % |"
                )
                summary[f"{dataset}/{kind}/{name}"] = {"need": x, "how": how, "last": ys[-1]}
    out.append("\n### Test mIoU gap to random at each round (paired by seed: mean ± std)\n")
    for dataset, dp in plan.datasets.items():
        for kind in plan.regions:
            base = {
                (r["seed"], int(r["round"])): r
                for r in rows
                if r["dataset"] == dataset and r["region_kind"] == kind and r["method"] == "random"
            }
            if not base:
                continue
            rounds = sorted({k for _, k in base})
            head = " | ".join(
                f"r{k}: {k * dp.budget} reg. ("
                f"{100 * np.mean([v['labelled_fraction'] for (s, kk), v in base.items() if kk == k]):.1f} %)"  # noqa: E501
                for k in rounds
            )
            out.append(f"**{dataset}, {kind}** (random's labelled pixels in brackets)\n")
            out.append(f"| method | {head} |")
            out.append("|---|" + "---|" * len(rounds))
            rnd_line = [
                _pm([v["test_miou"] for (s, kk), v in base.items() if kk == k]) for k in rounds
            ]
            out.append("| random (mIoU) | " + " | ".join(rnd_line) + " |")
            for name in plan.methods:
                if name == "random":
                    continue
                cells = []
                for k in rounds:
                    diffs = [
                        r["test_miou"] - base[(r["seed"], k)]["test_miou"]
                        for r in rows
                        if r["dataset"] == dataset
                        and r["region_kind"] == kind
                        and r["method"] == name
                        and int(r["round"]) == k
                        and (r["seed"], k) in base
                    ]
                    cells.append(_pm(diffs).replace("0.", ".").replace("-.", "−."))
                out.append(f"| {name} − random | " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out), summary


def softmax_tables(reports: list[dict[str, Any]], plan: Plan) -> str:
    """Is softmax a good uncertainty? Figures from the stored reports of each run's last model."""
    out = ["### Error detection on val pixels (last model of each run; mean ± std over runs)\n"]
    measures = [
        "least_confidence",
        "margin",
        "entropy",
        "entropy_t",
        "entropy_one_pass",
        "predictive_entropy",
        "mutual_information",
        "variation_ratio",
    ]
    out.append("| dataset | models | n | " + " | ".join(measures) + " | ens. > softmax (CI) |")
    out.append("|---|---|---|" + "---|" * (len(measures) + 1))
    for dataset in plan.datasets:
        for group, methods in (("single (random/entropy/margin)", {"random", "entropy", "margin"}),
                               ("MC dropout (bald)", {"bald"})):  # fmt: skip
            reps = [
                r["report"]
                for r in reports
                if r["dataset"] == dataset and r["method"] in methods and r["report"]
            ]
            reps = [r for r in reps if r.get("error_detection")]
            if not reps:
                continue
            cells = []
            for m in measures:
                vals = [
                    row["auroc"]
                    for r in reps
                    for row in r["error_detection"]["rows"]
                    if row["measure"] == m and row["auroc"] is not None
                ]
                cells.append(_pm(vals))
            comps = [r["error_detection"]["comparison"] for r in reps]
            comps = [c for c in comps if c and c.get("ci_low") is not None]
            better = f"{sum(c['ci_low'] > 0 for c in comps)}/{len(comps)}" if comps else "–"
            out.append(
                f"| {dataset} | {group} | {len(reps)} | " + " | ".join(cells) + f" | {better} |"
            )
    out.append("\n### Calibration (val) and shift check (last model of each run; mean ± std)\n")
    out.append(
        "| dataset | models | ECE T=1 | ECE fitted T | NLL T=1 | NLL T | accuracy clean | "
        "max-prob clean | accuracy noise σ=30 | max-prob noise | "
        "max-prob on uniform-noise images | share > 0.9 on uniform noise | "
        "MI uniform noise / clean |"
    )
    out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for dataset in plan.datasets:
        for group, methods in (
            ("single", {"random", "entropy", "margin"}),
            ("MC dropout", {"bald"}),
        ):
            reps = [
                r["report"]
                for r in reports
                if r["dataset"] == dataset and r["method"] in methods and r["report"]
            ]
            reps = [r for r in reps if r.get("calibration") and r.get("shift")]
            if not reps:
                continue

            def get(path: str, reps: list[dict[str, Any]] = reps) -> list[float]:
                vals = []
                for r in reps:
                    node: Any = r
                    for part in path.split("."):
                        node = node.get(part) if isinstance(node, dict) else None
                    if isinstance(node, int | float):
                        vals.append(float(node))
                return vals

            c = "shift.conditions"
            out.append(
                f"| {dataset} | {group} | {_pm(get('calibration.before.ece'))} | "
                f"{_pm(get('calibration.after.ece'))} | {_pm(get('calibration.before.nll'))} | "
                f"{_pm(get('calibration.after.nll'))} | {_pm(get(c + '.clean.accuracy'))} | "
                f"{_pm(get(c + '.clean.mean_max_prob'))} | "
                f"{_pm(get(c + '.gaussian_noise.accuracy'))} | "
                f"{_pm(get(c + '.gaussian_noise.mean_max_prob'))} | "
                f"{_pm(get(c + '.uniform_noise.mean_max_prob'))} | "
                f"{_pm(get(c + '.uniform_noise.frac_confident'))} | "
                f"{_pm(get(c + '.uniform_noise.rise.mutual_information'), 2)} |"
            )
    return "\n".join(out)


def plot(rows: list[dict[str, Any]], full: list[dict[str, Any]], plan: Plan, path: Path) -> None:
    """One panel per (dataset, region kind): test mIoU vs labelled pixels, mean ± std."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = [(d, k) for d in plan.datasets for k in plan.regions]
    fig = Figure(figsize=(5.2 * len(plan.regions), 4.0 * len(plan.datasets)))
    FigureCanvasAgg(fig)
    colours = {"random": "#7f7f7f", "entropy": "#1f77b4", "margin": "#2ca02c", "bald": "#d62728"}
    for i, (dataset, kind) in enumerate(panels):
        ax = fig.add_subplot(len(plan.datasets), len(plan.regions), i + 1)
        fulls = [f["test_miou"] for f in full if f["dataset"] == dataset]
        if fulls:
            ax.axhline(np.mean(fulls), color="black", lw=1, label="full supervision")
            ax.axhline(0.95 * np.mean(fulls), color="black", lw=1, ls=":", label="95 % of full")
        for name in plan.methods:
            mine = [
                r
                for r in rows
                if r["dataset"] == dataset and r["region_kind"] == kind and r["method"] == name
            ]
            rounds = sorted({int(r["round"]) for r in mine})
            if not rounds:
                continue
            xs = [
                100 * np.mean([r["labelled_fraction"] for r in mine if r["round"] == k])
                for k in rounds
            ]  # noqa: E501
            ms = np.array(
                [np.mean([r["test_miou"] for r in mine if r["round"] == k]) for k in rounds]
            )  # noqa: E501
            sd = np.array(
                [np.std([r["test_miou"] for r in mine if r["round"] == k]) for k in rounds]
            )  # noqa: E501
            ax.plot(xs, ms, marker="o", color=colours.get(name), label=name)
            ax.fill_between(xs, ms - sd, ms + sd, color=colours.get(name), alpha=0.15)
        ax.set_title(f"{dataset}, {kind} regions", fontsize=10)
        ax.set_xlabel("labelled pixels of the pool (%)")
        ax.set_ylabel("test mIoU")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Label efficiency (mean ± std over {len(plan.seeds)} seed(s))", fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# --------------------------------------------------------------------------------------------


def run_all(
    plan: Plan, jobs: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (dataset, seed) unit, ``jobs`` at a time, each in its own process and service."""
    units = [(d, s) for d in plan.datasets for s in plan.seeds]
    workdir = tempfile.mkdtemp(prefix="activeseg-labeleff-")
    results = []
    try:
        with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
            futures = [pool.submit(run_unit, d, s, plan, workdir) for d, s in units]
            for (d, s), fut in zip(units, futures, strict=True):
                res = fut.result()
                log.info("unit %s/%s finished in %.0f s", d, s, res["seconds"])
                results.append(res)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = [r for res in results for r in res["rows"]]
    full = [res["full"] for res in results]
    reports = [r for res in results for r in res["reports"]]
    return rows, full, reports


def read_outputs(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict]]:
    """Rows, fully supervised results and reports of an earlier run (``--analyse-only``)."""

    def typed(row: dict[str, str]) -> dict[str, Any]:
        conv: dict[str, Any] = {}
        for key, value in row.items():
            if key in ("seed", "round", "labelled_regions", "labelled_pixels", "model_version"):
                conv[key] = int(value)
            elif key in ("labelled_fraction", "test_miou", "val_miou", "seconds"):
                conv[key] = float(value) if value not in ("", None) else math.nan
            else:
                conv[key] = value
        return conv

    with (out / "curves.csv").open() as f:
        rows = [typed(r) for r in csv.DictReader(f)]
    with (out / "full.csv").open() as f:
        full = [typed(r) for r in csv.DictReader(f)]
    with (out / "reports.jsonl").open() as f:
        reports = [json.loads(line) for line in f if line.strip()]
    return rows, full, reports


def docs_plots(reports: list[dict[str, Any]], seed: int) -> dict[str, bytes]:
    """Report plots of the digits BALD superpixel run's last model version (a real trained
    model's stored report, drawn by :func:`activeseg.reports.plots.report_plots`)."""
    from activeseg.reports.plots import report_plots

    for r in reports:
        if (r["dataset"], r["method"], r["region_kind"], r["seed"]) == (
            "digits",
            "bald",
            "superpixel",
            seed,
        ):
            plots = report_plots(r["report"])
            return {k: v for k, v in plots.items() if k != "learning_curve"}
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="digits, 1 seed, superpixels")
    parser.add_argument("--datasets", help="comma list, e.g. digits,nuclei")
    parser.add_argument("--seeds", help="comma list, e.g. 0,1,2")
    parser.add_argument("--regions", help="comma list: superpixel,grid")
    parser.add_argument("--rounds", type=int, help="override the rounds of every dataset")
    parser.add_argument("--jobs", type=int, default=2, help="(dataset, seed) units in parallel")
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
    if args.regions:
        plan.regions = args.regions.split(",")
    if args.rounds:
        plan.datasets = {
            d: DatasetPlan(p.count, p.budget, args.rounds, p.region_size, p.model)
            for d, p in plan.datasets.items()
        }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if args.analyse_only:
        rows, full, reports = read_outputs(out)
    else:
        rows, full, reports = run_all(plan, args.jobs)
        fields = [*CSV_FIELDS, "method", "seconds"]
        with (out / "curves.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        with (out / "full.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(full[0]))
            writer.writeheader()
            writer.writerows(full)
        with (out / "reports.jsonl").open("w") as f:
            for r in reports:
                f.write(json.dumps(r) + "\n")
    wall = time.monotonic() - started
    tables, _summary = analyse(rows, full, plan)
    soft = softmax_tables(reports, plan)
    plot(rows, full, plan, out / "label_efficiency.png")
    header = (
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {'--quick' if args.quick else 'full'}"
        f" plan, {'(tables redone from saved files) ' if args.analyse_only else ''}"
        f"wall {wall / 60:.1f} min, {os.cpu_count()} CPUs ({platform.processor() or '?'}),"
        f" --jobs {args.jobs}, torch threads 1.\n\nPlan: "
        + json.dumps({**asdict(plan), "datasets": {k: asdict(v) for k, v in plan.datasets.items()}})
        + "\n\nFull supervision: "
        + ", ".join(f"{f['dataset']}/{f['seed']}: {_f(f['test_miou'])}" for f in full)
        + "\n"
    )
    text = header + "\n" + tables + "\n" + soft + "\n"
    (out / "tables.md").write_text(text)
    print(text)
    if not args.no_docs:
        docs = ROOT / "docs"
        shutil.copy(out / "label_efficiency.png", docs / "label_efficiency.png")
        for name, data in docs_plots(reports, plan.seeds[0]).items():
            (docs / f"{name}.png").write_bytes(data)
        print(f"wrote plots to {docs}")


if __name__ == "__main__":
    main()
