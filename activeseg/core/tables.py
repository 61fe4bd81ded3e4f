"""SQLAlchemy 2.0 typed ORM for the activeseg domain (see shared/DESIGN.md).

Alembic migrations in ``migrations/`` are the only way this schema reaches a database; a test
checks that the migrated schema equals this metadata.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from activeseg.uncertainty.labels import UNLABELLED

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps on PostgreSQL and SQLite (which stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# Primary keys are INTEGER columns: 32-bit on PostgreSQL, which refuses a larger bound value
# ("integer out of range"); SQLite's driver cannot bind past 64 bits. A larger number names no
# row: callers refuse it (or find nothing) before it reaches the database.
MAX_ROW_ID = 2**31 - 1


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class Role(enum.StrEnum):
    annotator = "annotator"
    reviewer = "reviewer"  # an annotator who also decides disputed tasks (services/review.py)
    engineer = "engineer"
    admin = "admin"


class Split(enum.StrEnum):
    pool = "pool"
    train = "train"
    val = "val"
    test = "test"


class TaskState(enum.StrEnum):
    queued = "queued"
    leased = "leased"
    submitted = "submitted"
    skipped = "skipped"
    stale = "stale"
    # overlap > 1: all k answers are in but they agree less than the project's threshold, so
    # the consensus is held back from training (activeseg.core.services.overlap)
    disputed = "disputed"


class JobState(enum.StrEnum):
    pending = "pending"  # row committed, not yet handed to the broker (outbox)
    queued = "queued"
    running = "running"
    waiting = "waiting"  # fanned out into child jobs; the last child to finish completes it
    succeeded = "succeeded"
    failed = "failed"


class ModelState(enum.StrEnum):
    training = "training"
    ready = "ready"
    failed = "failed"


def _str_enum(e: type[enum.StrEnum]) -> String:
    return String(max(len(m.value) for m in e) + 4)


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(_str_enum(Role))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")


class ApiToken(Base):
    """An API token; only its sha256 is stored, so a database leak does not leak tokens."""

    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="tokens")


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # [{"id": 0, "name": "background", "colour": "#000000"}, ...]
    classes: Mapped[list[Any]] = mapped_column(JSON)
    ignore_index: Mapped[int] = mapped_column(Integer, default=UNLABELLED)
    # Validated by api/core schemas (ProjectSettings): regions, acquisition, model config.
    settings: Mapped[dict[str, Any]] = mapped_column(JSON)
    active_model_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True, ondelete="SET NULL")
    )
    # Labels submitted since the last retrain was triggered (auto-retrain counter).
    labels_since_retrain: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ProjectMember(Base):
    __tablename__ = "project_members"
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class Image(Base):
    __tablename__ = "images"
    __table_args__ = (
        UniqueConstraint("project_id", "sha256", name="uq_images_project_sha256"),
        Index("ix_images_project_split", "project_id", "split", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(200))
    filename: Mapped[str] = mapped_column(String(255))
    format: Mapped[str] = mapped_column(String(10))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    split: Mapped[str] = mapped_column(_str_enum(Split), default=Split.pool.value)
    labelled_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    labelled_fraction: Mapped[float] = mapped_column(Float, default=0.0)
    current_revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class LabelRevision(Base):
    """One version of an image's index mask (255 = not labelled). Never updated in place."""

    __tablename__ = "label_revisions"
    __table_args__ = (
        UniqueConstraint("image_id", "revision", name="uq_label_revisions_image_revision"),
        UniqueConstraint("idempotency_key", name="uq_label_revisions_idempotency_key"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(200))
    labelled_pixels: Mapped[int] = mapped_column(BigInteger)
    source: Mapped[str] = mapped_column(String(20))  # upload | task | import | webhook
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id", ondelete="SET NULL"))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RegionSet(Base):
    """A region map of one image (SLIC superpixels or grid tiles), stored as an .npz blob."""

    __tablename__ = "region_sets"
    __table_args__ = (
        UniqueConstraint(
            "image_id", "kind", "size", "sigma", name="uq_region_sets_image_kind_size_sigma"
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))  # superpixel | grid
    size: Mapped[int] = mapped_column(Integer)
    # SLIC's Gaussian smoothing in pixels (0 = none, and always 0 for grid tiles); maps made
    # before it was a setting were unsmoothed, hence the server default.
    sigma: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_regions: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("project_id", "version", name="uq_model_versions_project_version"),
        # A redelivered retrain job finds the version it already made instead of adding one.
        UniqueConstraint("job_id", name="uq_model_versions_job_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(_str_enum(ModelState), default=ModelState.training.value)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    member_keys: Mapped[list[Any]] = mapped_column(JSON, default=list)
    temperature: Mapped[float | None] = mapped_column(Float)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # {image_id: revision} of the labels this version was trained on.
    label_snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    labelled_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ImageScore(Base):
    """Per-image summary of one scoring pass, naming the heatmap blob (every measure's maps
    and the prediction) for display and submissions. Since issue 17 a pass writes one row per
    (version, image), ``measure`` being the project's measure and ``mean`` its image mean
    (every measure's mean is in ``image_region_scores.means``); passes before wrote one row
    per measure, all naming the same blob."""

    __tablename__ = "image_scores"
    __table_args__ = (
        UniqueConstraint(
            "model_version_id", "image_id", "measure", name="uq_image_scores_model_image_measure"
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    measure: Mapped[str] = mapped_column(String(40))
    mean: Mapped[float] = mapped_column(Float)
    heatmap_key: Mapped[str] = mapped_column(String(200))
    prediction_key: Mapped[str | None] = mapped_column(String(200))


class ImageRegionScores(Base):
    """One scoring pass's region scores of one image (activeseg.core.services.scores): every
    measure's pooled score per region in one float32 array ``[M, R]``, the model's majority
    class per region, the region centres and the regions still open to labelling when it was
    scored. One row per (model version, image), however many measures; the per-pixel maps stay
    in the heatmap blob (``image_scores.heatmap_key``)."""

    __tablename__ = "image_region_scores"
    __table_args__ = (
        UniqueConstraint("model_version_id", "image_id", name="uq_image_region_scores_model_image"),
    )
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    # The region map the scores index (a task keeps the same three values).
    region_kind: Mapped[str] = mapped_column(String(20))
    region_size: Mapped[int] = mapped_column(Integer)
    region_sigma: Mapped[float] = mapped_column(Float)
    # The image's label revision ``open_regions`` was computed from.
    labels_revision: Mapped[int] = mapped_column(Integer)
    n_regions: Mapped[int] = mapped_column(Integer)
    measures: Mapped[list[Any]] = mapped_column(JSON)  # row names of ``scores``
    means: Mapped[dict[str, Any]] = mapped_column(JSON)  # {measure: mean of its pixel map}
    scores: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [M, R]
    classes: Mapped[bytes] = mapped_column(LargeBinary)  # int16 [R]
    centroids: Mapped[bytes] = mapped_column(LargeBinary)  # float32 [R, 2] (y, x)
    open_regions: Mapped[bytes] = mapped_column(LargeBinary)  # np.packbits of bool [R]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ScoreCandidates(Base):
    """What one scoring chunk (a ``score_pool`` child job) offers the next queue: its best
    selection keys after the per-image rules, and its best control draws
    (activeseg.core.services.scores). ``build_queue`` merges the chunks of a version."""

    __tablename__ = "score_candidates"
    __table_args__ = (
        UniqueConstraint(
            "model_version_id", "first_image_id", name="uq_score_candidates_model_first_image"
        ),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    model_version_id: Mapped[int] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    # The chunk's images are the version's scored images with ids in [first, last].
    first_image_id: Mapped[int] = mapped_column(Integer)
    last_image_id: Mapped[int] = mapped_column(Integer)
    n_images: Mapped[int] = mapped_column(Integer)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # the settings the keys were drawn for
    selected: Mapped[bytes] = mapped_column(LargeBinary)  # entries, best first
    selected_complete: Mapped[bool] = mapped_column(Boolean)  # nothing cut after the last
    controls: Mapped[bytes] = mapped_column(LargeBinary)
    controls_complete: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Round(Base):
    __tablename__ = "rounds"
    __table_args__ = (
        UniqueConstraint("project_id", "number", name="uq_rounds_project_number"),
        # A redelivered build_queue job finds its round instead of opening another.
        UniqueConstraint("job_id", name="uq_rounds_job_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    measure: Mapped[str] = mapped_column(String(40))
    strategy: Mapped[str] = mapped_column(String(20))
    n_tasks: Mapped[int] = mapped_column(Integer, default=0)
    labelled_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    labelled_regions: Mapped[int] = mapped_column(Integer, default=0)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Task(Base):
    """A region (or a few regions of one image) to label.

    queued -> leased -> submitted | skipped; a lapsed lease goes back to queued; queued tasks
    of an older model version become stale when the pool is re-scored.
    """

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("round_id", "image_id", "region_key", name="uq_tasks_round_image_region"),
        # The lease query: WHERE project_id = ? AND state = 'queued'
        # ORDER BY priority DESC, id DESC is a backward scan of this index; partial, so it
        # holds only queued tasks and stays small however many tasks are done.
        Index(
            "ix_tasks_queue",
            "project_id",
            "priority",
            "id",
            postgresql_where=text("state = 'queued'"),
            sqlite_where=text("state = 'queued'"),
        ),
        Index(
            "ix_tasks_lease_expiry",
            "lease_expires_at",
            postgresql_where=text("state = 'leased'"),
            sqlite_where=text("state = 'leased'"),
        ),
        Index("ix_tasks_project_state", "project_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    round_id: Mapped[int | None] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    regions: Mapped[list[Any]] = mapped_column(JSON)
    region_key: Mapped[str] = mapped_column(String(200))
    region_kind: Mapped[str] = mapped_column(String(20))
    region_size: Mapped[int] = mapped_column(Integer)
    region_sigma: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    # The blob key of the task's region map (its region_sets row), copied when the round is
    # written: the lease and the submit read the map without looking the row up. NULL for a
    # task queued before migration 0008 or whose map was not stored yet (they look it up).
    region_map_key: Mapped[str | None] = mapped_column(String(200))
    model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    measure: Mapped[str] = mapped_column(String(40))
    # Lease order, higher first: minus the task's position in its round's sampled order.
    priority: Mapped[float] = mapped_column(Float)
    # Drawn uniformly at random from the candidates not selected (the yardstick of the
    # queue); annotators are never told which tasks are controls.
    control: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    state: Mapped[str] = mapped_column(_str_enum(TaskState), default=TaskState.queued.value)
    leased_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    leased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_count: Mapped[int] = mapped_column(Integer, default=0)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    submitted_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    skip_reason: Mapped[str | None] = mapped_column(String(200))
    # Filled at submit: pixels the answer labels, of those the ones where the queuing model
    # version predicted another class (NULL without a model), and the annotation cost in
    # clicks (activeseg.uncertainty.annotation_cost).
    answered_pixels: Mapped[int | None] = mapped_column(BigInteger)
    model_wrong_pixels: Mapped[int | None] = mapped_column(BigInteger)
    clicks: Mapped[int | None] = mapped_column(Integer)
    # The queuing model version's majority class of each of ``regions`` (same order); NULL
    # without a model (a random round).
    proposed_classes: Mapped[list[Any] | None] = mapped_column(JSON)
    # overlap > 1 (activeseg.core.services.overlap): answers collected so far, and once all
    # are in, the share of the regions' pixels on which every answer agrees, and the task's
    # sufficient statistics of Fleiss' kappa ({"items", "p_sum", "counts"}).
    answers: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    agreement: Mapped[float | None] = mapped_column(Float)
    kappa_stats: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Job(Base):
    """A background job. The row is committed before the broker hears of it (outbox)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("project_id", "kind", "request_id", name="uq_jobs_project_kind_request"),
        Index("ix_jobs_project_state", "project_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(_str_enum(JobState), default=JobState.pending.value)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    request_id: Mapped[str | None] = mapped_column(String(200))
    celery_id: Mapped[str | None] = mapped_column(String(100))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    parent_id: Mapped[int | None] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    children_total: Mapped[int] = mapped_column(Integer, default=0)
    children_done: Mapped[int] = mapped_column(Integer, default=0)


class Webhook(Base):
    """An outgoing webhook of a project: events are POSTed, HMAC-signed with ``secret``."""

    __tablename__ = "webhooks"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(String(2000))
    # ["model.trained", "queue.refilled", "job.failed"]
    events: Mapped[list[Any]] = mapped_column(JSON)
    # Kept in clear: signing needs it. Shown once, when the webhook is created.
    secret: Mapped[str] = mapped_column(String(100))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    created_by: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """One event sent (or to be sent) to one webhook, with a log of every attempt."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        # A redelivered source job finds its delivery instead of sending the event twice.
        UniqueConstraint("webhook_id", "source_key", name="uq_webhook_deliveries_webhook_source"),
        UniqueConstraint("uuid", name="uq_webhook_deliveries_uuid"),
        Index("ix_webhook_deliveries_webhook_id", "webhook_id", "id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    uuid: Mapped[str] = mapped_column(String(36))
    event: Mapped[str] = mapped_column(String(40))
    source_key: Mapped[str] = mapped_column(String(200))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), default="pending")  # pending|succeeded|failed
    attempts: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{attempt, status, ...}]
    last_status: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class LinkKey(Base):
    """An HMAC key that signs expiring links (activeseg.core.services.links). The newest
    unrevoked key signs; every unrevoked key verifies, so rotating keeps issued links working
    until the old key is revoked."""

    __tablename__ = "link_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    secret: Mapped[str] = mapped_column(String(64))  # 32 random bytes, hex
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BackendKey(Base):
    """A per-project secret that a labelling tool carries in its ML-backend URL
    (``/ls/{project_id}/k/{key}``): Label Studio keeps that URL and appends ``/webhook`` to it
    for the webhook it creates itself. The key admits only that project's ``/ls`` routes, acting
    as the engineer who made it. Only its SHA-256 is stored."""

    __tablename__ = "backend_keys"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(12))
    created_by: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ToolAnnotation(Base):
    """A labelling tool's annotation as it was applied to an image's labels: the blob holds
    the values it painted (255 = not painted) and what those pixels held before, so that an
    update or a delete takes back exactly its own contribution
    (activeseg.core.services.contributions). ``seq`` orders the contributions on one image."""

    __tablename__ = "tool_annotations"
    __table_args__ = (
        UniqueConstraint("project_id", "tool", "external_id", name="uq_tool_annotations_external"),
        Index("ix_tool_annotations_image_state", "image_id", "state"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"))
    tool: Mapped[str] = mapped_column(String(20))  # label-studio
    external_id: Mapped[str] = mapped_column(String(100))
    external_author: Mapped[str | None] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(String(10), default="active")  # active | deleted
    seq: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str | None] = mapped_column(String(200))
    painted_pixels: Mapped[int] = mapped_column(BigInteger, default=0)
    revision: Mapped[int | None] = mapped_column(Integer)  # the label revision it last made
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class TaskAnswer(Base):
    """One annotator's answer to a task of a project with overlap > 1: the window over the
    task's bounding box (255 = says nothing) as a blob. One per (task, user): a region is never
    answered twice by the same annotator, whatever leases lapse or are released."""

    __tablename__ = "task_answers"
    __table_args__ = (
        # One *live* answer per (task, user): an answer a reviewer rejected stays as a row but
        # no longer blocks its author from answering the region again.
        Index(
            "uq_task_answers_task_user_live",
            "task_id",
            "user_id",
            unique=True,
            postgresql_where=text("rejected_at IS NULL"),
            sqlite_where=text("rejected_at IS NULL"),
        ),
        Index("ix_task_answers_user", "user_id", "task_id"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    blob_key: Mapped[str] = mapped_column(String(200))
    answered_pixels: Mapped[int] = mapped_column(BigInteger)
    clicks: Mapped[int] = mapped_column(Integer)
    agreement: Mapped[float | None] = mapped_column(Float)  # with the consensus, once known
    leased_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    submitted_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # The review that decided this answer (accept, reject or correct), and when it was
    # rejected: a rejected answer is kept, but neither counts towards k nor blocks its author.
    review_id: Mapped[int | None] = mapped_column(
        ForeignKey("task_reviews.id", ondelete="SET NULL")
    )
    rejected_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class TaskReview(Base):
    """A reviewer's decision on a disputed task (activeseg.core.services.review): ``accept``
    (the consensus becomes a revision), ``reject`` (the answers are rejected, the task goes
    back to the queue) or ``correct`` (the reviewer's own patch becomes a revision). Never
    updated: a task reviewed again gets another row."""

    __tablename__ = "task_reviews"
    __table_args__ = (Index("ix_task_reviews_task", "task_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    reviewer_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    decision: Mapped[str] = mapped_column(String(10))  # accept | reject | correct
    reason: Mapped[str | None] = mapped_column(String(200))
    # the task's agreement when it was reviewed, and the label revision the decision made
    agreement: Mapped[float | None] = mapped_column(Float)
    revision_id: Mapped[int | None] = mapped_column(
        ForeignKey("label_revisions.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
