"""Per-annotator statistics of a project: who answered how many tasks, how fast, how often
they skipped.

Where an answer is kept. A project with ``overlap = 1`` keeps its one answer in the task row
(``tasks.submitted_by``, ``leased_at``, ``submitted_at``, ``answered_pixels``). With
``overlap = k > 1`` each of the k answers is a ``task_answers`` row of its own (user, lease
start, submit time, pixels it labels), and the task row repeats only the last one (its
``answered_pixels`` are then the consensus's, not anybody's answer). The rule, per answer:

* every ``task_answers`` row is one answer of its ``user_id``;
* a *submitted* task row is one answer of its ``submitted_by`` **unless** that user has a
  ``task_answers`` row for the task: then the task row only repeats that answer (the k-th
  answer of an overlap task, or one decided by a reviewer) and is not counted again. So a
  project that went from overlap 1 to k (or back) counts every answer once, from wherever it
  was stored; a person who answered a task under overlap k and answered it again after the
  project went back to overlap 1 counts that task once (their ``task_answers`` row);
* a *skip* is always the task row's (``state = skipped``, ``submitted_by``): overlap keeps no
  row for a skip.

A **rejected** answer (a reviewer's ``reject``, ``task_answers.rejected_at``) counts as done:
its time and pixels were work done, whatever became of it; ``rejections`` says how many of a
person's answers were rejected. Its author may answer the region again, and that new answer
counts as another one.

What a row counts (all within the optional period ``[since, until)``):

* an *answer* is a task submitted or skipped by the user, counted when its ``submitted_at``
  (the time of the submit or the skip) lies in the period;
* the *time of an answer* is lease to submit: its ``leased_at`` -> ``submitted_at``. On a task
  row ``leased_at`` is set by every lease (:func:`tasks.lease_next`) and cleared when a lease
  ends without an answer (release, expiry), and a submit keeps it; so on a submitted task it
  is the start of the lease the answer was given under, whatever leases came before it (only
  the submitter's own lease counts: ``leased_by = submitted_by``). An overlap answer copies
  that lease start into its ``task_answers`` row when it was given under the user's own lease.
  Time spent under earlier, released or lapsed leases is not counted. An answer given after
  its lease lapsed and went back to the queue (an accepted late submit) has no lease start
  left: it counts as submitted but has no time (``timed_tasks`` says how many have one).
  Skipped tasks count in the skip rate, not in the times;
* *pixels* are the pixels the answer labels (``answered_pixels`` of the task row or of the
  ``task_answers`` row), never a consensus's;
* *activity* is a lease started (a task leased by the user, ``tasks.leased_at``, or the lease
  an overlap answer was given under, ``task_answers.leased_at``) or an answer given; first
  and last activity are the earliest and latest of these in the period. A lease that ended
  without an answer (released, lapsed) leaves no trace: it is not seen, and neither is a user
  whose only work was such leases. A review lease a reviewer holds now is a lease started.

Percentiles are computed here, in Python, over the durations fetched by streamed queries
(8 bytes per timed answer of the period): PostgreSQL has ``percentile_cont`` but SQLite has
nothing like it, and both databases must give the same answers. The definition is linear
interpolation between closest ranks (numpy's default, the same as ``percentile_cont``):
for sorted durations ``x[0..n-1]`` and ``q`` in [0, 1], ``h = (n - 1) q`` and the percentile is
``x[floor h] + (h - floor h) (x[floor h + 1] - x[floor h])``. Counts, sums and first/last
times are GROUP BYs in SQL, one over the task rows and one over ``task_answers``, added up here.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session
from sqlalchemy.sql import ColumnElement

from activeseg.core.errors import Invalid
from activeseg.core.services.auth import has_role
from activeseg.core.tables import (
    Project,
    ProjectMember,
    Role,
    Task,
    TaskAnswer,
    TaskReview,
    TaskState,
    User,
)

_Query = TypeVar("_Query", bound="Select[*tuple[Any, ...]]")
SUBMITTED, SKIPPED = TaskState.submitted.value, TaskState.skipped.value
_STREAM_ROWS = 5_000  # rows per fetch of the durations query
_DIGITS = 3  # seconds and rates are rounded to 3 decimals (milliseconds for times)
# one GROUP BY row of answers: (user, state, count, pixels, first, last submit) and of leases:
# (user, first, last lease start)
_Answers = tuple[int | None, str, int, int | None, datetime | None, datetime | None]
_Leases = tuple[int | None, datetime | None, datetime | None]


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of ascending ``ordered`` (not empty), interpolated
    linearly between closest ranks: numpy's default method, PostgreSQL's
    ``percentile_cont``."""
    if not ordered:
        raise ValueError("percentile of no values")
    h = (len(ordered) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (h - lo) * (ordered[hi] - ordered[lo])


def as_utc(moment: datetime | None) -> datetime | None:
    """An aware UTC datetime; a naive one is taken to be UTC already."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


@dataclass
class AnnotatorStats:
    """One user's row. ``consensus_agreement`` is None without finished overlapping answers;
    ``rejections`` (answers a reviewer rejected) and ``reviewer_agreement`` (share of the
    reviewed answers accepted) are None when no answer of theirs was reviewed in the period."""

    user_id: int
    name: str
    role: str
    tasks_submitted: int = 0
    tasks_skipped: int = 0
    skip_rate: float | None = None  # skipped / (submitted + skipped); None with no answer
    timed_tasks: int = 0  # submitted tasks with a known lease-to-submit time
    median_seconds: float | None = None
    p90_seconds: float | None = None
    labelled_pixels: int = 0  # pixels answered over all submitted tasks of the period
    labels_per_hour: float | None = None  # answered pixels of the timed tasks per hour of them
    tasks_per_hour: float | None = None  # timed tasks per hour of lease-to-submit time
    first_activity: datetime | None = None
    last_activity: datetime | None = None
    consensus_agreement: float | None = None
    reviewer_agreement: float | None = None
    rejections: int | None = None


def _in_period(
    query: _Query,
    column: ColumnElement[datetime | None] | InstrumentedAttribute[datetime | None],
    since: datetime | None,
    until: datetime | None,
) -> _Query:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


@dataclass
class _Timing:
    """One user's timed answers: lease-to-submit seconds, and their answered pixels."""

    seconds: array[float] = field(default_factory=lambda: array("d"))
    pixels: int = 0


def _timed(
    rows: Iterable[tuple[int | None, datetime | None, datetime | None, int | None]],
) -> dict[int, _Timing]:
    """Per user: the durations (seconds) and answered pixels of their timed answers."""
    timings: dict[int, _Timing] = {}
    for user_id, leased_at, submitted_at, pixels in rows:
        assert user_id is not None and leased_at is not None and submitted_at is not None
        t = timings.get(user_id)
        if t is None:
            t = timings[user_id] = _Timing()
        # API processes on several machines stamp these: a clock a little behind another's
        # could make a duration negative; it is no time at all.
        t.seconds.append(max(0.0, (submitted_at - leased_at).total_seconds()))
        t.pixels += pixels or 0  # NULL: answered before pixel counts were kept
    return timings


def annotator_stats(
    session: Session,
    project: Project,
    viewer: User,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[AnnotatorStats]:
    """One row per user who leased or answered tasks of ``project`` in the period, ordered by
    name. Engineers and admins get every such user plus every project member (a member
    without activity has a row of zeros); an annotator or a reviewer gets their own row only.

    ``viewer`` must already be allowed to see the project (:func:`auth.get_project_for`)."""
    since, until = as_utc(since), as_utc(until)
    if since is not None and until is not None and since >= until:
        raise Invalid("'since' must be before 'until'")
    everyone = has_role(viewer, Role.engineer)

    def scoped(query: _Query, who: InstrumentedAttribute[int | None]) -> _Query:
        query = query.where(Task.project_id == project.id)
        return query if everyone else query.where(who == viewer.id)

    # A submitted task row stands for an answer of its own only if its submitter has no
    # task_answers row for the task (else it repeats that overlap answer: module docstring).
    repeats = (
        select(TaskAnswer.id)
        .where(TaskAnswer.task_id == Task.id, TaskAnswer.user_id == Task.submitted_by)
        .exists()
    )
    own_row = or_(Task.state == SKIPPED, ~repeats)
    row_answers = _in_period(
        scoped(
            select(
                Task.submitted_by,
                Task.state,
                func.count(),
                func.sum(Task.answered_pixels),
                func.min(Task.submitted_at),
                func.max(Task.submitted_at),
            ).where(Task.state.in_((SUBMITTED, SKIPPED)), Task.submitted_by.is_not(None), own_row),
            Task.submitted_by,
        ).group_by(Task.submitted_by, Task.state),
        Task.submitted_at,
        since,
        until,
    )
    overlap_answers = _in_period(
        scoped(
            select(
                TaskAnswer.user_id,
                func.count(),
                func.sum(TaskAnswer.answered_pixels),
                func.min(TaskAnswer.submitted_at),
                func.max(TaskAnswer.submitted_at),
            ).join(Task, Task.id == TaskAnswer.task_id),
            TaskAnswer.user_id,
        ).group_by(TaskAnswer.user_id),
        TaskAnswer.submitted_at,
        since,
        until,
    )
    task_leases = _in_period(
        scoped(
            select(Task.leased_by, func.min(Task.leased_at), func.max(Task.leased_at)).where(
                Task.leased_by.is_not(None), Task.leased_at.is_not(None)
            ),
            Task.leased_by,
        ).group_by(Task.leased_by),
        Task.leased_at,
        since,
        until,
    )
    # The lease an overlap answer was given under: the task row forgets it with the answer.
    answer_leases = _in_period(
        scoped(
            select(
                TaskAnswer.user_id, func.min(TaskAnswer.leased_at), func.max(TaskAnswer.leased_at)
            )
            .join(Task, Task.id == TaskAnswer.task_id)
            .where(TaskAnswer.leased_at.is_not(None)),
            TaskAnswer.user_id,
        ).group_by(TaskAnswer.user_id),
        TaskAnswer.leased_at,
        since,
        until,
    )
    # The lease an answer was given under is the submitter's own (a late submit after the
    # lease went back to the queue left leased_by and leased_at empty, and an overlap answer
    # given so has no leased_at).
    task_durations = _in_period(
        scoped(
            select(
                Task.submitted_by, Task.leased_at, Task.submitted_at, Task.answered_pixels
            ).where(
                Task.state == SUBMITTED,
                Task.leased_at.is_not(None),
                Task.leased_by == Task.submitted_by,
                ~repeats,
            ),
            Task.submitted_by,
        ),
        Task.submitted_at,
        since,
        until,
    ).execution_options(yield_per=_STREAM_ROWS)
    answer_durations = _in_period(
        scoped(
            select(
                TaskAnswer.user_id,
                TaskAnswer.leased_at,
                TaskAnswer.submitted_at,
                TaskAnswer.answered_pixels,
            )
            .join(Task, Task.id == TaskAnswer.task_id)
            .where(TaskAnswer.leased_at.is_not(None)),
            TaskAnswer.user_id,
        ),
        TaskAnswer.submitted_at,
        since,
        until,
    ).execution_options(yield_per=_STREAM_ROWS)

    rows: dict[int, AnnotatorStats] = {}
    users_query = select(User.id, User.name, User.role)
    if everyone:
        member_ids = select(ProjectMember.user_id).where(ProjectMember.project_id == project.id)
        for uid, name, role in session.execute(users_query.where(User.id.in_(member_ids))):
            rows[uid] = AnnotatorStats(user_id=uid, name=name, role=role)
    else:
        rows[viewer.id] = AnnotatorStats(user_id=viewer.id, name=viewer.name, role=viewer.role)

    # The task rows' answers, then the overlap ones; the task rows' leases, then the answers'.
    answer_rows: list[_Answers] = [
        (uid, state, n, pixels, first, last)
        for uid, state, n, pixels, first, last in session.execute(row_answers)
    ] + [
        (uid, SUBMITTED, n, pixels, first, last)
        for uid, n, pixels, first, last in session.execute(overlap_answers)
    ]
    lease_rows: list[_Leases] = [
        *((uid, first, last) for uid, first, last in session.execute(task_leases)),
        *((uid, first, last) for uid, first, last in session.execute(answer_leases)),
    ]
    # The WHERE clauses exclude NULL users and times: the `or 0` / asserts only tell mypy.
    active = {uid or 0 for uid, *_ in answer_rows} | {uid or 0 for uid, *_ in lease_rows}
    missing = sorted(active - rows.keys())
    if missing:
        for uid, name, role in session.execute(users_query.where(User.id.in_(missing))):
            rows[uid] = AnnotatorStats(user_id=uid, name=name, role=role)

    for submitter, state, n, pixels, first, last in answer_rows:
        row = rows[submitter or 0]
        if state == SUBMITTED:
            row.tasks_submitted += n
            row.labelled_pixels += int(pixels or 0)  # NULL: before pixel counts were kept
        else:
            row.tasks_skipped += n
        _note_activity(row, first, last)
    for holder, first, last in lease_rows:
        _note_activity(rows[holder or 0], first, last)
    timings = _timed(session.execute(task_durations))
    for uid, timing in _timed(session.execute(answer_durations)).items():
        mine = timings.setdefault(uid, _Timing())
        mine.seconds.extend(timing.seconds)
        mine.pixels += timing.pixels
    for uid, timing in timings.items():
        _fill_times(rows[uid], timing)
    # overlap > 1: each answer's agreement with its task's consensus, averaged per annotator.
    agreement = _in_period(
        scoped(
            select(TaskAnswer.user_id, func.avg(TaskAnswer.agreement))
            .join(Task, Task.id == TaskAnswer.task_id)
            .where(TaskAnswer.agreement.is_not(None)),
            TaskAnswer.user_id,
        ).group_by(TaskAnswer.user_id),
        TaskAnswer.submitted_at,
        since,
        until,
    )
    for uid, mean in session.execute(agreement):
        if uid in rows:
            rows[uid].consensus_agreement = round(float(mean), _DIGITS)
    # The review stage: of the person's answers a reviewer decided in the period, how many
    # were rejected, and the share accepted (a correction counts as not accepted).
    reviewed = _in_period(
        scoped(
            select(TaskAnswer.user_id, TaskReview.decision, func.count())
            .join(TaskReview, TaskReview.id == TaskAnswer.review_id)
            .join(Task, Task.id == TaskAnswer.task_id),
            TaskAnswer.user_id,
        ).group_by(TaskAnswer.user_id, TaskReview.decision),
        TaskReview.created_at,
        since,
        until,
    )
    decided: dict[int, dict[str, int]] = {}
    for uid, decision, n in session.execute(reviewed):
        decided.setdefault(uid, {})[decision] = n
    for uid, counts in decided.items():
        if uid in rows:
            rows[uid].rejections = counts.get("reject", 0)
            share = counts.get("accept", 0) / sum(counts.values())
            rows[uid].reviewer_agreement = round(share, _DIGITS)
    for row in rows.values():
        answered = row.tasks_submitted + row.tasks_skipped
        row.skip_rate = round(row.tasks_skipped / answered, _DIGITS) if answered else None
    return sorted(rows.values(), key=lambda r: (r.name, r.user_id))


def _note_activity(row: AnnotatorStats, first: datetime | None, last: datetime | None) -> None:
    """Widen the row's first/last activity to take in ``[first, last]``."""
    assert first is not None and last is not None
    if row.first_activity is None or first < row.first_activity:
        row.first_activity = first
    if row.last_activity is None or last > row.last_activity:
        row.last_activity = last


def _fill_times(row: AnnotatorStats, timing: _Timing) -> None:
    ordered = sorted(timing.seconds)
    row.timed_tasks = len(ordered)
    row.median_seconds = round(percentile(ordered, 0.5), _DIGITS)
    row.p90_seconds = round(percentile(ordered, 0.9), _DIGITS)
    seconds = math.fsum(ordered)
    if seconds > 0:
        row.labels_per_hour = round(timing.pixels * 3600 / seconds, _DIGITS)
        row.tasks_per_hour = round(len(ordered) * 3600 / seconds, _DIGITS)
