"""Model versions: listing, activation, loading a version's predictor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, NotFound
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.auth import get_project_for
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, ModelState, ModelVersion, Project, User

if TYPE_CHECKING:
    from activeseg.models.config import ModelConfig
    from activeseg.models.inference import Predictor


def get_model_for(session: Session, user: User, model_id: int) -> ModelVersion:
    mv = session.get(ModelVersion, model_id)
    if mv is None:
        raise NotFound(f"model version {model_id} not found")
    get_project_for(session, user, mv.project_id)
    return mv


def check_version_of(session: Session, project: Project, mv_id: int) -> None:
    """NotFound unless model version ``mv_id`` belongs to ``project``."""
    mv = session.get(ModelVersion, mv_id)
    if mv is None or mv.project_id != project.id:
        raise NotFound(f"model version {mv_id} is not a version of project {project.id}")


def list_models(session: Session, project_id: int) -> list[ModelVersion]:
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.project_id == project_id)
            .order_by(ModelVersion.version.desc())
        )
    )


def is_active(session: Session, mv: ModelVersion) -> bool:
    """Whether ``mv`` is its project's active model version."""
    project = session.get(Project, mv.project_id)
    assert project is not None
    return project.active_model_id == mv.id


def activate(session: Session, mv: ModelVersion) -> Project:
    if mv.state != ModelState.ready.value:
        raise Conflict(f"model version {mv.id} is {mv.state}; only a ready version can be active")
    project = session.get(Project, mv.project_id)
    assert project is not None
    project.active_model_id = mv.id
    return project


def project_in_channels(session: Session, project_id: int) -> int:
    rgb = session.scalar(select(func.max(Image.channels)).where(Image.project_id == project_id))
    return 3 if rgb == 3 else 1


def model_config_for(project: Project, in_channels: int, settings: Settings) -> ModelConfig:
    from activeseg.models.config import ModelConfig

    # Every project model setting is a ModelConfig field (init modes too: a version records
    # how it was started); old stored keys were mapped when ProjectSettings validated.
    model = ProjectSettings.model_validate(project.settings).model.model_dump()
    return ModelConfig(
        in_channels=in_channels,
        n_classes=len(project.classes),
        device=settings.device,
        threads=settings.torch_threads,
        **model,
    )


def load_predictor(store: BlobStore, mv: ModelVersion, settings: Settings) -> Predictor:
    from activeseg.models.checkpoint import build_predictor
    from activeseg.models.config import ModelConfig

    config: dict[str, Any] = dict(mv.config)
    config.update(device=settings.device, threads=settings.torch_threads)
    return build_predictor(
        ModelConfig.from_dict(config), [store.get(k) for k in mv.member_keys], mv.temperature
    )
