"""Torch layer: UNet, ensembles and MC dropout, training, inference, evaluation, checkpoints.

Images in, probability stacks ``[S, C, H, W]`` out; weights travel as bytes. No files, no
database: the worker/core layer stores what this layer returns.
"""

from activeseg.models.checkpoint import (
    build_members,
    build_predictor,
    state_from_bytes,
    state_to_bytes,
)
from activeseg.models.config import EXAMPLE_CONFIG, ModelConfig, ModelConfigError
from activeseg.models.device import DeviceUnavailableError, resolve_device
from activeseg.models.evaluation import evaluate, fit_temperature_on
from activeseg.models.inference import Predictor
from activeseg.models.training import TrainProgress, TrainResult, train
from activeseg.models.unet import UNet, enable_mc_dropout

__all__ = [
    "EXAMPLE_CONFIG",
    "DeviceUnavailableError",
    "ModelConfig",
    "ModelConfigError",
    "Predictor",
    "TrainProgress",
    "TrainResult",
    "UNet",
    "build_members",
    "build_predictor",
    "enable_mc_dropout",
    "evaluate",
    "fit_temperature_on",
    "resolve_device",
    "state_from_bytes",
    "state_to_bytes",
    "train",
]
