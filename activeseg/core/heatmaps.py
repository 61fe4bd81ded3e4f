"""The per-image score blob: uncertainty maps and the predicted classes of one model version.

Written by the score job (one blob per (model version, image), named by every ``ImageScore``
row of that pair) and read by the heatmap routes and by task submission (which counts the
pixels the model got wrong).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np

EXPECTED_IOU = "expected_iou"
"""The member holding the prediction's expected IoU (0-d float64, not a map: float16 would
round it; see :func:`activeseg.models.scoring.expected_iou`). Blobs written before it existed
lack it."""


def encode_heatmaps(
    maps: dict[str, np.ndarray], prediction: np.ndarray, expected_iou: float | None = None
) -> bytes:
    """``maps``: measure name -> float ``[H, W]`` (stored as float16); ``prediction``: class
    ``[H, W]`` (stored as uint8 under the name ``prediction``); ``expected_iou`` (stored as
    :data:`EXPECTED_IOU` when given) -> compressed npz bytes."""
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {k: v.astype(np.float16) for k, v in maps.items()}
    arrays["prediction"] = prediction.astype(np.uint8)
    if expected_iou is not None:
        arrays[EXPECTED_IOU] = np.asarray(expected_iou, np.float64)
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_heatmaps(data: bytes, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The inverse of :func:`encode_heatmaps`: name -> ``[H, W]`` array (the maps and
    ``prediction``; the scalar :data:`EXPECTED_IOU` only when ``names`` asks for it).

    ``names`` decodes only those members that are present (the npz members are compressed
    one by one, so a reader of ``prediction`` alone, such as every task submission, does not
    decompress the ten uncertainty maps beside it)."""
    with np.load(io.BytesIO(data)) as npz:
        files = [k for k in npz.files if k != EXPECTED_IOU] if names is None else npz.files
        wanted = files if names is None else [k for k in names if k in files]
        return {k: npz[k] for k in wanted}
