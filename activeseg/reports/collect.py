"""Run a model version over held-out images once and keep what every report section needs.

For each image the predictor yields unscaled logits ``[S, C, H, W]`` (S ensemble members or
MC-dropout samples, 1 for a single network). From them, exactly as the service computes them:

- ``probs``: the predictive distribution at ``T = 1``, ``mean_s softmax(z_s)`` ``[C, H, W]``;
- ``probs_t``: the same with the version's temperature, ``mean_s softmax(z_s / T)`` (what
  ``Predictor.predict`` serves when the version has a temperature);
- every uncertainty measure from :func:`activeseg.uncertainty.compute_measures` on the
  ``T = 1`` stack (softmax measures on the mean over S, ensemble measures over the S maps), plus
  ``entropy_t``: the entropy of the temperature-scaled predictive distribution;
- ``errors``: the served prediction (argmax of ``probs_t``, or ``probs`` without a temperature)
  differs from the label;
- for S > 1, one deterministic forward pass (dropout off, or the first ensemble member): its
  entropy and its own errors, i.e. what a plain softmax model would give.

Only a uniform random sample of labelled pixels is kept, at most ``max_pixels`` in all and
``max_pixels // n_images`` per image, so memory stays bounded; when every labelled pixel fits, all
of them are kept in image order and the figures are exact.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from activeseg.models.inference import Predictor
from activeseg.models.preprocess import IGNORE_INDEX
from activeseg.uncertainty import compute_measures

__all__ = [
    "ENSEMBLE_ROWS",
    "SINGLE_PASS_ROW",
    "SOFTMAX_ROWS",
    "TEMPERATURE_ROW",
    "PixelSample",
    "collect_pixels",
    "measure_names",
    "single_pass_predictor",
    "softmax_stack",
]

SOFTMAX_ROWS: tuple[str, ...] = ("least_confidence", "margin", "entropy")
"""Softmax-based measures of the report (on the ``T = 1`` predictive distribution)."""

TEMPERATURE_ROW = "entropy_t"
"""Entropy of the temperature-scaled predictive distribution."""

ENSEMBLE_ROWS: tuple[str, ...] = ("predictive_entropy", "mutual_information", "variation_ratio")
"""Ensemble-based measures of the report (need S >= 2 members or samples)."""

SINGLE_PASS_ROW = "entropy_one_pass"
"""Entropy of one deterministic forward pass, against that pass's own errors (S > 1 only)."""

DEFAULT_MAX_PIXELS = 200_000


def measure_names(n_samples: int) -> tuple[str, ...]:
    """The core measures computed for a stack of ``n_samples`` maps (ensemble ones if > 1)."""
    return SOFTMAX_ROWS + (ENSEMBLE_ROWS if n_samples > 1 else ())


@dataclass
class PixelSample:
    """Per-pixel columns of the sampled pixels of a set of images (P pixels, C classes).

    Attributes:
        image_index: int32 ``[P]``: which image (0-based, input order) the pixel came from.
        labels: int64 ``[P]``: class id, or -1 where the images had no labels (OOD inputs).
        probs: float32 ``[P, C]``: predictive distribution at ``T = 1``.
        probs_t: float32 ``[P, C]`` at the version's temperature, or None without one.
        measures: ``{name: float32 [P]}``: :func:`measure_names` plus ``entropy_t`` when there
            is a temperature.
        errors: bool ``[P]``: served prediction != label (all False without labels).
        single_entropy: float32 ``[P]``: entropy of one deterministic pass (S > 1), else None.
        single_errors: bool ``[P]``: that pass's own errors, else None.
        n_images: images seen; n_pixels_total: labelled (or all) pixels before sampling.
    """

    image_index: npt.NDArray[np.int32]
    labels: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float32]
    probs_t: npt.NDArray[np.float32] | None
    measures: dict[str, npt.NDArray[np.float32]]
    errors: npt.NDArray[np.bool_]
    single_entropy: npt.NDArray[np.float32] | None = None
    single_errors: npt.NDArray[np.bool_] | None = None
    n_images: int = 0
    n_pixels_total: int = 0
    n_samples: int = 1
    labelled: bool = True
    temperature: float | None = None

    @property
    def n_pixels(self) -> int:
        """P: pixels kept."""
        return int(self.labels.size)

    @property
    def served_probs(self) -> npt.NDArray[np.float32]:
        """``[P, C]``: the distribution the service predicts with (temperature-scaled if any)."""
        return self.probs_t if self.probs_t is not None else self.probs


def softmax_stack(logits: np.ndarray, temperature: float | None) -> np.ndarray:
    """``softmax(z / T)`` over the class axis of ``[S, C, H, W]`` float32 logits.

    Computed with torch exactly as :meth:`Predictor.predict` does, so the probabilities are the
    ones the service serves (bit for bit on the CPU).
    """
    import torch

    z = torch.from_numpy(np.ascontiguousarray(logits))
    if temperature is not None:
        z = z / temperature
    return torch.softmax(z, dim=1).float().numpy()


def single_pass_predictor(predictor: Predictor) -> Predictor | None:
    """A one-pass predictor from the same weights: dropout off (MC dropout) or the first member
    (ensemble); None when the predictor already makes one map per image."""
    if predictor.n_samples <= 1:
        return None
    member = copy.deepcopy(predictor.members[0])
    config = predictor.config.model_copy(update={"method": "single"})
    return Predictor([member], config, temperature=None)


def _pick(
    candidates: npt.NDArray[np.intp], per_image: int, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    if candidates.size <= per_image:
        return candidates
    return np.sort(rng.choice(candidates, size=per_image, replace=False))


def collect_pixels(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray] | None,
    *,
    temperature: float | None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    seed: int = 0,
    single_pass: Predictor | None = None,
    batch_size: int | None = None,
) -> PixelSample:
    """Predict ``images`` (uint8 ``[H, W]`` or ``[H, W, 3]``) and sample their labelled pixels.

    ``masks``: uint8 ``[H, W]`` per image (255 = unlabelled), or None for unlabelled inputs
    (every pixel is a candidate; labels are -1 and no pixel counts as an error). ``temperature``:
    the version's fitted temperature or None. ``single_pass``: see
    :func:`single_pass_predictor`. Returns a :class:`PixelSample`.
    """
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    n_images = len(images)
    per_image = max(1, max_pixels // max(n_images, 1))
    rng = np.random.default_rng(seed)
    names = measure_names(predictor.n_samples)
    cols: dict[str, list[np.ndarray]] = {
        k: [] for k in ("index", "labels", "probs", "probs_t", "errors", "s_ent", "s_err")
    }
    measure_cols: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if temperature is not None:
        measure_cols["entropy_t"] = []
    total = 0
    singles: Iterator[np.ndarray] | None = (
        single_pass.predict_logits(images, batch_size, reduce="none")
        if single_pass is not None
        else None
    )
    stacks = predictor.predict_logits(images, batch_size, reduce="none")
    for index, logits in enumerate(stacks):
        height, width = logits.shape[-2:]
        if masks is not None:
            mask = masks[index]
            if mask.shape != (height, width):
                raise ValueError(
                    f"mask {index} has shape {mask.shape}, its image {(height, width)}"
                )
            flat_mask = mask.reshape(-1)
            candidates = np.flatnonzero(flat_mask != IGNORE_INDEX)
        else:
            flat_mask = None
            candidates = np.arange(height * width)
        single_logits = next(singles) if singles is not None else None
        total += int(candidates.size)
        chosen = _pick(candidates, per_image, rng)
        if chosen.size == 0:
            continue
        stack = softmax_stack(logits, None)  # [S, C, H, W]
        n_classes = stack.shape[1]
        mean = stack.mean(axis=0).reshape(n_classes, -1)[:, chosen].T  # [p, C]
        labels = (
            flat_mask[chosen].astype(np.int64)
            if flat_mask is not None
            else np.full(chosen.size, -1, np.int64)
        )
        maps = compute_measures(stack, names)
        for name in names:
            measure_cols[name].append(maps[name].reshape(-1)[chosen])
        served = mean
        if temperature is not None:
            stack_t = softmax_stack(logits, temperature)
            served = stack_t.mean(axis=0).reshape(n_classes, -1)[:, chosen].T
            cols["probs_t"].append(served)
            entropy_t = compute_measures(stack_t, ("entropy",))["entropy"]
            measure_cols["entropy_t"].append(entropy_t.reshape(-1)[chosen])
        cols["index"].append(np.full(chosen.size, index, np.int32))
        cols["labels"].append(labels)
        cols["probs"].append(mean)
        cols["errors"].append((served.argmax(axis=1) != labels) & (labels >= 0))
        if single_logits is not None:
            one = softmax_stack(single_logits, None)
            ent = compute_measures(one, ("entropy",))["entropy"].reshape(-1)[chosen]
            pred = one[0].reshape(n_classes, -1)[:, chosen].argmax(axis=0)
            cols["s_ent"].append(ent)
            cols["s_err"].append((pred != labels) & (labels >= 0))

    def cat(parts: list[np.ndarray], dtype: type[np.generic], width: int = 0) -> np.ndarray:
        if parts:
            return np.concatenate(parts).astype(dtype, copy=False)
        return np.zeros((0, width) if width else 0, dtype)

    n_classes_out = predictor.config.n_classes
    return PixelSample(
        image_index=cat(cols["index"], np.int32),
        labels=cat(cols["labels"], np.int64),
        probs=cat(cols["probs"], np.float32, n_classes_out),
        probs_t=cat(cols["probs_t"], np.float32, n_classes_out) if temperature else None,
        measures={name: cat(parts, np.float32) for name, parts in measure_cols.items()},
        errors=cat(cols["errors"], np.bool_),
        single_entropy=cat(cols["s_ent"], np.float32) if single_pass is not None else None,
        single_errors=cat(cols["s_err"], np.bool_) if single_pass is not None else None,
        n_images=n_images,
        n_pixels_total=total,
        n_samples=predictor.n_samples,
        labelled=masks is not None,
        temperature=temperature,
    )
