"""What an answer cost the annotator, and what it revealed about the model.

Cost is counted in clicks, the unit annotators pay in (Cai et al. 2021, "Revisiting
Superpixels for Active Learning in Semantic Segmentation with Realistic Annotation Costs"):

- a dominant-label answer (one class per region) costs one click per region;
- a mask patch costs the vertices of the polygons an annotator would draw to outline it: for
  every class, every 8-connected component of its pixels is traced
  (``skimage.measure.find_contours`` at level 0.5, holes included) and simplified by
  Douglas-Peucker (``approximate_polygon``, tolerance 1 pixel); each outline costs its vertex
  count, at least 1 (a one-pixel dot is one click). A patch costs at least 1 click.

What it revealed: of the pixels the answer labels, how many the model predicted wrongly.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from skimage.measure import approximate_polygon, find_contours, label

from activeseg.uncertainty.labels import UNLABELLED

__all__ = ["answer_errors", "patch_clicks", "region_clicks"]


def region_clicks(n_regions: int) -> int:
    """A dominant-label answer: one click per region (at least 1)."""
    return max(int(n_regions), 1)


def outline_vertices(component: npt.NDArray[np.bool_], tolerance: float = 1.0) -> int:
    """Vertices of the simplified outlines (outer and holes) of one binary component
    ``[h, w]``; each outline counts at least 1."""
    padded = np.pad(component.astype(np.float64), 1)  # closes outlines at the border
    total = 0
    for contour in find_contours(padded, 0.5):
        polygon = approximate_polygon(contour, tolerance=tolerance)
        closed = len(polygon) > 1 and np.array_equal(polygon[0], polygon[-1])
        distinct = len(np.unique(polygon[:-1] if closed else polygon, axis=0))
        total += max(distinct, 1)
    return total


def patch_clicks(
    patch: npt.ArrayLike, ignore_index: int = UNLABELLED, tolerance: float = 1.0
) -> int:
    """Clicks to draw a mask patch as polygons.

    Args:
        patch: integer ``[h, w]`` class per pixel; ``ignore_index`` = not labelled.
        ignore_index: the unlabelled value.
        tolerance: Douglas-Peucker tolerance in pixels.

    Returns:
        The vertex count summed over every outline of every connected component (8-connected)
        of every class; at least 1. A 4x4 square costs 4; the same square with a 2x2 hole of
        another class costs 4 + 4 (outer, hole) + 4 (the hole's own class) = 12.
    """
    arr = np.asarray(patch)
    if arr.ndim != 2 or arr.dtype.kind not in "iu":
        raise ValueError(f"patch must be an integer array [h, w], got {arr.dtype} {arr.shape}")
    total = 0
    for cls in np.unique(arr[arr != ignore_index]).tolist():
        components, n = label(arr == cls, connectivity=2, return_num=True)
        for k in range(1, n + 1):
            total += outline_vertices(components == k, tolerance)
    return max(total, 1)


def answer_errors(
    answer: npt.ArrayLike, prediction: npt.ArrayLike | None, ignore_index: int = UNLABELLED
) -> tuple[int, int | None]:
    """Pixels an answer labels, and of those the ones the model predicted otherwise.

    Args:
        answer: integer ``[H, W]`` the answer's class per pixel, ``ignore_index`` where the
            answer says nothing (outside the task's regions, or left unlabelled).
        prediction: integer ``[H, W]`` the model's class per pixel, or None without a model.
        ignore_index: the unlabelled value.

    Returns:
        ``(answered, wrong)``; ``wrong`` is None when there is no prediction.
    """
    ans = np.asarray(answer)
    labelled = ans != ignore_index
    answered = int(labelled.sum())
    if prediction is None:
        return answered, None
    pred = np.asarray(prediction)
    if pred.shape != ans.shape:
        raise ValueError(f"prediction {pred.shape} and answer {ans.shape} must share a shape")
    return answered, int((labelled & (pred != ans)).sum())
