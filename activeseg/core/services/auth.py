"""Users, API tokens and who may do what."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from activeseg.core.tables import ApiToken, Project, ProjectMember, Role, User

TOKEN_PREFIX = "as_"
# A reviewer may do what an annotator does, and review disputed tasks; engineers and admins
# may review too.
_RANK = {Role.annotator: 0, Role.reviewer: 1, Role.engineer: 2, Role.admin: 3}


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create_user(session: Session, name: str, role: str) -> User:
    if role not in Role.__members__:
        raise Invalid(f"role must be one of {', '.join(Role)}; got {role!r}")
    if session.scalar(select(User).where(User.name == name)) is not None:
        raise Conflict(f"user {name!r} already exists")
    user = User(name=name, role=role)
    session.add(user)
    session.flush()
    return user


def create_token(
    session: Session, user: User, expires_in: timedelta | None = None
) -> tuple[ApiToken, str]:
    """A new token for ``user``; the raw value is returned once and never stored."""
    raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        user_id=user.id,
        token_hash=hash_token(raw),
        prefix=raw[:10],
        expires_at=datetime.now(UTC) + expires_in if expires_in else None,
    )
    session.add(token)
    session.flush()
    return token, raw


def revoke_token(session: Session, token_id: int, actor: User) -> ApiToken:
    token = session.get(ApiToken, token_id)
    if token is None or (token.user_id != actor.id and actor.role != Role.admin):
        raise NotFound(f"token {token_id} not found")
    if token.revoked_at is None:
        token.revoked_at = datetime.now(UTC)
    return token


def authenticate(session: Session, raw: str) -> User:
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == hash_token(raw)))
    if token is None:
        raise Unauthorized("invalid API token")
    if token.revoked_at is not None:
        raise Unauthorized("this API token has been revoked")
    if token.expires_at is not None and token.expires_at <= datetime.now(UTC):
        raise Unauthorized("this API token has expired")
    user = token.user
    if not user.active:
        raise Unauthorized("this user is deactivated")
    return user


def has_role(user: User, role: Role) -> bool:
    """Whether ``user``'s role is ``role`` or above it (admin > engineer > reviewer >
    annotator)."""
    return _RANK[Role(user.role)] >= _RANK[role]


def require_role(user: User, role: Role) -> None:
    if not has_role(user, role):
        raise Forbidden(f"this needs the {role.value} role; you are {user.role}")


def get_project_for(session: Session, user: User, project_id: int) -> Project:
    """The project, if ``user`` may see it (admins see all; others must be members)."""
    project = session.get(Project, project_id)
    if project is None:
        raise NotFound(f"project {project_id} not found")
    if user.role != Role.admin and session.get(ProjectMember, (project_id, user.id)) is None:
        # Same answer as a missing project: members of other projects learn nothing.
        raise NotFound(f"project {project_id} not found")
    return project


def add_member(session: Session, project: Project, user_id: int) -> None:
    if session.get(User, user_id) is None:
        raise NotFound(f"user {user_id} not found")
    if session.get(ProjectMember, (project.id, user_id)) is None:
        session.add(ProjectMember(project_id=project.id, user_id=user_id))
