"""The review stage: a reviewer decides the tasks whose overlapping answers agreed too little
(``disputed``, :mod:`activeseg.core.services.overlap`).

- **Who.** Reviewers (role ``reviewer``), engineers and admins; never someone with a live
  answer to the task (they would judge their own work).
- **The review lease** (:func:`lease_next_review`) reuses the task's lease columns and leaves
  the state alone: a disputed task whose ``leased_by`` is set and whose ``lease_expires_at``
  lies ahead is under review; a lapsed review lease simply makes the task leasable again (no
  sweep needed), and everything that counts disputed tasks (the agreement report, queue
  counts) stays right while it is reviewed. Oldest dispute first (``submitted_at``, then id);
  PostgreSQL takes the row ``FOR UPDATE SKIP LOCKED``, SQLite's ``BEGIN IMMEDIATE`` makes the
  select-then-update atomic, as in :func:`activeseg.core.services.tasks.lease_next`.
- **Decisions** (:func:`decide`), each one :class:`TaskReview` row, never updated:

  - ``accept``: the consensus of the live answers becomes a label revision (source
    ``review``, author the reviewer); the task is ``submitted``;
  - ``correct``: the reviewer's own answer (a patch over the task's bbox, or one class per
    region, checked as a submit is) becomes the revision (source ``review``); ``submitted``;
  - ``reject`` (with a reason): the live answers are marked rejected (``rejected_at``, kept as
    rows), and the task goes back to ``queued`` with ``answers = 0`` for k fresh answers. A
    rejected answer no longer counts as answered, so its author may answer the region again.

  A decision needs the caller's own review lease; one that lapsed still counts while nobody
  else has leased the task since (as a late submit does).
- **Lease upkeep**: :func:`heartbeat_review` extends a live review lease (a lapsed one is
  refused: lease again); :func:`release_review` gives the task back to the review queue at
  once (lease columns cleared, still ``disputed``), as a reviewer who leaves the page does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict, Invalid
from activeseg.core.imaging import decode_index
from activeseg.core.services import auth, labels, overlap
from activeseg.core.services.auto_retrain import count_labels
from activeseg.core.services.regions import region_set
from activeseg.core.services.tasks import Submission, read_answer, task_bbox
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    Image,
    LabelRevision,
    Project,
    Role,
    Task,
    TaskAnswer,
    TaskReview,
    TaskState,
    User,
)
from activeseg.uncertainty.regions import RegionMap

DISPUTED = TaskState.disputed.value
DECISIONS = ("accept", "reject", "correct")
UNLABELLED = overlap.UNLABELLED


def _now() -> datetime:
    return datetime.now(UTC)


def _live_answers(session: Session, task_id: int) -> list[TaskAnswer]:
    return list(
        session.scalars(
            select(TaskAnswer)
            .where(TaskAnswer.task_id == task_id, TaskAnswer.rejected_at.is_(None))
            .order_by(TaskAnswer.id)
        )
    )


def lease_next_review(
    session: Session, project: Project, user: User, lease_seconds: int
) -> Task | None:
    """Lease the oldest disputed task of ``project`` that nobody is reviewing and ``user``
    did not answer; None when there is none."""
    auth.require_role(user, Role.reviewer)
    now = _now()
    answered = select(TaskAnswer.id).where(
        TaskAnswer.task_id == Task.id,
        TaskAnswer.user_id == user.id,
        TaskAnswer.rejected_at.is_(None),
    )
    pick = (
        select(Task)
        .where(
            Task.project_id == project.id,
            Task.state == DISPUTED,
            or_(Task.leased_by.is_(None), Task.lease_expires_at < now),
            ~answered.exists(),
        )
        .order_by(Task.submitted_at, Task.id)
        .limit(1)
    )
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        pick = pick.with_for_update(skip_locked=True)
    task = session.scalar(pick)
    if task is None:
        return None
    task.leased_by = user.id
    task.leased_at = now
    task.lease_expires_at = now + timedelta(seconds=lease_seconds)
    session.flush()
    return task


@dataclass(frozen=True)
class ReviewView:
    """What a reviewer sees: the task's bbox (y0, x0, y1, x1), its regions' pixels ``inside``
    (bool [h, w]), each live answer with its window (uint8 [h, w], 255 = says nothing) and the
    consensus window."""

    bbox: tuple[int, int, int, int]
    inside: np.ndarray
    answers: list[tuple[TaskAnswer, np.ndarray]]
    consensus: np.ndarray


def _regions(session: Session, store: BlobStore, task: Task, image: Image) -> RegionMap:
    _, regions = region_set(
        session, store, image, task.region_kind, task.region_size, task.region_sigma
    )
    return regions


def review_view(session: Session, store: BlobStore, task: Task) -> ReviewView:
    image = session.get(Image, task.image_id)
    assert image is not None
    regions = _regions(session, store, task, image)
    ids = [int(r) for r in task.regions]
    y0, x0, y1, x1 = task_bbox(regions, ids)
    inside = np.isin(regions.labels[y0:y1, x0:x1], ids)
    rows = _live_answers(session, task.id)
    windows = [decode_index(store.get(r.blob_key)) for r in rows]
    agreed = (
        overlap.consensus(windows, inside)
        if windows
        else np.full(inside.shape, UNLABELLED, np.uint8)
    )
    return ReviewView((y0, x0, y1, x1), inside, list(zip(rows, windows, strict=True)), agreed)


def _own_review_lease(task: Task, user: User) -> None:
    if task.state != DISPUTED or task.leased_by != user.id:
        raise Conflict(
            f"task {task.id} is not under your review (it is {task.state}); lease one with "
            f"POST /projects/{task.project_id}/reviews/next"
        )


def heartbeat_review(task: Task, user: User, lease_seconds: int) -> Task:
    """Extend ``user``'s live review lease on ``task`` (locked by the caller) to
    ``lease_seconds`` from now. A lapsed one is not revived: another reviewer may hold the
    task by then, or may lease it at any moment (409; lease again)."""
    auth.require_role(user, Role.reviewer)
    _own_review_lease(task, user)
    assert task.lease_expires_at is not None
    now = _now()
    if task.lease_expires_at < now:
        raise Conflict(
            f"your review lease on task {task.id} has expired; lease it again with "
            f"POST /projects/{task.project_id}/reviews/next"
        )
    task.lease_expires_at = now + timedelta(seconds=lease_seconds)
    return task


def release_review(task: Task, user: User) -> Task:
    """Give ``task`` (locked by the caller) back to the review queue: its lease columns are
    cleared and it stays ``disputed``, leasable at once by another reviewer. A lapsed lease
    of ``user``'s that nobody took since may be released too (the same as letting it lapse)."""
    auth.require_role(user, Role.reviewer)
    _own_review_lease(task, user)
    task.leased_by, task.leased_at, task.lease_expires_at = None, None, None
    return task


def _write(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    reviewer: User,
    image: Image,
    bbox: tuple[int, int, int, int],
    where: np.ndarray,
    window: np.ndarray,
) -> LabelRevision:
    """A new revision of ``image``: the pixels ``where`` (over ``bbox``) set from ``window``."""
    revision = labels.save_window(
        session,
        store,
        image,
        bbox,
        where,
        window,
        source="review",
        author_id=reviewer.id,
        task_id=task.id,
    )
    count_labels(session, project)
    return revision


def decide(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    reviewer: User,
    decision: str,
    reason: str | None = None,
    correction: Submission | None = None,
) -> tuple[TaskReview, LabelRevision | None]:
    """Record ``reviewer``'s decision on ``task`` (locked by the caller) and carry it out;
    returns the review and the label revision it made (None for a rejection)."""
    auth.require_role(reviewer, Role.reviewer)
    if decision not in DECISIONS:
        raise Invalid(f"decision must be one of {', '.join(DECISIONS)}")
    if decision == "reject" and not reason:
        raise Invalid("a rejection needs a 'reason' the annotators will see")
    if (decision == "correct") != (correction is not None):
        raise Invalid("send a 'patch_png' (or 'classes') with 'correct', and only with it")
    _own_review_lease(task, reviewer)
    # The image row first, as every writer of its labels does (a read-modify-write of the mask).
    image = labels.lock_image(session, task.image_id)
    view = review_view(session, store, task)
    revision: LabelRevision | None = None
    if decision == "accept":
        decided = view.inside & (view.consensus != UNLABELLED)
        if not decided.any():
            raise Conflict(
                f"the consensus of task {task.id} labels no pixel (every pixel is tied); "
                "correct or reject it"
            )
        revision = _write(
            session, store, project, task, reviewer, image, view.bbox, decided, view.consensus
        )
        task.answered_pixels = int(np.count_nonzero(decided))
    elif decision == "correct":
        assert correction is not None
        answer = read_answer(
            task, _regions(session, store, task, image), len(project.classes), correction
        )
        revision = _write(
            session,
            store,
            project,
            task,
            reviewer,
            image,
            answer.bbox,
            answer.inside,
            answer.window,
        )
        task.answered_pixels = int(np.count_nonzero(answer.inside & (answer.window != UNLABELLED)))
    review = TaskReview(
        task_id=task.id,
        reviewer_id=reviewer.id,
        decision=decision,
        reason=reason,
        agreement=task.agreement,
        revision_id=revision.id if revision is not None else None,
    )
    session.add(review)
    session.flush()
    now = _now()
    for answer_row, _ in view.answers:
        answer_row.review_id = review.id
        if decision == "reject":
            answer_row.rejected_at = now
    task.leased_by, task.leased_at, task.lease_expires_at = None, None, None
    if decision == "reject":  # back to the queue for k fresh answers
        task.state = TaskState.queued.value
        task.answers = 0
        task.agreement, task.kappa_stats = None, None
        task.answered_pixels, task.clicks = None, None
        task.submitted_at, task.submitted_by = None, None
    else:
        task.state = TaskState.submitted.value
    return review, revision


@dataclass(frozen=True)
class Rejection:
    answer: TaskAnswer
    task: Task
    review: TaskReview


def rejections_of(
    session: Session, user: User, project_id: int | None = None, limit: int = 100
) -> list[Rejection]:
    """``user``'s rejected answers, newest first (of one project when ``project_id`` is given;
    the caller must be allowed to see it)."""
    if project_id is not None:
        auth.get_project_for(session, user, project_id)
    query = (
        select(TaskAnswer, Task, TaskReview)
        .join(Task, Task.id == TaskAnswer.task_id)
        .join(TaskReview, TaskReview.id == TaskAnswer.review_id)
        .where(TaskAnswer.user_id == user.id, TaskAnswer.rejected_at.is_not(None))
        .order_by(TaskAnswer.rejected_at.desc(), TaskAnswer.id.desc())
        .limit(limit)
    )
    if project_id is not None:
        query = query.where(Task.project_id == project_id)
    return [Rejection(a, t, r) for a, t, r in session.execute(query)]
