"""Synthetic segmentation canvases made of scikit-learn's handwritten digits (no download).

Each canvas holds a few upscaled 8x8 digits from ``sklearn.datasets.load_digits`` on a noisy
background; the mask labels every digit stroke with its digit (class d + 1) and the rest as
background (class 0). Small, fast and multi-class: good for tests, demos and benchmarks.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from activeseg.datasets.base import ClassDef, Dataset, Sample, default_colour

STROKE_THRESHOLD = 0.3
"""A pixel belongs to a digit where its drawn intensity (0-1, above the background) exceeds this.

Thresholding what is drawn, not the glyph before its brightness is applied, keeps the mask
boundary at one visible contrast, so the labels follow the image."""

DIGITS_MODEL_DEFAULTS = {"augment_flip": False, "augment_rotate": False}
"""A mirrored or turned digit is another digit (or none: a turned 6 is a 9), so training on
digits keeps the shift and intensity augmentations but never flips or rotates."""

PLACEMENT_ATTEMPTS = 30
"""Tries to find a free spot before a digit may overlap another one."""


@lru_cache(maxsize=1)
def _digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as float ``[N, 8, 8]`` in 0-1 and their labels ``[N]``."""
    bunch = load_digits()
    return bunch.images.astype(np.float64) / 16.0, bunch.target.astype(np.int64)


def digit_classes() -> list[ClassDef]:
    """Background (0) and digits 0-9 (classes 1-10)."""
    return [ClassDef(0, "background", default_colour(0))] + [
        ClassDef(d + 1, f"digit {d}", default_colour(d + 1)) for d in range(10)
    ]


def _overlaps(box: tuple[int, int, int, int], boxes: list[tuple[int, int, int, int]]) -> bool:
    y, x, h, w = box
    return any(
        y < by + bh and by < y + h and x < bx + bw and bx < x + w for by, bx, bh, bw in boxes
    )


def digit_canvas(
    rng: np.random.Generator, size: int, min_digits: int, max_digits: int
) -> tuple[np.ndarray, np.ndarray]:
    """One canvas: uint8 image ``[size, size]`` and uint8 mask ``[size, size]`` (ids 0-10)."""
    glyphs, labels = _digit_images()
    canvas = np.zeros((size, size), dtype=np.float64)
    mask = np.zeros((size, size), dtype=np.uint8)
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(min_digits, max_digits + 1))):
        index = int(rng.integers(len(glyphs)))
        glyph = np.clip(ndimage.zoom(glyphs[index], rng.uniform(2.0, 3.0), order=1), 0.0, 1.0)
        h, w = glyph.shape
        for _attempt in range(PLACEMENT_ATTEMPTS):
            y, x = int(rng.integers(size - h + 1)), int(rng.integers(size - w + 1))
            if not _overlaps((y, x, h, w), boxes):
                break
        boxes.append((y, x, h, w))
        drawn = glyph * rng.uniform(0.75, 1.0)
        window = canvas[y : y + h, x : x + w]
        np.maximum(window, drawn, out=window)
        mask[y : y + h, x : x + w][drawn > STROKE_THRESHOLD] = labels[index] + 1
    noisy = canvas * 255.0 + rng.uniform(0.0, 40.0) + rng.normal(0.0, 12.0, canvas.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8), mask


def digits(
    count: int, seed: int = 0, size: int = 64, min_digits: int = 2, max_digits: int = 4
) -> Dataset:
    """``count`` digit canvases, 11 classes; sample i depends only on ``(seed, i)``.

    So ``digits(10, seed)`` starts with the samples of ``digits(5, seed)``. Digits are scaled
    2-3x (16-24 px) and placed without overlap where the canvas has room.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if size < 24:
        raise ValueError(f"size must be >= 24 to fit a 3x upscaled 8x8 digit, got {size}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(
            f"need 1 <= min_digits <= max_digits, got min_digits={min_digits}, "
            f"max_digits={max_digits}"
        )

    def samples() -> Iterator[Sample]:
        for i in range(count):
            rng = np.random.default_rng([seed, i])
            image, mask = digit_canvas(rng, size, min_digits, max_digits)
            yield Sample(name=f"digits-s{seed}-{i:06d}", image=image, mask=mask)

    return Dataset(
        name="digits",
        classes=digit_classes(),
        in_channels=1,
        size=count,
        _samples=samples,
        model_defaults=DIGITS_MODEL_DEFAULTS,
    )
