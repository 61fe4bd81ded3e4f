"""Torch layer: UNet, ensembles and MC dropout, training, inference, evaluation, checkpoints.

Images in, probability stacks ``[S, C, H, W]`` out; weights travel as bytes. No files, no
database: the worker/core layer stores what this layer returns.
"""

from __future__ import annotations

import importlib
from typing import Any

# Names resolve on first use (PEP 562): importing a light submodule such as
# ``activeseg.models.preprocess`` (numpy only, used by the API to display images) must not
# import torch into the API process.
_HOME = {
    "build_members": "checkpoint",
    "build_predictor": "checkpoint",
    "state_from_bytes": "checkpoint",
    "state_to_bytes": "checkpoint",
    "EXAMPLE_CONFIG": "config",
    "ModelConfig": "config",
    "ModelConfigError": "config",
    "DeviceUnavailableError": "device",
    "resolve_device": "device",
    "evaluate": "evaluation",
    "fit_temperature_on": "evaluation",
    "Predictor": "inference",
    "TrainProgress": "training",
    "TrainResult": "training",
    "train": "training",
    "UNet": "unet",
    "enable_mc_dropout": "unet",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
