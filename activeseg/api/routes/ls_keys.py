"""Backend keys of a project (engineer role): the ML-backend URL to paste into Label Studio.

``POST /projects/{id}/label-studio/keys`` answers the URL ``/ls/{id}/k/{key}`` once; Label
Studio keeps it for every call, its own webhook included (activeseg.core.services.backend_keys).
"""

from __future__ import annotations

import logging
import re
from datetime import datetime

from fastapi import APIRouter, Request, status
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import DbDep, Engineer, SettingsDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import Page, RowId
from activeseg.core.services import auth, backend_keys

router = APIRouter(tags=["label studio"], responses=error_responses(403, 404))


class BackendKeyPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    prefix: str
    created_by: int
    created_at: datetime
    revoked_at: datetime | None


class BackendKeyCreated(BackendKeyPublic):
    backend_url: str = Field(
        description="paste into Label Studio: Settings > Model > Connect Model > Backend URL "
        "(Authentication: none); shown once, the key is stored only as a hash"
    )


def public_base(request: Request, configured: str) -> str:
    """The URL Label Studio reaches this service at: ACTIVESEG_PUBLIC_URL when it is set to
    something else than the default, else the URL this request came in on."""
    default = "http://127.0.0.1:8000"
    base = configured if configured and configured != default else str(request.base_url)
    return base.rstrip("/")


@router.post(
    "/projects/{project_id}/label-studio/keys",
    response_model=BackendKeyCreated,
    status_code=status.HTTP_201_CREATED,
    summary="A new ML-backend URL for Label Studio (a per-project key in the path)",
)
def create_key(
    project_id: RowId, request: Request, user: Engineer, db: DbDep, settings: SettingsDep
) -> BackendKeyCreated:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        key, raw = backend_keys.create(s, project, user)
        public = BackendKeyPublic.model_validate(key)
    url = f"{public_base(request, settings.public_url)}/ls/{project_id}/k/{raw}"
    return BackendKeyCreated(**public.model_dump(), backend_url=url)


@router.get("/projects/{project_id}/label-studio/keys", response_model=Page[BackendKeyPublic])
def list_keys(project_id: RowId, user: Engineer, db: DbDep) -> Page[BackendKeyPublic]:
    with db.read_session() as s:
        rows = backend_keys.listed(s, auth.get_project_for(s, user, project_id))
        return Page(data=[BackendKeyPublic.model_validate(r) for r in rows], count=len(rows))


@router.delete("/projects/{project_id}/label-studio/keys/{key_id}", response_model=BackendKeyPublic)
def revoke_key(project_id: RowId, key_id: RowId, user: Engineer, db: DbDep) -> BackendKeyPublic:
    """Revoke a key: every call with its URL gets 401 from now on."""
    with db.session() as s:
        key = backend_keys.revoke(s, auth.get_project_for(s, user, project_id), key_id)
        return BackendKeyPublic.model_validate(key)


class RedactBackendKeys(logging.Filter):
    """Access-log lines show ``/ls/{id}/k/lsk_...`` as ``/ls/{id}/k/<key>``: the key is a
    credential, and logs travel further than the database."""

    pattern = re.compile(r"/k/" + re.escape(backend_keys.KEY_PREFIX) + r"[A-Za-z0-9_\-]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                self.pattern.sub("/k/<key>", a) if isinstance(a, str) else a for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self.pattern.sub("/k/<key>", record.msg)
        return True


def install_log_redaction() -> None:
    """Once per process: uvicorn's access logger drops backend keys from paths."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactBackendKeys) for f in access.filters):
        access.addFilter(RedactBackendKeys())
