"""Signed, expiring links (:mod:`activeseg.core.services.links`): issue one for a resource you
may read, and (admins) rotate or revoke the keys that sign them."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import Admin, CurrentUser, DbDep, SettingsDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import NO_NUL, Page, RowId
from activeseg.core.services import links
from activeseg.core.settings import MAX_LINK_TTL_S, MIN_LINK_TTL_S, Settings
from activeseg.core.tables import LinkKey

router = APIRouter(tags=["signed links"], responses=error_responses(403, 404))


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(
        min_length=1,
        max_length=300,
        pattern=NO_NUL,
        description="a signable path, with the query it needs: "
        + links.signable_patterns()
        + " (e.g. /images/5/uncertainty.png?measure=entropy&overlay=true)",
        examples=["/images/5/file", "/models/3/report.html"],
    )
    ttl_s: int | None = Field(
        default=None,
        ge=MIN_LINK_TTL_S,
        le=MAX_LINK_TTL_S,
        description="seconds the link works (default: ACTIVESEG_LINK_TTL_S, 24 h)",
    )


class LinkPublic(BaseModel):
    url: str = Field(description="absolute URL that opens the resource without a token")
    path: str = Field(description="the same link relative to the server (path and query)")
    expires_at: datetime


class LinkKeyPublic(BaseModel):
    """A signing key, never its secret."""

    model_config = ConfigDict(from_attributes=True)
    id: int
    created_at: datetime
    revoked_at: datetime | None
    signing: bool = Field(default=False, description="the key that signs new links")


def public_base_url(request: Request, settings: Settings) -> str:
    """Where clients reach this server: ACTIVESEG_PUBLIC_URL when it is set (behind a proxy
    the request's own URL may be an internal one), else the URL the request came in on."""
    if "public_url" in settings.model_fields_set and settings.public_url:
        return settings.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


@router.post("/links", response_model=LinkPublic)
def create_link(
    body: LinkCreate, user: CurrentUser, db: DbDep, settings: SettingsDep, request: Request
) -> LinkPublic:
    """A signed link that opens one resource with a plain GET and no token until it expires:
    for a browser, an ``<img>`` or a labelling tool. You must be able to read the resource
    yourself (404 otherwise, as its route answers). Signable: image files, masks, prediction
    and uncertainty PNGs, report pages and report plots; changing anything in the link makes
    it 403, after ``expires_at`` it is 401."""
    target = links.parse_signable(body.path)
    ttl_s = body.ttl_s if body.ttl_s is not None else settings.link_ttl_s
    expires_at = links.expiry(ttl_s)
    with db.session() as s:
        links.check_readable(s, user, target)
        query = links.sign(s, target.path, target.params, expires_at)
    relative = f"{target.path}?{query}"
    return LinkPublic(
        url=public_base_url(request, settings) + relative, path=relative, expires_at=expires_at
    )


def _public(keys: list[LinkKey]) -> list[LinkKeyPublic]:
    signing = next((k.id for k in keys if k.revoked_at is None), None)  # newest first
    return [
        LinkKeyPublic.model_validate(k).model_copy(update={"signing": k.id == signing})
        for k in keys
    ]


@router.get("/admin/link-keys", response_model=Page[LinkKeyPublic])
def list_link_keys(_: Admin, db: DbDep) -> Page[LinkKeyPublic]:
    """The keys that sign links, newest first (admins only; secrets are never shown)."""
    with db.read_session() as s:
        data = _public(links.list_keys(s))
    return Page(data=data, count=len(data))


@router.post(
    "/admin/link-keys/rotate", response_model=LinkKeyPublic, status_code=status.HTTP_201_CREATED
)
def rotate_link_key(_: Admin, db: DbDep) -> LinkKeyPublic:
    """A new key signs new links from now on; links signed by older keys keep working until
    those keys are revoked (admins only)."""
    with db.session() as s:
        key = links.rotate(s)
        return LinkKeyPublic.model_validate(key).model_copy(update={"signing": True})


@router.delete("/admin/link-keys/{key_id}", response_model=LinkKeyPublic)
def revoke_link_key(key_id: RowId, _: Admin, db: DbDep) -> LinkKeyPublic:
    """Revoke a key: every link it signed stops working at once (401). New links are signed by
    the newest key left, or by a new one (admins only)."""
    with db.session() as s:
        key = links.revoke(s, key_id, datetime.now(UTC))
        return LinkKeyPublic.model_validate(key)
