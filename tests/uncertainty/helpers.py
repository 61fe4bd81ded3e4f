"""Reference implementations and data builders for the uncertainty tests (plain and slow)."""

from __future__ import annotations

import numpy as np


def random_probs(
    rng: np.random.Generator, shape: tuple[int, ...], class_axis: int, scale: float = 3.0
) -> np.ndarray:
    """Softmax of Gaussian logits (float32) along ``class_axis``."""
    z = rng.standard_normal(shape) * scale
    z -= z.max(axis=class_axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=class_axis, keepdims=True)).astype(np.float32)


def naive_entropy(p: np.ndarray, axis: int) -> np.ndarray:
    p = p.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=axis)


def naive_softmax_measures(p: np.ndarray) -> dict[str, np.ndarray]:
    """Textbook versions on ``[..., C, H, W]`` with a full sort, float64."""
    p = p.astype(np.float64)
    s = np.sort(p, axis=-3)
    p1, p2 = s[..., -1, :, :], s[..., -2, :, :]
    h = naive_entropy(p, -3)
    return {
        "least_confidence": 1 - p1,
        "margin": 1 - (p1 - p2),
        "entropy": h,
        "normalised_entropy": h / np.log(p.shape[-3]),
        "ratio": p2 / p1,
    }


def naive_ensemble_measures(p: np.ndarray) -> dict[str, np.ndarray]:
    """Textbook versions on ``[..., S, C, H, W]``, float64, argmax votes."""
    p = p.astype(np.float64)
    n_members, n_classes = p.shape[-4], p.shape[-3]
    mean = p.mean(axis=-4)
    pe = naive_entropy(mean, -3)
    ee = naive_entropy(p, -3).mean(axis=-3)
    votes = p.argmax(axis=-3)  # [..., S, H, W]
    counts = np.stack([(votes == c).sum(axis=-3) for c in range(n_classes)], axis=-3)
    return {
        "predictive_entropy": pe,
        "expected_entropy": ee,
        "mutual_information": np.maximum(pe - ee, 0.0),
        "variation_ratio": 1 - counts.max(axis=-3) / n_members,
        "mean_std": p.std(axis=-4).mean(axis=-3),
    }
