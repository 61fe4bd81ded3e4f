"""A folder of images with index-mask PNGs: the format most labelling tools export.

Layout::

    PATH/
      cell_001.png  cell_002.tif  ...      images (png, jpg, jpeg, tif, tiff)
      masks/cell_001.png ...               index masks, same stem, pixel value = class id
      classes.json                          optional: [{"id": 0, "name": "background",
                                                        "colour": "#000000"}, ...]

A mask pixel of 255 means "not labelled"; an image without a mask file is entirely unlabelled
(the active-learning pool) unless ``require_masks`` is set. Every error names the file at fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from activeseg.core.errors import DomainError
from activeseg.core.imaging import decode_image, display_image
from activeseg.datasets.base import (
    ClassDef,
    Dataset,
    Sample,
    default_colour,
)
from activeseg.uncertainty.labels import UNLABELLED

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_SUFFIXES = (".png", ".tif", ".tiff")
CLASSES_EXAMPLE = '[{"id": 0, "name": "background", "colour": "#000000"}, ...]'


class FolderDatasetError(ValueError):
    """A file of a folder dataset is missing or malformed; the message names it."""


def _read_array(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        return np.asarray(tifffile.imread(path))
    with Image.open(path) as opened:
        opened.load()
        if opened.mode == "P" and "transparency" in opened.info:
            opened.info.pop("transparency")  # an index image stays an index image
        return np.asarray(opened)


def read_image(path: Path) -> np.ndarray:
    """An image file as uint8 ``[H, W]`` (grey) or ``[H, W, 3]`` (RGB), as an upload would be.

    Decoded by ``activeseg.core.imaging.decode_image`` (orientation applied, palette expanded,
    alpha dropped; stacks and 2 or 4+ channels refused), then mapped to 0..255 as the service
    shows it (``display_image``: uint8 unchanged, other types by the per-image percentile
    stretch the model uses), so a folder benchmark sees what the service would.
    """
    try:
        pixels = decode_image(path.read_bytes(), path.name)
    except OSError as exc:
        raise FolderDatasetError(f"cannot read image {path}: {exc}") from exc
    except DomainError as exc:
        raise FolderDatasetError(f"cannot use image {path}: {exc.detail}") from exc
    return display_image(pixels)


_GREY_PILLOW_MODES = ("1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_COLOUR_PHOTOMETRIC = ("RGB", "PALETTE", "YCBCR")


def is_colour(path: Path) -> bool:
    """Whether an image file decodes to RGB (see :func:`read_image`), from its header only."""
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tif:
                page = tif.pages.first
                samples = page.samplesperpixel - len(page.extrasamples or ())
                photometric = tifffile.PHOTOMETRIC(page.photometric).name
                return photometric in _COLOUR_PHOTOMETRIC or samples >= 3
        with Image.open(path) as opened:
            return opened.mode not in _GREY_PILLOW_MODES
    except (OSError, ValueError, IndexError) as exc:
        raise FolderDatasetError(f"cannot read image {path}: {exc}") from exc


def read_mask(path: Path, image_shape: tuple[int, ...]) -> np.ndarray:
    """An index mask file as uint8 ``[H, W]``; it must match its image ``[H, W(, 3)]``."""
    try:
        array = _read_array(path)
    except (OSError, ValueError) as exc:
        raise FolderDatasetError(f"cannot read mask {path}: {exc}") from exc
    if array.ndim != 2:
        raise FolderDatasetError(
            f"mask {path} has shape {array.shape}; expected an index mask [H, W] (a grey or "
            "palette PNG whose pixel values are class ids), not a colour image"
        )
    if array.shape != tuple(image_shape[:2]):
        raise FolderDatasetError(
            f"mask {path} is {array.shape[0]}x{array.shape[1]} but its image is "
            f"{image_shape[0]}x{image_shape[1]}"
        )
    if array.dtype != np.uint8:
        if array.dtype.kind not in "iu" or array.min() < 0 or array.max() > UNLABELLED:
            raise FolderDatasetError(
                f"mask {path} has {array.dtype} values outside 0..255; class ids must be 0..254 "
                "and 255 marks unlabelled pixels"
            )
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def read_classes(path: Path) -> list[ClassDef]:
    """``classes.json``: a list of ``{id, name, colour}`` with ids 0..n-1."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FolderDatasetError(f"cannot read {path}: {exc}; expected {CLASSES_EXAMPLE}") from exc
    if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
        raise FolderDatasetError(f"{path} must hold a JSON list like {CLASSES_EXAMPLE}")
    classes = []
    for position, item in enumerate(raw):
        try:
            class_id = item["id"]
            if not isinstance(class_id, int):
                raise TypeError(f"id must be an integer, got {class_id!r}")
            classes.append(
                ClassDef(
                    id=class_id,
                    name=str(item["name"]),
                    colour=str(item.get("colour", item.get("color", default_colour(class_id)))),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise FolderDatasetError(
                f"{path}: entry {position} ({item}) is invalid: {exc}; expected {CLASSES_EXAMPLE}"
            ) from exc
    ids = sorted(c.id for c in classes)
    if ids != list(range(len(classes))) or len(classes) < 2:
        raise FolderDatasetError(
            f"{path}: class ids must be 0..n-1 with n >= 2 and no gaps, got {ids}"
        )
    return sorted(classes, key=lambda c: c.id)


def folder(
    path: str | Path,
    mask_dir: str | Path | None = None,
    count: int | None = None,
    require_masks: bool = False,
) -> Dataset:
    """Images of ``path`` (sorted by name, first ``count``) with masks from ``mask_dir``.

    ``mask_dir`` defaults to ``path/masks``. Classes come from ``path/classes.json`` if present,
    else from the mask values found (ids 0..max, named "background", "class 1", ...). Masks are
    checked against the classes when read; an unknown id names the file and the values.
    """
    root = Path(path)
    if not root.is_dir():
        raise FolderDatasetError(f"dataset folder {root} does not exist or is not a folder")
    masks_root = Path(mask_dir) if mask_dir is not None else root / "masks"
    image_paths = sorted(
        p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if count is not None:
        if count < 0:
            raise FolderDatasetError(f"count must be >= 0, got {count}")
        image_paths = image_paths[:count]
    if not image_paths:
        raise FolderDatasetError(f"no images ({', '.join(IMAGE_SUFFIXES)}) directly inside {root}")

    def mask_path(image_path: Path) -> Path | None:
        for suffix in MASK_SUFFIXES:
            candidate = masks_root / f"{image_path.stem}{suffix}"
            if candidate.is_file():
                return candidate
        if require_masks:
            raise FolderDatasetError(
                f"image {image_path} has no mask {masks_root / (image_path.stem + '.png')}"
            )
        return None

    stems = [p.stem for p in image_paths]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise FolderDatasetError(
            f"{root} has several images with the stem(s) {duplicates}; their masks would clash"
        )
    pairs = [(p, mask_path(p)) for p in image_paths]

    classes_file = root / "classes.json"
    if classes_file.is_file():
        classes = read_classes(classes_file)
    else:
        highest = 0
        for _image_path, maybe_mask in pairs:
            if maybe_mask is not None:
                try:
                    values = np.unique(_read_array(maybe_mask))
                except (OSError, ValueError) as exc:
                    raise FolderDatasetError(f"cannot read mask {maybe_mask}: {exc}") from exc
                values = values[values != UNLABELLED]
                if values.size:
                    highest = max(highest, int(values.max()))
        n_classes = max(2, highest + 1)
        classes = [ClassDef(0, "background", default_colour(0))] + [
            ClassDef(i, f"class {i}", default_colour(i)) for i in range(1, n_classes)
        ]
    n_classes = len(classes)

    in_channels = 3 if any(is_colour(image_path) for image_path, _ in pairs) else 1

    def samples() -> Iterator[Sample]:
        for image_path, maybe_mask in pairs:
            image = read_image(image_path)
            if maybe_mask is None:
                mask = np.full(image.shape[:2], UNLABELLED, dtype=np.uint8)
            else:
                mask = read_mask(maybe_mask, image.shape)
                values = np.unique(mask)
                bad = values[(values >= n_classes) & (values != UNLABELLED)]
                if bad.size:
                    raise FolderDatasetError(
                        f"mask {maybe_mask} holds class ids {bad.tolist()} but the dataset has "
                        f"classes 0..{n_classes - 1} (255 = unlabelled)"
                    )
            yield Sample(name=image_path.stem, image=image, mask=mask)

    return Dataset(
        name=f"folder:{root}",
        classes=classes,
        in_channels=in_channels,
        size=len(pairs),
        _samples=samples,
    )
