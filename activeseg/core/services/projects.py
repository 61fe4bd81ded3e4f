"""Project use cases."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, Invalid
from activeseg.core.project_config import (
    ClassDef,
    ProjectSettings,
    merge_settings,
    validate_classes,
)
from activeseg.core.services.auth import get_project_for
from activeseg.core.tables import Project, ProjectMember, Role, User
from activeseg.uncertainty.labels import UNLABELLED


def _validated_classes(classes: list[ClassDef]) -> list[dict[str, Any]]:
    try:
        return [c.model_dump() for c in validate_classes(classes)]
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def create_project(
    session: Session,
    owner: User,
    name: str,
    classes: list[ClassDef],
    description: str = "",
    settings: ProjectSettings | None = None,
) -> Project:
    if session.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named {name!r} already exists")
    project = Project(
        name=name,
        description=description,
        classes=_validated_classes(classes),
        ignore_index=UNLABELLED,
        settings=(settings or ProjectSettings()).model_dump(),
    )
    session.add(project)
    session.flush()
    session.add(ProjectMember(project_id=project.id, user_id=owner.id))
    return project


def list_projects(
    session: Session, user: User, offset: int, limit: int
) -> tuple[list[Project], int]:
    query = select(Project)
    if user.role != Role.admin:
        query = query.join(ProjectMember, ProjectMember.project_id == Project.id).where(
            ProjectMember.user_id == user.id
        )
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Project.id).offset(offset).limit(limit)).all()
    return list(rows), total


def update_project(
    session: Session,
    user: User,
    project_id: int,
    *,
    name: str | None = None,
    description: str | None = None,
    classes: list[ClassDef] | None = None,
    settings_patch: dict[str, Any] | None = None,
) -> Project:
    project = get_project_for(session, user, project_id)
    if name is not None and name != project.name:
        if session.scalar(select(Project.id).where(Project.name == name)) is not None:
            raise Conflict(f"a project named {name!r} already exists")
        project.name = name
    if description is not None:
        project.description = description
    if classes is not None:
        new = _validated_classes(classes)
        if len(new) < len(project.classes):
            # Stored masks may hold the removed ids; renaming or adding is safe.
            raise Conflict("classes can be renamed or added, not removed, once a project exists")
        project.classes = new
    if settings_patch:
        if not isinstance(settings_patch.get("model") or {}, dict):
            raise Invalid('settings.model must be an object of model settings, e.g. {"steps": 300}')
        was_counting = project_settings(project).auto_retrain_every is not None
        try:
            project.settings = merge_settings(project.settings, settings_patch).model_dump()
        except ValidationError as exc:
            raise Invalid(_first_error(exc)) from None
        if not was_counting and project_settings(project).auto_retrain_every is not None:
            # Labels are counted only while auto-retrain is on: it counts from now.
            project.labels_since_retrain = 0
    return project


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    return f"settings.{where}: {err['msg']}" if where else f"settings: {err['msg']}"


def project_settings(project: Project) -> ProjectSettings:
    return ProjectSettings.model_validate(project.settings)
