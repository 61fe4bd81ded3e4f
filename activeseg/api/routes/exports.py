"""Export (streamed) and import of a project's labels: COCO JSON, PNG masks, Label Studio."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from activeseg.api.deps import CurrentUser, DbDep, Engineer, SettingsDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.routes.images import read_limited
from activeseg.api.routes.links import public_base_url
from activeseg.api.schemas import RowId
from activeseg.core.services import auth
from activeseg.integrations import exchange

router = APIRouter(
    tags=["export and import"], responses=error_responses(403, 404, 409, 413, 415, 507)
)
MAX_LINK_TTL_DAYS = 90
FormatQuery = Annotated[str, Query(pattern="^(coco|png|labelstudio)$", description="file format")]


class ImportResult(BaseModel):
    format: str
    images: int
    updated: int
    unchanged: int


@router.get(
    "/projects/{project_id}/export",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/json": {}, "application/zip": {}}}},
)
def export(
    project_id: RowId,
    user: CurrentUser,
    db: DbDep,
    store: StoreDep,
    request: Request,
    settings: SettingsDep,
    format: FormatQuery = "coco",
    link_ttl_days: Annotated[
        int,
        Query(
            ge=1,
            le=MAX_LINK_TTL_DAYS,
            description="labelstudio: days the tasks' signed image links work (rounded up to "
            "a whole UTC day)",
        ),
    ] = exchange.LINK_TTL_DAYS,
) -> StreamingResponse:
    """The project's labels, streamed image by image: ``coco`` (JSON, RLE masks, category id =
    class id + 1), ``png`` (zip: classes.json, masks/*.png index masks with 255 = unlabelled,
    images.json) or ``labelstudio`` (JSON tasks with brush annotations and the active model's
    predictions; each task's ``data.image`` is a signed link that Label Studio opens without a
    token, valid ``link_ttl_days`` rounded up to the next midnight UTC). The same labels give
    the same bytes; in ``labelstudio`` the same day and the same signing key too."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        name = f"project-{project.id}.{exchange.EXTENSIONS[format]}"
    body = exchange.export_stream(
        db, store, project_id, format, public_base_url(request, settings), link_ttl_days
    )
    return StreamingResponse(
        body,
        media_type=exchange.MEDIA_TYPES[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


@router.post("/projects/{project_id}/import", response_model=ImportResult)
async def import_labels(
    project_id: RowId,
    file: Annotated[UploadFile, File(description="a file in the given format")],
    user: Engineer,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    format: FormatQuery = "coco",
) -> ImportResult:
    """Labels for images already in the project (matched by sha256, else file name). Every
    item is checked before anything is stored; a changed mask becomes a new revision (source
    ``import``), an identical one is left alone."""
    data = await read_limited(file, settings.max_upload_bytes)
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        summary = exchange.import_labels(
            s,
            store,
            project,
            user,
            format,
            data,
            max_entry_bytes=max(settings.max_upload_bytes, settings.max_image_pixels * 2),
        )
    return ImportResult(**summary.__dict__)
