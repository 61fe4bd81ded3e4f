"""The project's own answer, live: what each round queued, what its answers cost, and whether
the queue found the model's errors better than the random controls hidden in it.

Read by ``GET /projects/{id}/rounds``. Every figure comes from the task rows (filled at
submit, :func:`activeseg.core.services.tasks.submit`); the statistics are the pure
:func:`activeseg.uncertainty.control.compare_error_rates`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.services.labels import current_mask
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import region_set
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Image, Project, Round, Split, Task, TaskState
from activeseg.uncertainty.control import compare_error_rates
from activeseg.uncertainty.regions import majority_pixels

PURITY_MAX_IMAGES = 200  # held-out images read for region purity (the first, by id)


def _comparison(rows: list[tuple[bool, int, int | None]], seed: int) -> dict[str, Any]:
    """``rows``: (control, answered pixels, wrong pixels) of answered tasks; tasks without a
    model (wrong pixels None) take no part."""
    arr = np.asarray([(c, t, w) for c, t, w in rows if w is not None], np.int64).reshape(-1, 3)
    sel, ctl = arr[arr[:, 0] == 0], arr[arr[:, 0] == 1]
    return compare_error_rates(sel[:, 2], sel[:, 1], ctl[:, 2], ctl[:, 1], seed=seed).as_dict()


# Only the columns the summaries need: a project can hold 100,000 tasks.
_COLUMNS = (
    Task.round_id,
    Task.control,
    Task.state,
    Task.answered_pixels,
    Task.model_wrong_pixels,
    Task.clicks,
)


def _task_rows(session: Session, project_id: int) -> list[Any]:
    return list(
        session.execute(
            select(*_COLUMNS)
            .where(Task.project_id == project_id, Task.round_id.is_not(None))
            .order_by(Task.id)  # the bootstrap resamples by position: keep it stable
        )
    )


def _totals(tasks: list[Any]) -> dict[str, Any]:
    """``tasks``: rows of ``_COLUMNS``."""
    answered = [
        t for t in tasks if t.state == TaskState.submitted.value and t.answered_pixels is not None
    ]
    return {
        "tasks": {
            "selected": sum(not t.control for t in tasks),
            "control": sum(t.control for t in tasks),
        },
        "answered": {
            "selected": sum(not t.control for t in answered),
            "control": sum(t.control for t in answered),
        },
        "labelled_pixels": int(sum(t.answered_pixels or 0 for t in answered)),
        "clicks": int(sum(t.clicks or 0 for t in answered)),
        "comparison_rows": [
            (t.control, int(t.answered_pixels or 0), t.model_wrong_pixels) for t in answered
        ],
    }


def round_summaries(session: Session, project_id: int) -> list[dict[str, Any]]:
    """One dict per round of ``project_id``, oldest first.

    Keys: ``number``, ``model_version_id``, ``measure``, ``strategy``, ``created_at``,
    ``pool_labelled_pixels_before`` (labelled pool pixels when the round was built),
    ``tasks`` and ``answered`` (``{"selected": n, "control": n}``), ``labelled_pixels`` and
    ``clicks`` (summed over answered tasks of both kinds), and ``comparison`` (see
    :class:`activeseg.uncertainty.control.ErrorRateComparison`: error rate of selected and of
    control tasks, their ratio, its 95% cluster-bootstrap interval and a verdict sentence).
    Day-one random rounds have no model, hence no comparison ("too few control answers").
    """
    return _round_summaries(session, project_id, _task_rows(session, project_id))


def _round_summaries(session: Session, project_id: int, tasks: list[Any]) -> list[dict[str, Any]]:
    rounds = list(
        session.scalars(select(Round).where(Round.project_id == project_id).order_by(Round.number))
    )
    by_round: dict[int, list[Any]] = defaultdict(list)
    for row in tasks:
        by_round[row.round_id].append(row)
    out: list[dict[str, Any]] = []
    for rnd in rounds:
        totals = _totals(by_round.get(rnd.id, []))
        rows = totals.pop("comparison_rows")
        out.append(
            {
                "number": rnd.number,
                "model_version_id": rnd.model_version_id,
                "measure": rnd.measure,
                "strategy": rnd.strategy,
                "created_at": rnd.created_at,
                "pool_labelled_pixels_before": rnd.labelled_pixels,
                **totals,
                "comparison": _comparison(rows, seed=rnd.number),
            }
        )
    return out


def cumulative_summary(session: Session, project_id: int) -> dict[str, Any]:
    """The same totals and comparison as a round's, pooled over every round so far."""
    return _cumulative(_task_rows(session, project_id))


def _cumulative(tasks: list[Any]) -> dict[str, Any]:
    totals = _totals(tasks)
    rows = totals.pop("comparison_rows")
    return {**totals, "comparison": _comparison(rows, seed=0)}


def summaries(session: Session, project_id: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``(round_summaries, cumulative_summary)`` from one read of the project's task rows."""
    tasks = _task_rows(session, project_id)
    return _round_summaries(session, project_id, tasks), _cumulative(tasks)


def region_purity(session: Session, store: BlobStore, project: Project) -> dict[str, Any]:
    """How well the project's regions follow its classes, on the held-out (val and test)
    images whose masks are exact: the pixel-weighted share of labelled pixels that carry
    their region's majority label, with the project's current region settings.

    1.0 means a one-click dominant-label answer loses nothing; 0.7 means 30% of the pixels an
    annotator "labels" that way are labelled wrongly. Reads at most ``PURITY_MAX_IMAGES``
    images; region maps missing so far are computed and stored (as the queue would).

    Returns:
        ``{"purity": float | None, "images": int, "pixels": int, "region_kind": ...,
        "region_size": ..., "slic_sigma": ...}``; ``purity`` is None without held-out labels.
    """
    settings = project_settings(project)
    images = list(
        session.scalars(
            select(Image)
            .where(
                Image.project_id == project.id,
                Image.split.in_((Split.val.value, Split.test.value)),
                Image.labelled_pixels > 0,
            )
            .order_by(Image.id)
            .limit(PURITY_MAX_IMAGES)
        )
    )
    majority = labelled = 0
    for image in images:
        _, regions = region_set(
            session, store, image, settings.region_kind, settings.region_size, settings.slic_sigma
        )
        mask = current_mask(session, store, image)
        m, n = majority_pixels(regions.labels, mask, regions.n_regions)
        majority += m
        labelled += n
    return {
        "purity": majority / labelled if labelled else None,
        "images": len(images),
        "pixels": labelled,
        "region_kind": settings.region_kind,
        "region_size": settings.region_size,
        "slic_sigma": settings.slic_sigma if settings.region_kind != "grid" else None,
    }


def rounds_report(session: Session, store: BlobStore, project: Project) -> dict[str, Any]:
    """Everything ``GET /projects/{id}/rounds`` shows: the rounds, the cumulative line and
    the region purity. One read transaction (the caller's)."""
    data, cumulative = summaries(session, project.id)
    return {
        "data": data,
        "count": len(data),
        "cumulative": cumulative,
        "region_purity": region_purity(session, store, project),
    }
