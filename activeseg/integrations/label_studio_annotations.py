"""Label Studio annotations coming back: brush results -> index masks, and webhook events
applied as contributions to the image's labels (activeseg.core.services.contributions: an
annotation sets only the pixels it paints; an update or delete takes back only its own)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid, NotFound
from activeseg.core.services import contributions
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, Project, User
from activeseg.integrations.brush_rle import BrushRleError, rle_to_mask
from activeseg.integrations.label_studio import (
    LabelConfig,
    parse_label_config,
    resolve_image,
    shown,
    unresolved,
)
from activeseg.uncertainty.labels import UNLABELLED

# A painted brush pixel has alpha 255; anti-aliased edges fall in between.
ALPHA_THRESHOLD = 128
TOOL = "label-studio"
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED")
DELETE_EVENT = "ANNOTATIONS_DELETED"


def annotation_mask(
    results: list[dict[str, Any]], classes: list[dict[str, Any]], height: int, width: int
) -> np.ndarray:
    """Brush results -> an index mask uint8 ``[H, W]`` (255 where nothing is painted; a later
    result paints over an earlier one, as in the editor). Other result types are ignored."""
    by_name = {c["name"]: int(c["id"]) for c in classes}
    mask = np.full((height, width), UNLABELLED, dtype=np.uint8)
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
                f"result {n}: brush label {shown(names)} is not one class of this project; "
                f"known classes: {shown(', '.join(by_name))}"
            )
        size = (result.get("original_height"), result.get("original_width"))
        if size != (height, width):
            raise Invalid(
                f"result {n}: original size {shown(size[1], 20)}x{shown(size[0], 20)} differs "
                f"from the image size {width}x{height}"
            )
        try:
            alpha = rle_to_mask(rle, height, width)
        except BrushRleError as exc:
            raise Invalid(f"result {n}: {exc}") from None
        mask[alpha >= ALPHA_THRESHOLD] = by_name[names[0]]
    return mask


@dataclass(frozen=True)
class EventResult:
    """What one webhook event did to the labels: one entry per annotation it carried."""

    outcomes: list[dict[str, Any]]

    @property
    def changed(self) -> bool:
        return any(o.get("revision") is not None for o in self.outcomes)


def _image_of(session: Session, project: Project, task: Any, config: LabelConfig) -> Image:
    data = task.get("data") if isinstance(task, dict) else None
    url = data.get(config.value_key) if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise Invalid(f"task.data.{config.value_key} must be the image URL")
    image = resolve_image(session, project, url)
    if image is None:
        raise NotFound(unresolved(project.id, url))
    return image


def _annotation_ids(annotation: dict[str, Any]) -> tuple[str, str | None]:
    ident = annotation.get("id")
    if not isinstance(ident, (int, str)) or isinstance(ident, bool) or str(ident) == "":
        raise Invalid("annotation.id must be Label Studio's annotation id")
    author = annotation.get("completed_by")
    if isinstance(author, dict):
        author = author.get("id")
    return str(ident)[:100], (str(author)[:100] if author is not None else None)


def apply_annotation(
    session: Session,
    store: BlobStore,
    project: Project,
    user: User,
    annotation: Any,
    task: Any,
    config: LabelConfig,
) -> dict[str, Any]:
    """One created or updated annotation: its painted pixels become the annotation's own
    contribution. A skip (``was_cancelled``) or an annotation that paints nothing changes no
    label, not even an earlier contribution of the same annotation."""
    if not isinstance(annotation, dict) or not isinstance(task, dict):
        raise Invalid("the webhook needs 'annotation' and 'task' objects")
    image = _image_of(session, project, task, config)
    shown_id = shown(annotation.get("id"), 40)
    if annotation.get("was_cancelled"):
        return {"annotation": shown_id, "status": "skipped", "revision": None}
    result = annotation.get("result") or []
    values = annotation_mask(result, list(project.classes), image.height, image.width)
    if not (values != contributions.UNLABELLED).any():
        return {"annotation": shown_id, "status": "empty", "revision": None}
    ident, author = _annotation_ids(annotation)
    outcome = contributions.record(
        session,
        store,
        image,
        values,
        tool=TOOL,
        external_id=ident,
        author_id=user.id,
        external_author=author,
    )
    rev = outcome.revision.revision if outcome.revision is not None else None
    return {"annotation": ident, "status": outcome.status, "revision": rev, "image": image.id}


def handle_event(
    session: Session, store: BlobStore, project: Project, user: User, payload: dict[str, Any]
) -> EventResult:
    """Apply an annotation event of Label Studio's webhook (created, updated, bulk created or
    deleted) to the project's labels."""
    action = payload.get("action")
    if action == DELETE_EVENT:
        items = payload.get("annotations")
        if not isinstance(items, list):
            raise Invalid("ANNOTATIONS_DELETED needs an 'annotations' list of {id}")
        outcomes = []
        for item in items[:10_000]:
            ident, _ = _annotation_ids(item if isinstance(item, dict) else {})
            outcome = contributions.remove(
                session, store, project.id, tool=TOOL, external_id=ident, author_id=user.id
            )
            rev = outcome.revision.revision if outcome.revision is not None else None
            outcomes.append({"annotation": ident, "status": outcome.status, "revision": rev})
        return EventResult(outcomes)
    ls_project = payload.get("project")
    xml = ls_project.get("label_config") if isinstance(ls_project, dict) else None
    config = parse_label_config(xml)
    annotation, task = payload.get("annotation"), payload.get("task")
    if isinstance(annotation, list):  # ANNOTATIONS_CREATED: lists, task i for annotation i
        tasks = task if isinstance(task, list) else [task] * len(annotation)
        if len(tasks) != len(annotation):
            raise Invalid("ANNOTATIONS_CREATED needs one task per annotation")
        pairs = list(zip(annotation[:10_000], tasks, strict=False))
    else:
        pairs = [(annotation, task)]
    return EventResult(
        [apply_annotation(session, store, project, user, a, t, config) for a, t in pairs]
    )
