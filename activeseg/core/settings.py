"""One settings object for the whole service, read from ``ACTIVESEG_*`` environment variables.

The defaults are the *embedded mode*: everything lives under ``ACTIVESEG_DATA_DIR`` (a SQLite
file database, a blob folder and a filesystem Celery transport), so ``activeseg serve`` needs
nothing else. Production is the same code with ``ACTIVESEG_DATABASE_URL=postgresql+psycopg://…``
and ``ACTIVESEG_BROKER_URL=redis://…``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MIN_LINK_TTL_S = 60
MAX_LINK_TTL_S = 30 * 24 * 3600
DEFAULT_LINK_TTL_S = 24 * 3600


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ACTIVESEG_", env_file=".env", extra="ignore")

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path("./data")
    database_url: str = ""
    broker_url: str = ""
    result_backend: str | None = None
    # Celery queue name: deployments (or test sessions) sharing one Redis keep apart by it.
    queue: str = "activeseg"
    storage_url: str = ""
    # Redis re-delivers an unacknowledged message after this many seconds: it must be longer
    # than the longest job (a retrain), or a running job is started twice.
    visibility_timeout_s: int = 6 * 3600
    # A running job whose heartbeat (every few seconds) is older than this is presumed dead:
    # a redelivery may claim it, and the maintenance sweep re-dispatches it.
    job_stale_after_s: float = Field(default=30.0, gt=0)
    maintenance_interval_s: float = Field(default=10.0, gt=0)
    # A job dispatched but not started after this long is sent again: Redis keeps nothing on
    # disk, so a restart loses the messages waiting in it. Keep it above the longest wait for
    # a free worker; an extra message costs nothing (the job runs once).
    job_redispatch_after_s: float = Field(default=900.0, gt=0)
    # An unreferenced blob is swept only once older than this: longer than the longest time
    # between a blob write and the commit of its row (a retrain evaluates before committing).
    orphan_blob_grace_s: float = Field(default=24 * 3600.0, gt=0)
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)
    max_images_per_upload: int = Field(default=500, gt=0)
    # Per API token, a token bucket: bursts up to the limit, refilled evenly over the minute;
    # 0 = no limit. Kept in each API process's memory (never Redis: annotation must keep
    # working when Redis is down), so with N API processes a token may get up to N times this.
    # tasks: requests (lease next, heartbeat, release, skip, submit). uploads: *files* (each
    # image of an upload, a mask PUT, a label import file), never requests, so batching costs
    # nothing; a request is let in while the token has credit and its files are charged as the
    # body streams, so one request may overdraw and the next waits. 6,000 lets a 1,000-image
    # folder through at full speed and still holds a runaway script to 100 files/s.
    rate_limit_tasks_per_minute: int = Field(default=600, ge=0)
    rate_limit_uploads_per_minute: int = Field(default=6000, ge=0)
    # PostgreSQL connections each process keeps open (its pool), and how many more it may open
    # for a burst (closed again when returned). An API process also runs at most
    # db_pool_size requests at once (the rest wait for a thread): a request beyond the pool
    # would otherwise open, and close, a connection of its own, a new PostgreSQL backend each
    # time (issue 17: that churn cost a third of the annotator loop's throughput). Size
    # PostgreSQL's max_connections for (API processes + workers) x (pool + overflow).
    db_pool_size: int = Field(default=20, ge=2)
    db_max_overflow: int = Field(default=10, ge=0)
    # Of those db_pool_size threads, how many serve the annotation routes (lease, submit,
    # heartbeat, release, skip, a task's state): their own few threads, taken in the order the
    # requests came, so an annotator's request never queues behind an upload or an export,
    # and 32 of them do not fight over one interpreter lock (issue 17: a shorter lease tail).
    annotation_threads: int = Field(default=2, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = None
    # Seconds of on-demand prediction one Label Studio /predict request may spend on images
    # the active model has not scored; tasks left when it is spent are skipped (Label Studio
    # asks again). 0 = stored predictions only. Keep it well below Label Studio's own timeout
    # for /predict (ML_TIMEOUT_PREDICT, 100 s).
    ls_predict_budget_s: float = Field(default=10.0, ge=0)
    log_level: str = "INFO"
    # Shown by `activeseg serve` so a newcomer can open the page. When set (environment or
    # .env), signed links (POST /links, the Label Studio export) start with it; otherwise with
    # the URL the request came in on.
    public_url: str = "http://127.0.0.1:8000"
    # Lifetime of a signed link (activeseg.core.services.links) when none is asked for: the
    # default of POST /links and the links in task leases. Bounded like POST /links' ttl_s.
    link_ttl_s: int = Field(default=DEFAULT_LINK_TTL_S, ge=MIN_LINK_TTL_S, le=MAX_LINK_TTL_S)
    # Test hooks, unset outside the tests that need them. failpoints: comma-separated
    # "point:kind" pairs where a worker holds until killed, touching a file in failpoint_dir
    # (activeseg.core.failpoints, tests/reliability). (The client's own hook,
    # ACTIVESEG_UPLOAD_STOP_AFTER, is read by the client: activeseg.client.commands.)
    failpoints: str = ""
    failpoint_dir: Path = Path(".")

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        data = self.data_dir.resolve()
        if not self.database_url:
            self.database_url = f"sqlite:///{data / 'activeseg.db'}"
        if not self.broker_url:
            self.broker_url = "filesystem://"
        if not self.storage_url:
            self.storage_url = f"file://{data / 'blobs'}"
        if self.annotation_threads >= self.db_pool_size:
            raise ValueError(
                f"ACTIVESEG_ANNOTATION_THREADS ({self.annotation_threads}) must be less than "
                f"ACTIVESEG_DB_POOL_SIZE ({self.db_pool_size}): the other routes need threads too"
            )
        if self.environment == "production" and self.database_url.startswith("sqlite"):
            raise ValueError(
                "ACTIVESEG_ENVIRONMENT=production needs a server database, e.g. "
                "ACTIVESEG_DATABASE_URL=postgresql+psycopg://activeseg@db:5432/activeseg"
            )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def broker_folder(self) -> Path:
        """Folder used by kombu's filesystem transport in embedded mode."""
        return self.data_dir.resolve() / "broker"


@lru_cache
def get_settings() -> Settings:
    return Settings()
