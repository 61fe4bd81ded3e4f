"""verify_storage: check that every blob a project's rows point to exists and is intact."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from activeseg.core.storage import sha256_hex
from activeseg.core.tables import Image, LabelRevision
from activeseg.jobs.runner import JobContext


def verify_storage(ctx: JobContext) -> dict[str, Any]:
    with ctx.db.session() as s:
        keys = list(s.scalars(select(Image.blob_key).where(Image.project_id == ctx.project_id)))
        keys += list(
            s.scalars(
                select(LabelRevision.blob_key)
                .join(Image, Image.id == LabelRevision.image_id)
                .where(Image.project_id == ctx.project_id)
            )
        )
    missing: list[str] = []
    corrupt: list[str] = []
    for i, key in enumerate(keys):
        if not ctx.store.exists(key):
            missing.append(key)
        elif sha256_hex(ctx.store.get(key)) != key:
            corrupt.append(key)
        ctx.progress((i + 1) / max(len(keys), 1), f"checked {i + 1}/{len(keys)} blobs")
    if missing or corrupt:
        raise RuntimeError(
            f"{len(missing)} missing and {len(corrupt)} corrupt blobs: {(missing + corrupt)[:5]}"
        )
    return {"checked": len(keys)}
