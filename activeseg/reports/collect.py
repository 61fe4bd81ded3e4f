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

Only a uniform random sample of labelled pixels is kept, at most ``max_pixels`` in all, drawn by
the trainer's sampler (:class:`activeseg.models.evaluation.PixelReservoir`, bottom-k of a seeded
random key per pixel), so memory stays bounded and the report keeps the pixels the trainer's
metrics keep; when every labelled pixel fits, all of them are kept in image order and the
figures are exact.

Three things are counted over *every* labelled pixel, not the sample: the calibration sums at
``T = 1`` and at the version's T (``calibration`` / ``calibration_t``: the trainer's stream,
:func:`activeseg.models.evaluation.calibration_stream` fed by
:func:`activeseg.models.evaluation.stream_image`, so the report's calibration figures are the
trainer's exactly, however many pixels there are), the pixels per true class
(``class_counts``; its majority class is the report's background, see
:func:`activeseg.uncertainty.calibration.majority_class`), and, when the images come with region
maps (the project's superpixels or grid tiles, as the service computes them), one row per region
(:class:`RegionSample`): its pooled scores, labelled and wrong pixels and mean confidence.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from activeseg.models.evaluation import PixelReservoir, calibration_stream, stream_image
from activeseg.models.inference import Predictor
from activeseg.uncertainty import compute_measures, pool_mean
from activeseg.uncertainty.calibration import CalibrationAccumulator, region_error_counts
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.measures import ENTROPY, MEASURES

__all__ = [
    "DEFAULT_BINS",
    "ENSEMBLE_ROWS",
    "MIN_LABELLED_SHARE",
    "SINGLE_PASS_ROW",
    "SOFTMAX_ROWS",
    "TEMPERATURE_ROW",
    "PixelSample",
    "RegionSample",
    "collect_pixels",
    "measure_names",
    "single_pass_predictor",
    "softmax_stack",
]

SOFTMAX_ROWS: tuple[str, ...] = tuple(
    m.name for m in MEASURES.values() if m.reported and m.family == "softmax"
)
"""Softmax-based measures of the report (on the ``T = 1`` predictive distribution)."""

TEMPERATURE_ROW = "entropy_t"
"""Entropy of the temperature-scaled predictive distribution."""

ENSEMBLE_ROWS: tuple[str, ...] = tuple(
    m.name for m in MEASURES.values() if m.reported and m.family == "ensemble"
)
"""Ensemble-based measures of the report (need S >= 2 members or samples)."""

SINGLE_PASS_ROW = "entropy_one_pass"
"""Entropy of one deterministic forward pass, against that pass's own errors (S > 1 only)."""

DEFAULT_MAX_PIXELS = 200_000

DEFAULT_BINS = 15
"""Equal-width confidence bins of the calibration figures (the trainer's default too)."""

MIN_LABELLED_SHARE = 0.5
"""A region enters the per-region figures when at least this share of its pixels is labelled:
its error fraction is then measured on most of it, while its score (like the service's) is
pooled over all of it."""


def measure_names(n_samples: int) -> tuple[str, ...]:
    """The core measures computed for a stack of ``n_samples`` maps (ensemble ones if > 1)."""
    return SOFTMAX_ROWS + (ENSEMBLE_ROWS if n_samples > 1 else ())


@dataclass
class RegionSample:
    """One row per region (R regions over all images) with enough labelled pixels.

    Attributes:
        image_index: int32 ``[R]``: the image (0-based, input order); region_id: int32 ``[R]``.
        n_pixels: int64 ``[R]``: pixels in the region; n_labelled: int64 ``[R]`` of them
            labelled (>= :data:`MIN_LABELLED_SHARE` of ``n_pixels``).
        n_errors: int64 ``[R]``: labelled pixels where the served prediction is wrong.
        confidence, accuracy: float64 ``[R]``: mean max probability and fraction of right argmax
            over the labelled pixels at ``T = 1``; confidence_t, accuracy_t: the same at the
            version's temperature (None without one).
        scores: ``{measure: float64 [R]}``: the mean of the measure's pixel map over the whole
            region (:func:`activeseg.uncertainty.pool_mean`, the service's default pooling).
        kind: how the region maps were made (e.g. ``"superpixel 16"``), for the record.
    """

    image_index: npt.NDArray[np.int32]
    region_id: npt.NDArray[np.int32]
    n_pixels: npt.NDArray[np.int64]
    n_labelled: npt.NDArray[np.int64]
    n_errors: npt.NDArray[np.int64]
    confidence: npt.NDArray[np.float64]
    accuracy: npt.NDArray[np.float64]
    confidence_t: npt.NDArray[np.float64] | None
    accuracy_t: npt.NDArray[np.float64] | None
    scores: dict[str, npt.NDArray[np.float64]]
    kind: str | None = None

    @property
    def n_regions(self) -> int:
        """R: regions kept."""
        return int(self.n_labelled.size)

    @property
    def error_fraction(self) -> npt.NDArray[np.float64]:
        """float64 ``[R]``: wrong / labelled pixels of each region."""
        return self.n_errors / np.maximum(self.n_labelled, 1)

    @property
    def has_error(self) -> npt.NDArray[np.bool_]:
        """bool ``[R]``: the region holds at least one wrong labelled pixel."""
        return self.n_errors > 0


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
        class_counts: int64 ``[C]``: labelled pixels per true class over *all* labelled pixels
            (before sampling); zeros without labels.
        regions: per-region rows (:class:`RegionSample`) when region maps were given, else None.
        calibration: the calibration sums of the ``T = 1`` predictive distribution over *all*
            labelled pixels (before sampling), streamed as the trainer streams them; None
            without labels. calibration_t: the same at the version's temperature, or None.
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
    class_counts: npt.NDArray[np.int64] | None = None
    regions: RegionSample | None = None
    calibration: CalibrationAccumulator | None = None
    calibration_t: CalibrationAccumulator | None = None

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


_COLUMNS = ("index", "labels", "probs", "probs_t", "errors", "s_ent", "s_err")
_MEASURE = "measure:"  # prefix of the measure columns in the reservoir


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
    region_maps: Sequence[npt.NDArray[np.integer]] | None = None,
    region_kind: str | None = None,
    n_bins: int = DEFAULT_BINS,
) -> PixelSample:
    """Predict ``images`` (uint8 ``[H, W]`` or ``[H, W, 3]``) and sample their labelled pixels.

    ``masks``: uint8 ``[H, W]`` per image (255 = unlabelled), or None for unlabelled inputs
    (every pixel is a candidate; labels are -1 and no pixel counts as an error). ``temperature``:
    the version's fitted temperature or None. ``single_pass``: see
    :func:`single_pass_predictor`. ``region_maps``: int ``[H, W]`` region ids ``0..R-1`` per
    image (with ``masks`` only), for the per-region rows; ``region_kind`` names them.
    ``n_bins``: equal-width bins of the calibration sums, which see every labelled pixel (the
    sample's cap does not apply to them). Returns a :class:`PixelSample`.
    """
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    if region_maps is not None and (masks is None or len(region_maps) != len(images)):
        raise ValueError(
            f"region maps need masks and one map per image: {len(images)} images, "
            f"{len(region_maps)} region maps"
        )
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if temperature is not None and not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    n_images = len(images)
    # The trainer's sampler (models.evaluation.evaluate): with the same seed and capacity both
    # keep the same pixels, so their figures agree.
    reservoir = PixelReservoir(max_pixels, seed)
    names = measure_names(predictor.n_samples)
    measure_cols: dict[str, list[np.ndarray]] = {n: [] for n in names}
    if temperature is not None:
        measure_cols[TEMPERATURE_ROW] = []
    total = 0
    class_counts = np.zeros(predictor.config.n_classes, np.int64)
    # The trainer's calibration stream (models.evaluation.evaluate), over every labelled pixel.
    streams = (
        [calibration_stream(predictor.config.n_classes, n_bins) for _ in range(2)]
        if masks is not None
        else None
    )
    region_parts: dict[str, list[np.ndarray]] = {
        k: []
        for k in ("index", "id", "pixels", "labelled", "errors", "conf", "acc", "conf_t", "acc_t")
    }
    region_scores: dict[str, list[np.ndarray]] = {n: [] for n in measure_cols}
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
            candidates = np.flatnonzero(flat_mask != UNLABELLED)
        else:
            flat_mask = None
            candidates = np.arange(height * width)
        single_logits = next(singles) if singles is not None else None
        total += int(candidates.size)
        if flat_mask is not None:
            class_counts += np.bincount(flat_mask[candidates], minlength=class_counts.size)[
                : class_counts.size
            ]
        chosen = candidates  # every candidate is offered to the reservoir
        if chosen.size == 0:
            continue
        row: dict[str, np.ndarray] = {}
        stack = softmax_stack(logits, None)  # [S, C, H, W]
        n_classes = stack.shape[1]
        mean_map = stack.mean(axis=0) if streams is None else stream_image(streams[0], stack, mask)
        mean = mean_map.reshape(n_classes, -1)[:, chosen].T  # [p, C]
        labels = (
            flat_mask[chosen].astype(np.int64)
            if flat_mask is not None
            else np.full(chosen.size, -1, np.int64)
        )
        maps = compute_measures(stack, names)
        for name in names:
            row[_MEASURE + name] = maps[name].reshape(-1)[chosen]
        served = mean
        stack_t = None
        if temperature is not None:
            stack_t = softmax_stack(logits, temperature)
            mean_map_t = (
                stack_t.mean(axis=0) if streams is None else stream_image(streams[1], stack_t, mask)
            )
            served = mean_map_t.reshape(n_classes, -1)[:, chosen].T
            row["probs_t"] = served
            maps[TEMPERATURE_ROW] = compute_measures(stack_t, (ENTROPY.name,))[ENTROPY.name]
            row[_MEASURE + TEMPERATURE_ROW] = maps[TEMPERATURE_ROW].reshape(-1)[chosen]
        if region_maps is not None and flat_mask is not None:
            _add_regions(
                region_parts,
                region_scores,
                index,
                np.asarray(region_maps[index]),
                flat_mask.reshape(height, width),
                stack,
                stack_t,
                maps,
            )
        row["index"] = np.full(chosen.size, index, np.int32)
        row["labels"] = labels
        row["probs"] = mean
        row["errors"] = (served.argmax(axis=1) != labels) & (labels >= 0)
        if single_logits is not None:
            one = softmax_stack(single_logits, None)
            ent = compute_measures(one, (ENTROPY.name,))[ENTROPY.name].reshape(-1)[chosen]
            pred = one[0].reshape(n_classes, -1)[:, chosen].argmax(axis=0)
            row["s_ent"] = ent
            row["s_err"] = (pred != labels) & (labels >= 0)
        reservoir.add(row)

    def cat(parts: list[np.ndarray], dtype: type[np.generic], width: int = 0) -> np.ndarray:
        if parts:
            return np.concatenate(parts).astype(dtype, copy=False)
        return np.zeros((0, width) if width else 0, dtype)

    kept = reservoir.columns
    cols = {name: [kept[name]] if name in kept else [] for name in _COLUMNS}
    for name in measure_cols:
        measure_cols[name] = [kept[_MEASURE + name]] if _MEASURE + name in kept else []

    n_classes_out = predictor.config.n_classes
    regions = None
    if region_maps is not None:
        has_t = temperature is not None
        regions = RegionSample(
            image_index=cat(region_parts["index"], np.int32),
            region_id=cat(region_parts["id"], np.int32),
            n_pixels=cat(region_parts["pixels"], np.int64),
            n_labelled=cat(region_parts["labelled"], np.int64),
            n_errors=cat(region_parts["errors"], np.int64),
            confidence=cat(region_parts["conf"], np.float64),
            accuracy=cat(region_parts["acc"], np.float64),
            confidence_t=cat(region_parts["conf_t"], np.float64) if has_t else None,
            accuracy_t=cat(region_parts["acc_t"], np.float64) if has_t else None,
            scores={name: cat(parts, np.float64) for name, parts in region_scores.items()},
            kind=region_kind,
        )
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
        class_counts=class_counts,
        regions=regions,
        calibration=streams[0] if streams is not None else None,
        calibration_t=streams[1] if streams is not None and temperature is not None else None,
    )


def _add_regions(
    parts: dict[str, list[np.ndarray]],
    scores: dict[str, list[np.ndarray]],
    index: int,
    region_labels: np.ndarray,
    mask: np.ndarray,
    stack: np.ndarray,
    stack_t: np.ndarray | None,
    maps: dict[str, np.ndarray],
) -> None:
    """Append the rows of one image's regions to ``parts`` / ``scores`` (see
    :class:`RegionSample`). ``region_labels`` int ``[H, W]``, ``mask`` uint8 ``[H, W]``,
    ``stack`` / ``stack_t`` ``[S, C, H, W]`` probabilities at ``T = 1`` / at T, ``maps``
    ``{measure: [H, W]}``."""
    if region_labels.shape != mask.shape:
        raise ValueError(
            f"region map {index} has shape {region_labels.shape}, its image {mask.shape}"
        )
    n_regions = int(region_labels.max()) + 1 if region_labels.size else 0
    labelled = mask != UNLABELLED
    truth = mask.astype(np.int64)
    mean = stack.mean(axis=0)  # [C, H, W]
    n_labelled, wrong, conf_sum = region_error_counts(
        region_labels, n_regions, labelled, mean.argmax(axis=0) != truth, mean.max(axis=0)
    )
    errors, acc_t, conf_t = wrong, None, None
    if stack_t is not None:
        mean_t = stack_t.mean(axis=0)
        _, errors, conf_sum_t = region_error_counts(
            region_labels, n_regions, labelled, mean_t.argmax(axis=0) != truth, mean_t.max(axis=0)
        )
    n_pixels = np.bincount(region_labels.ravel(), minlength=n_regions)
    keep = (n_labelled > 0) & (n_labelled >= MIN_LABELLED_SHARE * n_pixels)
    denominator = np.maximum(n_labelled[keep], 1)
    if stack_t is not None:
        acc_t = 1.0 - errors[keep] / denominator
        conf_t = conf_sum_t[keep] / denominator
    parts["index"].append(np.full(int(keep.sum()), index, np.int32))
    parts["id"].append(np.flatnonzero(keep).astype(np.int32))
    parts["pixels"].append(n_pixels[keep])
    parts["labelled"].append(n_labelled[keep])
    parts["errors"].append(errors[keep])
    parts["conf"].append(conf_sum[keep] / denominator)
    parts["acc"].append(1.0 - wrong[keep] / denominator)
    if acc_t is not None and conf_t is not None:
        parts["acc_t"].append(acc_t)
        parts["conf_t"].append(conf_t)
    for name, values in scores.items():
        values.append(pool_mean(maps[name], region_labels, n_regions)[keep])
