"""Image and mask checks and normalisation shared by training and inference."""

from __future__ import annotations

import numpy as np

IGNORE_INDEX = 255
"""Mask value of a pixel that nobody labelled yet; the loss never sees it."""


def normalise_image(image: np.ndarray, in_channels: int) -> np.ndarray:
    """uint8 ``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> float32 ``[in_channels, H, W]``.

    Each channel is scaled by 1/255. A grey image given to an RGB model is repeated over the
    three channels and an RGB image given to a grey model is averaged, so a pool that mixes
    both still scores; anything else is refused with the shape in the message.
    """
    if image.dtype != np.uint8:
        raise TypeError(f"images must be uint8, got {image.dtype} with shape {image.shape}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        channels_first = image[None, :, :].astype(np.float32) / 255.0
    elif image.ndim == 3 and image.shape[2] == 3:
        channels_first = np.moveaxis(image, 2, 0).astype(np.float32) / 255.0
    else:
        raise ValueError(f"images must be [H, W] or [H, W, 3] uint8, got shape {image.shape}")
    if channels_first.shape[0] != in_channels:
        if in_channels == 3:
            channels_first = np.repeat(channels_first, 3, axis=0)
        else:
            channels_first = channels_first.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(channels_first)


def check_mask(mask: np.ndarray, image: np.ndarray, n_classes: int, index: int) -> None:
    """Refuse a mask that does not fit its image ``[H, W(, 3)]`` or holds unknown class ids.

    ``mask``: uint8 ``[H, W]`` with values in ``[0, n_classes)`` or ``IGNORE_INDEX``.
    """
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask {index} has shape {mask.shape}, expected [H, W] = {image.shape[:2]} "
            "to match its image"
        )
    if mask.dtype != np.uint8:
        raise TypeError(f"mask {index} must be uint8, got {mask.dtype}")
    values = np.unique(mask)
    bad = values[(values >= n_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(
            f"mask {index} holds class ids {bad.tolist()} outside 0..{n_classes - 1} "
            f"(and {IGNORE_INDEX} = unlabelled)"
        )
