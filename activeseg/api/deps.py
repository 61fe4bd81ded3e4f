"""Dependencies shared by routes: the database, blob store, settings and the current user."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from activeseg.core.db import Database
from activeseg.core.errors import Unauthorized
from activeseg.core.services import auth, links
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Role, User

_bearer = HTTPBearer(auto_error=False, description="API token from `activeseg user create`")


# These three do no I/O: async, so FastAPI calls them inline instead of handing each to the
# thread pool (a thread hop per dependency per request, on every lease).
async def get_db(request: Request) -> Database:
    return request.app.state.db  # type: ignore[no-any-return]


async def get_store(request: Request) -> BlobStore:
    return request.app.state.store  # type: ignore[no-any-return]


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


DbDep = Annotated[Database, Depends(get_db)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def _raw_token(creds: HTTPAuthorizationCredentials | None) -> str:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    return creds.credentials


def current_user(
    db: DbDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    raw = _raw_token(creds)
    with db.read_session() as s:  # a read: on SQLite it must not queue on the write lock
        return auth.authenticate(s, raw)


CurrentUser = Annotated[User, Depends(current_user)]


async def bearer_token(
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str:
    """The raw API token, not yet checked (no I/O, so no thread-pool hop): for the hot
    annotation routes, which check it in their own transaction
    (:func:`auth.authenticate_for_project`) instead of in a session of its own."""
    return _raw_token(creds)


BearerToken = Annotated[str, Depends(bearer_token)]


def _role(role: Role):  # type: ignore[no-untyped-def]
    def dep(user: CurrentUser) -> User:
        auth.require_role(user, role)
        return user

    return dep


Engineer = Annotated[User, Depends(_role(Role.engineer))]
Admin = Annotated[User, Depends(_role(Role.admin))]


# --- signed links: a token's user, or the grant of a signed link -----------------------------


def _app_path(request: Request) -> str:
    """The request's path as the app routes it (what a link is signed over), without the
    prefix a proxy mounted the app under."""
    path = request.url.path
    root = request.scope.get("root_path") or ""
    return path[len(root) :] if root and path.startswith(root) else path


def user_or_link(
    request: Request,
    db: DbDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    # Declared for the API description only: verify reads every query parameter itself.
    exp: Annotated[
        str | None, Query(description="signed link (POST /links): expiry, unix seconds")
    ] = None,
    kid: Annotated[str | None, Query(description="signed link: id of the signing key")] = None,
    sig: Annotated[
        str | None,
        Query(description="signed link: HMAC-SHA256 signature; opens without a token"),
    ] = None,
) -> User | links.LinkGrant:
    """For the GET routes a signed link may open: a request with a ``sig`` query parameter is
    judged by its signature alone (any token it also sends is ignored) and gets a
    :class:`~activeseg.core.services.links.LinkGrant`; any other request needs a token, as
    :func:`current_user`."""
    if "sig" not in request.query_params:
        return current_user(db, creds)
    with db.read_session() as s:  # one primary-key lookup of the signing key
        return links.verify(
            s, _app_path(request), request.query_params.multi_items(), now=datetime.now(UTC)
        )


UserOrLink = Annotated[User | links.LinkGrant, Depends(user_or_link)]

SIGNED_MAX_AGE_S = 3600
"""Longest a browser may cache what a signed link served (a mask or a heatmap changes)."""


def link_headers(who: User | links.LinkGrant, max_age_s: int = SIGNED_MAX_AGE_S) -> dict[str, str]:
    """Headers of an answer to a signed link: cacheable privately no longer than the link
    lives, and readable from any origin (the link itself is the credential, and Label
    Studio's editor loads images cross-origin). Nothing for a token's request."""
    if isinstance(who, User):
        return {}
    left = min(who.seconds_left(datetime.now(UTC)), max_age_s)
    return {"Cache-Control": f"private, max-age={left}", "Access-Control-Allow-Origin": "*"}
