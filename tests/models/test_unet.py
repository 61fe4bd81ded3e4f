from __future__ import annotations

import pytest
import torch
from torch import nn

from activeseg.models.unet import UNet, enable_mc_dropout, has_dropout


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize(("height", "width"), [(37, 53), (64, 64), (5, 3)])
def test_any_input_size_returns_same_height_and_width(
    in_channels: int, height: int, width: int
) -> None:
    model = UNet(in_channels, 3, depth=3, base_channels=4).eval()
    logits = model(torch.rand(2, in_channels, height, width))
    assert logits.shape == (2, 3, height, width)


def test_eval_forward_on_an_odd_size_is_deterministic() -> None:
    model = UNet(1, 2, depth=2, base_channels=4).eval()
    x = torch.rand(1, 1, 37, 53)
    assert torch.equal(model(x), model(x))


def test_enable_mc_dropout_switches_only_dropout_layers_on() -> None:
    model = UNet(1, 2, depth=2, base_channels=4, dropout=0.2)
    enable_mc_dropout(model)
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout2d)]
    others = [m for m in model.modules() if not isinstance(m, nn.Dropout2d)]
    assert dropouts and all(m.training for m in dropouts)
    assert not any(m.training for m in others)  # BatchNorm keeps its running statistics
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    assert has_dropout(model) and not has_dropout(UNet(1, 2, depth=1, dropout=0.0))


def test_group_norm_variant_trains_in_eval_and_train_alike() -> None:
    model = UNet(3, 4, depth=2, base_channels=8, dropout=0.0, norm="group")
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    torch.testing.assert_close(train_out, eval_out)
