"""Image use cases: upload (checked, deduplicated), list, get, delete."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid, NotFound, TooLarge
from activeseg.core.imaging import CheckedImage, check_image
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


@dataclass(frozen=True)
class CheckedUpload:
    """A file that passed :func:`check_image`, with its content hash and (once stored) its
    blob key."""

    file: UploadedFile
    info: CheckedImage
    digest: str
    key: str = ""


def check_uploads(
    files: list[UploadedFile], *, max_pixels: int, max_files: int
) -> list[CheckedUpload]:
    """Decode and check every file (no database, no store): a bad file rejects the whole
    request before anything is stored. Slow for large images, so callers run it before they
    open a transaction (on SQLite a write transaction blocks every other writer)."""
    if not files:
        raise Invalid("no files in the upload; send one or more 'files' form fields")
    if len(files) > max_files:
        raise TooLarge(f"{len(files)} files in one upload; the limit is {max_files}")
    return [
        CheckedUpload(
            f, check_image(f.data, clean_filename(f.filename), max_pixels), sha256_hex(f.data)
        )
        for f in files
    ]


def store_uploads(store: BlobStore, checked: list[CheckedUpload]) -> list[CheckedUpload]:
    """Write the blobs (content-addressed: a duplicate rewrites the same key) before any row
    names them, so no row ever points to a missing blob; a blob whose row never commits is
    left to the orphan sweep."""
    return [CheckedUpload(c.file, c.info, c.digest, store.put(c.file.data)) for c in checked]


def record_uploads(
    session: Session, project: Project, stored: list[CheckedUpload], split: Split
) -> list[UploadResult]:
    """The rows of stored uploads, one per new content; a content the project already has
    (or that repeats within the request) is answered as a duplicate of the existing image.
    Two queries whatever the number of files, so the write transaction stays short."""
    digests = {c.digest for c in stored}
    seen: dict[str, Image] = {
        im.sha256: im
        for im in session.scalars(
            select(Image).where(Image.project_id == project.id, Image.sha256.in_(digests))
        )
    }
    results: list[UploadResult] = []
    for c in stored:
        existing = seen.get(c.digest)
        if existing is not None:
            results.append(UploadResult(existing, duplicate=True))
            continue
        image = Image(
            project_id=project.id,
            sha256=c.digest,
            blob_key=c.key,
            filename=clean_filename(c.file.filename),
            format=c.info.format,
            width=c.info.width,
            height=c.info.height,
            channels=c.info.channels,
            size_bytes=len(c.file.data),
            split=split.value,
        )
        session.add(image)
        seen[c.digest] = image
        results.append(UploadResult(image, duplicate=False))
    session.flush()
    return results


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
    """Check, store and record in one call (the importer's path; the upload route does the
    three steps itself so that only the last runs inside a transaction)."""
    checked = check_uploads(files, max_pixels=max_pixels, max_files=max_files)
    return record_uploads(session, project, store_uploads(store, checked), split)


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
