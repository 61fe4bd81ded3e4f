"""The built-in annotator web page: GET /annotate and its static files.

The page itself needs no token (it asks for one); every API call it makes sends
``Authorization: Bearer <token>`` like any other client.
"""

from __future__ import annotations

import re
from pathlib import Path

from fastapi import APIRouter, Response
from fastapi.responses import FileResponse

from activeseg.api.deps import CurrentUser, DbDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import RowId
from activeseg.core.errors import NotFound
from activeseg.core.imaging import decode_image, display_image, encode_png
from activeseg.core.services import images

router = APIRouter(tags=["web page"], responses=error_responses(404))

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
_NAME = re.compile(r"^[A-Za-z0-9_-]+\.(html|js|css|svg|png)$")
_MEDIA = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
}
# Everything the page loads comes from this origin; images and overlays arrive as blob: URLs.
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": _CSP,
    "Referrer-Policy": "no-referrer",
}


def static_file_response(name: str) -> FileResponse:
    match = _NAME.match(name)
    path = STATIC_DIR / name
    if match is None or not path.is_file():
        raise NotFound(f"no static file {name!r}")
    return FileResponse(path, media_type=_MEDIA[match.group(1)], headers=_HEADERS)


@router.get("/annotate", response_class=FileResponse, include_in_schema=False)
def annotate_page() -> FileResponse:
    """The annotator page (log in with an API token, label the queued regions)."""
    return static_file_response("annotate.html")


@router.get("/static/{name}", response_class=FileResponse, include_in_schema=False)
def static_file(name: str) -> FileResponse:
    return static_file_response(name)


@router.get(
    "/annotate/images/{image_id}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def image_as_png(image_id: RowId, user: CurrentUser, db: DbDep, store: StoreDep) -> Response:
    """The image as an 8-bit PNG, for browsers that cannot show its stored format (TIFF) or
    depth (16-bit, float): upright, with the contrast the model sees (``display_image``)."""
    with db.session() as s:
        image = images.get_image_for(s, user, image_id)
        key = image.blob_key
    return Response(
        encode_png(display_image(decode_image(store.get(key)))),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=86400"},
    )
