"""The step-budget trainer (issue 13): init modes, augmentation switches, val class weights,
old stored settings, ensembles, and temperature fitted on what is served."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from activeseg.config_compat import upgrade_model_keys
from activeseg.core.project_config import ModelSettings, ProjectSettings
from activeseg.models.checkpoint import build_members
from activeseg.models.config import ModelConfig
from activeseg.models.evaluation import evaluate, fit_temperature_on
from activeseg.models.inference import Predictor
from activeseg.models.training import (
    Augmentation,
    augment_pair,
    class_weights_from_masks,
    loss_class_weights,
    lr_factor,
    shrink_perturb,
    train,
)
from activeseg.models.unet import UNet
from activeseg.uncertainty.calibration import fit_temperature_mixture
from activeseg.uncertainty.labels import UNLABELLED
from tests.models.conftest import tiny_config

Data = tuple[list[np.ndarray], list[np.ndarray]]


# --- schedule -----------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    factors = [lr_factor(step, 100, 10) for step in range(100)]
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    assert factors[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    assert lr_factor(100, 100, 10) == pytest.approx(0.0)
    assert lr_factor(0, 5, 0) == pytest.approx(1.0)


def test_training_length_is_the_step_budget_whatever_the_data_size(digit_data: Data) -> None:
    images, masks = digit_data
    for n_images in (1, 4):
        result = train(tiny_config(steps=7), images[:n_images], masks[:n_images])
        assert [h["step"] for h in result.history] == [7]


# --- dropout positions ---------------------------------------------------------------------


def _dropout_after(model: UNet) -> list[bool]:
    """Whether Dropout2d follows the bottleneck, then each decoder block (lowest first)."""
    return [isinstance(model.bottleneck_dropout, nn.Dropout2d)] + [
        isinstance(d, nn.Dropout2d) for d in model.decoder_dropouts
    ]


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_dropout_never_precedes_the_classifier(depth: int) -> None:
    for blocks in range(depth + 1):
        model = UNet(1, 3, depth=depth, base_channels=4, dropout=0.2, dropout_blocks=blocks)
        where = _dropout_after(model)
        assert where == [i < blocks for i in range(depth + 1)], (depth, blocks)
        assert where[-1] is False  # the full-resolution block feeding the 1x1 head
    with pytest.raises(ValueError, match="dropout_blocks"):
        UNet(1, 3, depth=2, dropout_blocks=3)
    with pytest.raises(ValueError, match="exceeds depth"):
        ModelConfig(in_channels=1, n_classes=3, depth=2, dropout_blocks=3)


def test_default_dropout_is_at_the_bottleneck_only_and_old_states_load() -> None:
    config = ModelConfig(in_channels=1, n_classes=3, depth=3, base_channels=4)
    assert _dropout_after(UNet.from_config(config)) == [True, False, False, False]
    # A network with dropout at more positions has the same parameters: states load strictly.
    wide = UNet(1, 3, depth=3, base_channels=4, dropout=0.2, dropout_blocks=3)
    build_members(config, [wide.state_dict()])


# --- init modes ----------------------------------------------------------------------------


def test_shrink_perturb_is_lambda_theta_plus_p_theta_fresh() -> None:
    torch.manual_seed(0)
    old, fresh = UNet(1, 3, depth=2, base_channels=4), UNet(1, 3, depth=2, base_channels=4)
    names = {name for name, _ in old.named_parameters()}
    out = shrink_perturb(old.state_dict(), fresh.state_dict(), names, 0.4, 0.1)
    for name, tensor in old.state_dict().items():
        if name in names:
            expected = 0.4 * tensor + 0.1 * fresh.state_dict()[name]
            torch.testing.assert_close(out[name], expected)
        else:  # BatchNorm running statistics and counters are kept
            assert torch.equal(out[name], tensor), name


@pytest.mark.parametrize("init", ["warm", "shrink_perturb"])
def test_train_starts_from_the_previous_weights_as_init_says(digit_data: Data, init: str) -> None:
    images, masks = digit_data
    previous = train(tiny_config(steps=3), images, masks).states
    # lr ~ 0: the weights after one step are the weights training started from.
    config = tiny_config(init=init, steps=1, lr=1e-12, weight_decay=0.0, shrink=0.5, perturb=0.2)
    started = train(config, images, masks, init_states=previous).states[0]
    torch.manual_seed(config.seed)  # train() draws member 0's fresh weights from this seed
    fresh = UNet.from_config(config).state_dict()
    parameters = {name for name, _ in UNet.from_config(config).named_parameters()}
    for name in parameters - {"head.bias"}:  # a fresh head bias is the label prior
        expected = previous[0][name]
        if init == "shrink_perturb":
            expected = 0.5 * expected + 0.2 * fresh[name]
        torch.testing.assert_close(started[name], expected, rtol=1e-5, atol=1e-6)


def test_ensemble_members_shrink_perturb_with_their_own_fresh_weights(digit_data: Data) -> None:
    images, masks = digit_data
    config = tiny_config(method="ensemble", ensemble_size=2, steps=2)
    previous = train(config, images, masks).states
    again = train(
        config.model_copy(update={"init": "shrink_perturb"}), images, masks, None, None, previous
    )
    assert len(again.states) == 2
    assert not torch.equal(again.states[0]["head.weight"], again.states[1]["head.weight"])


# --- augmentation --------------------------------------------------------------------------


def _coded_pair() -> tuple[np.ndarray, np.ndarray]:
    """A square image ``[1, 16, 16]`` whose values encode position, and its mask ``[16, 16]``."""
    mask = (np.arange(256).reshape(16, 16) % 200).astype(np.uint8)
    image = (np.arange(256, dtype=np.float32).reshape(1, 16, 16) + 1.0) / 256.0
    return image, mask


def _geometries(image: np.ndarray) -> list[np.ndarray]:
    out = []
    for turns in range(4):
        turned = np.rot90(image, turns, axes=(1, 2))
        out += [turned, turned[:, :, ::-1], turned[:, ::-1, :], turned[:, ::-1, ::-1]]
    return out


@pytest.mark.parametrize("switch", ["flip", "rotate", "shift", "intensity"])
def test_each_augmentation_switch_changes_only_its_aspect(switch: str) -> None:
    image, mask = _coded_pair()
    only = Augmentation(
        **{name: name == switch for name in ("flip", "rotate", "shift", "intensity")}
    )
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(40):
        out_image, out_mask = augment_pair(image, mask, rng, only)
        labelled = out_mask != UNLABELLED
        if switch == "intensity":
            assert np.array_equal(out_mask, mask)  # geometry untouched
            gain, offset = np.polyfit(image.ravel(), out_image.ravel(), 1)
            np.testing.assert_allclose(out_image, gain * image + offset, atol=1e-5)
            changed += not np.allclose(out_image, image)
            continue
        # Geometric switches: pixel values are only moved, never rescaled, and the mask
        # moves with the image (the image encodes each pixel's position).
        assert set(np.unique(out_image[0][labelled])) <= set(np.unique(image))
        position = np.round(out_image[0] * 256.0 - 1.0).astype(int)
        np.testing.assert_array_equal(out_mask[labelled], (position[labelled] % 200))
        flipped_or_turned = [g for g in _geometries(image) if np.array_equal(g, out_image)]
        if switch == "shift":
            assert not flipped_or_turned or np.array_equal(out_image, image)
        if switch == "flip":
            assert any(
                np.array_equal(out_image, image[:, ::a, ::b]) for a in (1, -1) for b in (1, -1)
            )
        if switch == "rotate":
            assert any(np.array_equal(out_image, np.rot90(image, t, axes=(1, 2))) for t in range(4))
        changed += not np.array_equal(out_image, image)
    assert changed > 10  # each switch does change something


def test_no_switch_no_change_and_digits_keep_shift_and_intensity_only() -> None:
    image, mask = _coded_pair()
    none = Augmentation(flip=False, rotate=False, shift=False, intensity=False)
    out_image, out_mask = augment_pair(image, mask, np.random.default_rng(0), none)
    assert np.array_equal(out_image, image) and np.array_equal(out_mask, mask)
    from activeseg.datasets.digits import digits

    defaults = digits(1).model_defaults
    assert defaults == {"augment_flip": False, "augment_rotate": False}
    config = ModelConfig(in_channels=1, n_classes=11, **defaults)
    assert Augmentation.from_config(config) == Augmentation(
        flip=False, rotate=False, shift=True, intensity=True
    )


def test_import_applies_dataset_defaults_unless_the_project_sets_them() -> None:
    from activeseg.datasets.digits import digits
    from activeseg.datasets.importer import with_dataset_defaults

    dataset = digits(1)
    plain = with_dataset_defaults(ProjectSettings(), dataset)
    assert (plain.model.augment_flip, plain.model.augment_rotate) == (False, False)
    assert plain.model.augment_shift and plain.model.augment_intensity
    chosen = ProjectSettings(model=ModelSettings(augment_flip=True, steps=10))
    kept = with_dataset_defaults(chosen, dataset)
    assert (kept.model.augment_flip, kept.model.augment_rotate, kept.model.steps) == (
        True,
        False,
        10,
    )


# --- class weights -------------------------------------------------------------------------


def test_val_class_weights_come_from_the_val_masks_only(
    digit_data: Data, caplog: pytest.LogCaptureFixture
) -> None:
    _, masks = digit_data
    config = tiny_config(class_weights="val", class_weight_power=0.5)
    weights = loss_class_weights(config, masks[2:])
    assert weights is not None
    np.testing.assert_allclose(weights, class_weights_from_masks(masks[2:], 11, 0.5))
    assert loss_class_weights(tiny_config(), masks[2:]) is None
    with caplog.at_level(logging.WARNING, logger="activeseg.models.training"):
        empty = [np.full_like(masks[0], UNLABELLED)]
        assert loss_class_weights(config, empty) is None
        assert loss_class_weights(config, None) is None
    assert "no labelled validation pixel" in caplog.text


def test_val_class_weights_do_not_depend_on_which_pixels_were_selected(
    digit_data: Data,
) -> None:
    images, masks = digit_data
    config = tiny_config(class_weights="val", steps=2)
    # Two opposite selections of training pixels train with the same val-derived weights
    # (loss_class_weights never sees the training masks).
    background_only = [np.where(m == 0, m, UNLABELLED).astype(np.uint8) for m in masks[:2]]
    digits_only = [np.where(m > 0, m, UNLABELLED).astype(np.uint8) for m in masks[:2]]
    for selection in (background_only, digits_only):
        result = train(config, images[:2], selection, images[2:], masks[2:])
        assert np.isfinite(result.history[-1]["train_loss"])
    assert loss_class_weights(config, masks[2:]) is not None


# --- old stored settings -------------------------------------------------------------------

OLD_VERSION_CONFIG = {
    "in_channels": 1,
    "n_classes": 11,
    "depth": 2,
    "base_channels": 4,
    "dropout": 0.1,
    "norm": "batch",
    "method": "mc_dropout",
    "ensemble_size": 5,
    "mc_samples": 3,
    "epochs": 40,
    "max_steps": None,
    "batch_size": 8,
    "patch_size": 128,
    "lr": 0.001,
    "weight_decay": 0.0001,
    "class_weighted": True,
    "class_weight_power": 0.5,
    "augment": False,
    "patience": 10,
    "seed": 0,
    "device": "auto",
    "threads": None,
}
"""A model version's config as stored before the step budget."""


def test_old_model_version_config_loads() -> None:
    config = ModelConfig.from_dict(OLD_VERSION_CONFIG)
    assert config.steps == ModelConfig(in_channels=1, n_classes=2).steps
    assert config.patience is None  # counted epochs: dropped with them
    assert config.class_weights == "val"
    assert not (config.augment_flip or config.augment_rotate)
    assert not (config.augment_shift or config.augment_intensity)
    capped = ModelConfig.from_dict({**OLD_VERSION_CONFIG, "max_steps": 77, "augment": True})
    assert capped.steps == 77 and capped.augment_flip and capped.augment_intensity
    assert ModelConfig.from_dict(config.model_dump()) == config


def test_old_project_model_settings_load_and_make_a_model_config() -> None:
    old = {key: OLD_VERSION_CONFIG[key] for key in ("method", "epochs", "patience", "augment")}
    settings = ProjectSettings.model_validate({"model": {**old, "warm_start": True}})
    assert settings.model.init == "warm"
    assert ProjectSettings.model_validate({"model": {"warm_start": False}}).model.init == "cold"
    assert ModelSettings().init == "cold" and ModelSettings().patience is None
    # what activeseg.core.services.models.model_config_for does with it
    config = ModelConfig(in_channels=1, n_classes=3, **settings.model.model_dump())
    assert config.init == "warm"
    assert upgrade_model_keys({"class_weighted": False}) == {"class_weights": "none"}
    assert upgrade_model_keys({"steps": 5, "max_steps": 9}) == {"steps": 5}


# --- ensembles and temperature -------------------------------------------------------------


def test_ensemble_of_five_trains_serves_and_fits_the_served_temperature(
    digit_data: Data,
) -> None:
    images, masks = digit_data
    config = tiny_config(method="ensemble", ensemble_size=5, steps=3, class_weights="val")
    result = train(config, images[:2], masks[:2], images[2:], masks[2:])
    assert len(result.states) == 5
    heads = [state["head.weight"] for state in result.states]
    assert all(not torch.equal(heads[0], other) for other in heads[1:])
    predictor = Predictor(build_members(config, result.states), config)
    temperature = fit_temperature_on(predictor, images[2:], masks[2:], max_pixels=10**6)
    # the same fit by hand on the per-member logits [P, S, C]
    tables, labels = [], []
    for logits, mask in zip(
        predictor.predict_logits(images[2:], reduce="none"), masks[2:], strict=True
    ):
        tables.append(logits[:, :, mask != UNLABELLED].transpose(2, 0, 1))
        labels.append(mask[mask != UNLABELLED].astype(np.int64))
    expected = fit_temperature_mixture(np.concatenate(tables), np.concatenate(labels))
    assert temperature == pytest.approx(expected, rel=1e-6)
    predictor.temperature = temperature
    report = evaluate(predictor, images[2:], masks[2:], n_classes=11)
    assert report["n_samples"] == 5 and report["temperature"] == temperature
