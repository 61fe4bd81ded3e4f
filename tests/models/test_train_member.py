"""One ensemble member trained on a tiny synthetic set: no session, no blob store."""

from __future__ import annotations

import numpy as np
import torch

from activeseg.models.training import TrainingData, train, train_member
from tests.models.conftest import tiny_config


def squares(n: int = 4, size: int = 16, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Bright squares (class 1) on a dark background (class 0), uint8 ``[size, size]``."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        top, left = rng.integers(0, size - 6, 2)
        mask = np.zeros((size, size), np.uint8)
        mask[top : top + 6, left : left + 6] = 1
        image = (mask * 180 + rng.integers(0, 40, (size, size))).astype(np.uint8)
        images.append(image)
        masks.append(mask)
    return images, masks


def test_train_member_is_deterministic_and_lowers_the_loss() -> None:
    images, masks = squares()
    config = tiny_config(n_classes=2, steps=40, eval_every=10, lr=1e-2, patch_size=16)
    device = torch.device("cpu")
    data = TrainingData.prepare(config, images, masks, device)
    first = train_member(config, data, member=0, device=device)
    second = train_member(config, data, member=0, device=device)

    for name, tensor in first.state.items():
        assert torch.equal(tensor, second.state[name]), name
    assert first.history == second.history
    curve = [entry["train_loss"] for entry in first.history]
    assert [entry["step"] for entry in first.history] == [10, 20, 30, 40]
    assert curve[-1] < 0.5 * curve[0]
    assert first.val_loss is None  # no validation data


def test_members_differ_by_seed_and_train_collects_them() -> None:
    images, masks = squares()
    config = tiny_config(n_classes=2, steps=6, eval_every=3, method="ensemble", ensemble_size=2)
    device = torch.device("cpu")
    data = TrainingData.prepare(config, images, masks, device, images[:2], masks[:2])
    members = [train_member(config, data, member=k, device=device) for k in range(2)]
    assert any(not torch.equal(members[0].state[k], members[1].state[k]) for k in members[0].state)
    result = train(config, images, masks, images[:2], masks[:2])
    for member, state in zip(members, result.states, strict=True):
        assert all(torch.equal(state[k], member.state[k]) for k in state)
    assert result.history == members[0].history + members[1].history
    assert result.best_val_loss == np.mean([m.val_loss for m in members])
