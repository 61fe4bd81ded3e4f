from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch import nn

from activeseg.models.checkpoint import build_members
from activeseg.models.inference import Predictor, consecutive_batches
from activeseg.models.unet import UNet
from tests.models.conftest import tiny_config


def random_images(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=shape, dtype=np.uint8) for shape in shapes]


def members(config, seed: int = 0) -> list[UNet]:
    torch.manual_seed(seed)
    return [UNet.from_config(config) for _ in range(config.n_members)]


def test_stack_shapes_for_each_method_and_any_size() -> None:
    images = random_images([(37, 53), (37, 53), (20, 20), (37, 53)])
    for method, samples in (("single", 1), ("ensemble", 3), ("mc_dropout", 4)):
        config = tiny_config(method=method, ensemble_size=3, mc_samples=4, dropout=0.2)
        stacks = list(Predictor(members(config), config).predict(images, batch_size=2))
        assert [s.shape for s in stacks] == [(samples, 11, *img.shape) for img in images]
        for stack in stacks:
            assert stack.dtype == np.float32
            np.testing.assert_allclose(stack.sum(axis=1), 1.0, atol=1e-5)


def test_batching_does_not_change_eval_predictions() -> None:
    config = tiny_config(method="ensemble", ensemble_size=2)
    predictor = Predictor(members(config), config)
    images = random_images([(32, 32)] * 3 + [(16, 24)] * 2)
    one_by_one = list(predictor.predict(images, batch_size=1))
    batched = list(predictor.predict(iter(images), batch_size=8))
    for a, b in zip(one_by_one, batched, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_consecutive_batches_keep_order_and_group_equal_sizes() -> None:
    images = random_images([(4, 4), (4, 4), (4, 4), (5, 4), (4, 4)])
    batches = list(consecutive_batches(iter(images), batch_size=2))
    assert [len(b) for b in batches] == [2, 1, 1, 1]
    assert all(x is y for x, y in zip([i for b in batches for i in b], images, strict=True))


def test_mc_dropout_samples_differ_but_are_reproducible_and_eval_is_deterministic() -> None:
    # Dropout at both low-resolution positions (the default, the bottleneck alone, moves an
    # untrained tiny network's output by ~1e-7 only: too little for allclose to see).
    config = tiny_config(method="mc_dropout", mc_samples=5, dropout=0.3, dropout_blocks=2)
    nets = members(config)
    images = random_images([(24, 24), (24, 24)])
    stack = next(Predictor(nets, config).predict(images))
    assert not np.allclose(stack[0], stack[1])
    again = next(Predictor(nets, config).predict(images))
    np.testing.assert_array_equal(stack, again)
    state = torch.get_rng_state()
    list(Predictor(nets, config).predict(images))
    assert torch.equal(state, torch.get_rng_state())  # sampling leaves the global RNG alone
    single = tiny_config(method="single", dropout=0.3)
    eval_predictor = Predictor(nets, single)
    first = list(eval_predictor.predict(images))
    second = list(eval_predictor.predict(images))
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not any(m.training for m in nets[0].modules())


def test_batched_mc_sampling_matches_separate_passes_in_distribution() -> None:
    config = tiny_config(method="mc_dropout", mc_samples=6, dropout=0.3, dropout_blocks=2)
    nets = members(config)
    images = random_images([(16, 16)])
    batched = next(Predictor(nets, config, mc_batched=True).predict(images))
    separate = next(Predictor(nets, config, mc_batched=False).predict(images))
    chunked = next(Predictor(nets, config, mc_batched=True, max_forward_batch=4).predict(images))
    assert not Predictor(nets, config).mc_batched  # the CPU default: separate passes
    assert batched.shape == separate.shape == chunked.shape == (6, 11, 16, 16)
    # Different masks, same model: the means agree far better than single samples do.
    assert not np.allclose(batched[0], batched[1])
    np.testing.assert_allclose(batched.mean(0), separate.mean(0), atol=0.2)


def test_temperature_two_is_softmax_of_half_the_logits() -> None:
    config = tiny_config(method="ensemble", ensemble_size=2)
    nets = members(config)
    images = random_images([(20, 28)])
    logits = next(Predictor(nets, config).predict_logits(images, reduce="none"))
    assert logits.shape == (2, 11, 20, 28)
    plain = next(Predictor(nets, config).predict(images))
    scaled = next(Predictor(nets, config, temperature=2.0).predict(images))
    expected = torch.softmax(torch.from_numpy(logits) / 2.0, dim=1).numpy()
    np.testing.assert_allclose(scaled, expected, atol=1e-6)
    np.testing.assert_allclose(plain, torch.softmax(torch.from_numpy(logits), 1).numpy(), atol=1e-6)
    # flatter: the top probability drops, the argmax stays
    assert np.all(scaled.max(axis=1) <= plain.max(axis=1) + 1e-6)
    np.testing.assert_array_equal(scaled.argmax(axis=1), plain.argmax(axis=1))
    mean_logits = next(Predictor(nets, config, 2.0).predict_logits(images))
    np.testing.assert_allclose(mean_logits, logits.mean(axis=0), atol=1e-6)
    scaled_logits = next(Predictor(nets, config, 2.0).predict_logits(images, scaled=True))
    np.testing.assert_allclose(scaled_logits, logits.mean(axis=0) / 2.0, atol=1e-6)


def test_rgb_and_grey_inputs_are_accepted_and_bad_ones_refused() -> None:
    config = tiny_config(in_channels=3)
    predictor = Predictor(members(config), config)
    stacks = list(predictor.predict(random_images([(16, 16, 3), (16, 16)]), batch_size=1))
    assert [s.shape for s in stacks] == [(1, 11, 16, 16)] * 2
    with pytest.raises(TypeError, match="integers or floats"):
        next(predictor.predict([np.zeros((8, 8), dtype=np.complex64)]))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        next(predictor.predict([np.zeros((8, 8, 5), dtype=np.uint8)]))


def test_member_count_and_temperature_are_checked() -> None:
    config = tiny_config(method="ensemble", ensemble_size=3)
    with pytest.raises(ValueError, match="needs 3 member"):
        Predictor(members(config)[:2], config)
    with pytest.raises(ValueError, match="temperature"):
        Predictor(members(config), config, temperature=0.0)
    assert isinstance(
        build_members(config, [m.state_dict() for m in members(config)])[0], nn.Module
    )


def test_threads_setting_is_applied() -> None:
    before = torch.get_num_threads()
    try:
        config = tiny_config(threads=1)
        Predictor(members(config), config)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
