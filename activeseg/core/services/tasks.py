"""Annotation tasks: leasing (atomic), heartbeat, release, skip, submit, expiry.

This is where a task is leased: :func:`lease_next`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import Engine, Select, TextClause, and_, bindparam, event, or_, select, text, update
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, Invalid, NotFound
from activeseg.core.heatmaps import decode_heatmaps
from activeseg.core.imaging import check_mask_values, decode_index
from activeseg.core.project_config import ProjectSettings
from activeseg.core.services import labels, overlap
from activeseg.core.services.auto_retrain import count_labels
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import task_region_map
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    ImageScore,
    LabelRevision,
    Project,
    Task,
    TaskAnswer,
    TaskState,
    User,
)
from activeseg.uncertainty.annotation_cost import answer_errors, patch_clicks, region_clicks
from activeseg.uncertainty.labels import UNLABELLED
from activeseg.uncertainty.regions import RegionMap

log = logging.getLogger(__name__)

QUEUED, LEASED = TaskState.queued.value, TaskState.leased.value


def _now() -> datetime:
    return datetime.now(UTC)


def expire_leases(session: Session, project_id: int | None = None, limit: int = 500) -> int:
    """Return lapsed leases to the queue (also run periodically by the maintenance job)."""
    now = _now()
    lapsed = select(Task.id).where(Task.state == LEASED, Task.lease_expires_at < now)
    if project_id is not None:
        lapsed = lapsed.where(Task.project_id == project_id)
    lapsed = lapsed.limit(limit)
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        lapsed = lapsed.with_for_update(skip_locked=True)
    ids = list(session.scalars(lapsed))
    if not ids:
        return 0
    session.execute(
        update(Task)
        .where(Task.id.in_(ids), Task.state == LEASED)
        .values(state=QUEUED, leased_by=None, leased_at=None, lease_expires_at=None)
    )
    return len(ids)


def _queue_pick(
    project_id: int, user: User, overlap: int, lapsed_before: datetime | None
) -> Select[int, float]:
    """The best candidate of one kind: queued (``lapsed_before`` None) or a lease that lapsed
    before ``lapsed_before``. Ordered as ``ix_tasks_queue`` (priority DESC, id DESC)."""
    pick = select(Task.id, Task.priority).where(Task.project_id == project_id)
    if lapsed_before is None:
        pick = pick.where(Task.state == QUEUED)
    else:
        pick = pick.where(Task.state == LEASED, Task.lease_expires_at < lapsed_before)
    if overlap > 1:  # never a region the caller answered already
        answered = select(TaskAnswer.id).where(
            TaskAnswer.task_id == Task.id,
            TaskAnswer.user_id == user.id,
            TaskAnswer.rejected_at.is_(None),  # a reviewer's rejection frees the region
        )
        pick = pick.where(~answered.exists())
    return pick.order_by(Task.priority.desc(), Task.id.desc()).limit(1)


_NOT_ANSWERED = (
    "AND NOT EXISTS (SELECT 1 FROM task_answers a WHERE a.task_id = tasks.id "
    "AND a.user_id = :uid AND a.rejected_at IS NULL)"
)


def _pg_lease(overlap: bool) -> TextClause:
    # Written out rather than composed from ORM expressions: built once, its cache key is
    # trivial, and it is the statement to read in EXPLAIN (ix_tasks_queue, backward).
    not_answered = _NOT_ANSWERED if overlap else ""
    return text(f"""
        WITH fresh AS (
            SELECT id, priority FROM tasks
            WHERE project_id = :pid AND state = 'queued' {not_answered}
            ORDER BY priority DESC, id DESC LIMIT 1 FOR UPDATE SKIP LOCKED
        ), lapsed AS (
            SELECT id, priority FROM tasks
            WHERE project_id = :pid AND state = 'leased' AND lease_expires_at < :now
                {not_answered}
            ORDER BY priority DESC, id DESC LIMIT 1 FOR UPDATE SKIP LOCKED
        )
        UPDATE tasks SET state = 'leased', leased_by = :uid, leased_at = :now,
            lease_expires_at = :until, lease_count = lease_count + 1
        WHERE id = (
            SELECT id FROM (SELECT id, priority FROM fresh
                            UNION ALL SELECT id, priority FROM lapsed) AS candidates
            ORDER BY priority DESC, id DESC LIMIT 1
        )
        RETURNING *
    """)


_PG_LEASE = (_pg_lease(False), _pg_lease(True))


def lease_next(session: Session, project: Project, user: User, lease_seconds: int) -> Task | None:
    """Lease the highest-priority queued task of ``project`` to ``user``, atomically.

    PostgreSQL: one statement. Two ``SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1`` picks (the
    best queued task, a backward scan of the partial index ``ix_tasks_queue``, and the best
    task whose lease lapsed) feed an ``UPDATE ... RETURNING`` of the better one, so concurrent
    annotators never wait on or receive the same row, and a lapsed lease is taken over at
    once without a sweep first (the periodic sweep, :func:`expire_leases`, returns the rest
    to the queue). SQLite: the session began with ``BEGIN IMMEDIATE``, so the sweep, the
    select and the update run under the database write lock and are atomic too.
    """
    now, overlap = _now(), project_settings(project).overlap
    values = {
        "state": LEASED,
        "leased_by": user.id,
        "leased_at": now,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "lease_count": Task.lease_count + 1,
    }
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = select(Task).from_statement(_PG_LEASE[overlap > 1])
        params = {
            "pid": project.id,
            "uid": user.id,
            "now": now,
            "until": values["lease_expires_at"],
        }
        leased = session.scalars(
            stmt, params, execution_options={"populate_existing": True}
        ).one_or_none()
        if leased is not None:  # most leases take a queued task (a lapsed one: the next count)
            _moved(session, project.id, QUEUED, LEASED)
        return leased
    expire_leases(session, project.id)
    task = session.scalar(_queue_pick(project.id, user, overlap, None).with_only_columns(Task))
    if task is None:
        return None
    _moved(session, project.id, task.state, LEASED)
    task.state = LEASED
    task.leased_by = user.id
    task.leased_at = now
    task.lease_expires_at = values["lease_expires_at"]  # type: ignore[assignment]
    task.lease_count += 1
    session.flush()
    return task


def get_task_for(session: Session, task_id: int, lock: bool = False) -> Task:
    query = select(Task).where(Task.id == task_id)
    if lock:
        query = query.with_for_update()
    task = session.scalar(query)
    if task is None:
        raise NotFound(f"task {task_id} not found")
    return task


def _own_live_lease(task: Task, user: User) -> None:
    if task.state != LEASED or task.leased_by != user.id:
        raise Conflict(f"task {task.id} is not leased to you (it is {task.state})")
    assert task.lease_expires_at is not None
    if task.lease_expires_at < _now():
        raise Conflict(f"your lease on task {task.id} has expired; pull a new task")


def heartbeat(session: Session, task: Task, user: User, lease_seconds: int) -> Task:
    _own_live_lease(task, user)
    task.lease_expires_at = _now() + timedelta(seconds=lease_seconds)
    return task


def release(session: Session, task: Task, user: User) -> Task:
    _own_live_lease(task, user)
    task.state, task.leased_by, task.leased_at, task.lease_expires_at = QUEUED, None, None, None
    _moved(session, task.project_id, LEASED, QUEUED)
    return task


def skip(session: Session, task: Task, user: User, reason: str) -> Task:
    """A region that cannot be labelled (unclear, not this project) leaves the queue."""
    _own_live_lease(task, user)
    task.state = TaskState.skipped.value
    _moved(session, task.project_id, LEASED, task.state)
    task.skip_reason = reason
    task.submitted_by = user.id
    task.submitted_at = _now()
    return task


def _may_submit(task: Task, user: User) -> None:
    """A live own lease may submit; so may a lapsed one if nobody else has taken the task."""
    if task.state == LEASED and task.leased_by == user.id:
        return
    if task.state == QUEUED and task.leased_by is None and task.lease_count > 0:
        # The lease lapsed and the task went back to the queue, but nobody took it since:
        # the late work is accepted rather than thrown away.
        return
    raise Conflict(
        f"task {task.id} is {task.state}"
        + (" by someone else" if task.state == LEASED else "")
        + "; your submission was not stored"
    )


@dataclass(frozen=True)
class Submission:
    region_classes: dict[int, int] | None = None  # region id -> class id (fast path)
    patch: np.ndarray | None = None  # uint8 [h, w] over the task's bounding box, 255 = none
    idempotency_key: str | None = None


def task_bbox(regions: RegionMap, ids: list[int]) -> tuple[int, int, int, int]:
    boxes = regions.bboxes[ids]
    return (
        int(boxes[:, 0].min()),
        int(boxes[:, 1].min()),
        int(boxes[:, 2].max()),
        int(boxes[:, 3].max()),
    )


@dataclass(frozen=True)
class _Answer:
    """A submission read and checked against the task's regions."""

    bbox: tuple[int, int, int, int]  # (y0, x0, y1, x1) of the task's regions, end exclusive
    inside: np.ndarray  # bool [h, w] over bbox: pixel in one of the task's regions
    window: np.ndarray  # uint8 [h, w] over bbox: the answer's class, 255 = says nothing
    clicks: int


def read_answer(task: Task, regions: RegionMap, n_classes: int, sub: Submission) -> _Answer:
    """Check ``sub`` against the task's regions (Invalid says what is wrong) and return it as
    a window over the regions' bounding box. Pixels outside the regions (a superpixel's bbox
    holds parts of others) must stay 255; at least one pixel inside them must be labelled."""
    ids = [int(r) for r in task.regions]
    if (sub.region_classes is None) == (sub.patch is None):
        raise Invalid("send either 'classes' (one class per region) or a mask 'patch', not both")
    y0, x0, y1, x1 = task_bbox(regions, ids)
    window_labels = regions.labels[y0:y1, x0:x1]
    inside = np.isin(window_labels, ids)
    if sub.region_classes is not None:
        if set(sub.region_classes) != set(ids):
            raise Invalid(
                f"give one class for each region of the task: {sorted(ids)}; got "
                f"{sorted(sub.region_classes)}"
            )
        table = np.full(regions.n_regions, UNLABELLED, np.int32)
        for region, cls in sub.region_classes.items():
            if not 0 <= cls < n_classes:
                raise Invalid(f"class {cls} is not a class of this project (0..{n_classes - 1})")
            table[region] = cls
        window = np.where(inside, table[window_labels], UNLABELLED).astype(np.uint8)
        return _Answer((y0, x0, y1, x1), inside, window, region_clicks(len(ids)))
    assert sub.patch is not None
    if sub.patch.shape != (y1 - y0, x1 - x0):
        raise Invalid(
            f"the patch must cover the task's bounding box: {y1 - y0}x{x1 - x0} "
            f"(height x width), got {sub.patch.shape[0]}x{sub.patch.shape[1]}"
        )
    check_mask_values(sub.patch, n_classes, UNLABELLED, "patch")
    if np.any((sub.patch != UNLABELLED) & ~inside):
        raise Invalid("the patch labels pixels outside the task's regions; set them to 255")
    if not np.any(sub.patch[inside] != UNLABELLED):
        # Stored, it would be a revision that labels nothing (or erases earlier labels) and a
        # "submitted" task that taught the model nothing.
        raise Invalid(
            "the answer labels no pixel of the task's regions; label at least one, or skip "
            f"the task with POST /tasks/{task.id}/skip"
        )
    return _Answer((y0, x0, y1, x1), inside, sub.patch, patch_clicks(sub.patch))


def _same_answer_or_refuse(
    store: BlobStore, task: Task, done: LabelRevision, answer: _Answer
) -> None:
    """A key already used: the request must repeat the stored answer (the IETF httpapi
    Idempotency-Key draft: another payload under a key already used is answered 422).

    The answer is compared, not the request bytes: the stored revision holds exactly the
    answer's pixels inside the task's regions (and submit writes nothing else), so the
    comparison needs no fingerprint column, holds for revisions stored before it existed, and
    takes a patch re-encoded by a retrying client, or the same labels sent as ``classes``, as
    the same answer."""
    y0, x0, y1, x1 = answer.bbox
    stored = decode_index(store.get(done.blob_key))[y0:y1, x0:x1]
    if not np.array_equal(stored[answer.inside], answer.window[answer.inside]):
        raise Invalid(
            "this Idempotency-Key was already used with a different request body; task "
            f"{task.id} keeps the answer stored first (revision {done.revision})"
        )


def submit(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    user: User,
    sub: Submission,
) -> tuple[LabelRevision | None, bool]:
    """Store the answer as a new label revision of the image. Returns ``(revision, created)``;
    with overlap > 1 the revision is the consensus, None until the k-th answer (or when the
    answers disagree: the task is then ``disputed``).

    Idempotency: a key already used for this task with the same answer returns the first
    revision and stores nothing; with another answer it is refused (Invalid), so a correction
    sent under a reused key is never silently dropped. An answer that labels no pixel of the
    task's regions is refused too (skip is the way to give a task back unlabelled).

    The task also keeps what the answer cost and revealed: ``answered_pixels`` (pixels it
    labels), ``model_wrong_pixels`` (of those, where the model version that queued the task
    predicted another class; NULL without one) and ``clicks``
    (:mod:`activeseg.uncertainty.annotation_cost`)."""
    settings = project_settings(project)
    if settings.overlap > 1:
        return _submit_overlapping(session, store, project, task, user, sub, settings)
    key = f"task:{task.id}:{sub.idempotency_key}" if sub.idempotency_key else None
    done = (
        session.scalar(select(LabelRevision).where(LabelRevision.idempotency_key == key))
        if key is not None
        else None
    )
    if done is None:
        _may_submit(task, user)
    width, height, regions = task_region_map(session, store, task)
    answer = read_answer(task, regions, len(project.classes), sub)
    if done is not None:  # a repeated request writes nothing
        _same_answer_or_refuse(store, task, done, answer)
        return done, False
    y0, x0, y1, x1 = answer.bbox
    prediction = _queuing_prediction(session, store, task, (height, width))
    with session.no_autoflush:  # one flush, at commit: the task's row is written once
        task.answered_pixels, task.model_wrong_pixels = answer_errors(
            answer.window, None if prediction is None else prediction[y0:y1, x0:x1]
        )
        task.clicks = answer.clicks
        _moved(session, project.id, task.state, TaskState.submitted.value)
        task.state = TaskState.submitted.value
        task.submitted_at = _now()
        task.submitted_by = user.id
        task.lease_expires_at = None
        # Two answers for regions of one image are read-modify-writes of the same mask: the
        # second must start from the first one's revision (no lost update, no duplicate
        # revision number). The mask is made and stored before the image's row lock is
        # taken, and made again under it only if another answer came first.
        rev = labels.save_window_unlocked(
            session,
            store,
            task.image_id,
            answer.bbox,
            answer.inside,
            answer.window,
            source="task",
            author_id=user.id,
            task_id=task.id,
            idempotency_key=key,
        )  # flushes the revision, the image and the task
    count_labels(session, project)
    return rev, True


def _submit_overlapping(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    user: User,
    sub: Submission,
    settings: ProjectSettings,
) -> tuple[LabelRevision | None, bool]:
    """overlap > 1: the answer is one of k (activeseg.core.services.overlap); the revision is
    the consensus, made with the k-th answer when the answers agree enough."""
    # The task row is locked (the caller's query): answers to one task are made one at a
    # time. The image row is locked only by the answer that writes the consensus into the
    # mask (overlap.add_answer), before it reads the current mask.
    _, _, regions = task_region_map(session, store, task)
    answer = read_answer(task, regions, len(project.classes), sub)
    done = overlap.already_answered(session, task, user)
    if done is not None:  # a retry of the same answer, or a second answer (refused)
        overlap.repeat_or_refuse(store, task, done, answer.window, answer.inside)
        return None, False
    _may_submit(task, user)
    before = task.state
    result = overlap.add_answer(
        session,
        store,
        project,
        task,
        user,
        bbox=answer.bbox,
        inside=answer.inside,
        window=answer.window,
        clicks=answer.clicks,
        k=settings.overlap,
        threshold=settings.agreement_threshold,
    )
    _moved(session, project.id, before, task.state)
    return result.revision, result.created


_HEATMAP_KEY = (
    select(ImageScore.heatmap_key)
    .where(
        ImageScore.model_version_id == bindparam("model_version_id"),
        ImageScore.image_id == bindparam("image_id"),
    )
    .limit(1)
)


def _queuing_prediction(
    session: Session, store: BlobStore, task: Task, shape: tuple[int, int]
) -> np.ndarray | None:
    """uint8 ``[H, W]`` classes predicted for the task's image (of ``shape``) by the model
    version that queued ``task`` (from its score blob), or None: no model (a random round),
    or no stored scores. Decoded maps are cached by blob key (content-addressed: an entry
    never goes stale), so the answers to one image's regions decode it once."""
    if task.model_version_id is None:
        return None
    key = session.scalar(
        _HEATMAP_KEY, {"model_version_id": task.model_version_id, "image_id": task.image_id}
    )
    if key is None:
        return None
    prediction = PREDICTIONS.get(store, key)
    if prediction is None or prediction.shape != shape:
        return None
    return prediction


class _PredictionCache:
    """Decoded ``prediction`` maps of score blobs by key, least recently used first out,
    bounded by bytes."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self.max_bytes, self.bytes = max_bytes, 0
        self.maps: OrderedDict[str, np.ndarray | None] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, store: BlobStore, key: str) -> np.ndarray | None:
        with self.lock:
            if key in self.maps:
                self.maps.move_to_end(key)
                return self.maps[key]
        found = decode_heatmaps(store.get(key), ["prediction"]).get("prediction")
        with self.lock:
            if key not in self.maps:
                self.maps[key] = found
                self.bytes += 0 if found is None else found.nbytes
                while self.bytes > self.max_bytes and len(self.maps) > 1:
                    _, old = self.maps.popitem(last=False)
                    self.bytes -= 0 if old is None else old.nbytes
        return found


PREDICTIONS = _PredictionCache()


def queue_counts(session: Session, project_id: int) -> dict[str, int]:
    from sqlalchemy import func

    rows = session.execute(
        select(Task.state, func.count()).where(Task.project_id == project_id).group_by(Task.state)
    ).all()
    counts = {s.value: 0 for s in TaskState}
    counts.update({state: n for state, n in rows})
    return counts


QUEUE_COUNTS_TTL_S = 1.0
"""How long the queue counts of a lease payload are kept per process and project before they
are counted again; in between, the moves this process makes are applied to them."""
_queue_counts: dict[tuple[str, int], tuple[float, dict[str, int]]] = {}
_queue_counts_lock = threading.Lock()
_recounting: set[tuple[str, int]] = set()
_recounter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-recount")


def _counts_key(session: Session, project_id: int) -> tuple[str, int]:
    return (str(session.get_bind().engine.url), project_id)  # one process, several databases


def recent_queue_counts(session: Session, project_id: int) -> dict[str, int]:
    """:func:`queue_counts` for display in a lease payload ("12 queued · 3 leased").

    The count is a GROUP BY over the project's tasks: on every lease it was a third of the
    lease's database work at 1,000 tasks and grew with the project. So it is counted at most
    every ``QUEUE_COUNTS_TTL_S`` per process, and every move this process makes (a lease, a
    submit, a skip, a release: :func:`_moved`) is applied to the kept counts, so one annotator
    sees their own work at once; other processes' moves show within about
    ``QUEUE_COUNTS_TTL_S``. Only a process's first payload of a project waits for the count:
    once the kept counts are older, the payload shows them and one thread of the process
    counts again beside the requests (at 100,000 tasks the count takes tens of milliseconds,
    which a lease waited through once a second, and every lease queued behind it in the
    annotation lane). The recount starts when the request's transaction has ended, so it
    includes the request's own move. ``GET /projects/{id}/queue`` is always exact."""
    key = _counts_key(session, project_id)
    now = time.monotonic()
    with _queue_counts_lock:
        hit = _queue_counts.get(key)
        if hit is not None:
            if now - hit[0] > QUEUE_COUNTS_TTL_S and key not in _recounting:
                _recounting.add(key)
                engine = session.get_bind().engine

                def recount(*_: object) -> None:  # once this transaction ended: its move counts
                    _recounter.submit(_recount, engine, project_id, key)

                event.listen(session, "after_transaction_end", recount, once=True)
            return dict(hit[1])
    counts = queue_counts(session, project_id)
    with _queue_counts_lock:
        _queue_counts[key] = (now, counts)
    return dict(counts)


def _recount(engine: Engine, project_id: int, key: tuple[str, int]) -> None:
    """Count again in a session of its own; on failure the kept counts stay, and the next
    payload tries again."""
    started = time.monotonic()
    try:
        with Session(engine) as session:
            counts = queue_counts(session, project_id)
        with _queue_counts_lock:
            _queue_counts[key] = (started, counts)
    except Exception:  # noqa: BLE001 - a display count must never fail a lease
        log.warning("recounting the queue of project %s failed", project_id, exc_info=True)
    finally:
        with _queue_counts_lock:
            _recounting.discard(key)


def queue_recounts_done(timeout: float) -> bool:
    """Wait until no recount runs (tests): True if none did within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _queue_counts_lock:
            if not _recounting:
                return True
        time.sleep(0.01)
    return False


def _moved(session: Session, project_id: int, before: str, after: str) -> None:
    """Apply one task's move from state ``before`` to ``after`` to the kept counts."""
    if before == after:
        return
    with _queue_counts_lock:
        hit = _queue_counts.get(_counts_key(session, project_id))
        if hit is not None:
            counts = hit[1]
            counts[before] = max(0, counts.get(before, 0) - 1)
            counts[after] = counts.get(after, 0) + 1


def open_region_keys(
    session: Session, project_id: int, model_version_id: int | None
) -> set[tuple[int, str]]:
    """(image id, region key) of tasks that stay open through the next queue build: every
    leased task, and queued tasks of ``model_version_id`` (the others become stale)."""
    same_version = (
        Task.model_version_id.is_(None)
        if model_version_id is None
        else Task.model_version_id == model_version_id
    )
    rows = session.execute(
        select(Task.image_id, Task.region_key).where(
            Task.project_id == project_id,
            or_(Task.state == LEASED, and_(Task.state == QUEUED, same_version)),
        )
    ).all()
    return {(i, k) for i, k in rows}


def mark_stale(session: Session, project_id: int, keep_model_version: int | None) -> int:
    """Queued tasks from another model version are stale once the pool is re-scored.
    Leased tasks are left alone until they end."""
    same_version = (
        Task.model_version_id.is_(None)
        if keep_model_version is None
        else Task.model_version_id == keep_model_version
    )
    cond = and_(Task.project_id == project_id, Task.state == QUEUED, ~same_version)
    res = session.execute(update(Task).where(cond).values(state=TaskState.stale.value))
    return int(res.rowcount)  # type: ignore[attr-defined]
