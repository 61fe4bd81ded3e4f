"""retrain: snapshot the labels, train a new model version, evaluate it, maybe activate it.

Training data: every pool or train image with labelled pixels (partial labels: 255 pixels are
ignored by the loss). Validation: labelled ``val`` images (temperature, metrics,
``class_weights="val"``, and early stopping only when ``patience`` is set). Idempotent: the
version row is unique per job, so a redelivered job that already stored its version only
finishes the chain.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from activeseg.core.services.jobs import TRAIN_SPLITS
from activeseg.core.services.models import (
    NewVersion,
    load_checkpoints,
    load_predictor,
    model_config_for,
    project_in_channels,
    save_checkpoints,
    set_active_version,
    store_version,
)
from activeseg.core.services.projects import project_settings
from activeseg.core.services.training_data import LabelledSplit, load_split
from activeseg.core.tables import ModelState, ModelVersion, Project, Split
from activeseg.jobs.notify import notify
from activeseg.jobs.runner import JobContext

if TYPE_CHECKING:
    from activeseg.models.checkpoint import StateDict
    from activeseg.models.config import ModelConfig
    from activeseg.models.training import TrainProgress, TrainResult

log = logging.getLogger(__name__)


def retrain(
    ctx: JobContext,
    from_scratch: bool = False,
    activate: bool | None = None,
    chain: bool = True,
    trigger: str = "manual",
) -> dict[str, Any]:
    with ctx.db.read_session() as s:
        project = s.get(Project, ctx.project_id)
        assert project is not None
        settings = project_settings(project)
        existing = s.scalar(select(ModelVersion).where(ModelVersion.job_id == ctx.job_id))
        parent = s.get(ModelVersion, project.active_model_id) if project.active_model_id else None
        in_channels = project_in_channels(s, project.id)
    if existing is not None and existing.state == ModelState.ready.value:
        log.info("job %s already made model version %s", ctx.job_id, existing.id)
        mv_id = existing.id
    else:
        config = model_config_for(project, in_channels, ctx.settings)
        mv_id = _train_version(ctx, project.id, config, parent, from_scratch)
    ctx.enqueue("evaluate", {"model_version_id": mv_id}, request_id=f"evaluate-{mv_id}")
    do_activate = settings.auto_activate if activate is None else activate
    if do_activate:
        set_active_version(ctx.db, project.id, mv_id)
    if do_activate and chain:
        _chain_scoring(ctx, mv_id)
    notify(ctx, "model.trained", {"model_version_id": mv_id, "activated": do_activate})
    return {"model_version_id": mv_id, "activated": do_activate, "trigger": trigger}


def _train_version(
    ctx: JobContext,
    project_id: int,
    config: ModelConfig,
    parent: ModelVersion | None,
    from_scratch: bool,
) -> int:
    """Load the labels, train, evaluate and store a new version; its id."""
    from activeseg.models.training import train

    ctx.progress(0.01, "loading labels", force=True)
    labelled = load_split(ctx.db, ctx.store, project_id, TRAIN_SPLITS)
    if not labelled.images:
        raise ValueError("no labelled images to train on: label some regions first")
    val = load_split(ctx.db, ctx.store, project_id, (Split.val.value,))
    config, init = _starting_point(ctx, config, parent, from_scratch)
    result = train(
        config,
        labelled.images,
        labelled.masks,
        val.images or None,
        val.masks or None,
        init_states=init,
        progress=_training_progress(ctx),
    )
    keys = save_checkpoints(ctx.store, result.states)
    ctx.progress(0.82, "evaluating", force=True)
    temperature, metrics = _measure(ctx, project_id, config, keys, labelled, val, result)
    new = NewVersion(
        project_id=project_id,
        job_id=ctx.job_id,
        config=config.model_dump(),
        member_keys=keys,
        temperature=temperature,
        metrics=metrics,
        label_snapshot=labelled.snapshot,
        labelled_pixels=labelled.labelled_pixels,
        parent_id=parent.id if parent is not None else None,
    )
    return store_version(ctx.db, new)


def _starting_point(
    ctx: JobContext, config: ModelConfig, parent: ModelVersion | None, from_scratch: bool
) -> tuple[ModelConfig, list[StateDict] | None]:
    """The config to train and the members' initial weights: init "warm" / "shrink_perturb"
    start from the active version's weights when it has the same architecture; "cold",
    from_scratch or no usable parent start fresh, and the config records the cold start."""
    if config.init == "cold":
        return config, None
    if (
        not from_scratch
        and parent is not None
        and same_architecture(parent.config, config.model_dump())
    ):
        return config, load_checkpoints(ctx.store, parent.member_keys)
    return config.model_copy(update={"init": "cold"}), None


def _training_progress(ctx: JobContext) -> Callable[[TrainProgress], None]:
    """Training's share (5-80 %) of the job's progress."""

    def report(p: TrainProgress) -> None:
        ctx.progress(
            0.05 + 0.75 * p.fraction,
            f"training member {p.member + 1}/{p.n_members}, step {p.step}, loss {p.loss:.4f}",
        )

    return report


def _measure(
    ctx: JobContext,
    project_id: int,
    config: ModelConfig,
    keys: list[str],
    labelled: LabelledSplit,
    val: LabelledSplit,
    result: TrainResult,
) -> tuple[float | None, dict[str, Any]]:
    """``(temperature, metrics)`` of the trained weights: the temperature fitted on the val
    images (None without), metrics on val (else on the training images), held-out test
    figures, and the training curve."""
    from activeseg.models.evaluation import evaluate, fit_temperature_on

    draft = ModelVersion(config=config.model_dump(), member_keys=keys, temperature=None)
    predictor = load_predictor(ctx.store, draft, ctx.settings)
    temperature = None
    eval_on = val if val.images else labelled
    if val.images:
        temperature = float(fit_temperature_on(predictor, val.images, val.masks))
        predictor.temperature = temperature
    metrics = evaluate(predictor, eval_on.images, eval_on.masks, config.n_classes)
    metrics["evaluated_on"] = "val" if val.images else "train (no labelled val images)"
    test = load_split(ctx.db, ctx.store, project_id, (Split.test.value,))
    if test.images:
        # Held-out test figures: what learning curves and `activeseg simulate` plot.
        metrics["test"] = evaluate(predictor, test.images, test.masks, config.n_classes)
    metrics["history"] = result.history[-50:]
    metrics["best_val_loss"] = result.best_val_loss
    return temperature, metrics


def _chain_scoring(ctx: JobContext, mv_id: int) -> None:
    """Score the pool with the activated version, then build the next queue from it."""
    ctx.enqueue(
        "score_pool",
        {
            "model_version_id": mv_id,
            "then": [{"kind": "build_queue", "params": {"model_version_id": mv_id}}],
        },
        request_id=f"after-retrain-{ctx.job_id}",
    )


def same_architecture(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether weights of config ``old`` load into a network of config ``new``."""
    keys = ("in_channels", "n_classes", "depth", "base_channels", "norm", "method", "ensemble_size")
    return all(old.get(k) == new.get(k) for k in keys)
