"""The labelled images of a project's splits, read for training and evaluation."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from sqlalchemy import select

from activeseg.core.db import Database
from activeseg.core.imaging import decode_image
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image
from activeseg.uncertainty.labels import UNLABELLED


class LabelledSplit(NamedTuple):
    """Images with labels, in id order: ids, decoded arrays (``[H, W]`` or ``[H, W, 3]``),
    masks (uint8 ``[H, W]``, 255 = unlabelled) and the label snapshot {image id: revision}."""

    ids: list[int]
    images: list[np.ndarray]
    masks: list[np.ndarray]
    snapshot: dict[str, int]

    @property
    def labelled_pixels(self) -> int:
        return int(sum(int((mask != UNLABELLED).sum()) for mask in self.masks))


def load_split(
    db: Database, store: BlobStore, project_id: int, splits: tuple[str, ...]
) -> LabelledSplit:
    """Images with labels in ``splits``. The rows come from one read session; the blobs are
    read and decoded after it closed (no session is held while blobs load)."""
    with db.read_session() as s:
        rows = list(
            s.execute(
                with_mask_key(
                    select(Image)
                    .where(
                        Image.project_id == project_id,
                        Image.split.in_(splits),
                        Image.labelled_pixels > 0,
                    )
                    .order_by(Image.id)
                )
            ).all()
        )
    return LabelledSplit(
        ids=[im.id for im, _ in rows],
        images=[decode_image(store.get(im.blob_key)) for im, _ in rows],
        masks=[read_mask(store, im, key) for im, key in rows],
        snapshot={str(im.id): im.current_revision for im, _ in rows},
    )
