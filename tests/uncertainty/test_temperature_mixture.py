"""Temperature fitted on the mixture an ensemble or MC-dropout model serves."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.calibration import (
    fit_temperature,
    fit_temperature_mixture,
    softmax,
)


def test_one_sample_equals_the_single_softmax_fit() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, size=(5000, 4))  # [P, C]
    labels = rng.integers(0, 4, size=5000)
    single = fit_temperature(logits, labels)
    mixture = fit_temperature_mixture(logits[:, None, :], labels)  # [P, 1, C]
    assert mixture == pytest.approx(single, rel=1e-4)


def test_recovers_the_temperature_the_labels_were_drawn_with() -> None:
    rng = np.random.default_rng(1)
    n_pixels, n_samples, n_classes, true_t = 40_000, 5, 4, 2.5
    # S members that disagree around a shared per-pixel centre: [P, S, C]
    centre = rng.normal(0.0, 4.0, size=(n_pixels, 1, n_classes))
    logits = centre + rng.normal(0.0, 2.0, size=(n_pixels, n_samples, n_classes))
    served = softmax(logits / true_t, axis=-1).mean(axis=1)  # [P, C], what is served
    labels = (rng.random(n_pixels)[:, None] > served.cumsum(axis=1)).sum(axis=1)
    fitted = fit_temperature_mixture(logits, labels)
    assert fitted == pytest.approx(true_t, rel=0.05)
    # The mean-logit fit calibrates another distribution and lands elsewhere.
    mean_logit_fit = fit_temperature(logits.mean(axis=1), labels)
    assert abs(mean_logit_fit - true_t) > abs(fitted - true_t)


def test_chunking_does_not_change_the_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    from activeseg.uncertainty import calibration

    rng = np.random.default_rng(2)
    logits = rng.normal(0.0, 3.0, size=(3000, 3, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=3000)
    whole = fit_temperature_mixture(logits, labels)
    monkeypatch.setattr(calibration, "_NLL_CHUNK_VALUES", 64)  # 4 pixels per chunk
    assert fit_temperature_mixture(logits, labels) == pytest.approx(whole, rel=1e-6)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError, match=r"\[P, S, C\]"):
        fit_temperature_mixture(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="labels must lie"):
        fit_temperature_mixture(np.zeros((4, 2, 3)), np.full(4, 3))
