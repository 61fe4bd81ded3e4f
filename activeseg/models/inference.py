"""Turn images into probability stacks ``[S, C, H, W]``: one interface for all three methods.

``S`` is the number of probability maps per image: K ensemble members (Lakshminarayanan et al.
2017), T MC-dropout samples (Gal and Ghahramani 2016) or 1. The uncertainty layer reads the
stack and never needs to know which method made it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from activeseg.models.config import ModelConfig
from activeseg.models.device import resolve_device, rng_devices
from activeseg.models.preprocess import normalise_image
from activeseg.models.unet import enable_mc_dropout

logger = logging.getLogger(__name__)

DEFAULT_MAX_FORWARD_BATCH = 64
"""Most images one MC-dropout forward pass holds (batch x repeated samples)."""


def consecutive_batches(
    images: Iterable[np.ndarray], batch_size: int
) -> Iterator[list[np.ndarray]]:
    """Group consecutive images of equal shape into lists of at most ``batch_size``.

    Order is kept and only one batch is held at a time, so a pool of any length streams.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            yield batch
            batch = []
        batch.append(image)
    if batch:
        yield batch


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
    and are re-allocated every pass).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        config: ModelConfig,
        temperature: float | None = None,
        *,
        mc_batched: bool | None = None,
        max_forward_batch: int = DEFAULT_MAX_FORWARD_BATCH,
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
        self.config = config
        self.temperature = temperature
        self.device = resolve_device(config.device)
        self.mc_batched = self.device.type == "cuda" if mc_batched is None else mc_batched
        self.max_forward_batch = max(1, max_forward_batch)
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

    def _mc_logits(self, x: torch.Tensor, batch_index: int) -> torch.Tensor:
        """``x`` ``[B, C_in, H, W]`` -> logits ``[T, B, C, H, W]`` with T dropout masks."""
        member = self.members[0]
        samples = self.config.mc_samples
        batch = x.shape[0]
        per_pass = max(1, self.max_forward_batch // batch) if self.mc_batched else 1
        devices = rng_devices(self.device)
        chunks = []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.config.seed + batch_index)
            done = 0
            while done < samples:
                n = min(per_pass, samples - done)
                # Dropout2d draws an independent mask per batch entry, so the n copies of the
                # batch are n independent samples computed in a single forward pass.
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

    def predict(
        self, images: Iterable[np.ndarray], batch_size: int | None = None
    ) -> Iterator[np.ndarray]:
        """Yield one float32 probability stack ``[S, C, H, W]`` per image, in input order.

        ``images``: uint8 ``[H, W]`` or ``[H, W, 3]`` arrays, any size; consecutive images of
        one size share a forward pass of up to ``batch_size`` (default ``config.batch_size``).
        """
        batch_size = batch_size or self.config.batch_size
        for batch_index, batch in enumerate(consecutive_batches(images, batch_size)):
            # The grad mode is thread state: never hold inference_mode across a yield, or two
            # interleaved generators would leave it switched off for the caller.
            with torch.inference_mode():
                logits = self._logits(self._to_batch_tensor(batch), batch_index)
                probs = torch.softmax(self._scale(logits), dim=2).float().cpu().numpy()
            for i in range(len(batch)):
                yield np.ascontiguousarray(probs[:, i])

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
        batch_size = batch_size or self.config.batch_size
        for batch_index, batch in enumerate(consecutive_batches(images, batch_size)):
            with torch.inference_mode():
                logits = self._logits(self._to_batch_tensor(batch), batch_index)
                if scaled:
                    logits = self._scale(logits)
                if reduce == "mean":
                    logits = logits.mean(dim=0, keepdim=True)
                array = logits.float().cpu().numpy()
            for i in range(len(batch)):
                yield np.ascontiguousarray(array[0, i] if reduce == "mean" else array[:, i])
