"""Turn images into probability stacks ``[S, C, H, W]``: one interface for all three methods.

``S`` is the number of probability maps per image: K ensemble members (Lakshminarayanan et al.
2017), T MC-dropout samples (Gal and Ghahramani 2016) or 1. The uncertainty layer reads the
stack and never needs to know which method made it.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from activeseg.models.config import ModelConfig
from activeseg.models.device import resolve_device, rng_devices
from activeseg.models.preprocess import normalise_image
from activeseg.models.unet import UNet, enable_mc_dropout

logger = logging.getLogger(__name__)

DEFAULT_MAX_FORWARD_BATCH = 64
"""Most images one MC-dropout forward pass holds (batch x repeated samples)."""

DEFAULT_TILE = 512
"""Side of the windows a large image is cut into. A full-resolution feature map of the default
UNet is then 16 MiB (16 channels, float32), while the overlap costs about
``(512 / 448)**2 = 1.31x`` the pixels of a large image (1.43x at 6000 px, where 14 windows per
side are the fewest that fit). A multiple of ``2**depth`` for every depth the config allows."""

DEFAULT_TILE_MARGIN = 32
"""Pixels at each window border that no output is taken from (at least; windows are spread
evenly, so most margins are wider). Border pixels of a window see zero padding where the image
has context. A network whose receptive field fits the margin tiles exactly (tests/models); the
default depth-4 UNet sees about 100 px around a pixel, and with 128 px windows and this margin a
random network with calibrated BatchNorm differed from the untiled pass by 0.003 on average
(0.04 at most) in probability. Wider margins cost ``(tile / (tile - 2 * margin))**2`` pixels."""

DEFAULT_MAX_UNTILED_PIXELS = 1024 * 1024
"""Images with more pixels are predicted window by window. Up to 1 Mpx a whole forward pass is
held (the default UNet's full-resolution feature maps are 64 MiB each there); below it a 512 px
window layout would cost up to 2.25x the pixels (overlap) for little memory saved."""

ImagePart = tuple[tuple[slice, slice], np.ndarray]
"""``((rows, cols), values)``: where in the image ``values [S, C, h, w]`` belong."""


def consecutive_batches(
    images: Iterable[np.ndarray],
    batch_size: int,
    *,
    alone: Callable[[np.ndarray], bool] | None = None,
) -> Iterator[list[np.ndarray]]:
    """Group consecutive images of equal shape into lists of at most ``batch_size``.

    Order is kept and only one batch is held at a time, so a pool of any length streams. An
    image for which ``alone(image)`` is true (a large image that is tiled) gets a list of its own.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[np.ndarray] = []
    for image in images:
        single = alone is not None and alone(image)
        if batch and (single or len(batch) == batch_size or image.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(image)
        if single:
            yield batch
            batch = []
    if batch:
        yield batch


class AxisWindow(NamedTuple):
    """One window along one axis: it reads ``[start, stop)`` of the padded image and writes its
    core ``[core_start, core_stop)`` of the image."""

    start: int
    stop: int
    core_start: int
    core_stop: int

    @property
    def core(self) -> slice:
        """The core in image coordinates."""
        return slice(self.core_start, self.core_stop)

    @property
    def inner(self) -> slice:
        """The core in window coordinates."""
        return slice(self.core_start - self.start, self.core_stop - self.start)


def axis_windows(length: int, tile: int, margin: int, align: int) -> list[AxisWindow]:
    """Cut an axis of ``length`` pixels into overlapping windows whose cores partition it.

    The axis is first padded to ``padded = ceil(length / align) * align``, as the UNet pads its
    input, and an axis no longer than ``tile`` is one window of ``padded`` pixels. Otherwise
    every window is ``tile`` long, starts at a multiple of ``align`` (so the network pools on the
    same grid as for the whole image) and the fewest windows are spread evenly from 0 to
    ``padded - tile``: consecutive starts are at most ``tile - 2 * margin`` apart. Each pixel
    belongs to the core of the window where it is most interior (cuts at the middle of each
    overlap), so every core keeps at least ``margin`` pixels from its window's inner borders.
    """
    padded = -(-length // align) * align
    if padded <= tile:
        return [AxisWindow(0, padded, 0, length)]
    span, stride = (padded - tile) // align, (tile - 2 * margin) // align
    n = 1 + -(-span // stride)
    starts = [(i * span // (n - 1)) * align for i in range(n)]
    cuts = [0] + [(a + b + tile) // 2 for a, b in zip(starts, starts[1:], strict=False)]
    cuts = [min(cut, length) for cut in cuts] + [length]
    windows = [AxisWindow(s, s + tile, cuts[i], cuts[i + 1]) for i, s in enumerate(starts)]
    # A margin below ``align`` can push the last cut into the padding: drop an empty core.
    return [w for w in windows if w.core_start < w.core_stop]


@dataclass(frozen=True)
class WindowLayout:
    """The windows of one ``[H, W]`` image: every (row, col) pair, row by row."""

    rows: list[AxisWindow]
    cols: list[AxisWindow]

    @property
    def padded(self) -> tuple[int, int]:
        """``(H, W)`` of the padded image the windows read."""
        return self.rows[-1].stop, self.cols[-1].stop

    def windows(self) -> list[tuple[AxisWindow, AxisWindow]]:
        return [(row, col) for row in self.rows for col in self.cols]


class Predictor:
    """Ensemble, MC-dropout or single-network inference for one model version.

    ``members``: the trained networks (K for an ensemble, 1 otherwise), each mapping
    ``[B, in_channels, H, W]`` to logits ``[B, C, H, W]``. ``temperature``: the fitted
    temperature of this version (Guo et al. 2017); every sample's logits are divided by it
    before the softmax. MC-dropout sampling is reproducible: the dropout masks of the n-th batch
    come from ``config.seed + n`` in a forked RNG, so the global RNG is left untouched.
    ``mc_batched`` runs the T samples as one forward pass over the batch repeated T times
    (at most ``max_forward_batch`` images per pass) instead of T separate passes. Default
    (None): batched on CUDA, where one large launch beats T small ones, separate on the CPU,
    where ``benchmarks/model_speed.py`` measured the batched pass slower (T=10 cost 14-16x a
    single pass against 10-11x for separate passes: the repeated activations fall out of cache
    and are re-allocated every pass). A UNet is encoded once per batch and only its decoder runs
    T times (dropout sits after the bottleneck and later), with the same masks and logits as T
    full passes.

    Large images (more than ``max_untiled_pixels``; None never tiles) are predicted window by
    window (:func:`axis_windows`: ``tile`` px windows, at least ``tile_margin`` px of context
    around every output pixel), so memory is bounded by a window, not by the image. The whole
    image is normalised once before it is cut (as in training), and ``tile_batch`` windows share
    a forward pass (default: 1 on the CPU, where batching gains nothing and multiplies the
    activations, ``config.batch_size`` on CUDA). MC dropout runs one window at a time and seeds
    every window with ``config.seed``, so sample t uses the same dropout masks in every window:
    a tiled image's masks depend on the seed only, not on its position in the stream or on the
    number of threads, and each sample is one network over the whole image (no seam between
    masks). They equal the masks of the same image predicted untiled as the first batch.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        config: ModelConfig,
        temperature: float | None = None,
        *,
        mc_batched: bool | None = None,
        max_forward_batch: int = DEFAULT_MAX_FORWARD_BATCH,
        max_untiled_pixels: int | None = DEFAULT_MAX_UNTILED_PIXELS,
        tile: int = DEFAULT_TILE,
        tile_margin: int = DEFAULT_TILE_MARGIN,
        tile_batch: int | None = None,
    ) -> None:
        if len(members) != config.n_members:
            raise ValueError(
                f"method {config.method!r} needs {config.n_members} member network(s), "
                f"got {len(members)}"
            )
        if temperature is not None and not (np.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self.align = 2**config.depth
        if tile % self.align or tile - 2 * tile_margin < self.align or tile_margin < 0:
            raise ValueError(
                f"tile must be a multiple of 2**depth = {self.align} and exceed twice the margin "
                f"by at least {self.align}, got tile={tile}, tile_margin={tile_margin}; "
                f"e.g. tile={DEFAULT_TILE}, tile_margin={DEFAULT_TILE_MARGIN}"
            )
        self.config = config
        self.temperature = temperature
        self.max_untiled_pixels = max_untiled_pixels
        self.tile = tile
        self.tile_margin = tile_margin
        self.device = resolve_device(config.device)
        self.mc_batched = self.device.type == "cuda" if mc_batched is None else mc_batched
        self.max_forward_batch = max(1, max_forward_batch)
        default_tile_batch = config.batch_size if self.device.type == "cuda" else 1
        self.tile_batch = max(1, tile_batch or default_tile_batch)
        self.members = [member.to(self.device) for member in members]
        for member in self.members:
            if config.method == "mc_dropout":
                enable_mc_dropout(member)
            else:
                member.eval()

    @property
    def n_samples(self) -> int:
        """S: probability maps per image."""
        return self.config.n_samples

    def _to_batch_tensor(self, batch: list[np.ndarray]) -> torch.Tensor:
        array = np.stack([normalise_image(image, self.config.in_channels) for image in batch])
        return torch.from_numpy(array).to(self.device)

    def is_tiled(self, image: np.ndarray) -> bool:
        """Whether ``image`` is predicted window by window (more than ``max_untiled_pixels``)."""
        limit = self.max_untiled_pixels
        return limit is not None and image.ndim >= 2 and image.shape[0] * image.shape[1] > limit

    def window_layout(self, height: int, width: int) -> WindowLayout:
        """The windows a tiled ``[H, W]`` image is cut into."""
        rows = axis_windows(height, self.tile, self.tile_margin, self.align)
        cols = axis_windows(width, self.tile, self.tile_margin, self.align)
        return WindowLayout(rows, cols)

    def _mc_logits(self, x: torch.Tensor, batch_index: int) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]`` -> logits ``[T, B, C, H, W]`` with T dropout masks."""
        member = self.members[0]
        samples = self.config.mc_samples
        batch = x.shape[0]
        per_pass = max(1, self.max_forward_batch // batch) if self.mc_batched else 1
        devices = rng_devices(self.device)
        chunks = []
        # Nothing random happens before the bottleneck's dropout, so encoding once and decoding
        # T times draws the same masks in the same order as T full passes.
        unet = member if isinstance(member, UNet) else None
        encoded = unet.encode(x) if unet is not None else None
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + batch_index)
            done = 0
            while done < samples:
                n = min(per_pass, samples - done)
                # Dropout2d draws an independent mask per batch entry, so the n copies of the
                # batch are n independent samples computed in a single forward pass.
                if unet is not None and encoded is not None:
                    out = unet.decode(encoded.repeat(n))
                else:
                    out = member(x.repeat(n, 1, 1, 1))
                chunks.append(out.view(n, batch, *out.shape[1:]))
                done += n
        return torch.cat(chunks, dim=0)

    def _logits(self, x: torch.Tensor, batch_index: int) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]`` -> unscaled logits ``[S, B, C, H, W]``."""
        if self.config.method == "mc_dropout":
            return self._mc_logits(x, batch_index)
        return torch.stack([member(x) for member in self.members])

    def _scale(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.temperature is None else logits / self.temperature

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self._scale(logits), dim=2)

    def _row_bands(self, image: np.ndarray, layout: WindowLayout) -> deque[torch.Tensor]:
        """The normalised, padded image cut into the row spans of the window rows.

        Normalised once as a whole (per-image statistics must not become per-window ones), then
        copied into bands so that each band can be freed once its windows ran: the input's
        memory shrinks while the output maps fill up.
        """
        normalised = normalise_image(image, self.config.in_channels)
        (pad_h, pad_w), (height, width) = layout.padded, normalised.shape[1:]
        if pad_h > height or pad_w > width:
            # As UNet.forward pads: reflect where the image is large enough, zeros otherwise.
            fits = pad_h - height < height and pad_w - width < width
            mode: Literal["reflect", "constant"] = "reflect" if fits else "constant"
            padding = ((0, 0), (0, max(0, pad_h - height)), (0, max(0, pad_w - width)))
            normalised = np.pad(normalised, padding, mode=mode)
        return deque(
            torch.from_numpy(np.ascontiguousarray(normalised[:, row.start : row.stop]))
            for row in layout.rows
        )

    def _tiled_parts(
        self, image: np.ndarray, finish: Callable[[torch.Tensor], torch.Tensor]
    ) -> Iterator[ImagePart]:
        """One part per window of a large image: its core of ``finish(logits)``."""
        layout = self.window_layout(image.shape[0], image.shape[1])
        bands = self._row_bands(image, layout)
        per_pass = 1 if self.config.method == "mc_dropout" else self.tile_batch
        for row in layout.rows:
            band = bands.popleft()
            for first in range(0, len(layout.cols), per_pass):
                cols = layout.cols[first : first + per_pass]
                x = torch.stack([band[:, :, col.start : col.stop] for col in cols])
                with torch.inference_mode():
                    # batch index 0 for every window: the same MC-dropout masks everywhere.
                    out = finish(self._logits(x.to(self.device), 0)).float().cpu().numpy()
                for i, col in enumerate(cols):
                    core = out[:, i, :, row.inner, col.inner]
                    yield (row.core, col.core), np.ascontiguousarray(core)

    def _parts(
        self,
        images: Iterable[np.ndarray],
        batch_size: int | None,
        finish: Callable[[torch.Tensor], torch.Tensor],
    ) -> Iterator[tuple[tuple[int, int], Iterator[ImagePart]]]:
        """Per image ``((H, W), parts)``; ``finish`` maps logits ``[S, B, C, h, w]`` to what the
        parts hold. Small images share batched passes and come as one part; read each image's
        parts before asking for the next image."""
        batch_size = batch_size or self.config.batch_size
        whole = (slice(None), slice(None))
        batches = consecutive_batches(images, batch_size, alone=self.is_tiled)
        for batch_index, batch in enumerate(batches):
            if self.is_tiled(batch[0]):
                yield batch[0].shape[:2], self._tiled_parts(batch[0], finish)
                continue
            # The grad mode is thread state: never hold inference_mode across a yield, or two
            # interleaved generators would leave it switched off for the caller.
            with torch.inference_mode():
                logits = self._logits(self._to_batch_tensor(batch), batch_index)
                array = finish(logits).float().cpu().numpy()
            for i, image in enumerate(batch):
                yield image.shape[:2], iter([(whole, np.ascontiguousarray(array[:, i]))])

    def predict_parts(
        self, images: Iterable[np.ndarray], batch_size: int | None = None
    ) -> Iterator[tuple[tuple[int, int], Iterator[ImagePart]]]:
        """Per image, in input order: ``((H, W), parts)``, each part ``((rows, cols), probs)``
        with float32 probabilities ``[S, C, h, w]`` of the pixels ``[rows, cols]``.

        A small image is one part (the whole stack, as :meth:`predict` yields it); a tiled image
        is one part per window core, computed when read, so its full stack never exists.
        Exhaust one image's parts before taking the next image.
        """
        return self._parts(images, batch_size, self._probabilities)

    def predict(
        self, images: Iterable[np.ndarray], batch_size: int | None = None
    ) -> Iterator[np.ndarray]:
        """Yield one float32 probability stack ``[S, C, H, W]`` per image, in input order.

        ``images``: uint8 ``[H, W]`` or ``[H, W, 3]`` arrays, any size; consecutive images of
        one size share a forward pass of up to ``batch_size`` (default ``config.batch_size``).
        A tiled image's stack is assembled from its windows: bounded activations, but the stack
        itself is ``S * C * H * W`` float32; :func:`activeseg.models.scoring.score_images`
        never holds it.
        """
        for shape, parts in self.predict_parts(images, batch_size):
            yield _assemble(shape, parts)

    def predict_logits(
        self,
        images: Iterable[np.ndarray],
        batch_size: int | None = None,
        *,
        reduce: Literal["mean", "none"] = "mean",
        scaled: bool = False,
    ) -> Iterator[np.ndarray]:
        """Yield float32 logits per image: ``[C, H, W]`` (mean over S) or ``[S, C, H, W]``.

        Unscaled by default, as temperature fitting needs; ``scaled=True`` divides by this
        version's temperature. ``fit_temperature_on`` reads the per-sample logits
        (``reduce="none"``) and fits the mixture ``predict`` serves.
        """

        def finish(logits: torch.Tensor) -> torch.Tensor:
            if scaled:
                logits = self._scale(logits)
            return logits.mean(dim=0, keepdim=True) if reduce == "mean" else logits

        for shape, parts in self._parts(images, batch_size, finish):
            array = _assemble(shape, parts)
            yield array[0] if reduce == "mean" else array


def _assemble(shape: tuple[int, int], parts: Iterator[ImagePart]) -> np.ndarray:
    """Write the parts ``[S, C, h, w]`` of one image into one ``[S, C, H, W]`` array."""
    out: np.ndarray | None = None
    for (rows, cols), values in parts:
        if values.shape[-2:] == shape:  # the whole image in one part: no copy
            return values
        if out is None:
            out = np.empty((*values.shape[:2], *shape), values.dtype)
        out[:, :, rows, cols] = values
    if out is None:  # pragma: no cover - every image has at least one part
        raise AssertionError("an image without parts")
    return out
