"""The label value of an unlabelled pixel, defined once for every layer.

Masks are uint8 ``[H, W]`` index maps: ``0..254`` a class id, :data:`UNLABELLED` a pixel nobody
has labelled yet (or, in an answer window, a pixel the answer says nothing about). It is also
the ``ignore_index`` of the loss and of every calibration and pooling function.
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_CLASS_ID", "UNLABELLED"]

UNLABELLED: Final = 255
"""Mask value of an unlabelled pixel (the largest uint8, so class ids fit below it)."""

MAX_CLASS_ID: Final = UNLABELLED - 1
"""The largest class id a project may use."""
