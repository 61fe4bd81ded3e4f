"""Small image renderings for display: heatmaps, class colours, overlays (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

# 9 control points of matplotlib's "inferno" map; interpolated linearly (no matplotlib import
# on the request path).
_INFERNO = np.array(
    [
        [0, 0, 4],
        [31, 12, 72],
        [85, 15, 109],
        [136, 34, 106],
        [186, 54, 85],
        [227, 89, 51],
        [249, 140, 10],
        [249, 201, 50],
        [252, 255, 164],
    ],
    np.float32,
)


def heat_colours(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """float [H, W] -> uint8 [H, W, 3]; 0 is dark, ``vmax`` (default: the map's max) bright."""
    top = float(vmax if vmax is not None else max(float(np.nanmax(values)), 1e-12))
    t = np.clip(np.nan_to_num(values) / top, 0.0, 1.0) * (len(_INFERNO) - 1)
    lo = np.floor(t).astype(np.int64)
    hi = np.minimum(lo + 1, len(_INFERNO) - 1)
    frac = (t - lo)[..., None]
    return (_INFERNO[lo] * (1 - frac) + _INFERNO[hi] * frac).round().astype(np.uint8)


def class_palette(classes: list[dict[str, Any]]) -> np.ndarray:
    """uint8 [256, 3]: the colour of each class id; 255 (unlabelled) and unknown ids black."""
    palette = np.zeros((256, 3), np.uint8)
    for c in classes:
        h = c["colour"].lstrip("#")
        palette[int(c["id"])] = [int(h[i : i + 2], 16) for i in (0, 2, 4)]
    return palette


def colourise(index: np.ndarray, classes: list[dict[str, Any]]) -> np.ndarray:
    return class_palette(classes)[index]


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    base = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image
    return (base * (1 - alpha) + colours * alpha).round().astype(np.uint8)
