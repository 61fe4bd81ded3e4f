"""Image use cases: upload (checked, deduplicated), list, get, delete."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid, NotFound, TooLarge
from activeseg.core.imaging import check_image
from activeseg.core.services.auth import get_project_for
from activeseg.core.storage import BlobStore, sha256_hex
from activeseg.core.tables import Image, Project, Split, User

MAX_FILENAME = 255


@dataclass(frozen=True)
class UploadedFile:
    filename: str
    data: bytes


@dataclass(frozen=True)
class UploadResult:
    image: Image
    duplicate: bool


def clean_filename(name: str | None) -> str:
    """Keep only the last path component; file names are labels, never paths on disk."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    base = "".join(ch for ch in base if ch.isprintable())
    return base[:MAX_FILENAME] or "unnamed"


def upload_images(
    session: Session,
    store: BlobStore,
    project: Project,
    files: list[UploadedFile],
    *,
    split: Split = Split.pool,
    max_pixels: int,
    max_files: int,
) -> list[UploadResult]:
    """Check every file first, so a bad file rejects the whole request with nothing stored."""
    if not files:
        raise Invalid("no files in the upload; send one or more 'files' form fields")
    if len(files) > max_files:
        raise TooLarge(f"{len(files)} files in one upload; the limit is {max_files}")
    checked = [(f, check_image(f.data, clean_filename(f.filename), max_pixels)) for f in files]
    results: list[UploadResult] = []
    seen: dict[str, Image] = {}
    for f, info in checked:
        digest = sha256_hex(f.data)
        existing = seen.get(digest) or session.scalar(
            select(Image).where(Image.project_id == project.id, Image.sha256 == digest)
        )
        if existing is not None:
            results.append(UploadResult(existing, duplicate=True))
            continue
        key = store.put(f.data)  # blob first, row after: no row ever points to a missing blob
        image = Image(
            project_id=project.id,
            sha256=digest,
            blob_key=key,
            filename=clean_filename(f.filename),
            format=info.format,
            width=info.width,
            height=info.height,
            channels=info.channels,
            size_bytes=len(f.data),
            split=split.value,
        )
        session.add(image)
        seen[digest] = image
        results.append(UploadResult(image, duplicate=False))
    session.flush()
    return results


def get_image_for(session: Session, user: User, image_id: int) -> Image:
    image = session.get(Image, image_id)
    if image is None:
        raise NotFound(f"image {image_id} not found")
    get_project_for(session, user, image.project_id)  # raises NotFound for outsiders
    return image


def list_images(
    session: Session,
    project: Project,
    *,
    split: Split | None,
    labelled: bool | None,
    offset: int,
    limit: int,
) -> tuple[list[Image], int]:
    query = select(Image).where(Image.project_id == project.id)
    if split is not None:
        query = query.where(Image.split == split.value)
    if labelled is True:
        query = query.where(Image.labelled_pixels > 0)
    elif labelled is False:
        query = query.where(Image.labelled_pixels == 0)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Image.id).offset(offset).limit(limit)).all()
    return list(rows), total


def set_split(image: Image, split: Split) -> Image:
    image.split = split.value
    return image


def delete_image(session: Session, image: Image) -> None:
    """Delete the row (its revisions and scores cascade). Its blobs stay until the orphan sweep
    (activeseg/core/services/blobs.py) finds no row referencing them."""
    session.delete(image)
