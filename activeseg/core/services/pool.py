"""What scoring reads of the pool and how it writes its rows: the pool's image ids, the
chunk's image rows and region maps, the labelled class counts class-balanced pooling learns
from, the regions still open, and the score rows written in brief batches.

Every read is one short read session; blobs are read after it closed. Writes are brief
transactions of a batch of images (:class:`ScoreBatches`), so a scoring job never holds the
database while it predicts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.regions import REGION_MAPS, ensure_region_map
from activeseg.core.services.scores import (
    WRITE_BATCH_BYTES,
    ChunkCandidates,
    ImageCandidates,
    QueueParams,
    ScoredImage,
    group_candidates,
    replace_scores,
)
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, RegionSet, Split
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.pooling import open_regions
from activeseg.uncertainty.regions import RegionMap

WRITE_BATCH_IMAGES = 64
"""Images whose rows go in one write transaction (fewer when their arrays pass
``WRITE_BATCH_BYTES``): two rows per image, a few milliseconds of the SQLite write lock. Each
batch's candidates are computed together (vectorised) before it is written."""

# Class-balanced pooling learns its weights from these splits only: val and test masks are
# held out for evaluation, and letting them steer what is labelled next would leak them.
SELECTION_SPLITS = (Split.pool.value, Split.train.value)


def pool_image_ids(db: Database, project_id: int) -> list[int]:
    """The pool images not fully labelled, in id order."""
    with db.read_session() as s:
        return list(
            s.scalars(
                select(Image.id)
                .where(
                    Image.project_id == project_id,
                    Image.split == Split.pool.value,
                    Image.labelled_fraction < 1.0,
                )
                .order_by(Image.id)
            )
        )


def images_with_mask_keys(db: Database, ids: Sequence[int]) -> list[tuple[Image, str | None]]:
    """The rows of ``ids`` (id order), each with its current mask's blob key."""
    with db.read_session() as s:
        return [
            (im, key)
            for im, key in s.execute(
                with_mask_key(select(Image).where(Image.id.in_(ids)).order_by(Image.id))
            )
        ]


def selection_class_counts(
    db: Database, store: BlobStore, project_id: int, n_classes: int
) -> np.ndarray:
    """int64 ``[C]`` labelled pixels per class over the pool and train images (never val or
    test: see ``SELECTION_SPLITS``). Masks are decoded after the read session closed."""
    counts = np.zeros(n_classes, np.int64)
    with db.read_session() as s:
        labelled = list(
            s.execute(
                with_mask_key(
                    select(Image).where(
                        Image.project_id == project_id,
                        Image.labelled_pixels > 0,
                        Image.split.in_(SELECTION_SPLITS),
                    )
                )
            ).all()
        )
    for im, key in labelled:
        mask = read_mask(store, im, key)
        counts += np.bincount(mask[mask != UNLABELLED], minlength=n_classes)[:n_classes]
    return counts


def region_map_lookup(
    db: Database, store: BlobStore, images: Sequence[Image], spec: tuple[str, int, float]
) -> Callable[[Image], RegionMap]:
    """A function image -> its region map: the stored maps of ``images`` are looked up in one
    read (not one per image); a missing map is computed with :func:`ensure_region_map`."""
    kind, size, sigma = spec
    with db.read_session() as s:
        stored = dict(
            s.execute(
                select(RegionSet.image_id, RegionSet.blob_key).where(
                    RegionSet.image_id.in_([im.id for im in images]),
                    RegionSet.kind == kind,
                    RegionSet.size == size,
                    RegionSet.sigma == sigma,
                )
            ).all()
        )

    def region_map(image: Image) -> RegionMap:
        key = stored.get(image.id)
        if key is not None:
            return REGION_MAPS.get(store, key)
        return ensure_region_map(db, store, image, kind, size, sigma)

    return region_map


def open_regions_of(
    store: BlobStore, image: Image, mask_key: str | None, regions: RegionMap
) -> np.ndarray:
    """bool ``[R]``: regions not fully labelled by the image's mask (read with its row)."""
    if image.labelled_pixels == 0 and mask_key is None:
        return np.ones(regions.n_regions, np.bool_)
    return open_regions(read_mask(store, image, mask_key), regions.labels, regions.n_regions)


@contextmanager
def brief_write(db: Database) -> Iterator[Session]:
    """A write session of one batch; on SQLite it then leaves the write lock free for as long
    as it held it. SQLite's lock is not fair: a waiting request polls on a back-off (up to
    100 ms apart) and would mostly find the lock taken again by the next batch; free half the
    time, it gets the lock within a poll or two."""
    started = time.perf_counter()
    with db.session() as s:
        yield s
    if db.settings.is_sqlite:
        time.sleep(time.perf_counter() - started)


def write_batch(db: Database, mv_id: int, items: Sequence[ScoredImage], shown: str) -> None:
    """The rows of ``items`` in one :func:`brief_write` transaction (:func:`replace_scores`)."""
    if items:
        with brief_write(db) as s:
            replace_scores(s, mv_id, items, shown)


BatchWriter = Callable[[Database, int, Sequence[ScoredImage], str], None]


class ScoreBatches:
    """Writes a chunk's score rows in batches of ``WRITE_BATCH_IMAGES`` images (or
    ``WRITE_BATCH_BYTES``), each with ``write`` (one :func:`brief_write`); with ``offers`` it
    keeps each batch's candidates (:func:`group_candidates`) before writing it, and
    :meth:`candidates` merges them: :func:`activeseg.core.services.scores.chunk_candidates`
    of the batches."""

    def __init__(
        self,
        db: Database,
        mv_id: int,
        params: QueueParams,
        shown: str,
        offers: bool,
        write: BatchWriter = write_batch,
    ) -> None:
        self.db = db
        self.mv_id = mv_id
        self.params = params
        self.shown = shown
        self.offers = offers
        self.pending: list[ScoredImage] = []
        self.offered: list[ImageCandidates] = []
        self.write = write

    def add(self, item: ScoredImage) -> None:
        self.pending.append(item)
        if (
            len(self.pending) >= WRITE_BATCH_IMAGES
            or sum(p.nbytes() for p in self.pending) >= WRITE_BATCH_BYTES
        ):
            self.flush()

    def flush(self) -> None:
        """Write the pending rows (their candidates kept first)."""
        if not self.pending:
            return
        if self.offers:
            self.offered.append(group_candidates(self.mv_id, self.params, self.pending))
        self.write(self.db, self.mv_id, self.pending, self.shown)
        self.pending = []

    def candidates(self) -> ChunkCandidates:
        return ChunkCandidates.merge(self.params, self.offered)
