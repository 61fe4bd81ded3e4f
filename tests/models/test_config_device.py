from __future__ import annotations

import pytest
import torch

from activeseg.models.config import ModelConfig, ModelConfigError
from activeseg.models.device import DeviceUnavailableError, resolve_device


def test_defaults_and_sample_counts() -> None:
    config = ModelConfig(in_channels=3, n_classes=4)
    assert (config.depth, config.base_channels, config.method) == (4, 16, "mc_dropout")
    assert config.n_samples == 10 and config.n_members == 1
    ensemble = ModelConfig(in_channels=1, n_classes=2, method="ensemble", ensemble_size=3)
    assert ensemble.n_samples == 3 and ensemble.n_members == 3
    assert ModelConfig(in_channels=1, n_classes=2, method="single").n_samples == 1


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"in_channels": 2, "n_classes": 3}, "in_channels"),
        ({"in_channels": 1, "n_classes": 1}, "n_classes"),
        ({"in_channels": 1}, "n_classes: required field is missing"),
        ({"in_channels": 1, "n_classes": 3, "dropout": 0.0}, "needs dropout > 0"),
        ({"in_channels": 1, "n_classes": 3, "method": "ensemble", "ensemble_size": 1}, ">= 2"),
        ({"in_channels": 1, "n_classes": 3, "device": "tpu"}, "device"),
        ({"in_channels": 1, "n_classes": 3, "epoch": 3}, "epoch"),
    ],
)
def test_errors_say_what_is_wrong_and_show_an_example(fields: dict, fragment: str) -> None:
    with pytest.raises(ModelConfigError) as info:
        ModelConfig.from_dict(fields)
    message = str(info.value)
    assert fragment in message
    assert 'a correct example: {"in_channels": 1, "n_classes": 3' in message
    assert isinstance(info.value, ValueError)


def test_config_round_trips_through_json() -> None:
    config = ModelConfig(in_channels=1, n_classes=5, method="ensemble", ensemble_size=2)
    assert ModelConfig.from_dict(config.model_dump()) == config
    assert ModelConfig.model_validate_json(config.model_dump_json()) == config


def test_auto_follows_cuda_and_cuda_without_it_is_refused_clearly() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():  # a GPU machine: auto and cuda both pick it
        assert resolve_device("auto").type == "cuda"
        assert resolve_device("cuda").type == "cuda"
        return
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="device 'cuda'.*use device 'auto'"):
        resolve_device("cuda")
