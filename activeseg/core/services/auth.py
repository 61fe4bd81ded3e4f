"""Users, API tokens and who may do what."""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, Forbidden, Invalid, NotFound, Unauthorized
from activeseg.core.tables import ApiToken, Project, ProjectMember, Role, Task, User

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


def _check_token(
    user: User | None, revoked_at: datetime | None, expires_at: datetime | None
) -> User:
    if user is None:
        raise Unauthorized("invalid API token")
    if revoked_at is not None:
        raise Unauthorized("this API token has been revoked")
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise Unauthorized("this API token has expired")
    if not user.active:
        raise Unauthorized("this user is deactivated")
    return user


def authenticate(session: Session, raw: str) -> User:
    """The user of API token ``raw`` (one query: the token row and its user)."""
    row = session.execute(
        select(User, ApiToken.revoked_at, ApiToken.expires_at)
        .join(ApiToken, ApiToken.user_id == User.id)
        .where(ApiToken.token_hash == hash_token(raw))
    ).one_or_none()
    return _check_token(*(row or (None, None, None)))


# Built once (bound parameters): building it per request cost more than running it.
_TOKEN_AND_PROJECT = (
    select(User, ApiToken.revoked_at, ApiToken.expires_at, Project, ProjectMember.user_id)
    .join(ApiToken, ApiToken.user_id == User.id)
    .outerjoin(Project, Project.id == bindparam("project_id"))
    .outerjoin(
        ProjectMember,
        and_(
            ProjectMember.project_id == bindparam("project_id"),
            ProjectMember.user_id == User.id,
        ),
    )
    .where(ApiToken.token_hash == bindparam("token_hash"))
)


def authenticate_for_project(session: Session, raw: str, project_id: int) -> tuple[User, Project]:
    """:func:`authenticate` and :func:`get_project_for` in one query (the hot annotation
    routes: the token, its user, the project and the caller's membership), with the same
    answers: 401 for a bad token first, then 404 for a project the caller may not see."""
    row = session.execute(
        _TOKEN_AND_PROJECT, {"project_id": project_id, "token_hash": hash_token(raw)}
    ).one_or_none()
    if row is None:
        _check_token(None, None, None)
    assert row is not None
    user = _check_token(row[0], row[1], row[2])
    project, membership = row[3], row[4]
    if project is None or (user.role != Role.admin and membership is None):
        # Same answer as a missing project: members of other projects learn nothing.
        raise NotFound(f"project {project_id} not found")
    return user, project


# The task row is locked (FOR UPDATE OF tasks: the inner side of the joins; the token's rows
# are on the outer side, so a task that exists is found whatever the token).
_TASK_WITH_TOKEN = (
    select(Task, Project, User, ApiToken.revoked_at, ApiToken.expires_at, ProjectMember.user_id)
    .select_from(Task)
    .join(Project, Project.id == Task.project_id)
    .outerjoin(ApiToken, ApiToken.token_hash == bindparam("token_hash"))
    .outerjoin(User, User.id == ApiToken.user_id)
    .outerjoin(
        ProjectMember,
        and_(ProjectMember.project_id == Task.project_id, ProjectMember.user_id == User.id),
    )
    .where(Task.id == bindparam("task_id"))
)
_TASK_WITH_TOKEN_LOCKED = _TASK_WITH_TOKEN.with_for_update(of=Task).execution_options(
    populate_existing=True
)


def authenticate_for_task(
    session: Session, raw: str, task_id: int, lock: bool = True
) -> tuple[User, Task, Project]:
    """The token's user, the task (locked for this transaction with ``lock``) and its project,
    in one query, with the answers of :func:`authenticate`, then a missing task (404), then
    :func:`get_project_for` (404 for a project the caller may not see)."""
    row = session.execute(
        _TASK_WITH_TOKEN_LOCKED if lock else _TASK_WITH_TOKEN,
        {"task_id": task_id, "token_hash": hash_token(raw)},
    ).one_or_none()
    if row is None:
        authenticate(session, raw)  # a bad token is 401 before anything else
        raise NotFound(f"task {task_id} not found")
    task, project, user, revoked_at, expires_at, membership = row
    user = _check_token(user, revoked_at, expires_at)
    if user.role != Role.admin and membership is None:
        raise NotFound(f"project {project.id} not found")
    return user, task, project


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
