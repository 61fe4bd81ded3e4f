"""Labelling-tool annotations as contributions to an image's labels.

The rule (README, "Labels from labelling tools"):

- a tool annotation sets the pixels it paints and leaves every other pixel as it was;
- skipped, cancelled and empty annotations change nothing;
- an update replaces the annotation's own contribution, a delete removes it: a pixel it painted
  goes back to the value it held before the annotation, if it still holds the annotation's
  value (someone who labelled the pixel since keeps their label); a later tool annotation that
  painted over the pixel keeps it, and inherits the earlier "before" value.

Each contribution is stored as a :class:`Layer` (the values it painted, 255 elsewhere, and
what those pixels held before it), ordered by ``seq``: the layers of one image form a stack,
and withdrawing one hands its "before" values to the layer just above it. The pure functions
:func:`apply` and :func:`withdraw` do the pixel work; :func:`record` and :func:`remove` keep the
rows, blobs and label revisions.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid
from activeseg.core.services import labels
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, LabelRevision, ToolAnnotation
from activeseg.uncertainty.labels import UNLABELLED


@dataclass
class Layer:
    """``values``: uint8 [H, W], the class painted, 255 where the annotation paints nothing;
    ``prior``: uint8 [H, W], what the painted pixels held before (meaningless elsewhere)."""

    values: np.ndarray
    prior: np.ndarray

    @property
    def painted(self) -> np.ndarray:
        return self.values != UNLABELLED


def apply(mask: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, Layer]:
    """``mask`` with ``values`` painted on top, and the layer that remembers what was there."""
    painted = values != UNLABELLED
    out = mask.copy()
    out[painted] = values[painted]
    return out, Layer(values=values.copy(), prior=np.where(painted, mask, UNLABELLED))


def withdraw(mask: np.ndarray, layer: Layer, above: list[Layer]) -> np.ndarray:
    """``mask`` without ``layer``'s contribution. ``above``: the layers applied after it, oldest
    first; their ``prior`` arrays are updated in place where they covered ``layer``'s pixels."""
    painted = layer.painted
    restore = painted & (mask == layer.values)
    pending = painted.copy()  # pixels whose "before" value still goes to a layer above
    for upper in above:
        hit = pending & upper.painted
        if not hit.any():
            continue
        inherit = hit & (upper.prior == layer.values)  # it painted over this layer's value
        upper.prior[inherit] = layer.prior[inherit]
        pending &= ~hit
        restore &= ~hit  # the pixel shows the upper layer (or a label made since)
    out = mask.copy()
    out[restore] = layer.prior[restore]
    return out


def encode_layer(layer: Layer) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, values=layer.values, prior=layer.prior)
    return buf.getvalue()


def decode_layer(data: bytes) -> Layer:
    with np.load(io.BytesIO(data)) as npz:
        return Layer(values=np.array(npz["values"]), prior=np.array(npz["prior"]))


Stack = list[tuple[ToolAnnotation, Layer]]


@dataclass(frozen=True)
class Outcome:
    """What a tool's event did: ``revision`` is the label revision it made (None: the labels
    did not change); ``status``: applied | unchanged | withdrawn | unknown."""

    status: str
    revision: LabelRevision | None


def _stack(session: Session, store: BlobStore, image: Image) -> Stack:
    rows = session.scalars(
        select(ToolAnnotation)
        .where(ToolAnnotation.image_id == image.id, ToolAnnotation.state == "active")
        .order_by(ToolAnnotation.seq)
    )
    return [(row, decode_layer(store.get(row.blob_key))) for row in rows if row.blob_key]


def _take_out(
    store: BlobStore,
    stack: list[tuple[ToolAnnotation, Layer]],
    row: ToolAnnotation,
    mask: np.ndarray,
) -> np.ndarray:
    """``mask`` without ``row``'s layer; the layers above it that inherit are rewritten."""
    index = next(i for i, (r, _) in enumerate(stack) if r.id == row.id)
    above = stack[index + 1 :]
    before = [upper.prior.copy() for _, upper in above]
    out = withdraw(mask, stack[index][1], [upper for _, upper in above])
    for (upper_row, upper), old in zip(above, before, strict=True):
        if not np.array_equal(upper.prior, old):
            upper_row.blob_key = store.put(encode_layer(upper))
    del stack[index]
    return out


def _save(
    session: Session,
    store: BlobStore,
    image: Image,
    before: np.ndarray,
    after: np.ndarray,
    author_id: int | None,
) -> LabelRevision | None:
    if np.array_equal(before, after):
        return None
    return labels.save_revision(session, store, image, after, source="webhook", author_id=author_id)


def record(
    session: Session,
    store: BlobStore,
    image: Image,
    values: np.ndarray,
    *,
    tool: str,
    external_id: str,
    author_id: int | None,
    external_author: str | None = None,
) -> Outcome:
    """Create or update the tool annotation ``external_id`` on ``image`` with the painted
    ``values`` (uint8 [H, W], 255 = not painted; at least one pixel painted). Redelivering the
    same values changes nothing."""
    if not (values != UNLABELLED).any():
        raise ValueError("record() needs a painted pixel: empty annotations change nothing")
    locked = labels.lock_image(session, image.id)
    row = session.scalar(
        select(ToolAnnotation).where(
            ToolAnnotation.project_id == locked.project_id,
            ToolAnnotation.tool == tool,
            ToolAnnotation.external_id == external_id,
        )
    )
    if row is not None and row.image_id != locked.id:
        raise Invalid(
            f"{tool} annotation {external_id[:40]} belongs to image {row.image_id}, not to "
            f"image {locked.id}"
        )
    stack = _stack(session, store, locked)
    if row is not None and row.state == "active":
        own = next((layer for r, layer in stack if r.id == row.id), None)
        if own is not None and np.array_equal(own.values, values):
            return Outcome("unchanged", None)
    mask = labels.current_mask(session, store, locked)
    after = mask
    if row is not None and row.state == "active":
        after = _take_out(store, stack, row, after)
    after, layer = apply(after, values)
    seq = (
        session.scalar(
            select(func.max(ToolAnnotation.seq)).where(ToolAnnotation.image_id == locked.id)
        )
        or 0
    ) + 1
    if row is None:
        row = ToolAnnotation(
            project_id=locked.project_id, image_id=locked.id, tool=tool, external_id=external_id
        )
        session.add(row)
    row.state = "active"
    row.seq = seq
    row.blob_key = store.put(encode_layer(layer))
    row.painted_pixels = int(np.count_nonzero(layer.painted))
    row.external_author = external_author
    revision = _save(session, store, locked, mask, after, author_id)
    row.revision = revision.revision if revision is not None else row.revision
    session.flush()
    return Outcome("applied", revision)


def remove(
    session: Session,
    store: BlobStore,
    project_id: int,
    *,
    tool: str,
    external_id: str,
    author_id: int | None,
) -> Outcome:
    """Withdraw the tool annotation ``external_id``'s contribution (a delete in the tool)."""
    row = session.scalar(
        select(ToolAnnotation).where(
            ToolAnnotation.project_id == project_id,
            ToolAnnotation.tool == tool,
            ToolAnnotation.external_id == external_id,
        )
    )
    if row is None or row.state != "active":
        return Outcome("unknown", None)
    locked = labels.lock_image(session, row.image_id)
    session.refresh(row)
    if row.state != "active":  # withdrawn meanwhile by a concurrent delivery
        return Outcome("unknown", None)
    stack = _stack(session, store, locked)
    mask = labels.current_mask(session, store, locked)
    after = _take_out(store, stack, row, mask)
    row.state = "deleted"
    revision = _save(session, store, locked, mask, after, author_id)
    session.flush()
    return Outcome("withdrawn", revision)
