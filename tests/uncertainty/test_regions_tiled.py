"""Region maps of large images: tiled SLIC, and region statistics and pooling at scale."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.segmentation import slic
from skimage.util import img_as_float

from activeseg.uncertainty import pooling
from activeseg.uncertainty.pooling import pool
from activeseg.uncertainty.regions import (
    grid_regions,
    region_stats,
    relabel_contiguous,
    slic_regions,
    slic_tile_edges,
)


def wavy_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    channels = [
        127 + 70 * np.sin(yy / (11.0 + 4 * c)) * np.cos(xx / 7.0) + rng.normal(0, 10, yy.shape)
        for c in range(3)
    ]
    return np.stack(channels, axis=-1).clip(0, 255).astype(np.uint8)


def test_tile_edges_are_whole_superpixel_sides_and_the_last_tile_takes_the_rest() -> None:
    assert slic_tile_edges(3000, 16) == [0, 1024, 2048, 3000]
    assert slic_tile_edges(1500, 16) == [0, 1500]  # 1.46 tiles: one
    assert slic_tile_edges(1600, 16) == [0, 1024, 1600]  # 1.56 tiles: two
    assert slic_tile_edges(2100, 12) == [0, 1020, 2100]  # 85 sides of 12 px
    assert slic_tile_edges(100, 16, tile=32) == [0, 32, 64, 100]
    assert slic_tile_edges(5, 16) == [0, 5]


def test_tiled_slic_never_crosses_a_tile_border(monkeypatch: pytest.MonkeyPatch) -> None:
    import activeseg.uncertainty.regions as regions_module

    monkeypatch.setattr(regions_module, "SLIC_TILE", 40)
    image = wavy_rgb(130, 95)
    regions = slic_regions(image, region_size=10, max_untiled_pixels=64 * 64)
    rows, cols = [0, 40, 80, 130], [0, 40, 95]
    assert slic_tile_edges(130, 10, 40) == rows and slic_tile_edges(95, 10, 40) == cols
    labels = regions.labels
    tile_row = np.searchsorted(rows, np.arange(130), "right")
    tile_col = np.searchsorted(cols, np.arange(95), "right")
    tile_of_pixel = tile_row[:, None] * 10 + tile_col[None, :]
    pairs = np.unique(np.stack([labels.ravel(), tile_of_pixel.ravel()]), axis=1)
    assert pairs.shape[1] == regions.n_regions  # each region lies in exactly one tile
    np.testing.assert_array_equal(np.unique(labels), np.arange(regions.n_regions))
    assert regions.counts.sum() == 130 * 95
    np.testing.assert_array_equal(np.bincount(labels.ravel()), regions.counts)
    # ids grow tile by tile in row-major tile order: offsets, not a global relabelling
    first_ids = [
        labels[y0:y1, x0:x1].min()
        for y0, y1 in zip(rows, rows[1:], strict=False)
        for x0, x1 in zip(cols, cols[1:], strict=False)
    ]
    assert first_ids == sorted(first_ids) and first_ids[0] == 0
    # about the number of superpixels the region size implies (12.35 per full tile)
    assert 0.5 * 130 * 95 / 100 < regions.n_regions < 2 * 130 * 95 / 100


def test_small_images_get_exactly_the_untiled_map() -> None:
    image = wavy_rgb(64, 48, seed=2)
    got = slic_regions(image, region_size=8, sigma=1.0)
    raw = slic(
        img_as_float(image),
        n_segments=round(64 * 48 / 64),
        compactness=10.0,
        start_label=0,
        channel_axis=-1,
        convert2lab=True,
        enforce_connectivity=True,
        sigma=1.0,
    )
    np.testing.assert_array_equal(got.labels, relabel_contiguous(raw))
    tiled = slic_regions(image, region_size=8, sigma=1.0, max_untiled_pixels=0)
    np.testing.assert_array_equal(tiled.labels, got.labels)  # one tile: the same map


def test_region_stats_and_relabelling_are_exact_on_a_large_grid() -> None:
    # 3000 x 2000 px of 16 px tiles: 188 * 125 = 23,500 regions, counts and boxes known.
    grid = grid_regions(3000, 2000, 16)
    stats = region_stats(grid.labels)
    np.testing.assert_array_equal(stats.counts, grid.counts)
    np.testing.assert_array_equal(stats.bboxes, grid.bboxes)
    assert stats.n_regions == 188 * 125 and stats.counts[-1] == 8 * 16
    sparse = grid.labels.astype(np.int64) * 3 + 7  # ids 7, 10, 13, ...
    np.testing.assert_array_equal(relabel_contiguous(sparse), grid.labels)


def test_blockwise_pooling_equals_one_bincount(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    grid = grid_regions(60, 45, 7)
    values = rng.random((60, 45), dtype=np.float32)
    predicted = rng.integers(0, 3, (60, 45))
    weights = np.array([1.0, 2.0, 0.5])
    flat = grid.labels.ravel()
    want_mean = np.bincount(flat, values.ravel().astype(np.float64)) / grid.counts
    want_max = np.full(grid.n_regions, -np.inf)
    np.maximum.at(want_max, flat, values.ravel())
    w = weights[predicted.ravel()]
    want_cb = np.bincount(flat, w * values.ravel()) / np.bincount(flat, w)
    monkeypatch.setattr(pooling, "POOL_BLOCK_PIXELS", 97)  # 28 blocks, the last partial
    n = grid.n_regions
    np.testing.assert_allclose(pool(values, grid.labels, n, "mean"), want_mean, rtol=1e-12)
    np.testing.assert_array_equal(pool(values, grid.labels, n, "max"), want_max)
    got_cb = pool(
        values, grid.labels, n, "class_balanced", predicted_class=predicted, class_weights=weights
    )
    np.testing.assert_allclose(got_cb, want_cb, rtol=1e-12)
