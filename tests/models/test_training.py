from __future__ import annotations

import numpy as np
import pytest
import torch

from activeseg.models.checkpoint import build_members
from activeseg.models.config import ModelConfig
from activeseg.models.evaluation import evaluate
from activeseg.models.inference import Predictor
from activeseg.models.training import (
    TrainProgress,
    augment_pair,
    class_weights_from_masks,
    segmentation_loss,
    train,
    validation_loss,
)
from activeseg.models.unet import UNet
from activeseg.uncertainty.labels import UNLABELLED
from tests.models.conftest import tiny_config

Data = tuple[list[np.ndarray], list[np.ndarray]]


def sparse_masks(masks: list[np.ndarray], fraction: float, seed: int = 0) -> list[np.ndarray]:
    """Keep a random ``fraction`` of the labels, the rest becomes 255."""
    rng = np.random.default_rng(seed)
    out = []
    for mask in masks:
        sparse = np.full_like(mask, UNLABELLED)
        keep = rng.random(mask.shape) < fraction
        sparse[keep] = mask[keep]
        out.append(sparse)
    return out


@pytest.mark.slow
def test_unet_overfits_four_digit_canvases(digit_data: Data) -> None:
    images, masks = digit_data
    # A small network so that 200 steps stay within seconds on two cores;
    # it reaches mIoU 0.95 (at 300 steps seeds 0-2 give 0.96-0.98; without class weights 1 in 2
    # seeds left the two or three smallest digits as background).
    config = ModelConfig(
        in_channels=1,
        n_classes=11,
        depth=3,
        base_channels=8,
        method="single",
        dropout=0.0,
        lr=1e-2,
        steps=200,
        batch_size=4,
        augment_flip=False,
        augment_rotate=False,
        augment_shift=False,
        augment_intensity=False,
        class_weights="val",
        device="cpu",
    )
    # The same fully labelled canvases serve as val: they only supply the class weights here.
    result = train(config, images, masks, images, masks)
    predictor = Predictor(build_members(config, result.states), config)
    report = evaluate(predictor, images, masks, n_classes=11)
    assert report["miou"] > 0.9, report["iou_per_class"]
    assert report["pixel_accuracy"] > 0.98


def test_default_config_trains(digit_data: Data) -> None:
    images, masks = digit_data
    config = ModelConfig(in_channels=1, n_classes=11, steps=20, eval_every=1, device="cpu")
    result = train(config, images, masks)
    losses = [entry["train_loss"] for entry in result.history]
    assert len(result.states) == 1
    # The output bias starts at the label prior, so the first loss is already far below
    # log(11) = 2.4; training must still lower it clearly.
    assert losses[0] < 1.0
    assert losses[-1] < 0.8 * losses[0]


def test_ignored_pixels_get_exactly_zero_gradient() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    target = torch.randint(0, 3, (2, 16, 16))
    labelled = torch.rand(2, 16, 16) < 0.05
    target[~labelled] = UNLABELLED
    weights = torch.tensor([0.5, 1.0, 2.0])
    for class_weights in (None, weights):
        logits.grad = None
        segmentation_loss(logits, target, class_weights).backward()
        grad = logits.grad
        assert grad is not None
        per_pixel = grad.abs().sum(dim=1)  # [B, H, W]
        assert torch.all(per_pixel[~labelled] == 0)
        assert torch.all(per_pixel[labelled] > 0)


def test_loss_ignores_whatever_the_network_says_at_unlabelled_pixels() -> None:
    torch.manual_seed(1)
    logits = torch.randn(1, 4, 8, 8)
    target = torch.full((1, 8, 8), UNLABELLED)
    target[0, 2, 3], target[0, 5, 5] = 1, 3
    changed = logits.clone()
    changed[..., target[0] == UNLABELLED] = torch.randn(4, 62) * 100
    assert torch.equal(segmentation_loss(logits, target), segmentation_loss(changed, target))


def test_training_with_five_percent_of_pixels_labelled(digit_data: Data) -> None:
    images, masks = digit_data
    sparse = sparse_masks(masks, 0.05)
    assert 0.03 < np.mean([(m != UNLABELLED).mean() for m in sparse]) < 0.07
    unlabelled = np.full_like(masks[0], UNLABELLED)
    config = tiny_config(steps=3, class_weights="val")
    result = train(config, [*images, images[0]], [*sparse, unlabelled], images[:1], masks[:1])
    assert all(np.isfinite(entry["train_loss"]) for entry in result.history)
    torch.manual_seed(config.seed)  # train() draws member 0's initial weights from this seed
    initial = UNet.from_config(config).state_dict()
    assert not torch.equal(initial["head.weight"], result.states[0]["head.weight"])


def test_all_unlabelled_is_refused(digit_data: Data) -> None:
    images, masks = digit_data
    with pytest.raises(ValueError, match="no labelled pixel"):
        train(tiny_config(), images, [np.full_like(m, UNLABELLED) for m in masks])
    with pytest.raises(ValueError, match="class ids \\[11\\]"):
        train(tiny_config(), images[:1], [np.full_like(masks[0], 11)])


def test_training_is_deterministic_for_a_seed(digit_data: Data) -> None:
    images, masks = digit_data
    config = tiny_config(steps=2, method="mc_dropout", dropout=0.2)
    first, second = train(config, images, masks), train(config, images, masks)
    for name, tensor in first.states[0].items():
        assert torch.equal(tensor, second.states[0][name]), name
    other = train(tiny_config(steps=2, method="mc_dropout", dropout=0.2, seed=1), images, masks)
    assert not torch.equal(first.states[0]["head.weight"], other.states[0]["head.weight"])


def test_ensemble_trains_k_different_members_and_reports_progress(digit_data: Data) -> None:
    images, masks = digit_data
    config = tiny_config(method="ensemble", ensemble_size=3, steps=2)
    reports: list[TrainProgress] = []
    result = train(config, images, masks, progress=reports.append, progress_interval_s=0.0)
    assert len(result.states) == 3
    heads = [state["head.weight"] for state in result.states]
    assert not torch.equal(heads[0], heads[1]) and not torch.equal(heads[1], heads[2])
    assert {r.member for r in reports} == {0, 1, 2}
    fractions = [r.fraction for r in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(0.0 <= f <= 1.0 for f in fractions)
    # one history entry per member at its last step (eval_every=100 > steps)
    assert [(h["member"], h["step"]) for h in result.history] == [(m, 2) for m in range(3)]


def test_early_stopping_stops_after_patience_checks(digit_data: Data) -> None:
    images, masks = digit_data
    # GroupNorm and lr ~ 0: the weights (and so the validation loss) never change, so the
    # first check is the best and training stops exactly `patience` checks later.
    config = tiny_config(
        steps=30, eval_every=1, patience=2, lr=1e-12, weight_decay=0.0, norm="group"
    )
    result = train(config, images[:2], masks[:2], images[2:], masks[2:])
    assert [h["step"] for h in result.history] == [1, 2, 3]
    assert result.best_val_loss == result.history[0]["val_loss"]


def test_early_stopping_returns_the_best_validation_weights(digit_data: Data) -> None:
    images, masks = digit_data
    config = tiny_config(steps=8, eval_every=1, patience=3, lr=0.05)
    result = train(config, images[:2], masks[:2], images[2:], masks[2:])
    val_losses = [h["val_loss"] for h in result.history if h["val_loss"] is not None]
    assert result.best_val_loss == pytest.approx(min(val_losses))
    model = build_members(config, result.states)[0]
    final = validation_loss(model, images[2:], masks[2:], config, torch.device("cpu"), None)
    assert final == pytest.approx(result.best_val_loss, rel=1e-5)


def test_warm_start_continues_from_given_weights(digit_data: Data) -> None:
    images, masks = digit_data
    config = tiny_config(init="warm", steps=1, lr=1e-12, weight_decay=0.0)
    start = train(tiny_config(steps=1), images, masks).states
    tuned = train(config, images, masks, init_states=start).states
    torch.testing.assert_close(tuned[0]["head.weight"], start[0]["head.weight"])
    with pytest.raises(ValueError, match="init_states has 2"):
        train(config, images, masks, init_states=start * 2)
    with pytest.raises(ValueError, match="init 'cold'"):
        train(tiny_config(steps=1), images, masks, init_states=start)


def test_class_weights_are_inverse_frequency() -> None:
    mask = np.array([[0, 0, 0, 1], [255, 255, 255, 255]], dtype=np.uint8)
    weights = class_weights_from_masks([mask], 3, power=1.0)
    np.testing.assert_allclose(weights, [4 / (2 * 3), 4 / (2 * 1), 1.0])
    np.testing.assert_allclose(class_weights_from_masks([mask], 3, power=0.5), np.sqrt(weights))


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    # The image encodes its own mask, so any geometric mismatch shows.
    mask = rng.integers(0, 5, size=(16, 16)).astype(np.uint8)
    image = (mask[None].astype(np.float32) + 1.0) / 10.0
    for _ in range(30):
        out_image, out_mask = augment_pair(image, mask, rng)
        labelled = out_mask != UNLABELLED
        # brightness jitter is affine: recover it from two labelled classes
        recovered = out_image[0][labelled]
        order = np.argsort(out_mask[labelled])
        assert np.all(np.diff(recovered[order]) >= -1e-6)
        assert out_image.shape == image.shape and out_mask.shape == mask.shape


def test_mixed_sizes_rgb_and_patches_larger_than_some_images() -> None:
    rng = np.random.default_rng(0)
    shapes = [(40, 50, 3), (70, 30, 3), (90, 90, 3)]
    images = [rng.integers(0, 256, size=s, dtype=np.uint8) for s in shapes]
    masks = [(img[..., 0] > 127).astype(np.uint8) for img in images]
    config = tiny_config(in_channels=3, n_classes=2, patch_size=64, steps=2, batch_size=3)
    result = train(config, images, masks, images[:1], masks[:1])
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    assert result.best_val_loss is not None
