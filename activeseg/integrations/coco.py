"""COCO JSON with RLE masks: one annotation per (image, class present), via pycocotools.

Category ids are class id + 1 (COCO keeps 0 for "no category"); on import categories are
matched to the project's classes by name. Pixels that no annotation covers are unlabelled
(the project's ignore index).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from activeseg.core.errors import Invalid

INFO = {"description": "activeseg labels", "version": "1.0", "unlabelled": "not annotated"}


def categories(classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"id": int(c["id"]) + 1, "name": c["name"], "color": c["colour"], "supercategory": ""}
        for c in sorted(classes, key=lambda c: c["id"])
    ]


def encode_class_mask(binary: np.ndarray) -> dict[str, Any]:
    """bool ``[H, W]`` -> compressed COCO RLE ``{"size": [H, W], "counts": str}``."""
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_annotations(mask: np.ndarray, classes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """An index mask uint8 ``[H, W]`` -> annotations (without ``id`` and ``image_id``), one per
    class present, in class order."""
    out = []
    for c in sorted(classes, key=lambda c: c["id"]):
        binary = mask == c["id"]
        if not binary.any():
            continue
        rle = encode_class_mask(binary)
        as_bytes = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
        bbox = [int(round(float(v))) for v in mask_utils.toBbox(as_bytes)]
        out.append(
            {
                "category_id": int(c["id"]) + 1,
                "segmentation": rle,
                "area": int(mask_utils.area(as_bytes)),
                "bbox": bbox,
                "iscrowd": 0,
            }
        )
    return out


def decode_segmentation(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    """A COCO segmentation (compressed or uncompressed RLE, or polygons) -> bool ``[H, W]``."""
    with warnings.catch_warnings():
        # pycocotools 2.0.x warns about numpy 2's __array__ copy keyword on every decode.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _decode_segmentation(seg, height, width, where)


def _decode_segmentation(seg: Any, height: int, width: int, where: str) -> np.ndarray:
    try:
        if isinstance(seg, dict):
            size = seg.get("size")
            if list(size or []) != [height, width]:
                raise Invalid(f"{where}: segmentation size {size} is not [{height}, {width}]")
            counts = seg.get("counts")
            if isinstance(counts, str):
                counts = rle_string_counts(counts, where)
            elif not isinstance(counts, list):
                raise Invalid(f"{where}: segmentation.counts must be a string or a list")
            decoded = _runs_to_mask(counts, height, width, where)
        elif isinstance(seg, list) and seg and all(isinstance(p, list) for p in seg):
            polys = [[float(v) for v in p] for p in seg]
            if any(len(p) < 6 or len(p) % 2 for p in polys):
                raise Invalid(f"{where}: a polygon needs at least 3 x,y pairs")
            _check_on_image(polys, height, width, where)
            decoded = mask_utils.decode(
                mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
            )
        else:
            raise Invalid(f"{where}: segmentation must be an RLE object or a list of polygons")
    except Invalid:
        raise
    except (TypeError, ValueError, UnicodeError) as exc:
        raise Invalid(f"{where}: cannot decode the segmentation ({exc})") from None
    if decoded.shape[:2] != (height, width):
        raise Invalid(f"{where}: the segmentation decodes to {decoded.shape[:2]}")
    return np.asarray(decoded, dtype=bool).reshape(height, width)


# Untrusted RLE and polygons are checked here before any C code sees them: pycocotools parses a
# compressed counts string without bounds checks (a string ending inside a number is read
# past its end, corrupting the heap), and rasterises polygons into buffers sized by the
# vertices (a vertex at 1e9 made the API process die of SIGSEGV).


def rle_string_counts(text: str, where: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' ``rleFrString``, in
    Python: 5 bits per character from '0', bit 0x20 = more characters follow, bit 0x10 of the
    last one = negative; from the fourth run on, a delta to the run two before)."""
    counts: list[int] = []
    p = 0
    while p < len(text):
        x = k = 0
        more = True
        while more:
            if p >= len(text) or k >= 7:
                raise Invalid(f"{where}: segmentation.counts is not a valid compressed RLE")
            c = ord(text[p]) - 48
            if not 0 <= c < 64:
                raise Invalid(f"{where}: segmentation.counts holds {text[p]!r}, not RLE")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x -= 1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _runs_to_mask(counts: list[Any], height: int, width: int, where: str) -> np.ndarray:
    """Alternating runs of 0 and 1, column by column (COCO's order) -> uint8 ``[H, W]``."""
    if not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
        raise Invalid(f"{where}: segmentation.counts must be non-negative integers")
    if sum(counts) != height * width:
        raise Invalid(
            f"{where}: the RLE runs cover {sum(counts)} pixels, the image {height * width}"
        )
    flat = np.repeat(np.arange(len(counts), dtype=np.int64) % 2, counts).astype(np.uint8)
    return flat.reshape(width, height).T


def _check_on_image(polys: list[list[float]], height: int, width: int, where: str) -> None:
    for poly in polys:
        xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        inside = np.isfinite(xy).all() and (xy >= -1).all()
        if not (inside and (xy[:, 0] <= width + 1).all() and (xy[:, 1] <= height + 1).all()):
            raise Invalid(
                f"{where}: polygon vertices must lie on the {width}x{height} image "
                f"(x in 0..{width}, y in 0..{height})"
            )


def annotations_to_mask(
    annotations: list[dict[str, Any]],
    category_to_class: dict[int, int],
    height: int,
    width: int,
    ignore_index: int,
    where: str,
) -> np.ndarray:
    """The annotations of one image -> an index mask; overlapping classes are refused."""
    mask = np.full((height, width), ignore_index, dtype=np.uint8)
    for ann in annotations:
        what = f"{where}, annotation {ann.get('id')}"
        cls = category_to_class.get(ann.get("category_id"))  # type: ignore[arg-type]
        if cls is None:
            raise Invalid(f"{what}: unknown category_id {ann.get('category_id')!r}")
        binary = decode_segmentation(ann.get("segmentation"), height, width, what)
        clash = binary & (mask != ignore_index) & (mask != cls)
        if clash.any():
            raise Invalid(
                f"{what}: {int(clash.sum())} pixels are already annotated with another class; "
                "a pixel belongs to one class"
            )
        mask[binary] = cls
    return mask
