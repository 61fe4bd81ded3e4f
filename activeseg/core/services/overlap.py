"""Overlap: with ``overlap = k > 1`` a task is answered by k different annotators, and its
label is their consensus.

- **Who answers.** The lease hands a task only to an annotator who has not answered it
  (``task_answers`` is unique per (task, user)), so nobody answers a region twice, whatever
  leases lapse or are released. After each answer short of k the task goes back to the queue.
- **Consensus** (:func:`consensus`): per pixel, the class most answers give it (a ``classes``
  answer gives its region's class to every pixel of the region, so this is the per-region
  majority too). An answer's 255 says nothing and does not vote. **Tie rule:** a pixel where
  two or more classes tie for the most votes, or that no answer labels, stays unlabelled (255).
- **Agreement** (:func:`agreement`): the share of the regions' pixels labelled by any answer on
  which every answer gives the same class. Per answer: the share of the pixels it labels that
  equal the consensus. Project-wide: Fleiss' kappa over the pixels of every finished task
  (:func:`kappa_stats`, :func:`fleiss_kappa`), each answer's 255 counted as one more category.
- **Held back.** A task whose agreement is below the project's ``agreement_threshold`` ends
  ``disputed``: its consensus is not written, so training never sees it. Otherwise the
  consensus becomes one label revision (source ``consensus``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import Conflict
from activeseg.core.imaging import decode_index, encode_png
from activeseg.core.services import labels
from activeseg.core.services.auto_retrain import count_labels
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    LabelRevision,
    Project,
    Task,
    TaskAnswer,
    TaskState,
    User,
)
from activeseg.uncertainty.labels import UNLABELLED


def consensus(windows: list[np.ndarray], inside: np.ndarray) -> np.ndarray:
    """Per-pixel plurality of the answers ``windows`` (uint8 [h, w] each, 255 = no vote) over
    ``inside`` (bool [h, w]); ties and unvoted pixels are 255, and so is everything outside."""
    stack = np.stack(windows)
    classes = np.unique(stack[:, inside])
    classes = classes[classes != UNLABELLED]
    out = np.full(inside.shape, UNLABELLED, np.uint8)
    if classes.size == 0:
        return out
    votes = (stack[None, :, :, :] == classes[:, None, None, None]).sum(axis=1)  # [n, h, w]
    best = votes.argmax(axis=0)
    top = votes.max(axis=0)
    tied = (votes == top[None]).sum(axis=0) > 1
    decided = inside & (top > 0) & ~tied
    out[decided] = classes[best[decided]]
    return out


def agreement(windows: list[np.ndarray], inside: np.ndarray) -> float:
    """Share of the pixels inside that any answer labels on which all answers give the same
    class (1.0 when no answer labels any pixel: nothing to disagree on)."""
    stack = np.stack(windows)[:, inside]
    labelled = (stack != UNLABELLED).any(axis=0)
    if not labelled.any():
        return 1.0
    same = (stack == stack[:1]).all(axis=0) & (stack[0] != UNLABELLED)
    return float(same[labelled].mean())


def answer_agreement(window: np.ndarray, agreed: np.ndarray, inside: np.ndarray) -> float | None:
    """Share of the pixels an answer labels (inside) that equal the consensus; None if it
    labels none."""
    mine = inside & (window != UNLABELLED)
    if not mine.any():
        return None
    return float((window[mine] == agreed[mine]).mean())


def kappa_stats(windows: list[np.ndarray], inside: np.ndarray) -> dict[str, Any]:
    """A task's sufficient statistics of Fleiss' kappa: its items are the pixels inside, its
    raters the k answers, its categories the classes plus 255. ``items``: N; ``p_sum``:
    sum over items of P_i = (sum_j n_ij^2 - n) / (n (n - 1)); ``counts``: category -> sum of
    n_ij; ``raters``: n."""
    stack = np.stack(windows)[:, inside]  # [n, N]
    n, items = stack.shape
    values, per_category = np.unique(stack, return_counts=True)
    squares = 0
    for value in values:
        n_ij = (stack == value).sum(axis=0)
        squares += int((n_ij.astype(np.int64) ** 2).sum())
    p_sum = (squares - n * items) / (n * (n - 1)) if n > 1 else 0.0
    return {
        "items": int(items),
        "raters": int(n),
        "p_sum": float(p_sum),
        "counts": {str(int(v)): int(c) for v, c in zip(values, per_category, strict=True)},
    }


def fleiss_kappa(stats: Iterable[dict[str, Any]]) -> float | None:
    """Fleiss' kappa over the tasks whose :func:`kappa_stats` are ``stats`` (all with the same
    number of raters); None without items, or when chance agreement is total."""
    items, p_sum, raters = 0, 0.0, None
    counts: dict[str, int] = {}
    for s in stats:
        if raters is not None and s["raters"] != raters:
            raise ValueError("Fleiss' kappa needs the same number of answers for every task")
        raters = s["raters"]
        items += s["items"]
        p_sum += s["p_sum"]
        for category, c in s["counts"].items():
            counts[category] = counts.get(category, 0) + c
    if not items or raters is None or raters < 2:
        return None
    p_bar = p_sum / items
    shares = np.array(list(counts.values()), np.float64) / (items * raters)
    p_e = float((shares**2).sum())
    if p_e >= 1.0:
        return None
    return (p_bar - p_e) / (1.0 - p_e)


# --- persistence ------------------------------------------------------------------------


@dataclass(frozen=True)
class Answered:
    """What one overlapping answer did: ``revision`` is the consensus revision when this was
    the k-th answer and the answers agree enough, else None."""

    answer: TaskAnswer
    created: bool
    revision: LabelRevision | None


def already_answered(session: Session, task: Task, user: User) -> TaskAnswer | None:
    """``user``'s live answer to ``task``: one a reviewer rejected no longer counts."""
    return session.scalar(
        select(TaskAnswer).where(
            TaskAnswer.task_id == task.id,
            TaskAnswer.user_id == user.id,
            TaskAnswer.rejected_at.is_(None),
        )
    )


def repeat_or_refuse(
    store: BlobStore, task: Task, done: TaskAnswer, window: np.ndarray, inside: np.ndarray
) -> Answered:
    """The caller answered this task before: the same answer again is a retry (nothing new),
    another one is refused (one answer per annotator and region)."""
    stored = decode_index(store.get(done.blob_key))
    if stored.shape != window.shape or not np.array_equal(stored[inside], window[inside]):
        raise Conflict(
            f"you already answered task {task.id}; with overlap each annotator answers a "
            "region once, and the first answer stands"
        )
    return Answered(done, False, None)


def add_answer(
    session: Session,
    store: BlobStore,
    project: Project,
    task: Task,
    user: User,
    *,
    bbox: tuple[int, int, int, int],
    inside: np.ndarray,
    window: np.ndarray,
    clicks: int,
    k: int,
    threshold: float,
) -> Answered:
    """Store ``user``'s answer to ``task``; with the k-th answer, decide the consensus. The
    task row is locked by the caller."""
    now = datetime.now(UTC)
    row = TaskAnswer(
        task_id=task.id,
        user_id=user.id,
        blob_key=store.put(encode_png(window)),
        answered_pixels=int(np.count_nonzero(inside & (window != UNLABELLED))),
        clicks=clicks,
        leased_at=task.leased_at if task.leased_by == user.id else None,
        submitted_at=now,
    )
    session.add(row)
    session.flush()
    task.answers = (task.answers or 0) + 1
    task.leased_by, task.leased_at, task.lease_expires_at = None, None, None
    if task.answers < k:
        task.state = TaskState.queued.value  # back to the queue for the next annotator
        return Answered(row, True, None)
    rows = list(
        session.scalars(
            select(TaskAnswer)
            .where(TaskAnswer.task_id == task.id, TaskAnswer.rejected_at.is_(None))
            .order_by(TaskAnswer.id)
        )
    )
    windows = [decode_index(store.get(r.blob_key)) for r in rows]
    agreed = consensus(windows, inside)
    for r, w in zip(rows, windows, strict=True):
        r.agreement = answer_agreement(w, agreed, inside)
    task.agreement = agreement(windows, inside)
    task.kappa_stats = kappa_stats(windows, inside)
    task.answered_pixels = int(np.count_nonzero(agreed != UNLABELLED))
    task.clicks = sum(r.clicks for r in rows)
    task.submitted_at = now
    task.submitted_by = user.id
    if task.agreement < threshold or not (agreed != UNLABELLED).any():
        task.state = TaskState.disputed.value  # held back from training
        return Answered(row, True, None)
    image = labels.lock_image_and_mask(session, task.image_id)
    decided = inside & (agreed != UNLABELLED)
    revision = labels.save_window(
        session,
        store,
        image,
        bbox,
        decided,
        agreed,
        source="consensus",
        author_id=None,
        task_id=task.id,
    )
    task.state = TaskState.submitted.value
    count_labels(session, project)
    return Answered(row, True, revision)


def project_agreement(session: Session, project: Project, k: int) -> dict[str, Any]:
    """Fleiss' kappa and mean pixel agreement over the project's finished tasks with k
    answers, and the number of tasks held back as disputed."""
    rows = session.execute(
        select(Task.kappa_stats, Task.agreement, Task.state).where(
            Task.project_id == project.id, Task.kappa_stats.is_not(None)
        )
    ).all()
    same_k = [r for r in rows if r.kappa_stats.get("raters") == k]
    agreements = [r.agreement for r in same_k if r.agreement is not None]
    return {
        "overlap": k,
        "tasks": len(same_k),
        "disputed": sum(1 for r in same_k if r.state == TaskState.disputed.value),
        "pixel_agreement": float(np.mean(agreements)) if agreements else None,
        "fleiss_kappa": fleiss_kappa(r.kappa_stats for r in same_k),
    }
