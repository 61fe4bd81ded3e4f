"""The trainer converges on a small fixed digits set within a stated step budget (issue 13).

One torch thread, fixed seeds: the figure is deterministic on a given CPU. Measured while this
test was written (32 training canvases, 32 held-out ones, depth 2, base 8, lr 1e-2, batch 8,
400 steps, about 18 CPU-s): test mIoU 0.60 with seed 0 (the test), 0.40 with seed 1. At this
budget the seeds spread widely (when the digit identities "click" varies), so the bar, 0.33,
sits below both seeds and above every run of the old trainer measured on the same data:

- Dropout2d(0.2) put back after the bottleneck and every decoder block, the full-resolution one
  feeding the classifier included (the old network), same budget and lr: 0.21;
- fewer steps, as the old epoch-counted length gave (40 epochs x 4 batches = 160 steps on 32
  canvases): 150 steps 0.20, 250 steps 0.26.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from activeseg.datasets.digits import DIGITS_MODEL_DEFAULTS, digits
from activeseg.models.checkpoint import build_members
from activeseg.models.config import ModelConfig
from activeseg.models.evaluation import evaluate
from activeseg.models.inference import Predictor
from activeseg.models.training import train

BUDGET_STEPS = 400
MIOU_BAR = 0.33


@pytest.fixture
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.mark.usefixtures("one_thread")
def test_trainer_reaches_the_bar_within_the_step_budget() -> None:
    train_set = list(digits(32, seed=1))
    test_set = list(digits(32, seed=2))
    config = ModelConfig(
        in_channels=1,
        n_classes=11,
        depth=2,
        base_channels=8,
        method="single",
        dropout=0.1,
        steps=BUDGET_STEPS,
        lr=1e-2,
        batch_size=8,
        patch_size=64,
        device="cpu",
        threads=1,
        **DIGITS_MODEL_DEFAULTS,
    )
    result = train(config, [s.image for s in train_set], [s.mask for s in train_set])
    assert result.history[-1]["step"] == BUDGET_STEPS
    predictor = Predictor(build_members(config, result.states), config)
    report = evaluate(
        predictor, [s.image for s in test_set], [s.mask for s in test_set], 11, measures=[]
    )
    assert report["miou"] > MIOU_BAR, report["iou_per_class"]
    assert np.isfinite(result.history[-1]["train_loss"])
