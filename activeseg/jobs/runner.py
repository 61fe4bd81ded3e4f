"""Running one job row: claim it, keep its heartbeat, record progress, success or failure.

A failed job's ``error`` is what people read (``GET /jobs/{id}``, ``activeseg jobs``, the
``job.failed`` webhook): one line. A failure with a known cause keeps its own message; any
other says only which exception it was, and the worker log has its traceback
(:func:`failure_detail`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import case, or_, update
from sqlalchemy.exc import OperationalError

from activeseg.core import failpoints
from activeseg.core.db import Database
from activeseg.core.errors import DomainError
from activeseg.core.services.jobs import request_job
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Job, JobState
from activeseg.jobs.notify import notify

log = logging.getLogger(__name__)

HEARTBEAT_S = 2.0
BEAT_RETRY_S = 0.2  # first retry of a failed heartbeat; doubles up to HEARTBEAT_S


class JobBusy(Exception):
    """Another live worker holds this job; the delivery should be retried later."""


class TransientError(Exception):
    """Worth retrying: the database or broker was briefly unreachable."""


class RetryLater(Exception):  # noqa: N818 - an instruction, like Celery's own Retry
    """Raised by a job that wants to run again in ``countdown_s`` seconds (a webhook whose
    receiver failed): the job goes back to ``queued`` with ``reason`` as its message and the
    caller schedules the rerun (the Celery shell: a retry with that countdown), so no worker
    waits in between."""

    def __init__(self, countdown_s: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown_s, self.reason = countdown_s, reason


TRANSIENT = (OperationalError, ConnectionError, TimeoutError, TransientError)

_PACKAGE = Path(__file__).resolve().parent.parent  # the activeseg package folder
MAX_ERROR_CHARS = 1000


def _raised_by_activeseg(exc: BaseException) -> bool:
    """Whether the innermost frame of ``exc``'s traceback is activeseg's own code."""
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)


def _known_cause(exc: Exception) -> bool:
    """A failure whose message was written for people: a domain error (core/errors.py), a
    ValueError (validation: ModelConfigError, a job's own checks such as "no labelled images
    to train on"), another exception class the project defines (webhooks' DeliveryFailed,
    models' DeviceUnavailableError, ...), or a plain RuntimeError raised by the project's own
    code (verify_storage's "n missing blobs"). Anything else (KeyError, TypeError, an
    assertion, an error inside torch or SQLAlchemy) is a bug: its message means nothing to
    the person who asked for the job. So is an exception without a message."""
    if not str(exc).strip():
        return False
    if isinstance(exc, DomainError | ValueError):
        return True
    if type(exc).__module__.split(".")[0] == "activeseg":
        return True
    return type(exc) is RuntimeError and _raised_by_activeseg(exc)


def failure_detail(exc: Exception, kind: str, job_id: int) -> str:
    """The one line a failed job shows as its ``error``: a known cause's own message
    (whitespace folded onto one line, cut at MAX_ERROR_CHARS), else the exception's type and
    where to look."""
    if _known_cause(exc):
        message = " ".join(str(exc).split())
        if len(message) > MAX_ERROR_CHARS:
            message = message[: MAX_ERROR_CHARS - 1] + "…"
        return message
    return (
        f"job {kind} failed unexpectedly ({type(exc).__name__}); the worker log has the "
        f"details (job id {job_id})"
    )


@dataclass(frozen=True)
class Waiting:
    """Returned by a job that fanned out into ``children`` child jobs: it stays ``waiting``
    and the last child to finish completes it (a chord kept in the database, so it works on
    every broker and survives worker restarts)."""

    children: int


Dispatcher = Callable[[int], bool]


@dataclass
class JobContext:
    db: Database
    store: BlobStore
    settings: Settings
    job_id: int
    project_id: int | None
    dispatch: Dispatcher
    kind: str = ""
    _last_write: float = field(default=0.0)

    def enqueue(
        self,
        kind: str,
        params: dict[str, Any],
        request_id: str,
        *,
        child: bool = False,
        dispatch: bool = True,
    ) -> int:
        """Create (or find, by ``request_id``) a follow-up job and dispatch it after commit."""
        with self.db.session() as s:
            job, _ = request_job(
                s, project_id=self.project_id, kind=kind, params=params, request_id=request_id
            )
            if child and job.parent_id is None:
                job.parent_id = self.job_id
            job_id, state = job.id, job.state
        if dispatch and state == JobState.pending.value:
            self.dispatch(job_id)
        return job_id

    def progress(self, fraction: float, message: str = "", force: bool = False) -> None:
        """Record progress (0..1). Throttled to one write per second unless ``force``."""
        if self._last_write == 0.0:
            failpoints.hit("job.progress", self.kind, self.job_id)
        now = time.monotonic()
        if not force and now - self._last_write < 1.0:
            return
        self._last_write = now
        with self.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == self.job_id)
                .values(
                    progress=max(0.0, min(1.0, fraction)),
                    message=message[:2000],
                    heartbeat_at=datetime.now(UTC),
                )
            )


JobFunction = Callable[..., dict[str, Any] | Waiting | None]


def claim(db: Database, job_id: int, stale_after_s: float = 30.0) -> Job | None:
    """Mark the job running for this worker. None if it already finished (nothing to do);
    raises JobBusy if another worker is running it with a live heartbeat."""
    now = datetime.now(UTC)
    # A heartbeat older than this means the worker died: the job may be claimed again.
    stale = now - timedelta(seconds=stale_after_s)
    with db.session() as s:
        job = s.get(Job, job_id)
        if job is None or job.state == JobState.succeeded.value:
            return None
        res = s.execute(
            update(Job)
            .where(
                Job.id == job_id,
                or_(
                    Job.state.in_([JobState.pending.value, JobState.queued.value]),
                    (Job.state == JobState.running.value)
                    & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
                ),
            )
            .values(
                state=JobState.running.value,
                started_at=now,
                heartbeat_at=now,
                attempts=Job.attempts + 1,
                error=None,
            )
        )
        if res.rowcount == 0:  # type: ignore[attr-defined]
            if job.state == JobState.failed.value:
                return None
            raise JobBusy(f"job {job_id} is running elsewhere")
        s.refresh(job)
        s.expunge(job)
        return job


def beat(db: Database, job_id: int) -> None:
    """One heartbeat: a write transaction of one UPDATE, nothing else inside."""
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.running.value)
            .values(heartbeat_at=datetime.now(UTC))
        )


def _heartbeat(db: Database, job_id: int, stop: threading.Event) -> None:
    """Beat every ``HEARTBEAT_S`` until ``stop``. A beat that fails (the database busy or
    briefly unreachable) is retried after ``BEAT_RETRY_S``, doubling up to ``HEARTBEAT_S``,
    instead of a whole period later: a busy moment must not age the heartbeat toward
    ``job_stale_after_s``, after which another worker may claim the running job. The job's own
    code never holds the write lock for long (see :mod:`activeseg.core.db`), so a beat waits
    at most one short transaction."""
    wait, failures = HEARTBEAT_S, 0
    while not stop.wait(wait):
        try:
            beat(db, job_id)
        except Exception:  # noqa: BLE001 - retried below; the job itself goes on
            failures += 1
            log.warning(
                "heartbeat for job %s failed (%d in a row)", job_id, failures, exc_info=True
            )
            wait = min(BEAT_RETRY_S * 2 ** (failures - 1), HEARTBEAT_S)
        else:
            wait, failures = HEARTBEAT_S, 0


def run_job(
    db: Database,
    store: BlobStore,
    settings: Settings,
    job_id: int,
    fn: JobFunction,
    dispatch: Dispatcher,
) -> dict[str, Any] | None:
    """Run ``fn`` for job ``job_id``. Transient errors and :class:`RetryLater` propagate (the
    shell retries; the job is left ``queued``); any other
    error marks the job failed with :func:`failure_detail` as its ``error`` (the traceback goes
    to the log) and does not propagate."""
    job = claim(db, job_id, settings.job_stale_after_s)
    if job is None:
        log.info("job %s already finished; nothing to do", job_id)
        return None
    ctx = JobContext(
        db=db,
        store=store,
        settings=settings,
        job_id=job_id,
        project_id=job.project_id,
        dispatch=dispatch,
        kind=job.kind,
    )
    params = {k: v for k, v in job.params.items() if k != "then"}
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(db, job_id, stop), daemon=True)
    beat.start()
    try:
        result = fn(ctx, **params)
    except RetryLater as exc:
        _requeue(db, job_id, exc.reason)
        raise
    except TRANSIENT:
        _finish(db, job_id, JobState.queued, error=None, message="transient error; will retry")
        raise
    except Exception as exc:
        detail = failure_detail(exc, job.kind, job_id)
        if _known_cause(exc):
            log.warning("job %s (%s) failed: %s", job_id, job.kind, detail, exc_info=True)
        else:
            log.exception("job %s (%s) failed unexpectedly", job_id, job.kind)
        _finish(db, job_id, JobState.failed, error=detail, message="failed")
        notify(ctx, "job.failed", {"job_id": job_id, "kind": job.kind, "error": detail})
        return None
    finally:
        stop.set()
        beat.join(timeout=HEARTBEAT_S + 1)
    failpoints.hit("job.before_finish", job.kind, job_id)
    if isinstance(result, Waiting):
        with db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    state=JobState.waiting.value,
                    children_total=result.children,
                    message=f"waiting for {result.children} parts",
                )
            )
        _complete_parent_if_done(ctx, job_id)  # children may all have finished already
        return None
    _finish(db, job_id, JobState.succeeded, error=None, message="done", result=result or {})
    _after_success(ctx, job_id)
    return result


def _after_success(ctx: JobContext, job_id: int) -> None:
    """Start the next job of a chain (``params["then"]``), and tell a waiting parent."""
    with ctx.db.read_session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        then, parent_id = list(job.params.get("then") or []), job.parent_id
    if then:
        nxt = dict(then[0])
        params = dict(nxt.get("params") or {})
        if then[1:]:
            params["then"] = then[1:]
        ctx.enqueue(nxt["kind"], params, request_id=f"after-{job_id}")
    if parent_id is not None:
        with ctx.db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == parent_id)
                .values(
                    children_done=Job.children_done + 1,
                    progress=case(
                        (
                            Job.children_total > 0,
                            (Job.children_done + 1) * 1.0 / Job.children_total,
                        ),
                        else_=Job.progress,
                    ),
                    heartbeat_at=datetime.now(UTC),
                )
            )
        _complete_parent_if_done(ctx, parent_id)


def _complete_parent_if_done(ctx: JobContext, parent_id: int) -> None:
    with ctx.db.session() as s:
        # Exactly one caller wins this update, so the parent's chain starts once.
        res = s.execute(
            update(Job)
            .where(
                Job.id == parent_id,
                Job.state == JobState.waiting.value,
                Job.children_total > 0,
                Job.children_done >= Job.children_total,
            )
            .values(
                state=JobState.succeeded.value,
                progress=1.0,
                message="done",
                finished_at=datetime.now(UTC),
            )
        )
        won = res.rowcount == 1  # type: ignore[attr-defined]
    if won:
        _after_success(ctx, parent_id)


def _requeue(db: Database, job_id: int, message: str) -> None:
    """Back to ``queued`` for a scheduled rerun; ``dispatched_at`` is now, when its next
    message is sent, so the maintenance sweep resends it only if that message is lost."""
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(
                state=JobState.queued.value, message=message[:2000], dispatched_at=datetime.now(UTC)
            )
        )


def _finish(
    db: Database,
    job_id: int,
    state: JobState,
    *,
    error: str | None,
    message: str,
    result: dict[str, Any] | None = None,
) -> None:
    values: dict[str, Any] = {"state": state.value, "error": error, "message": message}
    if state in (JobState.succeeded, JobState.failed):
        values["finished_at"] = datetime.now(UTC)
    if state == JobState.succeeded:
        values["progress"] = 1.0
        values["result"] = result
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))
