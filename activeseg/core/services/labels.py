"""Label masks: every change is a new revision; nothing is overwritten in place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Select, Table, and_, bindparam, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from activeseg.core.errors import NotFound
from activeseg.core.imaging import decode_index, decode_mask, encode_png
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, LabelRevision, Project
from activeseg.uncertainty.labels import UNLABELLED


def unlabelled_mask(image: Image) -> np.ndarray:
    """uint8 [H, W] of 255: the mask of an image nobody has labelled yet."""
    return np.full((image.height, image.width), UNLABELLED, dtype=np.uint8)


# Built once: the image row read afresh, with the blob key of its current mask; locked below.
_IMAGE_AND_MASK = (
    select(Image, LabelRevision.blob_key)
    .outerjoin(
        LabelRevision,
        and_(LabelRevision.image_id == Image.id, LabelRevision.revision == Image.current_revision),
    )
    .where(Image.id == bindparam("image_id"))
    .execution_options(populate_existing=True)
)
_LOCKED_IMAGE = (
    _IMAGE_AND_MASK
    # FOR NO KEY UPDATE: writers of the mask queue on each other, but not on the rows that
    # merely reference the image (a region map or revision being inserted holds KEY SHARE on
    # it). FOR UPDATE would conflict with those: two answers that each inserted a row
    # referencing the image and then asked for the lock would deadlock.
    .with_for_update(of=Image, key_share=True)
)
_images: Table = Image.__table__  # type: ignore[assignment]
# The image's next revision, if it is still at the one the new mask was made from: the UPDATE
# takes the row lock (waiting for a writer that holds it) and re-checks the revision after.
_ADVANCE = (
    update(_images)
    .where(_images.c.id == bindparam("b_id"), _images.c.current_revision == bindparam("b_seen"))
    .values(
        current_revision=bindparam("b_revision"),
        labelled_pixels=bindparam("b_pixels"),
        labelled_fraction=bindparam("b_fraction"),
    )
)


@dataclass(frozen=True)
class LockedImage:
    """An image row locked for the transaction, and the blob key of its current mask (None
    when it has no labels yet)."""

    image: Image
    mask_key: str | None

    def mask(self, store: BlobStore) -> np.ndarray:
        """uint8 [H, W]: its current mask (all 255 when it has none)."""
        return read_mask(store, self.image, self.mask_key)


def lock_image_and_mask(session: Session, image_id: int) -> LockedImage:
    """:func:`lock_image`, and the key of the current mask in the same query."""
    row = session.execute(_LOCKED_IMAGE, {"image_id": image_id}).one_or_none()
    if row is None:
        raise NotFound(f"image {image_id} not found")
    image, key = row
    if key is None and image.current_revision:
        # The lock was waited for: PostgreSQL re-read the image row once the other writer
        # committed, but the joined revision row comes from the statement's snapshot, taken
        # before, where the new revision is not visible. Read it now.
        key = get_revision(session, image).blob_key
    return LockedImage(image, key)


def lock_image(session: Session, image_id: int) -> Image:
    """The image row, locked for this transaction and read afresh: a writer of an image's
    labels (a consensus, a review, a tool's annotation, an upload) takes it before it reads the
    current mask, so two read-modify-writes of one mask run one after the other. A single task
    answer takes it only to advance the revision (:func:`save_window_unlocked`)."""
    return lock_image_and_mask(session, image_id).image


def current_mask(session: Session, store: BlobStore, image: Image) -> np.ndarray:
    """The latest mask as uint8 [H, W]; all 255 when the image has no labels yet."""
    if image.current_revision == 0:
        return unlabelled_mask(image)
    rev = get_revision(session, image, image.current_revision)
    return decode_index(store.get(rev.blob_key))


def with_mask_key(query: Select[Any]) -> Select[Any]:
    """``query`` over :class:`Image` plus the blob key of each image's current mask (None when
    it has no labels yet): a job reads the keys in a short read session and decodes the masks
    after it has closed (see :mod:`activeseg.core.db`)."""
    current = and_(
        LabelRevision.image_id == Image.id, LabelRevision.revision == Image.current_revision
    )
    return query.add_columns(LabelRevision.blob_key).outerjoin(LabelRevision, current)


def read_mask(store: BlobStore, image: Image, key: str | None) -> np.ndarray:
    """uint8 ``[H, W]``: the mask ``key`` names (from :func:`with_mask_key`), all 255 when the
    image has no labels yet. No session: call it after the read session closed."""
    if key is None:
        if image.current_revision:
            raise NotFound(f"image {image.id} has no label revision {image.current_revision}")
        return unlabelled_mask(image)
    return decode_index(store.get(key))


def get_revision(session: Session, image: Image, revision: int | None = None) -> LabelRevision:
    number = image.current_revision if revision is None else revision
    rev = session.scalar(
        select(LabelRevision).where(
            LabelRevision.image_id == image.id, LabelRevision.revision == number
        )
    )
    if rev is None:
        raise NotFound(f"image {image.id} has no label revision {number}")
    return rev


def history(session: Session, image: Image) -> list[LabelRevision]:
    return list(
        session.scalars(
            select(LabelRevision)
            .where(LabelRevision.image_id == image.id)
            .order_by(LabelRevision.revision)
        )
    )


def save_revision(
    session: Session,
    store: BlobStore,
    image: Image,
    mask: np.ndarray,
    *,
    source: str,
    author_id: int | None,
    task_id: int | None = None,
    idempotency_key: str | None = None,
) -> LabelRevision:
    """Store ``mask`` (uint8 [H, W], already checked) as the image's next revision.

    The image row is locked first so that two concurrent submissions for one image get
    revisions n+1 and n+2 instead of colliding.
    """
    if idempotency_key is not None:
        done = session.scalar(
            select(LabelRevision).where(LabelRevision.idempotency_key == idempotency_key)
        )
        if done is not None:
            return done
    return _store_revision(
        session,
        store,
        lock_image(session, image.id),
        mask,
        source=source,
        author_id=author_id,
        task_id=task_id,
        idempotency_key=idempotency_key,
    )


def _store_revision(
    session: Session,
    store: BlobStore,
    locked: Image,
    mask: np.ndarray,
    *,
    source: str,
    author_id: int | None,
    task_id: int | None,
    idempotency_key: str | None,
) -> LabelRevision:
    """``mask`` as the next revision of ``locked`` (held by :func:`lock_image`)."""
    key, labelled, fraction = _put_mask(store, locked, mask)
    rev = _revision_row(locked, key, labelled, source, author_id, task_id, idempotency_key)
    session.add(rev)
    locked.current_revision = rev.revision
    locked.labelled_pixels = labelled
    locked.labelled_fraction = fraction
    session.flush()
    return rev


def _put_mask(store: BlobStore, image: Image, mask: np.ndarray) -> tuple[str, int, float]:
    """Store ``mask`` of ``image``: its blob key, labelled pixels and labelled fraction."""
    labelled = int(np.count_nonzero(mask != UNLABELLED))
    return store.put(encode_png(mask)), labelled, labelled / float(image.width * image.height)


def _with_window(
    mask: np.ndarray, bbox: tuple[int, int, int, int], where: np.ndarray, window: np.ndarray
) -> np.ndarray:
    """A copy of ``mask`` with the pixels ``where`` (bool, over ``bbox`` = (y0, x0, y1, x1),
    end exclusive) set from ``window``."""
    changed = mask.copy()
    y0, x0, y1, x1 = bbox
    changed[y0:y1, x0:x1][where] = window[where]
    return changed


def _revision_row(
    image: Image,
    key: str,
    labelled: int,
    source: str,
    author_id: int | None,
    task_id: int | None,
    idempotency_key: str | None,
) -> LabelRevision:
    """The row of ``image``'s next revision, its mask stored as ``key``."""
    return LabelRevision(
        image_id=image.id,
        revision=image.current_revision + 1,
        blob_key=key,
        labelled_pixels=labelled,
        source=source,
        author_id=author_id,
        task_id=task_id,
        idempotency_key=idempotency_key,
    )


def save_window(
    session: Session,
    store: BlobStore,
    image: Image | LockedImage,
    bbox: tuple[int, int, int, int],
    where: np.ndarray,
    window: np.ndarray,
    *,
    source: str,
    author_id: int | None,
    task_id: int | None = None,
    idempotency_key: str | None = None,
) -> LabelRevision:
    """The image's next revision: its current mask with the pixels ``where`` (bool, over
    ``bbox`` = (y0, x0, y1, x1), end exclusive) set from ``window``. ``image`` is the caller's
    :func:`lock_image` (the image row, or the :class:`LockedImage` with its mask key, which
    spares a query)."""
    if isinstance(image, LockedImage):
        locked, mask = image.image, image.mask(store)
    else:
        locked, mask = image, current_mask(session, store, image)
    return _store_revision(
        session,
        store,
        locked,
        _with_window(mask, bbox, where, window),
        source=source,
        author_id=author_id,
        task_id=task_id,
        idempotency_key=idempotency_key,
    )


def save_window_unlocked(
    session: Session,
    store: BlobStore,
    image_id: int,
    bbox: tuple[int, int, int, int],
    where: np.ndarray,
    window: np.ndarray,
    *,
    source: str,
    author_id: int | None,
    task_id: int | None = None,
    idempotency_key: str | None = None,
) -> LabelRevision:
    """:func:`save_window` without holding the image's row lock while the mask is read,
    changed, encoded and stored (an fsync'ed blob: milliseconds that every other answer to the
    image waited through). The new mask is made from the revision read without the lock; one
    conditional UPDATE then takes the lock and advances the image only if it is still at that
    revision. If another writer got there first, the answer is made again under the lock from
    the revision that writer left (:func:`save_window`); the first blob is an orphan for the
    sweep. Either way the revision holds exactly one writer's change on top of the other's."""
    row = session.execute(_IMAGE_AND_MASK, {"image_id": image_id}).one_or_none()
    if row is None:
        raise NotFound(f"image {image_id} not found")
    image, mask_key = row
    mask = _with_window(read_mask(store, image, mask_key), bbox, where, window)
    key, labelled, fraction = _put_mask(store, image, mask)
    seen = image.current_revision
    won = session.execute(
        _ADVANCE,
        {"b_id": image_id, "b_seen": seen, "b_revision": seen + 1, "b_pixels": labelled,
         "b_fraction": fraction},
    ).rowcount  # type: ignore[attr-defined]  # fmt: skip
    if not won:
        locked = lock_image_and_mask(session, image_id)
        return save_window(
            session, store, locked, bbox, where, window, source=source, author_id=author_id,
            task_id=task_id, idempotency_key=idempotency_key,
        )  # fmt: skip
    rev = _revision_row(image, key, labelled, source, author_id, task_id, idempotency_key)
    # What the UPDATE wrote, as the row's loaded state: nothing is left to flush for it.
    set_committed_value(image, "current_revision", seen + 1)
    set_committed_value(image, "labelled_pixels", labelled)
    set_committed_value(image, "labelled_fraction", fraction)
    session.add(rev)
    session.flush()
    return rev


def put_mask_png(
    session: Session,
    store: BlobStore,
    project: Project,
    image: Image,
    data: bytes,
    name: str,
    author_id: int | None,
    source: str = "upload",
) -> LabelRevision:
    mask = decode_mask(
        data, name, image.height, image.width, len(project.classes), project.ignore_index
    )
    return save_revision(session, store, image, mask, source=source, author_id=author_id)
