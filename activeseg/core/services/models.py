"""Model versions: listing, activation, storing a trained one, its checkpoints, loading a
version's predictor."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from activeseg.core.db import Database
from activeseg.core.errors import Conflict, NotFound
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.auth import get_project_for
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, ModelState, ModelVersion, Project, User

if TYPE_CHECKING:
    from activeseg.models.checkpoint import StateDict
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


def save_checkpoints(store: BlobStore, states: Sequence[StateDict]) -> list[str]:
    """Store each member's state dict as a blob; their keys, in member order."""
    from activeseg.models.checkpoint import state_to_bytes

    return [store.put(state_to_bytes(state)) for state in states]


def load_checkpoints(store: BlobStore, keys: Sequence[str]) -> list[StateDict]:
    """The member state dicts stored under ``keys``."""
    from activeseg.models.checkpoint import state_from_bytes

    return [state_from_bytes(store.get(key)) for key in keys]


def set_active_version(db: Database, project_id: int, mv_id: int) -> None:
    """Make ``mv_id`` the project's active version, in one write transaction."""
    with db.session() as s:
        project = s.get(Project, project_id)
        assert project is not None
        project.active_model_id = mv_id


@dataclass(frozen=True)
class NewVersion:
    """A trained version's row before it has a number: what ``store_version`` writes."""

    project_id: int
    job_id: int
    config: dict[str, Any]
    member_keys: list[str]
    temperature: float | None
    metrics: dict[str, Any]
    label_snapshot: dict[str, int]
    labelled_pixels: int
    parent_id: int | None


def store_version(db: Database, new: NewVersion, attempts: int = 5) -> int:
    """Store ``new`` as the project's next ready version; its id. Idempotent per job: a
    version row is unique per job, so a redelivered job gets the id stored first."""
    for _ in range(attempts):
        try:
            with db.session() as s:
                number = (
                    s.scalar(
                        select(func.max(ModelVersion.version)).where(
                            ModelVersion.project_id == new.project_id
                        )
                    )
                    or 0
                ) + 1
                mv = ModelVersion(
                    project_id=new.project_id,
                    version=number,
                    state=ModelState.ready.value,
                    config=new.config,
                    member_keys=new.member_keys,
                    temperature=new.temperature,
                    metrics=new.metrics,
                    label_snapshot=new.label_snapshot,
                    labelled_pixels=new.labelled_pixels,
                    parent_id=new.parent_id,
                    job_id=new.job_id,
                )
                s.add(mv)
                s.flush()
                return mv.id
        except IntegrityError:
            # Either another delivery of this job stored it first (unique job_id), or a
            # concurrent retrain took this version number: look, then try the next number.
            with db.read_session() as s:
                mv_id = s.scalar(select(ModelVersion.id).where(ModelVersion.job_id == new.job_id))
            if mv_id is not None:
                return mv_id
    raise RuntimeError("could not allocate a model version number")
