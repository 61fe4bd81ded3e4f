"""Datasets by name, as the command line and the jobs refer to them."""

from __future__ import annotations

from activeseg.datasets.base import Dataset
from activeseg.datasets.digits import digits
from activeseg.datasets.folder import folder
from activeseg.datasets.nuclei import nuclei

DEFAULT_DIGITS_COUNT = 200
SPEC_HELP = "'digits', 'nuclei' or 'folder:PATH' (e.g. 'folder:/data/cells')"


def load_dataset(spec: str, count: int | None = None, seed: int = 0) -> Dataset:
    """The dataset ``spec`` names: ``"digits"``, ``"nuclei"`` or ``"folder:PATH"``.

    ``count`` caps the number of samples (digits: how many canvases to make, default
    ``DEFAULT_DIGITS_COUNT``); ``seed`` drives the synthetic canvases and the nuclei tile order.
    """
    name, _, argument = spec.partition(":")
    if name == "digits" and not argument:
        return digits(DEFAULT_DIGITS_COUNT if count is None else count, seed=seed)
    if name == "nuclei" and not argument:
        return nuclei(count=count, seed=seed)
    if name == "folder":
        if not argument:
            raise ValueError(f"dataset spec {spec!r} lacks the folder path; use {SPEC_HELP}")
        return folder(argument, count=count)
    raise ValueError(f"unknown dataset spec {spec!r}; use {SPEC_HELP}")
