"""How far does the step-budget trainer get on digits, and at what CPU cost (issue 13)?

Two measurements, one torch thread, fully labelled 64x64 ``digits`` canvases (train and test
come from different dataset seeds, so no canvas is shared):

1. sizes: test mIoU and CPU-seconds per model for a few (depth, base_channels, steps);
2. init: a two-stage scenario, as an active-learning loop retrains: train on a subset, then on
   more labels with the same step budget, starting cold, warm or shrink-perturbed (Ash and
   Adams 2020); paired over seeds (same data and stage-1 model per seed), with a paired 95% CI
   of each mode's test mIoU minus cold's.

Models are ``method="single"`` with the default dropout (after the bottleneck only): training
is then exactly what an MC-dropout model gets, and evaluation needs one forward pass.

    .venv/bin/python benchmarks/trainer_convergence.py            # about 15 CPU-minutes
    .venv/bin/python benchmarks/trainer_convergence.py --quick    # about 2 CPU-minutes
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import numpy as np
import torch
from scipy import stats

from activeseg.datasets.digits import digits
from activeseg.models import ModelConfig, Predictor, build_members, evaluate, train

LR = 1e-3
TRAIN_SEED = 101
TEST_SEED = 202

# (depth, base_channels, steps)
FULL_SIZES = [
    (2, 8, 500),
    (3, 8, 500),
    (3, 8, 1000),
    (3, 16, 500),
    (3, 16, 1000),
    (4, 16, 1000),
    (4, 16, 1500),
]
QUICK_SIZES = [(2, 8, 300), (3, 8, 300)]


def digits_arrays(count: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``count`` canvases: uint8 images ``[64, 64]`` and masks ``[64, 64]`` (ids 0-10)."""
    samples = list(digits(count, seed=seed))
    return [s.image for s in samples], [s.mask for s in samples]


def config_for(depth: int, base: int, steps: int, seed: int = 0, **extra: Any) -> ModelConfig:
    return ModelConfig(
        in_channels=1,
        n_classes=11,
        depth=depth,
        base_channels=base,
        steps=steps,
        method="single",
        dropout=0.1,
        # digits: flips and rotations change a digit's class; shift and intensity stay on
        augment_flip=False,
        augment_rotate=False,
        device="cpu",
        threads=1,
        seed=seed,
        lr=LR,
        **extra,
    )


def test_miou(
    config: ModelConfig, states: list[dict[str, torch.Tensor]], test: tuple[list, list]
) -> float:
    predictor = Predictor(build_members(config, states), config)
    return float(evaluate(predictor, test[0], test[1], 11, measures=[])["miou"])


def timed_train(config: ModelConfig, data: tuple[list, list], **kwargs: Any) -> tuple[Any, float]:
    start = time.process_time()
    result = train(config, data[0], data[1], **kwargs)
    return result, time.process_time() - start


def paired_ci(diffs: list[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its two-sided 95% t interval."""
    d = np.asarray(diffs)
    mean = float(d.mean())
    if d.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size))
    return mean, mean - half, mean + half


def run_sizes(
    sizes: list[tuple[int, int, int]], train_data: tuple, test: tuple, seed: int = 0
) -> list[dict]:
    rows = []
    for depth, base, steps in sizes:
        config = config_for(depth, base, steps, seed=seed)
        result, seconds = timed_train(config, train_data)
        row = {
            "depth": depth,
            "base_channels": base,
            "steps": steps,
            "test_miou": round(test_miou(config, result.states, test), 3),
            "cpu_s": round(seconds, 1),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def run_init(
    size: tuple[int, int, int], seeds: int, first: int, train_data: tuple, test: tuple
) -> list[dict]:
    depth, base, steps = size
    rows = []
    for seed in range(seeds):
        # Each seed: its own stage-1 subset (a random draw of `first` canvases) and model.
        order = np.random.default_rng(seed).permutation(len(train_data[0]))
        subset = (
            [train_data[0][i] for i in order[:first]],
            [train_data[1][i] for i in order[:first]],
        )
        stage1 = train(config_for(depth, base, steps, seed=seed), *subset)
        row: dict[str, Any] = {"seed": seed}
        for init in ("cold", "warm", "shrink_perturb"):
            config = config_for(depth, base, steps, seed=seed + 1000, init=init)
            result, seconds = timed_train(
                config, train_data, init_states=None if init == "cold" else stage1.states
            )
            row[init] = round(test_miou(config, result.states, test), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="two sizes, 3 short seeds")
    parser.add_argument("--train", type=int, default=280, help="fully labelled pool canvases")
    parser.add_argument("--test", type=int, default=200, help="test canvases")
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds for the init study")
    parser.add_argument("--first", type=int, default=70, help="stage-1 canvases (init study)")
    parser.add_argument(
        "--init-size", default="3,8,500", help="depth,base_channels,steps for the init study"
    )
    parser.add_argument(
        "--sizes", default=None, help="override the sizes: 'depth,base,steps;depth,base,steps'"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--model-seed", type=int, default=0, help="seed of the sizes models")
    parser.add_argument("--skip-sizes", action="store_true")
    parser.add_argument("--skip-init", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    train_data = digits_arrays(args.train, TRAIN_SEED)
    test = digits_arrays(args.test, TEST_SEED)
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    if args.sizes:
        sizes = [tuple(int(v) for v in item.split(",")) for item in args.sizes.split(";")]  # type: ignore[misc]
    global LR
    LR = args.lr
    init_size = (2, 8, 300) if args.quick else tuple(int(v) for v in args.init_size.split(","))
    assert len(init_size) == 3

    if not args.skip_sizes:
        print(
            f"## sizes: {args.train} train / {args.test} test canvases, lr {LR}, "
            f"model seed {args.model_seed}, one thread"
        )
        rows = run_sizes(sizes, train_data, test, args.model_seed)
        print("| depth | base_channels | steps | test mIoU | CPU-s per model |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['depth']} | {r['base_channels']} | {r['steps']} | {r['test_miou']:.3f} "
                f"| {r['cpu_s']:.1f} |"
            )
    if not args.skip_init:
        print(
            f"## init: stage 1 on {args.first}, stage 2 on {args.train} canvases, "
            f"(depth, base, steps) = {init_size}, {args.seeds} seeds"
        )
        rows = run_init(init_size, args.seeds, args.first, train_data, test)  # type: ignore[arg-type]
        print("| init | mean test mIoU | minus cold: mean [95% CI] |")
        print("|---|---|---|")
        for init in ("cold", "warm", "shrink_perturb"):
            values = [r[init] for r in rows]
            mean, lo, hi = paired_ci([r[init] - r["cold"] for r in rows])
            diff = "-" if init == "cold" else f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
            print(f"| {init} | {np.mean(values):.3f} | {diff} |")


if __name__ == "__main__":
    main()
