"""Fluorescence nuclei tiles from the sample image shipped inside the ``stardist`` package.

``stardist/data/images/img2d.tif`` (512x512, uint16) and ``mask2d.tif`` (instance labels) are
read with tifffile straight from the installed package's files: stardist itself is never
imported (it would import TensorFlow). Instances become one class: background 0, nucleus 1.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from activeseg.datasets.base import ClassDef, Dataset, Sample, to_uint8


class DatasetUnavailableError(RuntimeError):
    """A dataset needs an optional package that is not installed."""


NUCLEI_CLASSES = [ClassDef(0, "background", "#000000"), ClassDef(1, "nucleus", "#ff7f0e")]


def stardist_sample_files() -> tuple[Path, Path]:
    """Paths of the stardist 2-D sample image and its instance mask.

    ``find_spec`` locates the package without executing it.
    """
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetUnavailableError(
            "the 'nuclei' dataset reads the sample image shipped in the stardist package, which "
            "is not installed; install it with: pip install 'activeseg[nuclei]'"
        )
    images = Path(next(iter(spec.submodule_search_locations))) / "data" / "images"
    image, mask = images / "img2d.tif", images / "mask2d.tif"
    for path in (image, mask):
        if not path.is_file():
            raise DatasetUnavailableError(
                f"the installed stardist package lacks its sample file {path}; reinstall it with: "
                "pip install --force-reinstall 'activeseg[nuclei]'"
            )
    return image, mask


def nuclei(count: int | None = None, seed: int | None = None, tile_size: int = 128) -> Dataset:
    """Non-overlapping ``tile_size`` tiles of the stardist nuclei image, 2 classes.

    Tiles come in row-major order; with ``seed`` they come in a seeded random order instead.
    ``count`` keeps the first ``count`` tiles (all when None). Images are uint8 ``[t, t]``
    (percentile-normalised from uint16), masks uint8 ``[t, t]`` with 1 where a nucleus is.
    """
    if tile_size < 8:
        raise ValueError(f"tile_size must be >= 8, got {tile_size}")
    image_path, mask_path = stardist_sample_files()
    image = to_uint8(tifffile.imread(image_path))
    mask = (tifffile.imread(mask_path) > 0).astype(np.uint8)
    rows, cols = image.shape[0] // tile_size, image.shape[1] // tile_size
    if rows * cols == 0:
        raise ValueError(f"tile_size {tile_size} exceeds the image size {image.shape}")
    order = np.arange(rows * cols)
    if seed is not None:
        order = np.random.default_rng(seed).permutation(order)
    if count is not None:
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        order = order[:count]

    def samples() -> Iterator[Sample]:
        for tile in order:
            r, c = divmod(int(tile), cols)
            window = np.s_[r * tile_size : (r + 1) * tile_size, c * tile_size : (c + 1) * tile_size]
            yield Sample(
                name=f"img2d-r{r}-c{c}",
                image=np.ascontiguousarray(image[window]),
                mask=np.ascontiguousarray(mask[window]),
            )

    return Dataset(
        name="nuclei",
        classes=list(NUCLEI_CLASSES),
        in_channels=1,
        size=len(order),
        _samples=samples,
    )
