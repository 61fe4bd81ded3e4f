"""A compact UNet (Ronneberger et al. 2015) in plain torch, with dropout usable at inference.

Normalisation is BatchNorm by default: on the digits canvases at batch 8 it learned the digit
identities in about half the steps GroupNorm (Wu and He 2018) needed (300 steps: mIoU 1.0 against
0.72, see tests/models). In eval mode BatchNorm uses its running statistics, so predictions are
deterministic and independent of the batch: repeating a batch T times for MC dropout gives each
copy exactly the prediction it would get alone, up to its dropout mask. ``norm="group"`` remains
for tiny batches where running statistics would be poor.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from activeseg.models.config import ModelConfig, Norm


class Encoded(NamedTuple):
    """What :meth:`UNet.encode` hands to :meth:`UNet.decode` for a batch of B images.

    ``features``: bottleneck output before its dropout ``[B, C_bottleneck, h, w]``; ``skips``:
    encoder outputs, full resolution first; ``size``: the input's ``(H, W)`` before padding.
    """

    features: torch.Tensor
    skips: tuple[torch.Tensor, ...]
    size: tuple[int, int]

    def repeat(self, n: int) -> Encoded:
        """The batch repeated ``n`` times (n MC-dropout samples in one forward pass)."""
        if n == 1:
            return self
        return Encoded(
            self.features.repeat(n, 1, 1, 1),
            tuple(skip.repeat(n, 1, 1, 1) for skip in self.skips),
            self.size,
        )


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(math.gcd(8, channels), channels)


def _dropout(p: float, wanted: bool) -> nn.Module:
    return nn.Dropout2d(p) if wanted and p > 0 else nn.Identity()


class ConvBlock(nn.Sequential):
    """Two 3x3 conv -> norm -> ReLU layers: ``[B, in, H, W] -> [B, out, H, W]``."""

    def __init__(self, in_channels: int, out_channels: int, norm: Norm) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(norm, out_channels),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """UNet returning logits ``[B, n_classes, H, W]`` for images ``[B, in_channels, H, W]``.

    Channels double at each of the ``depth`` downsamplings (``base_channels * 2**level``).
    Dropout2d follows the bottleneck and, with ``dropout_blocks > 1``, the next
    ``dropout_blocks - 1`` decoder blocks from the lowest resolution up; it is an identity in
    eval mode unless ``enable_mc_dropout`` switched it back on. The full-resolution decoder block
    that feeds the 1x1 classifier never gets dropout: with its 8-16 channels, Dropout2d there
    deletes whole feature maps the classifier reads directly (issue 13 measured test mIoU 0.18
    with dropout after every block against 0.56 with the bottleneck only, same steps). Dropout
    positions hold no parameters, so state dicts load whatever ``dropout_blocks`` is. Any
    ``H, W`` works: the input is padded at the bottom/right to a multiple of ``2**depth``
    (reflect where the image is large enough, zeros otherwise) and the logits are cropped back.
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        depth: int = 4,
        base_channels: int = 16,
        dropout: float = 0.1,
        norm: Norm = "batch",
        dropout_blocks: int = 1,
    ) -> None:
        super().__init__()
        if not 0 <= dropout_blocks <= depth:
            raise ValueError(f"dropout_blocks must be in 0..depth={depth}, got {dropout_blocks}")
        self.depth = depth
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoders = nn.ModuleList()
        previous = in_channels
        for width in widths[:-1]:
            self.encoders.append(ConvBlock(previous, width, norm))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(widths[-2], widths[-1], norm)
        self.bottleneck_dropout = _dropout(dropout, dropout_blocks >= 1)
        self.upsamples = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.decoder_dropouts = nn.ModuleList()
        for position, level in enumerate(reversed(range(depth))):
            # ConvTranspose2d rather than bilinear upsampling: deterministic backward on CUDA.
            self.upsamples.append(nn.ConvTranspose2d(widths[level + 1], widths[level], 2, 2))
            self.decoders.append(ConvBlock(2 * widths[level], widths[level], norm))
            # position 0 is the lowest-resolution decoder; level 0 feeds the head: never there.
            wanted = position + 1 < dropout_blocks and level > 0
            self.decoder_dropouts.append(_dropout(dropout, wanted))
        self.head = nn.Conv2d(widths[0], n_classes, 1)

    @classmethod
    def from_config(cls, config: ModelConfig) -> UNet:
        """The network a ``ModelConfig`` describes (weights freshly initialised)."""
        return cls(
            in_channels=config.in_channels,
            n_classes=config.n_classes,
            depth=config.depth,
            base_channels=config.base_channels,
            dropout=config.dropout,
            norm=config.norm,
            dropout_blocks=config.dropout_blocks,
        )

    def encode(self, x: torch.Tensor) -> Encoded:
        """The deterministic half: encoder and bottleneck, up to the first dropout position.

        Dropout never sits before the bottleneck's output, so MC-dropout sampling can encode a
        batch once and :meth:`decode` it T times; the RNG draws the same masks in the same order
        as T full forward passes, so the logits are the same.
        """
        height, width = x.shape[-2:]
        multiple = 2**self.depth
        pad_h, pad_w = -height % multiple, -width % multiple
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "constant"
            x = F.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        skips = []
        for encoder in self.encoders:
            x = encoder(x)
            skips.append(x)
            x = self.pool(x)
        return Encoded(self.bottleneck(x), tuple(skips), (height, width))

    def decode(self, encoded: Encoded) -> torch.Tensor:
        """Dropouts, decoder and head: :class:`Encoded` -> logits ``[B, n_classes, H, W]``."""
        x = self.bottleneck_dropout(encoded.features)
        for upsample, decoder, dropout, skip in zip(
            self.upsamples,
            self.decoders,
            self.decoder_dropouts,
            reversed(encoded.skips),
            strict=True,
        ):
            x = dropout(decoder(torch.cat([upsample(x), skip], dim=1)))
        height, width = encoded.size
        return self.head(x)[..., :height, :width]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``[B, in_channels, H, W]`` -> logits ``[B, n_classes, H, W]``."""
        return self.decode(self.encode(x))


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode except its dropout layers, which sample masks (MC dropout).

    Normalisation layers stay in eval mode, so only the dropout masks vary between samples.
    Returns the same module for chaining.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.train()
    return model


def has_dropout(model: nn.Module) -> bool:
    """Whether ``model`` contains a dropout layer with a non-zero probability."""
    return any(
        isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0
        for module in model.modules()
    )
