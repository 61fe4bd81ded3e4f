"""Dependencies shared by routes: the database, blob store, settings and the current user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from activeseg.core.db import Database
from activeseg.core.errors import Unauthorized
from activeseg.core.services import auth
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


def current_user(
    db: DbDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> User:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise Unauthorized("missing API token: send 'Authorization: Bearer <token>'")
    with db.read_session() as s:  # a read: on SQLite it must not queue on the write lock
        return auth.authenticate(s, creds.credentials)


CurrentUser = Annotated[User, Depends(current_user)]


def _role(role: Role):  # type: ignore[no-untyped-def]
    def dep(user: CurrentUser) -> User:
        auth.require_role(user, role)
        return user

    return dep


Engineer = Annotated[User, Depends(_role(Role.engineer))]
Admin = Annotated[User, Depends(_role(Role.admin))]
