"""Image and mask checks and normalisation shared by training and inference.

Model input (:func:`normalise_image`, the single entry point):

* uint8: ``x / 255`` per channel, exactly as always (benchmarks and tests depend on it).
* any other dtype (uint16, float32, ...): a per-image, per-channel percentile stretch
  ``clip((x - p_low) / (p_high - p_low), 0, 1)`` with ``p_low, p_high`` the 0.5th and 99.5th
  percentiles of that channel (linear interpolation, ``numpy.percentile``). Microscopy
  detectors rarely fill their 16-bit range and a few hot pixels would otherwise set the scale,
  so a fixed ``/ 65535`` would leave most images near black. When ``p_high <= p_low`` (mostly
  background) the channel's min and max are used instead; a constant channel becomes zeros.
  Images over ``RANGE_SAMPLE_PIXELS`` pixels take the percentiles from a regular grid (every
  ``s``-th row and column, ``s = ceil(sqrt(H * W / RANGE_SAMPLE_PIXELS))``): deterministic and
  fast on a 36-Mpx image. NaN or infinite values are refused (uploads refuse them too).
"""

from __future__ import annotations

import math

import numpy as np

from activeseg.uncertainty.labels import UNLABELLED

"""Mask value of a pixel that nobody labelled yet; the loss never sees it."""

PERCENTILES = (0.5, 99.5)
"""Per-channel percentiles mapped onto 0 and 1 for images that are not uint8."""
RANGE_SAMPLE_PIXELS = 1 << 20
"""At most about this many pixels per channel feed the percentiles."""


def _channels_last(image: np.ndarray) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> ``[H, W, C]`` (a view), else ValueError."""
    if image.ndim == 2:
        return image[:, :, None]
    if image.ndim == 3 and image.shape[2] in (1, 3):
        return image
    raise ValueError(f"images must be [H, W] or [H, W, 3], got shape {image.shape}")


def intensity_range(image: np.ndarray) -> np.ndarray:
    """The values ``[2, C]`` (float64: low, high per channel) that :func:`normalise_image` maps
    onto 0 and 1 for ``image`` ``[H, W(, 1|3)]``.

    Computed once per whole image, so a crop normalised with it (``value_range=``) maps exactly
    like the same pixels of the whole image; uint8 gives ``(0, 255)``.
    """
    hwc = _channels_last(image)
    channels = hwc.shape[2]
    if image.dtype == np.uint8:
        return np.array([[0.0] * channels, [255.0] * channels])
    if image.dtype.kind not in "iuf":
        raise TypeError(f"images must hold integers or floats, got {image.dtype}")
    height, width = hwc.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / RANGE_SAMPLE_PIXELS)))
    sample = hwc[::step, ::step].reshape(-1, channels)
    bounds = np.percentile(sample, PERCENTILES, axis=0).astype(np.float64)  # [2, C]
    if not np.isfinite(bounds).all():
        raise ValueError("image holds NaN or infinite values; replace them (e.g. with 0) first")
    flat = bounds[1] <= bounds[0]
    if flat.any():  # mostly background: stretch the channel's full range instead
        whole = hwc.reshape(-1, channels)
        bounds[0, flat] = whole[:, flat].min(axis=0)
        bounds[1, flat] = whole[:, flat].max(axis=0)
    return bounds


def normalise_image(
    image: np.ndarray, in_channels: int, value_range: np.ndarray | None = None
) -> np.ndarray:
    """``[H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` -> float32 ``[in_channels, H, W]`` in [0, 1].

    uint8 is scaled by 1/255; other dtypes by the percentile stretch of the module docstring,
    with ``value_range`` (``[2, C]`` from :func:`intensity_range` of the whole image) when
    ``image`` is a crop of it, else the image's own range. A grey image given to an RGB model is
    repeated over the three channels and an RGB image given to a grey model is averaged, so a
    pool that mixes both still scores; anything else is refused with the shape in the message.
    """
    hwc = _channels_last(image)
    if image.dtype == np.uint8:
        channels_first = np.moveaxis(hwc, 2, 0).astype(np.float32) / 255.0
    else:
        bounds = intensity_range(image) if value_range is None else value_range
        low = np.asarray(bounds[0], np.float32)[:, None, None]
        high = np.asarray(bounds[1], np.float32)[:, None, None]
        span = np.where(high > low, high - low, np.float32(np.inf))  # constant -> zeros
        # Transposed while still 16-bit (the cheaper copy), then contiguous float arithmetic.
        channels_first = np.ascontiguousarray(np.moveaxis(hwc, 2, 0)).astype(np.float32)
        channels_first -= low
        channels_first /= span
        np.clip(channels_first, 0.0, 1.0, out=channels_first)
    if channels_first.shape[0] != in_channels:
        if in_channels == 3:
            channels_first = np.repeat(channels_first, 3, axis=0)
        else:
            channels_first = channels_first.mean(axis=0, keepdims=True)
    return np.ascontiguousarray(channels_first)


def check_mask(mask: np.ndarray, image: np.ndarray, n_classes: int, index: int) -> None:
    """Refuse a mask that does not fit its image ``[H, W(, 3)]`` or holds unknown class ids.

    ``mask``: uint8 ``[H, W]`` with values in ``[0, n_classes)`` or ``UNLABELLED``.
    """
    if mask.ndim != 2 or mask.shape != image.shape[:2]:
        raise ValueError(
            f"mask {index} has shape {mask.shape}, expected [H, W] = {image.shape[:2]} "
            "to match its image"
        )
    if mask.dtype != np.uint8:
        raise TypeError(f"mask {index} must be uint8, got {mask.dtype}")
    values = np.unique(mask)
    bad = values[(values >= n_classes) & (values != UNLABELLED)]
    if bad.size:
        raise ValueError(
            f"mask {index} holds class ids {bad.tolist()} outside 0..{n_classes - 1} "
            f"(and {UNLABELLED} = unlabelled)"
        )
