"""Request and response bodies (per entity: Create / Update / Public / ListPublic)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path
from pydantic import BaseModel, ConfigDict, Field

from activeseg.core.project_config import ClassDef, ProjectSettings
from activeseg.core.tables import MAX_ROW_ID

T = TypeVar("T")

# A path id past MAX_ROW_ID is no id at all: refused as invalid (422), and documented as such.
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID, description="row id")]
# PostgreSQL text cannot hold a NUL character (the driver refuses to send one); no name,
# description, reason or key of this service needs one, so free text is refused with it.
NO_NUL = r"^[^\x00]*$"


class ErrorBody(BaseModel):
    """Every error the service answers itself: one human-readable sentence."""

    detail: str = Field(description="what went wrong and, where it helps, what to do")


class ValidationIssue(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class InvalidBody(BaseModel):
    """422: request validation lists the issues; a domain check gives one sentence."""

    detail: str | list[ValidationIssue]


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int


class ORM(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[\w.@+-]+$")
    role: str = Field(pattern="^(annotator|reviewer|engineer|admin)$")


class UserPublic(ORM):
    id: int
    name: str
    role: str
    active: bool
    created_at: datetime


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    expires_in_days: float | None = Field(default=None, gt=0, le=3650)


class TokenPublic(ORM):
    id: int
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewToken(BaseModel):
    user: UserPublic
    token: TokenPublic
    secret: str = Field(description="the API token; shown once, store it now")


class ProjectCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    description: str = Field(default="", max_length=10_000, pattern=NO_NUL)
    classes: list[ClassDef] = Field(min_length=2, max_length=254)
    settings: ProjectSettings = Field(default_factory=ProjectSettings)


class ProjectUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200, pattern=NO_NUL)
    description: str | None = Field(default=None, max_length=10_000, pattern=NO_NUL)
    classes: list[ClassDef] | None = Field(default=None, min_length=2, max_length=254)
    settings: dict[str, Any] | None = Field(
        default=None, description="partial settings; merged into the current ones, validated"
    )


class ProjectPublic(ORM):
    id: int
    name: str
    description: str
    classes: list[ClassDef]
    ignore_index: int
    settings: ProjectSettings
    active_model_id: int | None
    created_at: datetime
    updated_at: datetime


class MemberAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: int = Field(gt=0, le=MAX_ROW_ID)


class ImagePublic(ORM):
    id: int
    project_id: int
    filename: str
    format: str
    width: int
    height: int
    channels: int
    size_bytes: int
    sha256: str
    split: str
    labelled_pixels: int
    labelled_fraction: float
    current_revision: int
    created_at: datetime


class ImageUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    split: str = Field(pattern="^(pool|train|val|test)$")


class UploadItem(BaseModel):
    image: ImagePublic
    duplicate: bool


class UploadResponse(BaseModel):
    data: list[UploadItem]
    created: int
    duplicates: int


class LabelRevisionPublic(ORM):
    id: int
    image_id: int
    revision: int
    labelled_pixels: int
    source: str
    author_id: int | None
    task_id: int | None
    created_at: datetime


class JobPublic(ORM):
    id: int
    project_id: int | None
    kind: str
    state: str
    params: dict[str, Any]
    progress: float
    message: str
    error: str | None
    result: dict[str, Any] | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(
        default=None,
        max_length=200,
        pattern=NO_NUL,
        description="idempotency key: the same id returns the same job",
    )


class Health(BaseModel):
    status: str
    database: str
    broker: str
    storage: str
    version: str
