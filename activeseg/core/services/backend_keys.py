"""Per-project backend keys: the secret a labelling tool carries in its ML-backend URL.

Label Studio keeps the ML-backend URL it is given and creates its own webhook at that URL plus
``/webhook``, with no headers. A key in the path (``/ls/{project_id}/k/{key}``) therefore reaches
every call Label Studio makes, the webhook included, with no hand edits. A key admits only the
``/ls`` routes of its own project, acting as the engineer who made it; only its SHA-256 is
stored, and revoking it stops it at once.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import NotFound, Unauthorized
from activeseg.core.services.auth import has_role, hash_token
from activeseg.core.tables import BackendKey, Project, Role, User

KEY_PREFIX = "lsk_"


def create(session: Session, project: Project, user: User) -> tuple[BackendKey, str]:
    """A new key for ``project`` made by ``user``; the raw key is returned once."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = BackendKey(
        project_id=project.id, key_hash=hash_token(raw), prefix=raw[:12], created_by=user.id
    )
    session.add(key)
    session.flush()
    return key, raw


def listed(session: Session, project: Project) -> list[BackendKey]:
    return list(
        session.scalars(
            select(BackendKey).where(BackendKey.project_id == project.id).order_by(BackendKey.id)
        )
    )


def revoke(session: Session, project: Project, key_id: int) -> BackendKey:
    key = session.get(BackendKey, key_id)
    if key is None or key.project_id != project.id:
        raise NotFound(f"project {project.id} has no backend key {key_id}")
    if key.revoked_at is None:
        key.revoked_at = datetime.now(UTC)
    return key


def authenticate(session: Session, project_id: int, raw: str) -> User:
    """The engineer a valid, unrevoked key of ``project_id`` acts as. Every failure is the
    same 401, so a caller learns nothing about which keys exist."""
    denied = Unauthorized(
        "this ML-backend URL's key is not valid for this project (revoked, or mistyped): "
        "make a new one with `activeseg labelstudio connect`"
    )
    if not raw.startswith(KEY_PREFIX) or len(raw) > 100:
        raise denied
    key = session.scalar(select(BackendKey).where(BackendKey.key_hash == hash_token(raw)))
    if key is None or key.project_id != project_id or key.revoked_at is not None:
        raise denied
    user = session.get(User, key.created_by)
    if user is None or not user.active or not has_role(user, Role.engineer):
        raise denied  # its maker left or is no longer an engineer
    return user
