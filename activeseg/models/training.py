"""Train the members of one model version on partially labelled masks.

Masks are uint8 ``[H, W]``; ``UNLABELLED`` (255) marks pixels nobody labelled, and the loss
ignores them: an image with a single labelled superpixel trains exactly that superpixel.
Training is seeded: member k draws its initial weights, dropout masks, batch order, crops and
augmentations from ``config.seed + k``, and on the CPU two runs give identical weights.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
import torch
import torch.nn.functional as F

from activeseg.models.checkpoint import StateDict, build_members
from activeseg.models.config import ModelConfig
from activeseg.models.device import resolve_device, rng_devices
from activeseg.models.inference import consecutive_batches
from activeseg.models.preprocess import (
    check_mask,
    intensity_range,
    normalise_image,
)
from activeseg.models.unet import UNet
from activeseg.uncertainty.labels import UNLABELLED

logger = logging.getLogger(__name__)

SHIFT_FRACTION = 8
"""Augmentation crops at most 1/8 of the patch side before padding it back."""


@dataclass(frozen=True)
class TrainProgress:
    """A progress report: ``fraction`` (0-1) covers all members of the job."""

    member: int
    n_members: int
    step: int
    epoch: int
    loss: float
    fraction: float
    val_loss: float | None = None


class HistoryEntry(TypedDict):
    """One member's log point: mean training loss since the last one and, with val data, the
    val loss."""

    member: int
    epoch: int
    step: int
    train_loss: float
    val_loss: float | None


@dataclass
class TrainResult:
    """Trained weights (one CPU state dict per member) and what happened on the way.

    ``history`` has one entry per member every ``config.eval_every`` steps and at its last
    step: member, epoch (passes over the labelled images so far), step, train_loss (mean since
    the previous entry), val_loss. ``best_val_loss`` is the mean over members of the validation
    loss of the returned weights (the best one with early stopping, else the final one), or
    None without a validation set.
    """

    states: list[StateDict]
    history: list[HistoryEntry] = field(default_factory=list)
    best_val_loss: float | None = None


def segmentation_loss(
    logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean cross entropy over labelled pixels.

    ``logits``: ``[B, C, H, W]``; ``target``: int64 ``[B, H, W]`` with ``UNLABELLED`` at
    unlabelled pixels, which get exactly zero gradient; ``class_weights``: ``[C]`` or None.
    """
    return F.cross_entropy(logits, target, weight=class_weights, ignore_index=UNLABELLED)


def labelled_class_counts(masks: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    """Labelled pixels per class ``[C]`` (int64) over ``masks`` (uint8 ``[H, W]`` each)."""
    counts = np.zeros(n_classes, dtype=np.int64)
    for mask in masks:
        labelled = mask[mask != UNLABELLED]
        counts += np.bincount(labelled, minlength=n_classes)[:n_classes]
    return counts


def prior_bias(counts: np.ndarray) -> np.ndarray:
    """Log class frequencies ``[C]`` (add-one smoothed, mean zero) for the output layer's bias.

    Starting from the label prior instead of uniform logits saves the first few hundred Adam
    steps that would otherwise go into learning "mostly background" through a bias that moves
    by about ``lr`` per step (Lin et al. 2017 initialise their classifier bias the same way).
    """
    log_freq = np.log((counts + 1.0) / (counts.sum() + counts.size))
    return (log_freq - log_freq.mean()).astype(np.float32)


def class_weights_from_masks(
    masks: Sequence[np.ndarray], n_classes: int, power: float = 1.0
) -> np.ndarray:
    """Inverse-frequency weights ``[C]`` from the labelled pixels of ``masks`` (``[H, W]`` each).

    A present class c gets ``(N / (n_present * N_c)) ** power``: with ``power=1`` every present
    class carries the same total weight; the square root (``power=0.5``, the config default)
    still lifts rare classes but over-segments them less (on 4 digit canvases it reached mIoU
    0.98-1.0 in 400 steps where ``power=1`` stayed at 0.83-0.92, blurring digit borders).
    Classes with no labelled pixel get 1.
    """
    counts = labelled_class_counts(masks, n_classes)
    weights = np.ones(n_classes, dtype=np.float64)
    present = counts > 0
    if present.any():
        weights[present] = (counts[present].sum() / (present.sum() * counts[present])) ** power
    return weights.astype(np.float32)


@dataclass(frozen=True)
class Augmentation:
    """Which random transforms training applies; each switch changes one aspect only.

    ``flip``: horizontal and vertical flips; ``rotate``: 90-degree rotations (180 only for
    non-square patches); ``shift``: a small crop padded back (the uncovered border is unlabelled);
    ``intensity``: image gain and offset (the mask is untouched). Flips and rotations change a
    digit's class (a mirrored 2, a turned 6 is a 9), so the digits dataset turns those two off.
    """

    flip: bool = True
    rotate: bool = True
    shift: bool = True
    intensity: bool = True

    @classmethod
    def from_config(cls, config: ModelConfig) -> Augmentation:
        return cls(
            flip=config.augment_flip,
            rotate=config.augment_rotate,
            shift=config.augment_shift,
            intensity=config.augment_intensity,
        )

    @property
    def any(self) -> bool:
        return self.flip or self.rotate or self.shift or self.intensity


class PatchSampler:
    """Draws training patches ``([C_in, h, w] float32, [h, w] int64)`` from decoded images.

    Every patch contains at least one labelled pixel: its position is drawn around a labelled
    pixel picked uniformly, so sparsely labelled images keep contributing. Images smaller than
    the patch are padded (symmetric for the image, ``UNLABELLED`` for the mask). The patch is
    cut from the raw image and normalised with the whole image's intensity range (computed
    once here), so it sees the same values as inference on the whole image.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        patch: tuple[int, int],
        in_channels: int,
        augmentation: Augmentation,
    ) -> None:
        self.images = images
        self.masks = masks
        self.patch = patch
        self.in_channels = in_channels
        self.augmentation = augmentation
        self.ranges = [intensity_range(image) for image in images]  # [2, C] each

    def sample(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raw = self.images[index]
        mask = self.masks[index]
        ph, pw = self.patch
        pad_h, pad_w = max(0, ph - mask.shape[0]), max(0, pw - mask.shape[1])
        if pad_h or pad_w:
            channel_pad = ((0, 0),) * (raw.ndim - 2)
            raw = np.pad(raw, ((0, pad_h), (0, pad_w), *channel_pad), mode="symmetric")
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=UNLABELLED)
        height, width = mask.shape
        labelled = np.flatnonzero(mask != UNLABELLED)
        y, x = divmod(int(labelled[rng.integers(labelled.size)]), width)
        top = int(rng.integers(max(0, y - ph + 1), min(y, height - ph) + 1))
        left = int(rng.integers(max(0, x - pw + 1), min(x, width - pw) + 1))
        crop = raw[top : top + ph, left : left + pw]
        image = normalise_image(crop, self.in_channels, self.ranges[index])
        mask = mask[top : top + ph, left : left + pw]
        if self.augmentation.any:
            image, mask = augment_pair(image, mask, rng, self.augmentation)
        return np.ascontiguousarray(image), np.ascontiguousarray(mask).astype(np.int64)


def augment_pair(
    image: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    augmentation: Augmentation | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Random transforms on ``image`` ``[C, h, w]`` and ``mask`` ``[h, w]`` (default: all).

    Geometry (flips, rotations, shift) moves image and mask together; intensity (gain 0.9-1.1,
    offset -0.1..0.1 on the normalised image) touches the image only. A switched-off transform
    is skipped entirely, so each switch alone changes only its own aspect.
    """
    aug = augmentation or Augmentation()
    if aug.flip:
        if rng.random() < 0.5:
            image, mask = image[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[:, ::-1, :], mask[::-1, :]
    height, width = mask.shape
    if aug.rotate:
        quarter_turns = int(rng.integers(4)) if height == width else 2 * int(rng.integers(2))
        image = np.rot90(image, quarter_turns, axes=(1, 2))
        mask = np.rot90(mask, quarter_turns, axes=(0, 1))
    if aug.shift and rng.random() < 0.5:
        max_dy, max_dx = height // SHIFT_FRACTION, width // SHIFT_FRACTION
        dy, dx = int(rng.integers(-max_dy, max_dy + 1)), int(rng.integers(-max_dx, max_dx + 1))
        shifted_image = np.zeros_like(image)
        shifted_mask = np.full_like(mask, UNLABELLED)
        src_y, dst_y = _shift_slices(dy, height)
        src_x, dst_x = _shift_slices(dx, width)
        shifted_image[:, dst_y, dst_x] = image[:, src_y, src_x]
        shifted_mask[dst_y, dst_x] = mask[src_y, src_x]
        image, mask = shifted_image, shifted_mask
    if aug.intensity:
        gain = np.float32(rng.uniform(0.9, 1.1))
        offset = np.float32(rng.uniform(-0.1, 0.1))
        image = image * gain + offset
    return image, mask


def _shift_slices(delta: int, size: int) -> tuple[slice, slice]:
    """Source and destination slices that move content by ``delta`` along an axis of ``size``."""
    return (
        slice(max(0, -delta), size - max(0, delta)),
        slice(max(0, delta), size + min(0, delta)),
    )


@contextmanager
def deterministic_torch(device: torch.device) -> Iterator[None]:
    """Deterministic kernels (and cuDNN settings) for the block; restores the old settings."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn_deterministic = torch.backends.cudnn.deterministic
    cudnn_benchmark = torch.backends.cudnn.benchmark
    # warn_only: a CUDA op without a deterministic kernel should warn, not kill a retrain.
    torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=previous_warn)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark


def validation_loss(
    model: torch.nn.Module,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    config: ModelConfig,
    device: torch.device,
    class_weights: torch.Tensor | None,
) -> float | None:
    """Mean (weighted) cross entropy over all labelled validation pixels, in eval mode.

    Whole images (``[H, W(, 3)]``, as decoded), batched when consecutive ones share a size.
    None when no validation pixel is labelled.
    """
    model.eval()
    total = 0.0
    weight_sum = 0.0
    pairs = list(zip(images, masks, strict=True))
    with torch.inference_mode():
        start = 0
        for batch in consecutive_batches((image for image, _ in pairs), config.batch_size):
            batch_masks = [mask for _, mask in pairs[start : start + len(batch)]]
            start += len(batch)
            x = torch.from_numpy(
                np.stack([normalise_image(image, config.in_channels) for image in batch])
            ).to(device)
            target = torch.from_numpy(np.stack(batch_masks).astype(np.int64)).to(device)
            labelled = target != UNLABELLED
            if not bool(labelled.any()):
                continue
            logits = model(x)
            total += float(
                F.cross_entropy(
                    logits,
                    target,
                    weight=class_weights,
                    ignore_index=UNLABELLED,
                    reduction="sum",
                )
            )
            if class_weights is None:
                weight_sum += float(labelled.sum())
            else:
                weight_sum += float(class_weights[target[labelled]].sum())
    return total / weight_sum if weight_sum > 0 else None


class ProgressThrottle:
    """Calls ``progress`` at most every ``interval_s`` seconds, and always when forced; one
    throttle spans every member of a job."""

    def __init__(self, progress: Callable[[TrainProgress], None] | None, interval_s: float):
        self.progress = progress
        self.interval_s = interval_s
        self.last = -math.inf

    def __call__(self, report: TrainProgress, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress is not None and (force or now - self.last >= self.interval_s):
            self.last = now
            self.progress(report)


def _check_inputs(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], n_classes: int, what: str
) -> None:
    if len(images) != len(masks):
        raise ValueError(f"{what}: {len(images)} images but {len(masks)} masks")
    for index, (image, mask) in enumerate(zip(images, masks, strict=True)):
        if image.dtype.kind not in "iuf":
            raise TypeError(
                f"{what} image {index} must hold integers or floats (uint8, uint16, float32), "
                f"got {image.dtype}"
            )
        check_mask(mask, image, n_classes, index)


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier before optimiser step ``step`` (0-based) of ``total_steps``.

    Linear warm-up from ``1 / warmup_steps`` to 1 over the first ``warmup_steps`` steps (Adam's
    early moment estimates are noisy; Goyal et al. 2017), then cosine decay to zero at the end
    of the budget (Loshchilov and Hutter 2017).
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(step - warmup_steps, decay_steps) / decay_steps
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def shrink_perturb(
    previous: Mapping[str, torch.Tensor],
    fresh: Mapping[str, torch.Tensor],
    parameter_names: set[str],
    shrink: float,
    perturb: float,
) -> StateDict:
    """Shrink and perturb (Ash and Adams 2020): ``theta <- shrink * theta + perturb * theta_0``.

    ``previous``: the last version's state dict; ``fresh``: a freshly initialised state dict of
    the same network (``theta_0``, the noise drawn from the initialisation distribution). Only
    the learnable parameters named in ``parameter_names`` change; buffers (BatchNorm running
    statistics, counters) are kept from ``previous`` and re-estimated by training. Warm starts
    fit the new labels worse than cold ones; shrinking restores gradient balance between old
    and new data and the perturbation restores the variety a fresh start has, at a fraction of
    a cold start's cost.
    """
    out: StateDict = {}
    for name, tensor in previous.items():
        if name in parameter_names:
            out[name] = shrink * tensor + perturb * fresh[name].to(tensor.device, tensor.dtype)
        else:
            out[name] = tensor.clone()
    return out


def loss_class_weights(
    config: ModelConfig, val_masks: Sequence[np.ndarray] | None
) -> np.ndarray | None:
    """Class weights ``[C]`` for the loss, or None, as ``config.class_weights`` asks.

    ``"val"`` takes inverse frequencies from the fully labelled validation masks: the labelled
    training pixels are chosen by the acquisition strategy, so weights from them would give a
    random and an active run different losses. Without a labelled validation pixel it falls
    back to no weights and logs why.
    """
    if config.class_weights == "none":
        return None
    if not val_masks or not any(bool((mask != UNLABELLED).any()) for mask in val_masks):
        logger.warning(
            "class_weights='val' but no labelled validation pixel: training without weights",
            extra={"reason": "no labelled val masks"},
        )
        return None
    return class_weights_from_masks(val_masks, config.n_classes, config.class_weight_power)


def _batches(n_images: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Image indices per batch, endlessly: shuffled passes over the labelled images."""
    while True:
        order = rng.permutation(n_images)
        for start in range(0, n_images, batch_size):
            yield order[start : start + batch_size]


def _initial_model(
    config: ModelConfig,
    bias: np.ndarray,
    init_state: Mapping[str, torch.Tensor] | None,
) -> UNet:
    """The network member training starts from (seed the RNG first): see ``train``."""
    # Always draw the fresh weights, so every init mode consumes the RNG alike.
    fresh = UNet.from_config(config)
    head_bias = fresh.head.bias
    assert head_bias is not None
    with torch.no_grad():
        head_bias.copy_(torch.from_numpy(bias))
    if init_state is None:
        return fresh
    if config.init == "warm":
        return build_members(config, [init_state])[0]
    parameter_names = {name for name, _ in fresh.named_parameters()}
    state = shrink_perturb(
        init_state, fresh.state_dict(), parameter_names, config.shrink, config.perturb
    )
    return build_members(config, [state])[0]


@dataclass(frozen=True)
class TrainingData:
    """What every member of one job trains on, prepared once: the patch sampler over the
    labelled images, the loss's class weights (on the training device), the output layer's
    starting bias and, optionally, the fully labelled validation images.

    Build it with :meth:`prepare`; :func:`train_member` draws everything random from the
    member's seed, so one ``TrainingData`` serves every member.
    """

    sampler: PatchSampler
    class_weights: torch.Tensor | None
    bias: np.ndarray  # float32 [C]
    val_images: Sequence[np.ndarray] | None = None
    val_masks: Sequence[np.ndarray] | None = None

    @classmethod
    def prepare(
        cls,
        config: ModelConfig,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        device: torch.device,
        val_images: Sequence[np.ndarray] | None = None,
        val_masks: Sequence[np.ndarray] | None = None,
    ) -> TrainingData:
        """``images``/``masks``: every one with a labelled pixel (``train`` drops the others);
        patches have side ``config.patch_size``, or the largest image side if smaller."""
        has_val = val_images is not None and val_masks is not None
        patch = (
            min(config.patch_size, max(mask.shape[0] for mask in masks)),
            min(config.patch_size, max(mask.shape[1] for mask in masks)),
        )
        sampler = PatchSampler(
            images, masks, patch, config.in_channels, Augmentation.from_config(config)
        )
        weights = loss_class_weights(config, val_masks if has_val else None)
        return cls(
            sampler=sampler,
            class_weights=None if weights is None else torch.from_numpy(weights).to(device),
            bias=prior_bias(labelled_class_counts(masks, config.n_classes)),
            val_images=val_images if has_val else None,
            val_masks=val_masks if has_val else None,
        )

    @property
    def n_images(self) -> int:
        return len(self.sampler.masks)

    @property
    def has_val(self) -> bool:
        return self.val_images is not None and self.val_masks is not None


@dataclass
class MemberResult:
    """One trained member: its CPU state dict, its curve (``HistoryEntry`` every
    ``config.eval_every`` steps and at its last step) and the validation loss of the returned
    weights (None without validation data)."""

    state: StateDict
    history: list[HistoryEntry]
    val_loss: float | None


class _EarlyStopping:
    """The best validation weights so far and whether ``patience`` checks went by without a
    better one; ``patience=None`` never stops and keeps no weights."""

    def __init__(self, patience: int | None) -> None:
        self.patience = patience
        self.best_val = math.inf
        self.best_state: StateDict | None = None
        self.checks_without_gain = 0

    def should_stop(self, model: torch.nn.Module, val_loss: float | None) -> bool:
        if self.patience is None or val_loss is None:
            return False
        if val_loss < self.best_val:
            self.best_val = val_loss
            self.best_state = copy.deepcopy(model.state_dict())
            self.checks_without_gain = 0
        else:
            self.checks_without_gain += 1
        return self.checks_without_gain >= self.patience


def _train_step(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data: TrainingData,
    batch: np.ndarray,
    rng: np.random.Generator,
    device: torch.device,
) -> float | None:
    """One optimiser step on the patches of ``batch`` (image indices); None, and no step,
    when the shift augmentation pushed every label out of the patches."""
    patches = [data.sampler.sample(int(i), rng) for i in batch]
    x = torch.from_numpy(np.stack([p[0] for p in patches])).to(device)
    target = torch.from_numpy(np.stack([p[1] for p in patches])).to(device)
    if not bool((target != UNLABELLED).any()):
        return None
    loss = segmentation_loss(model(x), target, data.class_weights)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()
    scheduler.step()
    return float(loss.detach())


def train_member(
    config: ModelConfig,
    data: TrainingData,
    member: int = 0,
    init_state: Mapping[str, torch.Tensor] | None = None,
    *,
    device: torch.device | None = None,
    reporter: ProgressThrottle | None = None,
) -> MemberResult:
    """Train member ``member`` of ``config`` for ``config.steps`` steps: the pure step a job
    repeats per member (no database, no blob store).

    Seeded by ``config.seed + member`` (initial weights, dropout, batch order, crops,
    augmentations) under deterministic kernels; the caller's RNG state is left as it was.
    ``init_state`` is used as ``config.init`` says (see :func:`train`). Validation data in
    ``data`` give the val losses every ``config.eval_every`` steps and, when
    ``config.patience`` is set, early stopping with the best validation weights.
    """
    device = device or resolve_device(config.device)
    total_steps, n_members = config.steps, config.n_members
    steps_per_pass = math.ceil(data.n_images / config.batch_size)
    warmup_steps = int(config.warmup_fraction * total_steps)
    report = reporter or ProgressThrottle(None, math.inf)
    stopping = _EarlyStopping(config.patience if data.has_val else None)
    history: list[HistoryEntry] = []
    with deterministic_torch(device), torch.random.fork_rng(devices=rng_devices(device)):
        torch.manual_seed(config.seed + member)
        rng = np.random.default_rng(config.seed + member)
        model = _initial_model(config, data.bias, init_state).to(device)
        optimiser = torch.optim.AdamW(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda done: lr_factor(done, total_steps, warmup_steps)
        )
        val_loss: float | None = None
        window: list[float] = []
        mean_loss, step = math.nan, 0
        model.train()
        batches = _batches(data.n_images, config.batch_size, rng)
        while step < total_steps:
            loss = _train_step(model, optimiser, scheduler, data, next(batches), rng, device)
            if loss is None:
                continue
            step += 1
            window.append(loss)
            fraction = min(1.0, (member + step / total_steps) / n_members)
            epoch = (step - 1) // steps_per_pass
            report(TrainProgress(member, n_members, step, epoch, loss, fraction))
            if step % config.eval_every and step < total_steps:
                continue
            mean_loss = sum(window) / len(window)
            window = []
            val_loss = _check_val(model, data, config, device)
            history.append(
                {
                    "member": member,
                    "epoch": epoch,
                    "step": step,
                    "train_loss": mean_loss,
                    "val_loss": val_loss,
                }
            )
            report(TrainProgress(member, n_members, step, epoch, mean_loss, fraction, val_loss))
            if stopping.should_stop(model, val_loss):
                logger.info(
                    "early stop",
                    extra={"member": member, "step": step, "best_val_loss": stopping.best_val},
                )
                break
        kept_val_loss = val_loss  # of the weights returned: the best ones when stopping kept any
        if stopping.best_state is not None:
            model.load_state_dict(stopping.best_state)
            kept_val_loss = stopping.best_val
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    last_epoch = (step - 1) // steps_per_pass if step else 0
    final = TrainProgress(
        member, n_members, step, last_epoch, mean_loss, (member + 1) / n_members, val_loss
    )
    report(final, force=True)
    return MemberResult(state=state, history=history, val_loss=kept_val_loss)


def _check_val(
    model: torch.nn.Module, data: TrainingData, config: ModelConfig, device: torch.device
) -> float | None:
    """The validation loss of ``model`` (None without validation data); back in train mode."""
    if data.val_images is None or data.val_masks is None:
        return None
    loss = validation_loss(
        model, data.val_images, data.val_masks, config, device, data.class_weights
    )
    model.train()
    return loss


def _labelled_only(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images (and masks) with at least one labelled pixel; raises when none has one."""
    keep = [i for i, mask in enumerate(masks) if bool((mask != UNLABELLED).any())]
    if not keep:
        raise ValueError("training masks have no labelled pixel (all 255); label something first")
    if len(keep) < len(images):
        logger.info(
            "skipping images without labels",
            extra={"skipped": len(images) - len(keep), "kept": len(keep)},
        )
    return [images[i] for i in keep], [masks[i] for i in keep]


def _check_init_states(
    config: ModelConfig, init_states: Sequence[Mapping[str, torch.Tensor]] | None
) -> None:
    if init_states is None:
        return
    if config.init == "cold":
        raise ValueError(
            "init 'cold' starts from fresh weights: pass no init_states, or set init to "
            "'warm' or 'shrink_perturb'"
        )
    if len(init_states) != config.n_members:
        raise ValueError(
            f"init_states has {len(init_states)} state(s) but method {config.method!r} "
            f"trains {config.n_members} member(s)"
        )


def train(
    config: ModelConfig,
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    val_images: Sequence[np.ndarray] | None = None,
    val_masks: Sequence[np.ndarray] | None = None,
    init_states: Sequence[Mapping[str, torch.Tensor]] | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    *,
    progress_interval_s: float = 1.0,
) -> TrainResult:
    """Train ``config.n_members`` UNets on partially labelled masks for ``config.steps`` steps.

    ``images``: ``[H, W]`` or ``[H, W, 3]`` uint8, uint16 or float32 (normalised by
    ``normalise_image``); ``masks``: uint8 ``[H, W]``, 255 = unlabelled. Images without any
    labelled pixel are skipped. Each step takes a batch of ``config.batch_size`` random
    patches (side ``config.patch_size``, or the largest image side if smaller) from shuffled
    passes over the labelled images; the budget is fixed whatever the number of labelled
    images, with linear warm-up and cosine decay (``lr_factor``). The final
    weights are returned. Validation data (``val_images``/``val_masks``, fully labelled) give
    the val losses in ``history`` every ``config.eval_every`` steps, the class weights when
    ``config.class_weights == "val"``, and, only when ``config.patience`` is set, early stopping
    with the best validation weights. ``init_states`` (one per member, the previous version)
    are used as ``config.init`` says: ``warm`` starts from them, ``shrink_perturb`` from
    ``shrink * theta + perturb * theta_fresh``; ``cold`` takes none. A fresh network's output
    bias starts at the log label prior. ``progress`` is called after a step when
    ``progress_interval_s`` seconds have passed since the last call, and always when a member
    finishes (the last call has ``fraction == 1``). Each member is :func:`train_member`.
    """
    _check_inputs(images, masks, config.n_classes, "training")
    train_images, train_masks = _labelled_only(images, masks)
    has_val = val_images is not None and val_masks is not None
    if val_images is not None and val_masks is not None:
        _check_inputs(val_images, val_masks, config.n_classes, "validation")
    _check_init_states(config, init_states)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    data = TrainingData.prepare(
        config,
        train_images,
        train_masks,
        device,
        val_images if has_val else None,
        val_masks if has_val else None,
    )
    reporter = ProgressThrottle(progress, progress_interval_s)
    members = [
        train_member(
            config,
            data,
            member,
            None if init_states is None else init_states[member],
            device=device,
            reporter=reporter,
        )
        for member in range(config.n_members)
    ]
    val_losses = [m.val_loss for m in members if m.val_loss is not None]
    return TrainResult(
        states=[m.state for m in members],
        history=[entry for m in members for entry in m.history],
        best_val_loss=float(np.mean(val_losses)) if val_losses else None,
    )
