"""Region maps (SLIC superpixels or grid tiles): computed once per image and stored."""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from sqlalchemy import and_, bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.errors import NotFound
from activeseg.core.imaging import decode_image, display_image
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, RegionSet, Task
from activeseg.uncertainty.regions import (
    RegionMap,
    expected_region_count,
    grid_regions,
    region_count_off,
    region_stats,
    slic_regions,
)

log = logging.getLogger(__name__)


def region_sigma(kind: str, sigma: float) -> float:
    """The smoothing that names a region map: grid tiles ignore it, so they store 0."""
    return 0.0 if kind == "grid" else float(sigma)


def compute_region_map(image: np.ndarray, kind: str, size: int, sigma: float = 0.0) -> RegionMap:
    """``image`` uint8 [H, W] or [H, W, 3] -> its region map; ``size`` is the tile side or the
    target side of a superpixel, ``sigma`` SLIC's Gaussian smoothing in pixels (0 = none)."""
    if kind == "grid":
        return grid_regions(image.shape[0], image.shape[1], size)
    return slic_regions(image, region_size=size, sigma=sigma)


def region_count_warning(image: Image, regions: RegionMap, kind: str, size: int) -> str | None:
    """A sentence when ``image`` holds far fewer or far more regions (below half, above twice)
    than ``size`` implies, else None. Logged and reported by the jobs that read region maps."""
    expected = expected_region_count(image.height, image.width, size)
    if kind == "grid" or not region_count_off(regions.n_regions, expected):
        return None
    message = (
        f"image {image.id} ({image.height}x{image.width}) has {regions.n_regions} "
        f"{kind} regions where region_size {size} implies about {expected:.0f}"
    )
    log.warning("region count off: %s", message)
    return message


def encode_region_map(regions: RegionMap) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=regions.labels)
    return buf.getvalue()


def decode_region_map(data: bytes) -> RegionMap:
    with np.load(io.BytesIO(data)) as npz:
        return region_stats(npz["labels"].astype(np.int32))


class RegionMapCache:
    """Decoded region maps by blob key, least recently used dropped first once they hold more
    than ``max_bytes``. Blobs are content-addressed (a key always names the same bytes), so an
    entry never goes stale. Every lease reads its image's map: decoding the npz and computing
    the region statistics cost about 3 ms a lease (BENCHMARKS.md). The arrays are made
    read-only, since every caller shares them."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._maps: OrderedDict[str, RegionMap] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, store: BlobStore, key: str) -> RegionMap:
        with self._lock:
            found = self._maps.get(key)
            if found is not None:
                self._maps.move_to_end(key)
                return found
        regions = decode_region_map(store.get(key))  # outside the lock: other leases go on
        for array in (regions.labels, regions.counts, regions.bboxes):
            array.flags.writeable = False
        with self._lock:
            if key not in self._maps:
                self._maps[key] = regions
                self._bytes += _nbytes(regions)
            while self._bytes > self.max_bytes and len(self._maps) > 1:
                _, old = self._maps.popitem(last=False)
                self._bytes -= _nbytes(old)
        return regions


def _nbytes(regions: RegionMap) -> int:
    return regions.labels.nbytes + regions.counts.nbytes + regions.bboxes.nbytes


REGION_MAPS = RegionMapCache()


def _same_map(image_id: int, kind: str, size: int, sigma: float) -> tuple[Any, ...]:
    return (
        RegionSet.image_id == image_id,
        RegionSet.kind == kind,
        RegionSet.size == size,
        RegionSet.sigma == sigma,
    )


def _make_region_map(
    store: BlobStore, image: Image, kind: str, size: int, sigma: float
) -> tuple[RegionMap, str]:
    """Decode ``image``, compute its map and store the blob: the slow part, never run by a job
    inside a database session."""
    # SLIC sees what the annotator sees: 16-bit and float images at their display contrast.
    pixels = display_image(decode_image(store.get(image.blob_key)))
    regions = compute_region_map(pixels, kind, size, sigma)
    return regions, store.put(encode_region_map(regions))


def _add_region_row(
    session: Session, image: Image, kind: str, size: int, sigma: float, regions: RegionMap, key: str
) -> RegionSet:
    """Insert the row naming a computed map; if another worker stored one first (the unique
    constraint), return the winner's row instead (SLIC is deterministic: same map)."""
    row = RegionSet(
        image_id=image.id,
        kind=kind,
        size=size,
        sigma=sigma,
        n_regions=regions.n_regions,
        blob_key=key,
    )
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        found = session.scalar(select(RegionSet).where(*_same_map(image.id, kind, size, sigma)))
        assert found is not None
        return found
    return row


def region_set(
    session: Session, store: BlobStore, image: Image, kind: str, size: int, sigma: float = 0.0
) -> tuple[RegionSet, RegionMap]:
    """The stored region map of ``image``, computing and storing it on first use.

    A map is named by (image, kind, size, sigma): changing the project's ``slic_sigma`` makes
    new maps and leaves the old ones to the tasks that were queued on them (a task keeps its
    ``region_sigma``). Two workers racing on one image compute the same map (SLIC is
    deterministic); the unique constraint keeps one row and the loser reads the winner's.

    For requests, whose images were mapped when their tasks were queued. A map computed here
    is computed inside the caller's transaction: jobs call :func:`ensure_region_map`, which
    computes with no session open.
    """
    sigma = region_sigma(kind, sigma)
    row = session.scalar(select(RegionSet).where(*_same_map(image.id, kind, size, sigma)))
    if row is not None:
        return row, REGION_MAPS.get(store, row.blob_key)
    regions, key = _make_region_map(store, image, kind, size, sigma)
    row = _add_region_row(session, image, kind, size, sigma, regions, key)
    if row.blob_key != key:
        return row, REGION_MAPS.get(store, row.blob_key)
    return row, regions


# Built once (bound parameters): on the lease path, building it cost more than running it.
_SIZE_AND_MAP = (
    select(Image.width, Image.height, RegionSet.blob_key)
    .outerjoin(
        RegionSet,
        and_(
            RegionSet.image_id == Image.id,
            RegionSet.kind == bindparam("kind"),
            RegionSet.size == bindparam("size"),
            RegionSet.sigma == bindparam("sigma"),
        ),
    )
    .where(Image.id == bindparam("image_id"))
)


def task_region_map(session: Session, store: BlobStore, task: Task) -> tuple[int, int, RegionMap]:
    """(width, height, region map) of a task's image for a request. A task written by
    build_queue names its map's blob (``region_map_key``): no query, the decoded map from the
    process's cache, the image's size from the map's shape. Otherwise one query finds the
    stored map, or the map is made as :func:`region_set` does (computed and stored inside the
    caller's transaction: tasks made outside build_queue only)."""
    if task.region_map_key is not None:
        regions = REGION_MAPS.get(store, task.region_map_key)
        height, width = regions.labels.shape
        return width, height, regions
    image_id, kind, size = task.image_id, task.region_kind, task.region_size
    sigma = region_sigma(kind, task.region_sigma)
    found = session.execute(
        _SIZE_AND_MAP, {"image_id": image_id, "kind": kind, "size": size, "sigma": sigma}
    ).one_or_none()
    if found is None:
        raise NotFound(f"image {image_id} not found")
    if found.blob_key is not None:
        return found.width, found.height, REGION_MAPS.get(store, found.blob_key)
    image = session.get(Image, image_id)
    assert image is not None
    _, regions = region_set(session, store, image, kind, size, sigma)
    return found.width, found.height, regions


def ensure_region_map(
    db: Database, store: BlobStore, image: Image, kind: str, size: int, sigma: float = 0.0
) -> RegionMap:
    """:func:`region_set` for jobs, which must never hold the database while they work: look
    the row up in a read session, compute a missing map (decode, SLIC, blob) with no session
    open, and insert its row in a write transaction of one statement."""
    sigma = region_sigma(kind, sigma)
    with db.read_session() as s:
        key = s.scalar(select(RegionSet.blob_key).where(*_same_map(image.id, kind, size, sigma)))
    if key is not None:
        return REGION_MAPS.get(store, key)
    regions, key = _make_region_map(store, image, kind, size, sigma)
    with db.session() as s:
        row = _add_region_row(s, image, kind, size, sigma, regions, key)
        winner = row.blob_key
    return regions if winner == key else REGION_MAPS.get(store, winner)
