"""Compute the model sections of a report (calibration, error detection, shift) in one pass.

Cost: one forward pass per held-out image (S samples), one deterministic pass for the single-pass
row when S > 1, and one pass per perturbed copy of at most ``max_shift_images`` images; then
numpy on at most ``max_pixels`` sampled pixels (plus a bootstrap on at most 20 000); the
calibration sums stream over every labelled pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from activeseg.models.inference import Predictor
from activeseg.reports.calibration import calibration_section
from activeseg.reports.collect import (
    DEFAULT_BINS,
    DEFAULT_MAX_PIXELS,
    PixelSample,
    collect_pixels,
    single_pass_predictor,
)
from activeseg.reports.detection import error_detection_section
from activeseg.reports.shift import OOD_CONDITIONS, PERTURBATIONS, perturb, shift_section

__all__ = ["ReportOptions", "model_sections"]

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ReportOptions:
    """Knobs of a report; the defaults keep a report of a small project to seconds on a CPU."""

    n_bins: int = DEFAULT_BINS
    max_pixels: int = DEFAULT_MAX_PIXELS
    n_boot: int = 200
    shift: bool = True
    max_shift_images: int = 16
    max_shift_pixels: int = 50_000
    seed: int = 0


def _noop(fraction: float, message: str) -> None:
    return None


def model_sections(
    predictor: Predictor,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    *,
    split: str,
    temperature: float | None,
    options: ReportOptions | None = None,
    progress: Progress | None = None,
    region_maps: Sequence[np.ndarray] | None = None,
    region_kind: str | None = None,
) -> dict[str, Any]:
    """``{"calibration", "error_detection", "shift"}`` sections for held-out ``images``.

    Args:
        predictor: the version's predictor; its own ``temperature`` is ignored (the logits are
            taken unscaled and ``temperature`` is applied here, so both T = 1 and T are seen).
        images: uint8 ``[H, W]`` or ``[H, W, 3]``; masks: uint8 ``[H, W]``, 255 = unlabelled.
        split: which split the images are (recorded in the report).
        temperature: the version's fitted temperature, or None.
        options: :class:`ReportOptions`.
        progress: called with (fraction 0-1 of this step, message).
        region_maps: int ``[H, W]`` region ids ``0..R-1`` per image (the project's superpixels
            or grid tiles, made as the service makes them), for the per-region figures; None
            leaves them out. region_kind: how they were made (e.g. ``"superpixel 16"``).
    """
    opts = options or ReportOptions()
    report_progress = progress or _noop
    single = single_pass_predictor(predictor)
    report_progress(0.0, f"predicting {len(images)} {split} images")
    sample = collect_pixels(
        predictor,
        images,
        masks,
        temperature=temperature,
        max_pixels=opts.max_pixels,
        seed=opts.seed,
        single_pass=single,
        region_maps=region_maps,
        region_kind=region_kind,
        n_bins=opts.n_bins,
    )
    report_progress(0.4, "calibration and error detection")
    sections: dict[str, Any] = {
        "calibration": calibration_section(sample, split, opts.n_bins),
        "error_detection": error_detection_section(sample, n_boot=opts.n_boot, seed=opts.seed),
        "shift": None,
    }
    if opts.shift and images:
        n = min(len(images), opts.max_shift_images)
        shift_images, shift_masks = list(images[:n]), list(masks[:n])
        samples: dict[str, PixelSample] = {}
        steps = 1 + len(PERTURBATIONS)
        for k, condition in enumerate(("clean", *PERTURBATIONS)):
            report_progress(0.5 + 0.5 * k / steps, f"shift check: {condition}")
            rng = np.random.default_rng([opts.seed, k])
            batch = (
                shift_images
                if condition == "clean"
                else [perturb(image, condition, rng) for image in shift_images]
            )
            samples[condition] = collect_pixels(
                predictor,
                batch,
                None if condition in OOD_CONDITIONS else shift_masks,
                temperature=temperature,
                max_pixels=opts.max_shift_pixels,
                seed=opts.seed,
            )
        sections["shift"] = shift_section(samples, opts.n_bins)
        sections["shift"]["n_images"] = n
    report_progress(1.0, "model sections done")
    return sections
