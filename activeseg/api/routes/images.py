from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status
from starlette.concurrency import run_in_threadpool

from activeseg.api.deps import (
    CurrentUser,
    DbDep,
    Engineer,
    SettingsDep,
    StoreDep,
    UserOrLink,
    link_headers,
)
from activeseg.api.errors import error_responses
from activeseg.api.schemas import (
    MAX_ROW_ID,
    ImagePublic,
    ImageUpdate,
    LabelRevisionPublic,
    Page,
    RowId,
    UploadItem,
    UploadResponse,
)
from activeseg.core.errors import TooLarge
from activeseg.core.imaging import encode_png
from activeseg.core.services import auth, images, labels, links
from activeseg.core.tables import Image, LabelRevision, Split

router = APIRouter(tags=["images"], responses=error_responses(403, 404, 409, 413, 415, 507))
MEDIA = {"png": "image/png", "jpeg": "image/jpeg", "tiff": "image/tiff"}


async def read_limited(upload: UploadFile, limit: int) -> bytes:
    """Read an upload, refusing it (413) as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    while chunk := await upload.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"{upload.filename}: larger than {limit} bytes (ACTIVESEG_MAX_UPLOAD_BYTES)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/projects/{project_id}/images",
    response_model=UploadResponse,
    status_code=status.HTTP_201_CREATED,
    summary="Upload one or many images (PNG, JPEG, TIFF); all or nothing",
    description=(
        "Accepted: PNG, JPEG and single-page TIFF; grey or RGB; 8 or 16-bit integer or 32-bit "
        "float (other number types are read as float32). Stored as uploaded. Palettes are "
        "expanded to RGB, alpha is dropped, EXIF/TIFF orientation is applied (width and height "
        "are upright). Refused with the reason: multi-page TIFF stacks and animations (415), "
        "2 or 4+ channels (415), 16-bit colour PNG (415), NaN or infinity (422), CMYK (415)."
    ),
)
async def upload_images(
    project_id: RowId,
    files: Annotated[list[UploadFile], File(description="one or more image files")],
    user: Engineer,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    split: Annotated[str, Form(pattern="^(pool|train|val|test)$")] = "pool",
) -> UploadResponse:
    payload, total = [], 0
    for f in files:
        data = await read_limited(f, settings.max_upload_bytes - total)
        total += len(data)
        payload.append(images.UploadedFile(f.filename or "unnamed", data))
    with db.session() as s:  # refuse outsiders before decoding anything
        auth.get_project_for(s, user, project_id)
    # Decoding and blob writes run in the thread pool (the event loop keeps serving) and
    # before the write transaction (on SQLite it would block every other writer).
    checked = await run_in_threadpool(
        images.check_uploads,
        payload,
        max_pixels=settings.max_image_pixels,
        max_files=settings.max_images_per_upload,
    )
    stored = await run_in_threadpool(images.store_uploads, store, checked)

    def record() -> list[UploadItem]:
        with db.session() as s:
            project = auth.get_project_for(s, user, project_id)
            results = images.record_uploads(s, project, stored, Split(split))
            return [
                UploadItem(image=ImagePublic.model_validate(r.image), duplicate=r.duplicate)
                for r in results
            ]

    items = await run_in_threadpool(record)
    dups = sum(i.duplicate for i in items)
    return UploadResponse(data=items, created=len(items) - dups, duplicates=dups)


@router.get("/projects/{project_id}/images", response_model=Page[ImagePublic])
def list_images(
    project_id: RowId,
    user: CurrentUser,
    db: DbDep,
    split: Annotated[str | None, Query(pattern="^(pool|train|val|test)$")] = None,
    labelled: bool | None = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Page[ImagePublic]:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        rows, total = images.list_images(
            s,
            project,
            split=Split(split) if split else None,
            labelled=labelled,
            offset=offset,
            limit=limit,
        )
        return Page(data=[ImagePublic.model_validate(r) for r in rows], count=total)


@router.get("/images/{image_id}", response_model=ImagePublic)
def get_image(image_id: RowId, user: CurrentUser, db: DbDep) -> Image:
    with db.session() as s:
        return images.get_image_for(s, user, image_id)


@router.patch("/images/{image_id}", response_model=ImagePublic)
def update_image(image_id: RowId, body: ImageUpdate, user: Engineer, db: DbDep) -> Image:
    with db.session() as s:
        return images.set_split(images.get_image_for(s, user, image_id), Split(body.split))


@router.get(
    "/images/{image_id}/file",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/tiff": {}}}},
)
def download_image(image_id: RowId, who: UserOrLink, db: DbDep, store: StoreDep) -> Response:
    """The stored file, as uploaded. Opens with a token or a signed link (POST /links)."""
    with db.session() as s:
        image = links.image_for(s, who, image_id)
    # The bytes of an image never change: cached a day, or as long as a signed link lives.
    headers = {"Cache-Control": "private, max-age=86400", "ETag": image.sha256}
    headers.update(link_headers(who, max_age_s=86400))
    return Response(store.get(image.blob_key), media_type=MEDIA[image.format], headers=headers)


@router.delete("/images/{image_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_image(image_id: RowId, user: Engineer, db: DbDep) -> None:
    """Delete the image, its labels and scores. Its blobs are left to the orphan sweep (after
    ACTIVESEG_ORPHAN_BLOB_GRACE_S): deleting them here could race an upload of the same bytes
    that is about to commit a row pointing at them."""
    with db.session() as s:
        images.delete_image(s, images.get_image_for(s, user, image_id))


@router.put(
    "/images/{image_id}/mask",
    response_model=LabelRevisionPublic,
    status_code=status.HTTP_201_CREATED,
    summary="Store a full index mask PNG as the image's next label revision",
)
async def put_mask(
    image_id: RowId,
    file: Annotated[
        UploadFile, File(description="index PNG: class id per pixel, 255 = unlabelled")
    ],
    user: Engineer,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
) -> LabelRevision:
    data = await read_limited(file, settings.max_upload_bytes)
    with db.session() as s:
        image = images.get_image_for(s, user, image_id)
        project = auth.get_project_for(s, user, image.project_id)
        return labels.put_mask_png(
            s, store, project, image, data, file.filename or "mask", author_id=user.id
        )


@router.get(
    "/images/{image_id}/mask",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def get_mask(
    image_id: RowId,
    who: UserOrLink,
    db: DbDep,
    store: StoreDep,
    revision: Annotated[int | None, Query(ge=1, le=MAX_ROW_ID)] = None,
) -> Response:
    """The latest (or a given) revision; an all-255 mask when nothing is labelled yet. Opens
    with a token or a signed link (POST /links)."""
    with db.session() as s:
        image = links.image_for(s, who, image_id)
        if revision is None and image.current_revision == 0:
            return Response(
                encode_png(labels.current_mask(s, store, image)),
                media_type="image/png",
                headers=link_headers(who),
            )
        rev = labels.get_revision(s, image, revision)
    return Response(
        store.get(rev.blob_key),
        media_type="image/png",
        headers={"X-Label-Revision": str(rev.revision), **link_headers(who)},
    )


@router.get("/images/{image_id}/revisions", response_model=Page[LabelRevisionPublic])
def revisions(image_id: RowId, user: CurrentUser, db: DbDep) -> Page[LabelRevisionPublic]:
    with db.session() as s:
        rows = labels.history(s, images.get_image_for(s, user, image_id))
        return Page(data=[LabelRevisionPublic.model_validate(r) for r in rows], count=len(rows))
