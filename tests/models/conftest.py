"""Shared fixtures for the model tests: two CPU threads, tiny digit data, tiny configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.datasets.digits import digits
from activeseg.models.config import ModelConfig

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def digit_data() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Four 64x64 digit canvases (uint8 [64, 64]) and their masks (ids 0-10)."""
    samples = list(digits(4, seed=1))
    return [s.image for s in samples], [s.mask for s in samples]


def tiny_config(**overrides: object) -> ModelConfig:
    """A small, fast network on 11 digit classes; overrides replace any field."""
    fields: dict[str, object] = {
        "in_channels": 1,
        "n_classes": 11,
        "depth": 2,
        "base_channels": 4,
        "method": "single",
        "batch_size": 4,
        "steps": 2,
        "device": "cpu",
    }
    fields.update(overrides)
    return ModelConfig(**fields)
