"""What an annotator is shown of a leased task: where its regions are, the crop around them,
a mask of the regions, the queuing model's proposed classes and signed links to the pictures.

The lease itself is taken in :mod:`activeseg.core.services.tasks`; the route only encodes this
view as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.imaging import encode_png
from activeseg.core.services import links, tasks
from activeseg.core.services.regions import task_region_map
from activeseg.core.settings import DEFAULT_LINK_TTL_S
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Project, Task

CROP_CONTEXT_MIN = 8
"""Fewest pixels of context the crop shows on each side of the task's bounding box."""


@dataclass(frozen=True)
class LeaseView:
    image_url: str  # signed path and query of the stored image file
    image_width: int
    image_height: int
    bbox: list[int]  # [y0, x0, y1, x1] of the task's regions, end exclusive
    crop: list[int]  # [y0, x0, y1, x1]: the bbox with context around it, inside the image
    region_mask_png: bytes  # uint8 PNG over bbox: 1 inside the task's regions, 0 outside
    proposed_classes: dict[str, int]  # region id -> the queuing model's majority class
    prediction_url: str | None  # signed; None while the task or project has no model
    uncertainty_url: str | None
    queue: dict[str, int]  # the project's tasks by state (tasks.recent_queue_counts)


def crop_around(
    bbox: tuple[int, int, int, int], width: int, height: int
) -> tuple[int, int, int, int]:
    """``bbox`` (y0, x0, y1, x1) grown by half its height and width on each side (at least
    :data:`CROP_CONTEXT_MIN` pixels), clipped to the ``width`` x ``height`` image: enough
    context to see what the regions belong to."""
    y0, x0, y1, x1 = bbox
    my, mx = max(CROP_CONTEXT_MIN, (y1 - y0) // 2), max(CROP_CONTEXT_MIN, (x1 - x0) // 2)
    return max(0, y0 - my), max(0, x0 - mx), min(height, y1 + my), min(width, x1 + mx)


def proposed_classes(task: Task) -> dict[str, int]:
    """Region id -> class the queuing model proposed (stored with the task by build_queue);
    regions without a proposal are left out."""
    return {
        str(region): int(cls)
        for region, cls in zip(task.regions, task.proposed_classes or [], strict=False)
        if cls is not None and cls >= 0
    }


def lease_view(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    link_ttl_s: int = DEFAULT_LINK_TTL_S,
) -> LeaseView:
    """The view of ``task`` (leased in ``project``) whose image links live ``link_ttl_s``:
    an ``<img>`` or a labelling tool opens them without the token.

    Reads: the signing key (at most every second) and, for a task without its region map's
    key, the image's size and that key (one query); the region map comes from the in-process
    cache of decoded maps (:data:`activeseg.core.services.regions.REGION_MAPS`) and the
    proposals from the task row."""
    width, height, regions = task_region_map(session, store, task)
    y0, x0, y1, x1 = tasks.task_bbox(regions, task.regions)
    inside = np.isin(regions.labels[y0:y1, x0:x1], task.regions).astype(np.uint8)
    scored = task.model_version_id is not None and project.active_model_id is not None
    key, expires_at = links.signing_key(session), links.expiry(link_ttl_s)

    def signed(path: str, params: dict[str, str] | None = None) -> str:
        return f"{path}?{links.sign_with(key, path, params or {}, expires_at)}"

    image_id = task.image_id
    return LeaseView(
        image_url=signed(f"/images/{image_id}/file"),
        image_width=width,
        image_height=height,
        bbox=[y0, x0, y1, x1],
        crop=list(crop_around((y0, x0, y1, x1), width, height)),
        region_mask_png=encode_png(inside),
        proposed_classes=proposed_classes(task),
        prediction_url=signed(f"/images/{image_id}/prediction.png") if scored else None,
        uncertainty_url=(
            signed(f"/images/{image_id}/uncertainty.png", {"measure": task.measure})
            if scored
            else None
        ),
        queue=tasks.recent_queue_counts(session, project.id),
    )
