"""Region maps: grid tiles in closed form, SLIC superpixels, statistics, relabelling."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.regions import (
    RegionMap,
    grid_regions,
    region_stats,
    relabel_contiguous,
    slic_regions,
)


def two_colour_image(height: int = 48, width: int = 64) -> np.ndarray:
    """Left half dark red, right half light blue, with a little noise: one strong edge."""
    rng = np.random.default_rng(0)
    img = np.zeros((height, width, 3), np.float64)
    img[:, : width // 2] = (0.7, 0.1, 0.1)
    img[:, width // 2 :] = (0.3, 0.6, 0.9)
    img += rng.normal(0, 0.02, img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def assert_consistent(rm: RegionMap) -> None:
    """ids 0..R-1 all present, counts = bincount, bboxes tight around each region's pixels."""
    labels = rm.labels
    assert labels.dtype == np.int32 and rm.counts.dtype == np.int64 and rm.bboxes.dtype == np.int32
    r = rm.n_regions
    np.testing.assert_array_equal(np.unique(labels), np.arange(r))
    np.testing.assert_array_equal(rm.counts, np.bincount(labels.ravel(), minlength=r))
    assert rm.counts.sum() == labels.size
    assert rm.bboxes.shape == (r, 4)
    ys, xs = np.indices(labels.shape)
    box = rm.bboxes[labels]  # [H, W, 4]
    # every pixel lies inside its region's box ...
    assert np.all(
        (box[..., 0] <= ys) & (ys < box[..., 2]) & (box[..., 1] <= xs) & (xs < box[..., 3])
    )
    # ... and the box is tight (each edge touched by a pixel of the region)
    for i in range(r):  # test-side loop: a reference, not the implementation
        yy, xx = np.nonzero(labels == i)
        assert tuple(rm.bboxes[i]) == (yy.min(), xx.min(), yy.max() + 1, xx.max() + 1)
        np.testing.assert_allclose(rm.centroids[i], [yy.mean(), xx.mean()])


def test_grid_10x10_tile_4() -> None:
    rm = grid_regions(10, 10, 4)
    assert rm.n_regions == 9
    np.testing.assert_array_equal(rm.counts, [16, 16, 8, 16, 16, 8, 8, 8, 4])
    np.testing.assert_array_equal(
        rm.bboxes,
        [
            [0, 0, 4, 4], [0, 4, 4, 8], [0, 8, 4, 10],
            [4, 0, 8, 4], [4, 4, 8, 8], [4, 8, 8, 10],
            [8, 0, 10, 4], [8, 4, 10, 8], [8, 8, 10, 10],
        ],
    )  # fmt: skip
    assert rm.labels[9, 9] == 8 and rm.labels[0, 5] == 1 and rm.labels[5, 0] == 3
    assert_consistent(rm)


def test_grid_centroids_and_closed_form_match_generic_stats() -> None:
    rm = grid_regions(7, 11, 3)
    generic = region_stats(rm.labels)
    np.testing.assert_array_equal(rm.counts, generic.counts)
    np.testing.assert_array_equal(rm.bboxes, generic.bboxes)
    expected = np.stack(
        [(rm.bboxes[:, 0] + rm.bboxes[:, 2] - 1) / 2, (rm.bboxes[:, 1] + rm.bboxes[:, 3] - 1) / 2],
        axis=1,
    )
    np.testing.assert_allclose(rm.centroids, expected)
    assert rm.shape == (7, 11)


def test_grid_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="tile"):
        grid_regions(10, 10, 0)
    with pytest.raises(ValueError, match="height"):
        grid_regions(0, 10, 4)


def test_slic_two_colour_image() -> None:
    img = two_colour_image()
    rm = slic_regions(img, n_segments=24)
    assert rm.labels.shape == img.shape[:2]
    assert 6 <= rm.n_regions <= 60
    assert_consistent(rm)
    # Superpixels follow the colour edge: no region straddles the two halves.
    half = np.zeros(img.shape[:2], bool)
    half[:, img.shape[1] // 2 :] = True
    right_share = np.bincount(rm.labels.ravel(), weights=half.ravel()) / rm.counts
    assert np.all((right_share == 0) | (right_share == 1))


def test_slic_is_deterministic_and_region_size_sets_the_count() -> None:
    img = two_colour_image(64, 64)
    a = slic_regions(img, region_size=16)
    b = slic_regions(img, region_size=16)
    np.testing.assert_array_equal(a.labels, b.labels)
    # 64 * 64 / 16**2 = 16 target segments; SLIC lands near it.
    assert 8 <= a.n_regions <= 32
    small = slic_regions(img, region_size=8)
    assert small.n_regions > a.n_regions


def test_slic_grey_and_float_images() -> None:
    grey = two_colour_image()[..., 1]
    rm = slic_regions(grey, n_segments=16)
    assert_consistent(rm)
    rmf = slic_regions(grey / 255.0, n_segments=16)
    np.testing.assert_array_equal(rmf.labels, rm.labels)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, "exactly one"),
        ({"n_segments": 4, "region_size": 8}, "exactly one"),
        ({"region_size": 0}, "region_size"),
    ],
)
def test_slic_argument_errors(kwargs: dict[str, int], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        slic_regions(two_colour_image(), **kwargs)  # type: ignore[arg-type]


def test_slic_rejects_out_of_range_floats_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        slic_regions(np.full((8, 8), 3.0), n_segments=4)
    with pytest.raises(ValueError, match=r"\[H, W\] or \[H, W, 3\]"):
        slic_regions(np.zeros((8, 8, 4), np.uint8), n_segments=4)


def test_region_stats_hand_example() -> None:
    labels = np.array([[0, 0, 1], [2, 0, 1], [2, 2, 1]])
    rm = region_stats(labels)
    np.testing.assert_array_equal(rm.counts, [3, 3, 3])
    np.testing.assert_array_equal(rm.bboxes, [[0, 0, 2, 2], [0, 2, 3, 3], [1, 0, 3, 2]])
    expected = np.array([[1 / 3, 2 / 3], [1, 2], [5 / 3, 1 / 3]], dtype=np.float64)
    np.testing.assert_allclose(rm.centroids, expected)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (23, 31)])
def test_region_stats_on_scattered_labels(shape: tuple[int, int]) -> None:
    # Many short runs, runs ending at row ends, regions split into pieces.
    rng = np.random.default_rng(sum(shape))
    labels = relabel_contiguous(rng.integers(0, 12, size=shape) * 3)
    assert_consistent(region_stats(labels))


def test_region_stats_requires_contiguous_ids() -> None:
    with pytest.raises(ValueError, match="relabel_contiguous"):
        region_stats(np.array([[0, 2], [2, 0]]))
    with pytest.raises(ValueError, match="integer"):
        region_stats(np.zeros((2, 2)))


def test_relabel_contiguous_keeps_order() -> None:
    out = relabel_contiguous(np.array([[5, 5], [9, 2]]))
    np.testing.assert_array_equal(out, [[1, 1], [2, 0]])
    assert out.dtype == np.int32


def test_majority_pixels_by_hand() -> None:
    from activeseg.uncertainty.regions import majority_pixels

    regions = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.int32)
    mask = np.array([[2, 2, 1, 0], [2, 0, 1, 255]], np.uint8)
    # region 0: 2,2,2,0 -> 3 of 4; region 1: 1,0,1 (255 not counted) -> 2 of 3
    assert majority_pixels(regions, mask, 2) == (5, 7)
    assert majority_pixels(regions, np.full((2, 4), 255, np.uint8), 2) == (0, 0)


def test_region_count_off_below_half_or_above_twice() -> None:
    from activeseg.uncertainty.regions import expected_region_count, region_count_off

    assert expected_region_count(48, 64, 16) == 12
    assert not region_count_off(6, 12) and not region_count_off(24, 12)
    assert region_count_off(5, 12) and region_count_off(25, 12)


def test_slic_smoothing_changes_the_map_and_is_checked() -> None:
    img = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    plain, smooth = slic_regions(img, region_size=8), slic_regions(img, region_size=8, sigma=1)
    assert not np.array_equal(plain.labels, smooth.labels)
    with pytest.raises(ValueError, match="sigma"):
        slic_regions(img, region_size=8, sigma=-1)
