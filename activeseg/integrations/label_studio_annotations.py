"""Label Studio annotations coming back: brush results -> index masks, and a webhook's
annotation stored as the image's next label revision."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid, NotFound
from activeseg.core.services import labels
from activeseg.core.storage import BlobStore
from activeseg.core.tables import LabelRevision, Project, User
from activeseg.integrations.brush_rle import BrushRleError, rle_to_mask
from activeseg.integrations.label_studio import parse_label_config, resolve_image

# A painted brush pixel has alpha 255; anti-aliased edges fall in between.
ALPHA_THRESHOLD = 128


def annotation_mask(
    results: list[dict[str, Any]], classes: list[dict[str, Any]], height: int, width: int
) -> np.ndarray:
    """Brush results -> an index mask uint8 ``[H, W]`` (255 where nothing is painted; a later
    result paints over an earlier one, as in the editor). Other result types are ignored."""
    by_name = {c["name"]: int(c["id"]) for c in classes}
    mask = np.full((height, width), 255, dtype=np.uint8)
    if not isinstance(results, list):
        raise Invalid("annotation.result must be a list of results")
    for n, result in enumerate(results):
        if not isinstance(result, dict) or str(result.get("type", "")).lower() != "brushlabels":
            continue
        value = result.get("value") or {}
        if not isinstance(value, dict):
            raise Invalid(f"result {n}: value must be an object with rle and brushlabels")
        rle = value.get("rle")
        if rle is None:
            raise Invalid(f"result {n}: a brushlabels result needs value.rle")
        names = value.get("brushlabels") or []
        label = names[0] if isinstance(names, list) and len(names) == 1 else None
        if not isinstance(label, str) or label not in by_name:
            raise Invalid(
                f"result {n}: brush label {names!r} is not one class of this project; "
                f"known classes: {', '.join(by_name)}"
            )
        size = (result.get("original_height"), result.get("original_width"))
        if size != (height, width):
            raise Invalid(
                f"result {n}: original size {size[1]}x{size[0]} differs from the image "
                f"size {width}x{height}"
            )
        try:
            alpha = rle_to_mask(rle, height, width)
        except BrushRleError as exc:
            raise Invalid(f"result {n}: {exc}") from None
        mask[alpha >= ALPHA_THRESHOLD] = by_name[names[0]]
    return mask


def store_annotation(
    session: Session,
    store: BlobStore,
    project: Project,
    user: User,
    payload: dict[str, Any],
) -> LabelRevision | None:
    """Store a webhook's annotation as the image's next label revision (source ``webhook``).
    None when it equals the current labels. Redelivery of the same annotation is a no-op."""
    annotation, task = payload.get("annotation"), payload.get("task")
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise Invalid("the webhook needs 'annotation' and 'task' objects")
    ls_project = payload.get("project")
    xml = ls_project.get("label_config") if isinstance(ls_project, dict) else None
    config = parse_label_config(xml)
    data = task.get("data")
    url = data.get(config.value_key) if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise Invalid(f"task.data.{config.value_key} must be the image URL")
    image = resolve_image(session, project, url)
    if image is None:
        raise NotFound(f"no image of project {project.id} at {url}")
    result = annotation.get("result") or []
    mask = annotation_mask(result, list(project.classes), image.height, image.width)
    current = labels.current_mask(session, store, image)
    if np.array_equal(mask, current):
        return None
    digest = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:32]
    # The current revision is part of the key: a redelivered webhook is a no-op, while
    # changing an annotation back to an earlier state still makes a new revision.
    key = f"ls-{image.id}-r{image.current_revision}-{str(annotation.get('id'))[:40]}-{digest}"
    return labels.save_revision(
        session, store, image, mask, source="webhook", author_id=user.id, idempotency_key=key
    )
