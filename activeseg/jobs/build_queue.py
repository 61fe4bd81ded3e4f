"""build_queue: select the next batch of regions and queue them as annotation tasks.

Candidates are the regions of pool images that are not fully labelled and not already queued
or leased. With an active model they are ranked by the project's measure (scores of that
model version); without one (day one) the batch is drawn at random. Selection itself is the
uncertainty core's ``select_regions`` (stochastic batch acquisition by default, with a cap
per image). Queued tasks of another model version are marked stale and replaced; leased
tasks are left alone.

With a model, the round is merged from the candidates each scoring chunk stored
(:func:`activeseg.core.services.scores.plan_merged`): the best keys of every chunk, the
regions busy or labelled since scoring filtered out, so the job reads a few rows per chunk,
never every score nor any image's region map or mask. When the chunks cannot decide the round
(filtering went past what a chunk kept, settings changed since scoring, ``softrank``) it is
computed from every score row (``plan_full``); both give the same queue. The selection keys
and the control draw are hashed from (project seed, model version, image, region)
(:func:`activeseg.uncertainty.selection.hashed_gumbel`): a second round of one version
continues the same draw without the regions already queued.

The lease order is the sampled order: a task's priority is minus its position, so the first
region the selection returned is leased first and a round cut short keeps what the sampling
decided (not a top-k of the raw scores). In a round with a model,
``round(batch_size * control_fraction)`` of the batch are controls drawn uniformly at random
from the candidates not selected, placed at random positions (``Task.control``; annotators
are not told) drawn from ``np.random.default_rng([project seed, round number])``. A day-one
round draws everything from that stream. Each task keeps the queuing model's majority class
of its region (``Task.proposed_classes``).

After the round is committed, the scores of versions no longer needed are pruned
(:func:`activeseg.core.services.scores.prune_scores`).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import func, select

from activeseg.core.project_config import ProjectSettings
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.projects import project_settings
from activeseg.core.services.queue import Pick, RoundDraft, commit_round
from activeseg.core.services.regions import (
    ensure_region_map,
    region_count_warning,
    region_sigma,
)
from activeseg.core.services.scores import (
    QueueParams,
    busy_by_image,
    plan_queue,
    prune_scores,
)
from activeseg.core.services.tasks import open_region_keys
from activeseg.core.tables import Image, ModelVersion, Project, Round, Split
from activeseg.jobs.notify import notify
from activeseg.jobs.runner import JobContext
from activeseg.uncertainty.measures import get_measure
from activeseg.uncertainty.pooling import labelled_fraction
from activeseg.uncertainty.selection import draw_controls, interleave, select_regions

log = logging.getLogger(__name__)
MAX_WARNINGS = 20  # region-count warnings kept in the job result (the total is kept too)


def plan_round(
    scores: np.ndarray,
    image_index: np.ndarray,
    centroids: np.ndarray,
    settings: ProjectSettings,
    strategy: str,
    n_control: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The lease order of a round drawn from one stream (a day-one round, and the old
    design's plan that ``benchmarks/score_scale.py`` compares with): ``batch_size -
    n_control`` regions selected by ``strategy``, ``n_control`` controls drawn at random from
    the rest, interleaved at random.

    Args:
        scores: float ``[N]`` candidate scores; image_index: int ``[N]`` image per candidate;
        centroids: float ``[N, 2]``; rng: the round's stream (``[seed, round number]``).

    Returns:
        ``(order, is_control)``: int64 ``[B]`` candidate indices in lease order, bool ``[B]``.
    """
    picked = select_regions(
        scores,
        image_index,
        settings.batch_size - n_control,
        strategy=strategy,  # type: ignore[arg-type]
        per_image_cap=settings.per_image_cap,
        min_distance=settings.min_distance,
        centroids=centroids,
        beta=settings.beta,
        seed=rng,
    )
    controls = draw_controls(
        scores, image_index, picked, n_control, per_image_cap=settings.per_image_cap, seed=rng
    )
    return interleave(picked, controls, seed=rng)


def build_queue(
    ctx: JobContext, model_version_id: int | None = None, strategy: str | None = None
) -> dict[str, Any]:
    state = _round_state(ctx, model_version_id)
    if isinstance(state, Round):  # redelivered after the round was committed
        return {"round": state.number, "tasks": state.n_tasks}
    project, settings, mv, busy, number = state
    measure = settings.measure
    single = mv is not None and mv.config.get("method") == "single"
    if single and get_measure(measure).needs_samples:
        raise ValueError(f"measure {measure!r} needs an ensemble or MC-dropout model")
    use_strategy = strategy or (settings.strategy if mv is not None else "random")
    rng = np.random.default_rng([settings.seed, number])
    if mv is None:
        picks, is_control, extra = _day_one(ctx, project.id, settings, busy, rng)
    else:
        picks, is_control, extra = _from_scores(ctx, mv.id, settings, use_strategy, busy, rng)
    ctx.progress(0.8, f"planned {len(picks)} tasks")
    draft = RoundDraft(
        project_id=project.id,
        number=number,
        job_id=ctx.job_id,
        model_version_id=mv.id if mv is not None else None,
        measure=measure if mv is not None else "random",
        strategy=use_strategy,
        region=QueueParams.from_settings(settings).region,
        picks=picks,
        is_control=is_control.tolist(),
    )
    stale = commit_round(ctx.db, draft)
    notify(ctx, "queue.refilled", {"round": number, "tasks": len(picks)})
    result: dict[str, Any] = {
        "round": number,
        "tasks": len(picks),
        "controls": int(is_control.sum()),
        **extra,
        "stale": stale,
        "strategy": use_strategy,
        "seed": settings.seed,
    }
    pruned = _prune(ctx, project.id)
    if pruned is not None:
        result["pruned"] = pruned
    return result


def _round_state(
    ctx: JobContext, model_version_id: int | None
) -> Round | tuple[Project, ProjectSettings, ModelVersion | None, set[tuple[int, str]], int]:
    """The round this job already committed, or what a new round starts from: the project,
    its settings, the version to queue with (None: day one), the busy regions and the
    round's number."""
    with ctx.db.read_session() as s:
        done = s.scalar(select(Round).where(Round.job_id == ctx.job_id))
        if done is not None:
            return done
        project = s.get(Project, ctx.project_id)
        assert project is not None
        settings = project_settings(project)
        mv_id = model_version_id or project.active_model_id
        mv = s.get(ModelVersion, mv_id) if mv_id else None
        busy = open_region_keys(s, project.id, mv.id if mv is not None else None)
        number = (
            s.scalar(select(func.max(Round.number)).where(Round.project_id == project.id)) or 0
        ) + 1
    return project, settings, mv, busy, number


def _from_scores(
    ctx: JobContext,
    mv_id: int,
    settings: ProjectSettings,
    strategy: str,
    busy: set[tuple[int, str]],
    rng: np.random.Generator,
) -> tuple[list[Pick], np.ndarray, dict[str, Any]]:
    """A round from the version's scores (merged from the chunks' candidates, or full)."""
    params = QueueParams.from_settings(settings, strategy)
    plan = plan_queue(ctx.db, ctx.store, mv_id, params, busy_by_image(busy))
    picks, is_control = plan.lease_order(rng)
    extra: dict[str, Any] = {
        "candidates": plan.candidates,
        "path": plan.path,
        "chunks": plan.chunks,
    }
    if plan.recomputed:
        extra["recomputed_images"] = plan.recomputed
    if plan.reason:
        extra["full_because"] = plan.reason
    return picks, is_control, extra


def _prune(ctx: JobContext, project_id: int) -> dict[str, int] | None:
    """Prune the scores of versions no longer needed, after the round was committed; None
    when that failed (logged)."""
    try:
        return prune_scores(ctx.db, ctx.store, project_id)
    except Exception:  # noqa: BLE001 - housekeeping: the periodic sweep prunes again
        log.warning("pruning the scores of project %s failed", project_id, exc_info=True)
        return None


def _day_one(
    ctx: JobContext,
    project_id: int,
    settings: ProjectSettings,
    busy: set[tuple[int, str]],
    rng: np.random.Generator,
) -> tuple[list[tuple[int, int, int]], np.ndarray, dict[str, Any]]:
    """A round without a model: every open region of the pool, drawn at random from the
    round's stream. Reads every pool image's region map and mask (computing missing maps)."""
    with ctx.db.read_session() as s:
        images = list(
            s.execute(
                with_mask_key(
                    select(Image)
                    .where(
                        Image.project_id == project_id,
                        Image.split == Split.pool.value,
                        Image.labelled_fraction < 1.0,
                    )
                    .order_by(Image.id)
                )
            ).all()
        )
    sigma = region_sigma(settings.region_kind, settings.slic_sigma)
    warnings: list[str] = []
    cand_image: list[int] = []
    cand_region: list[int] = []
    centroids: list[np.ndarray] = []
    for n, (image, mask_key) in enumerate(images):
        regions = ensure_region_map(
            ctx.db, ctx.store, image, settings.region_kind, settings.region_size, sigma
        )
        mask = read_mask(ctx.store, image, mask_key)
        warning = region_count_warning(image, regions, settings.region_kind, settings.region_size)
        if warning is not None:
            warnings.append(warning)
        frac = labelled_fraction(mask, regions.labels, regions.n_regions)
        cents = regions.centroids
        for r in range(regions.n_regions):
            if frac[r] >= 1.0 or (image.id, str(r)) in busy:
                continue
            cand_image.append(image.id)
            cand_region.append(r)
            centroids.append(cents[r])
        ctx.progress(0.8 * (n + 1) / max(len(images), 1), f"read {n + 1}/{len(images)} images")
    order, is_control = np.zeros(0, np.int64), np.zeros(0, np.bool_)
    if cand_image:
        order, is_control = plan_round(
            np.ones(len(cand_image), np.float64),
            np.unique(np.asarray(cand_image), return_inverse=True)[1],
            np.asarray(centroids, np.float64),
            settings,
            "random",
            n_control=0,
            rng=rng,
        )
    picks = [(cand_image[i], cand_region[i], -1) for i in order.tolist()]
    extra: dict[str, Any] = {"candidates": len(cand_image), "path": "random"}
    if warnings:
        extra["region_warnings"] = warnings[:MAX_WARNINGS]
        extra["region_warnings_total"] = len(warnings)
    return picks, is_control, extra
