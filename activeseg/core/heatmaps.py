"""The per-image score blob: uncertainty maps and the predicted classes of one model version.

Written by the score job (one blob per (model version, image), named by every ``ImageScore``
row of that pair) and read by the heatmap routes and by task submission (which counts the
pixels the model got wrong).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np


def encode_heatmaps(maps: dict[str, np.ndarray], prediction: np.ndarray) -> bytes:
    """``maps``: measure name -> float ``[H, W]`` (stored as float16); ``prediction``: class
    ``[H, W]`` (stored as uint8 under the name ``prediction``) -> compressed npz bytes."""
    buf = io.BytesIO()
    arrays: dict[str, np.ndarray] = {k: v.astype(np.float16) for k, v in maps.items()}
    arrays["prediction"] = prediction.astype(np.uint8)
    np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_heatmaps(data: bytes, names: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """The inverse of :func:`encode_heatmaps`: name -> ``[H, W]`` array.

    ``names`` decodes only those members that are present (the npz members are compressed
    one by one, so a reader of ``prediction`` alone, such as every task submission, does not
    decompress the ten uncertainty maps beside it)."""
    with np.load(io.BytesIO(data)) as npz:
        wanted = npz.files if names is None else [k for k in names if k in npz.files]
        return {k: npz[k] for k in wanted}
