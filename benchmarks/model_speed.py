"""Speed of the default network: training and inference images/s, and what ensembles and MC
dropout cost relative to one forward pass.

    python benchmarks/model_speed.py [--quick]

Two CPU threads (``torch.set_num_threads(2)``), digit canvases of 64x64 and 256x256, the
default ``ModelConfig`` (UNet depth 4, 16 base channels, BatchNorm). Training goes through
``train()`` (patch sampling and augmentation included); inference through ``Predictor`` with
batch 8. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import numpy as np
import torch

from activeseg.datasets.digits import digits
from activeseg.models.config import ModelConfig
from activeseg.models.inference import Predictor
from activeseg.models.training import train
from activeseg.models.unet import UNet

THREADS = 2
BATCH = 8


def fastest(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Fastest wall time in seconds of each run over ``repeats`` interleaved rounds.

    One untimed warm-up call each first (oneDNN builds its kernels per shape). Interleaving and
    taking the minimum keep the ratios honest on a machine shared with other jobs: a burst of
    someone else's work slows one round, not one method.
    """
    for run in runs.values():
        run()
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def consume(predictor: Predictor, images: list[np.ndarray]) -> None:
    for _ in predictor.predict(images, BATCH):
        pass


def bench_size(size: int, n_images: int, train_steps: int, repeats: int) -> dict[str, float]:
    samples = list(digits(n_images, seed=0, size=size))
    images = [s.image for s in samples]
    masks = [s.mask for s in samples]
    base = {"in_channels": 1, "n_classes": 11, "device": "cpu", "patch_size": size}

    train_config = ModelConfig(**base, method="single", steps=train_steps, batch_size=BATCH)
    train_s = fastest({"train": lambda: train(train_config, images, masks)}, repeats)["train"]

    torch.manual_seed(0)
    nets = [UNet.from_config(ModelConfig(**base)) for _ in range(5)]
    mc_config = ModelConfig(**base, method="mc_dropout", mc_samples=10)
    predictors = {
        "single": Predictor(nets[:1], ModelConfig(**base, method="single")),
        "ensemble": Predictor(nets, ModelConfig(**base, method="ensemble", ensemble_size=5)),
        "mc_batched": Predictor(nets[:1], mc_config, mc_batched=True),
        "mc_separate": Predictor(nets[:1], mc_config, mc_batched=False),
    }
    seconds = fastest(
        {name: partial(consume, predictor, images) for name, predictor in predictors.items()},
        repeats,
    )
    single_s = seconds["single"]
    return {
        "train_images_per_s": train_steps * BATCH / train_s,
        "infer_images_per_s": n_images / single_s,
        "ensemble_ratio": seconds["ensemble"] / single_s,
        "mc_batched_ratio": seconds["mc_batched"] / single_s,
        "mc_separate_ratio": seconds["mc_separate"] / single_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repeats")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    plans = [(64, 16, 4, 2), (256, 8, 2, 2)] if args.quick else [(64, 64, 20, 3), (256, 16, 6, 3)]
    started = time.perf_counter()
    rows = []
    for size, n_images, steps, repeats in plans:
        r = bench_size(size, n_images, steps, repeats)
        rows.append(
            f"| {size}x{size} | {r['train_images_per_s']:.1f} | {r['infer_images_per_s']:.1f} "
            f"| {r['ensemble_ratio']:.2f} (ideal 5, {r['ensemble_ratio'] / 5:.0%}) "
            f"| {r['mc_batched_ratio']:.2f} (ideal 10, {r['mc_batched_ratio'] / 10:.0%}) "
            f"| {r['mc_separate_ratio']:.2f} (ideal 10, {r['mc_separate_ratio'] / 10:.0%}) |"
        )
    print(
        f"Model speed, {date.today().isoformat()}, torch {torch.__version__}, "
        f"{THREADS} threads, {platform.machine()}, {'quick' if args.quick else 'full'} run, "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    print(
        "| image | train img/s (batch 8) | inference img/s (S=1) | ensemble K=5 / single "
        "| MC T=10 batched / single | MC T=10 separate / single |"
    )
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
