"""COCO conversion without a server: hand-made masks through pycocotools and back."""

from __future__ import annotations

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from activeseg.core.errors import Invalid
from activeseg.integrations import coco

CLASSES = [{"id": i, "name": f"c{i}", "colour": "#000000"} for i in range(3)]


def test_annotations_decode_to_the_hand_made_mask() -> None:
    mask = np.full((5, 7), 255, np.uint8)
    mask[1:3, 2:6] = 1
    mask[4, :] = 2
    mask[0, 0] = 0
    anns = coco.mask_annotations(mask, CLASSES)
    assert [a["category_id"] for a in anns] == [1, 2, 3]
    ann1 = anns[1]
    assert ann1["area"] == 8 and ann1["bbox"] == [2, 1, 4, 2]
    seg = ann1["segmentation"]
    decoded = mask_utils.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert np.array_equal(decoded.astype(bool), mask == 1)
    back = coco.annotations_to_mask(
        [dict(a, id=i) for i, a in enumerate(anns)], {1: 0, 2: 1, 3: 2}, 5, 7, 255, "img"
    )
    assert np.array_equal(back, mask)


def test_polygons_and_uncompressed_rle_are_read() -> None:
    square = coco.decode_segmentation([[1, 1, 4, 1, 4, 4, 1, 4]], 6, 6, "p")
    assert square[2, 2] and not square[5, 5]
    # uncompressed RLE, column-major: 3 zeros, 2 ones, 1 zero on a 3x2 image
    rle = coco.decode_segmentation({"size": [3, 2], "counts": [3, 2, 1]}, 3, 2, "u")
    assert rle.T.ravel().tolist() == [False, False, False, True, True, False]


@pytest.mark.parametrize(
    ("seg", "words"),
    [
        ({"size": [9, 9], "counts": "x"}, "size"),
        ("nope", "RLE object or a list of polygons"),
        ([[1, 2, 3]], "3 x,y pairs"),
    ],
)
def test_bad_segmentations_say_what_is_wrong(seg: object, words: str) -> None:
    with pytest.raises(Invalid, match=words):
        coco.decode_segmentation(seg, 4, 4, "img")
