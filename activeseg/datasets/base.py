"""What every dataset importer returns: named samples with index masks, and the class list."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from activeseg.uncertainty.labels import UNLABELLED

"""Mask value of an unlabelled pixel."""

PALETTE = [
    "#000000",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
]
"""Default class colours: black background, then matplotlib's tab10 and tab20 light shades."""

_HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")


def default_colour(class_id: int) -> str:
    """A stable colour for a class id without a configured one."""
    return PALETTE[class_id % len(PALETTE)]


@dataclass(frozen=True)
class ClassDef:
    """One segmentation class: ``id`` is the value in the masks, ``colour`` is ``#rrggbb``."""

    id: int
    name: str
    colour: str

    def __post_init__(self) -> None:
        if not 0 <= self.id < UNLABELLED:
            raise ValueError(f"class id must be in 0..254 (255 = unlabelled), got {self.id}")
        if not self.name:
            raise ValueError(f"class {self.id} needs a non-empty name")
        if not _HEX_COLOUR.match(self.colour):
            raise ValueError(
                f"class {self.id} ({self.name!r}) colour must look like '#1f77b4', "
                f"got {self.colour!r}"
            )


@dataclass(frozen=True)
class Sample:
    """One image and its index mask.

    ``image``: uint8 ``[H, W]`` or ``[H, W, 3]``; ``mask``: uint8 ``[H, W]`` with class ids and
    ``UNLABELLED`` where nothing is labelled.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Dataset:
    """A re-iterable source of samples: ``for sample in dataset`` starts a fresh pass.

    ``size`` is the number of samples one pass yields; ``in_channels`` is 1 for grey and 3 when
    the images are RGB; ``model_defaults`` are project model settings (``ModelSettings`` keys)
    that suit this data, applied on import where the project leaves them unset.
    """

    name: str
    classes: list[ClassDef]
    in_channels: int
    size: int
    _samples: Callable[[], Iterator[Sample]]
    model_defaults: Mapping[str, Any] = field(default_factory=dict)
    """Model settings this data needs unless the project sets them (e.g. digits: no flips)."""

    def __iter__(self) -> Iterator[Sample]:
        return self._samples()

    def __len__(self) -> int:
        return self.size

    @property
    def n_classes(self) -> int:
        """Number of classes; the ids are 0..n_classes-1."""
        return len(self.classes)


def to_uint8(
    image: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.8
) -> np.ndarray:
    """Scale any numeric image ``[H, W(, C)]`` to uint8 by robust percentiles (uint8 passes).

    The range between the two percentiles maps onto 0..255 and the rest is clipped, as is usual
    for microscopy, where a few hot pixels would otherwise darken everything.
    """
    if image.dtype == np.uint8:
        return image
    values = image.astype(np.float64)
    low, high = np.percentile(values, [low_percentile, high_percentile])
    if high <= low:
        return np.zeros(image.shape, dtype=np.uint8)
    scaled = (values - low) / (high - low)
    return np.round(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
