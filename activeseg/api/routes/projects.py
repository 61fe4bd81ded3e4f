from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from activeseg.api.deps import CurrentUser, DbDep, Engineer
from activeseg.api.errors import error_responses
from activeseg.api.schemas import (
    MemberAdd,
    Page,
    ProjectCreate,
    ProjectPublic,
    ProjectUpdate,
    RowId,
)
from activeseg.core.services import auth, projects
from activeseg.core.tables import Project

router = APIRouter(tags=["projects"], responses=error_responses(403, 404, 409))
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]


@router.post("/projects", response_model=ProjectPublic, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, user: Engineer, db: DbDep) -> Project:
    with db.session() as s:
        return projects.create_project(
            s, user, body.name, body.classes, body.description, body.settings
        )


@router.get("/projects", response_model=Page[ProjectPublic])
def list_projects(
    user: CurrentUser, db: DbDep, offset: Offset = 0, limit: Limit = 50
) -> Page[ProjectPublic]:
    with db.session() as s:
        rows, total = projects.list_projects(s, user, offset, limit)
        return Page(data=[ProjectPublic.model_validate(p) for p in rows], count=total)


@router.get("/projects/{project_id}", response_model=ProjectPublic)
def get_project(project_id: RowId, user: CurrentUser, db: DbDep) -> Project:
    with db.session() as s:
        return auth.get_project_for(s, user, project_id)


@router.patch("/projects/{project_id}", response_model=ProjectPublic)
def update_project(project_id: RowId, body: ProjectUpdate, user: Engineer, db: DbDep) -> Project:
    with db.session() as s:
        return projects.update_project(
            s,
            user,
            project_id,
            name=body.name,
            description=body.description,
            classes=body.classes,
            settings_patch=body.settings,
        )


@router.post("/projects/{project_id}/members", status_code=status.HTTP_204_NO_CONTENT)
def add_member(project_id: RowId, body: MemberAdd, user: Engineer, db: DbDep) -> None:
    """Give a user (e.g. an annotator) access to this project."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        auth.add_member(s, project, body.user_id)
