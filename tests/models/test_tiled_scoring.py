"""Sliding-window inference and tiled scoring of large images (issue 14)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from activeseg.models.config import ModelConfig
from activeseg.models.inference import AxisWindow, Predictor, axis_windows, consecutive_batches
from activeseg.models.scoring import score_images
from activeseg.models.unet import UNet
from activeseg.uncertainty.measures import ALL_MEASURES, SOFTMAX_MEASURES
from tests.models.conftest import tiny_config


def wavy_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """uint8 [H, W]: waves plus noise, so that every pixel's prediction depends on its input."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    wave = 127 + 60 * np.sin(yy / 13.0) * np.cos(xx / 9.0) + rng.normal(0, 25, yy.shape)
    return wave.clip(0, 255).astype(np.uint8)


def calibrated_unet(config: ModelConfig, image: np.ndarray, seed: int = 0) -> UNet:
    """An untrained UNet whose BatchNorm statistics are those of ``image``.

    With the initial statistics (mean 0, variance 1) an untrained network's output hardly
    depends on its input, so a tiling error could not show; calibrated, probabilities vary
    across the image (std about 0.1) and dropout moves them by up to 0.5.
    """
    torch.manual_seed(seed)
    net = UNet.from_config(config)
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: one pass sets the statistics
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(image[None, None].astype(np.float32) / 255.0))
    return net.eval()


# ------------------------------------------------------------------------------------------
# window layout


def test_window_layout_of_a_1000_by_700_image() -> None:
    # Padded to 1008 x 704 (multiples of 16); 512 px windows at multiples of 16, at most
    # 512 - 2 * 32 = 448 apart, spread evenly; cores cut at the middle of each overlap.
    rows = axis_windows(1000, tile=512, margin=32, align=16)
    cols = axis_windows(700, tile=512, margin=32, align=16)
    assert rows == [
        AxisWindow(0, 512, 0, 376),
        AxisWindow(240, 752, 376, 624),
        AxisWindow(496, 1008, 624, 1000),
    ]
    assert cols == [AxisWindow(0, 512, 0, 352), AxisWindow(192, 704, 352, 700)]
    config = ModelConfig(in_channels=1, n_classes=2, method="single", device="cpu")
    layout = Predictor([UNet.from_config(config)], config).window_layout(1000, 700)
    assert len(layout.windows()) == 6 and layout.padded == (1008, 704)


def test_short_axes_are_one_window_of_the_padded_length() -> None:
    assert axis_windows(1, 512, 32, 16) == [AxisWindow(0, 16, 0, 1)]
    assert axis_windows(500, 512, 32, 16) == [AxisWindow(0, 512, 0, 500)]
    assert axis_windows(512, 512, 32, 16) == [AxisWindow(0, 512, 0, 512)]


@pytest.mark.parametrize("length", [513, 527, 960, 961, 1000, 2048, 6000, 6007])
@pytest.mark.parametrize(("tile", "margin", "align"), [(512, 32, 16), (64, 16, 2), (48, 8, 16)])
def test_cores_cover_every_pixel_exactly_once_with_the_margin_kept(
    length: int, tile: int, margin: int, align: int
) -> None:
    windows = axis_windows(length, tile, margin, align)
    padded = -(-length // align) * align
    cover = np.zeros(length, np.int64)
    for w in windows:
        cover[w.core] += 1
        assert w.stop - w.start == tile and w.start % align == 0 and w.stop <= padded
        # every core pixel is at least `margin` inside its window, except at the image border
        assert w.core_start == 0 or w.core_start - w.start >= margin
        assert w.core_stop == length or w.stop - w.core_stop >= margin
    np.testing.assert_array_equal(cover, 1)
    assert windows[0].start == 0 and windows[-1].stop == padded
    stride = (tile - 2 * margin) // align * align
    assert len(windows) == 1 + -(-(padded - tile) // stride)  # the fewest windows


# ------------------------------------------------------------------------------------------
# tiled equals untiled where the receptive field fits the margin


@pytest.mark.parametrize("method", ["single", "ensemble", "mc_dropout"])
def test_tiled_prediction_equals_untiled_when_the_receptive_field_fits_the_margin(
    method: str,
) -> None:
    # Depth 1: each output pixel sees less than 8 px around it, tile 32 leaves a 8 px margin.
    image = wavy_image(83, 70)
    config = tiny_config(
        method=method, depth=1, ensemble_size=2, mc_samples=3, dropout=0.5, n_classes=3
    )
    nets = [calibrated_unet(config, image, seed) for seed in range(config.n_members)]
    untiled = next(Predictor(nets, config, max_untiled_pixels=None).predict([image], 1))
    tiled_predictor = Predictor(nets, config, max_untiled_pixels=0, tile=32, tile_margin=8)
    tiled = next(tiled_predictor.predict([image]))
    assert tiled.shape == untiled.shape == (config.n_samples, 3, 83, 70)
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)
    if method == "mc_dropout":  # the samples really differ: the same masks in every window
        assert np.abs(untiled[0] - untiled[1]).max() > 0.1
    (_, parts), *rest = tiled_predictor.predict_parts([image])
    sizes = [probs.shape[-2:] for _, probs in parts]
    assert not rest and len(sizes) == 5 * 4 and max(h * w for h, w in sizes) <= 32 * 32


def test_one_by_one_convolutions_tile_exactly_for_rgb_odd_sizes_and_logits() -> None:
    config = tiny_config(method="ensemble", ensemble_size=2, in_channels=3, n_classes=4)
    torch.manual_seed(0)
    nets = [nn.Conv2d(3, 4, 1) for _ in range(2)]
    image = np.random.default_rng(1).integers(0, 256, (101, 67, 3), dtype=np.uint8)
    plain = Predictor(nets, config, 1.5, max_untiled_pixels=None)
    tiled = Predictor(nets, config, 1.5, max_untiled_pixels=100, tile=16, tile_margin=4)
    assert tiled.is_tiled(image) and not plain.is_tiled(image)
    np.testing.assert_allclose(next(tiled.predict([image])), next(plain.predict([image])), 0, 1e-6)
    for kwargs in ({"reduce": "none"}, {"reduce": "mean", "scaled": True}):
        a = next(tiled.predict_logits([image], **kwargs))  # type: ignore[arg-type]
        b = next(plain.predict_logits([image], **kwargs))  # type: ignore[arg-type]
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_tiled_scores_equal_untiled_scores_without_the_full_stack() -> None:
    image = wavy_image(90, 77, seed=3)
    config = tiny_config(method="mc_dropout", depth=1, mc_samples=4, dropout=0.5, n_classes=3)
    net = calibrated_unet(config, image)
    plain = Predictor([net], config, max_untiled_pixels=None)
    tiled = Predictor([net], config, max_untiled_pixels=0, tile=32, tile_margin=8)
    (want,) = score_images(plain, [image], ALL_MEASURES)
    (got,) = score_images(tiled, [image], ALL_MEASURES)
    assert list(got.maps) == list(ALL_MEASURES)
    for name in ALL_MEASURES:
        assert got.maps[name].dtype == np.float32 and got.maps[name].shape == (90, 77)
        np.testing.assert_allclose(got.maps[name], want.maps[name], rtol=0, atol=1e-5)
    assert want.maps["mutual_information"].max() > 0.01  # the samples disagree somewhere
    assert got.prediction.dtype == np.uint8
    np.testing.assert_array_equal(got.prediction, want.prediction)


def test_default_network_seam_error_is_small_and_shrinks_with_the_margin() -> None:
    # The default depth-4 UNet sees about 100 px around a pixel: more than any margin here, so
    # pixels near a seam lose some context. 128 px windows put seams every 64-96 px.
    image = wavy_image(256, 224, seed=5)
    config = ModelConfig(in_channels=1, n_classes=3, method="single", device="cpu")
    net = calibrated_unet(config, image)
    whole = next(Predictor([net], config, max_untiled_pixels=None).predict([image]))
    errors = {}
    for margin in (8, 32):
        predictor = Predictor([net], config, max_untiled_pixels=0, tile=128, tile_margin=margin)
        errors[margin] = np.abs(next(predictor.predict([image])) - whole)
    assert errors[32].mean() < 0.01 and errors[32].mean() < errors[8].mean()
    assert whole.std() > 0.05  # the probabilities vary: the errors are not small by accident


# ------------------------------------------------------------------------------------------
# streams, reproducibility, the encoder computed once


def test_mixed_stream_keeps_order_and_tiled_mc_masks_ignore_the_stream_position() -> None:
    config = tiny_config(method="mc_dropout", depth=1, mc_samples=3, dropout=0.5, n_classes=3)
    large, small = wavy_image(70, 60, seed=1), wavy_image(20, 30, seed=2)
    net = calibrated_unet(config, large)
    predictor = Predictor([net], config, max_untiled_pixels=40 * 40, tile=32, tile_margin=8)
    state = torch.get_rng_state()
    alone = next(predictor.predict([large]))
    stream = list(predictor.predict([small, small, large, small]))
    assert [s.shape[-2:] for s in stream] == [(20, 30), (20, 30), (70, 60), (20, 30)]
    np.testing.assert_array_equal(stream[2], alone)  # masks: the seed only, not the position
    for got, want in zip(stream[:2], predictor.predict([small, small]), strict=True):
        np.testing.assert_array_equal(got, want)  # one batch of two: the small path as before
    assert torch.equal(state, torch.get_rng_state())
    batches = list(consecutive_batches([small, small, large, small], 8, alone=predictor.is_tiled))
    assert [len(b) for b in batches] == [2, 1, 1]


@pytest.mark.parametrize("mc_batched", [False, True])
def test_encoding_once_gives_the_logits_of_full_forward_passes(mc_batched: bool) -> None:
    config = tiny_config(method="mc_dropout", mc_samples=4, dropout=0.5, dropout_blocks=2)
    image = wavy_image(24, 40)
    net = calibrated_unet(config, image)
    predictor = Predictor([net], config, mc_batched=mc_batched)
    got = next(predictor.predict_logits([image], reduce="none"))
    x = torch.from_numpy(image[None, None].astype(np.float32) / 255.0)
    with torch.random.fork_rng(), torch.inference_mode():
        torch.manual_seed(config.seed)
        if mc_batched:
            want = net(x.repeat(4, 1, 1, 1)).numpy()
        else:
            want = np.concatenate([net(x).numpy() for _ in range(4)])
    # The same masks: any mask difference would move logits by ~0.1. Batched, the encoder runs
    # on 1 image instead of 4, and oneDNN may sum in another order (measured: 4e-6).
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 if mc_batched else 1e-6)
    assert np.abs(want[0] - want[1]).max() > 0.01


def test_bad_tile_settings_are_refused() -> None:
    config = tiny_config()  # depth 2: tiles must be multiples of 4
    nets = [UNet.from_config(config)]
    with pytest.raises(ValueError, match="multiple of 2\\*\\*depth = 4"):
        Predictor(nets, config, tile=30)
    with pytest.raises(ValueError, match="twice the margin"):
        Predictor(nets, config, tile=32, tile_margin=15)


def test_small_images_score_as_before() -> None:
    config = tiny_config(method="ensemble", ensemble_size=2, n_classes=3)
    nets = [UNet.from_config(config) for _ in range(2)]
    predictor = Predictor(nets, config)
    images = [wavy_image(20, 24, seed=s) for s in range(3)]
    scores = list(score_images(predictor, images, SOFTMAX_MEASURES))
    for score, stack in zip(scores, predictor.predict(images), strict=True):
        np.testing.assert_array_equal(score.prediction, stack.mean(0).argmax(0))
        mean = stack.mean(0)
        np.testing.assert_allclose(score.maps["entropy"], -(mean * np.log(mean)).sum(0), atol=1e-5)
