from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.models.checkpoint import build_predictor, state_from_bytes, state_to_bytes
from activeseg.models.training import train
from tests.models.conftest import tiny_config


@pytest.mark.parametrize("method", ["mc_dropout", "ensemble"])
def test_reloaded_version_gives_bit_identical_probabilities(digit_data, method: str) -> None:
    images, masks = digit_data
    config = tiny_config(method=method, ensemble_size=2, mc_samples=3, steps=1)
    states = train(config, images, masks).states
    blobs = [state_to_bytes(state) for state in states]
    assert all(isinstance(blob, bytes) for blob in blobs)
    first = build_predictor(config, blobs, temperature=1.5)
    second = build_predictor(config, [bytes(blob) for blob in blobs], temperature=1.5)
    for a, b in zip(first.predict(images), second.predict(images), strict=True):
        np.testing.assert_array_equal(a, b)
    reloaded = state_from_bytes(blobs[0])
    assert reloaded.keys() == states[0].keys()
    assert all(torch.equal(reloaded[k], states[0][k]) for k in reloaded)


def test_weights_that_do_not_fit_the_config_are_refused_clearly(digit_data) -> None:
    images, masks = digit_data
    state = train(tiny_config(steps=1), images, masks).states[0]
    with pytest.raises(ValueError, match="do not fit the model config.*n_classes=5"):
        build_predictor(tiny_config(n_classes=5), [state_to_bytes(state)])
    with pytest.raises(ValueError, match="needs 1 member"):
        build_predictor(tiny_config(), [state_to_bytes(state)] * 2)


def test_weights_only_loading_refuses_pickled_objects() -> None:
    import io

    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2), "code": print}, buffer)
    with pytest.raises(Exception, match="(?i)weights.only|unsupported|global"):
        state_from_bytes(buffer.getvalue())
