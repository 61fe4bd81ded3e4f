"""retrain: snapshot the labels, train a new model version, evaluate it, maybe activate it.

Training data: every pool or train image with labelled pixels (partial labels: 255 pixels are
ignored by the loss). Validation: labelled ``val`` images (temperature, metrics,
``class_weights="val"``, and early stopping only when ``patience`` is set). Idempotent: the
version row is unique per job, so a redelivered job that already stored its version only
finishes the chain.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from activeseg.core.imaging import decode_image
from activeseg.core.services.jobs import TRAIN_SPLITS
from activeseg.core.services.labels import read_mask, with_mask_key
from activeseg.core.services.models import load_predictor, model_config_for, project_in_channels
from activeseg.core.services.projects import project_settings
from activeseg.core.tables import Image, ModelState, ModelVersion, Project, Split
from activeseg.jobs.notify import notify
from activeseg.jobs.runner import JobContext

log = logging.getLogger(__name__)


def load_split(
    ctx: JobContext, project_id: int, splits: tuple[str, ...]
) -> tuple[list[int], list[np.ndarray], list[np.ndarray], dict[str, int]]:
    """Images with labels in ``splits``: ids, arrays, masks, and {image id: revision}. The rows
    come from one read session; the blobs are read and decoded after it closed."""
    with ctx.db.read_session() as s:
        rows = list(
            s.execute(
                with_mask_key(
                    select(Image)
                    .where(
                        Image.project_id == project_id,
                        Image.split.in_(splits),
                        Image.labelled_pixels > 0,
                    )
                    .order_by(Image.id)
                )
            ).all()
        )
    ids = [im.id for im, _ in rows]
    images = [decode_image(ctx.store.get(im.blob_key)) for im, _ in rows]
    masks = [read_mask(ctx.store, im, key) for im, key in rows]
    snapshot = {str(im.id): im.current_revision for im, _ in rows}
    return ids, images, masks, snapshot


def retrain(
    ctx: JobContext,
    from_scratch: bool = False,
    activate: bool | None = None,
    chain: bool = True,
    trigger: str = "manual",
) -> dict[str, Any]:
    from activeseg.models.checkpoint import state_from_bytes, state_to_bytes
    from activeseg.models.evaluation import evaluate, fit_temperature_on
    from activeseg.models.training import TrainProgress, train

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
        ctx.progress(0.01, "loading labels", force=True)
        _, images, masks, snapshot = load_split(ctx, project.id, TRAIN_SPLITS)
        if not images:
            raise ValueError("no labelled images to train on: label some regions first")
        _, val_images, val_masks, _ = load_split(ctx, project.id, (Split.val.value,))
        # init "warm" / "shrink_perturb" start from the active version's weights when it has
        # the same architecture; "cold", from_scratch or no usable parent start fresh.
        init = None
        if (
            config.init != "cold"
            and not from_scratch
            and parent is not None
            and _same_architecture(parent.config, config.model_dump())
        ):
            init = [state_from_bytes(ctx.store.get(k)) for k in parent.member_keys]
        elif config.init != "cold":
            # from_scratch, no parent or another architecture: record the cold start it was.
            config = config.model_copy(update={"init": "cold"})

        def report(p: TrainProgress) -> None:
            ctx.progress(
                0.05 + 0.75 * p.fraction,
                f"training member {p.member + 1}/{p.n_members}, step {p.step}, loss {p.loss:.4f}",
            )

        result = train(
            config,
            images,
            masks,
            val_images or None,
            val_masks or None,
            init_states=init,
            progress=report,
        )
        keys = [ctx.store.put(state_to_bytes(state)) for state in result.states]
        ctx.progress(0.82, "evaluating", force=True)
        draft = ModelVersion(config=config.model_dump(), member_keys=keys, temperature=None)
        predictor = load_predictor(ctx.store, draft, ctx.settings)
        temperature = None
        eval_images, eval_masks = (val_images, val_masks) if val_images else (images, masks)
        if val_images:
            temperature = float(fit_temperature_on(predictor, val_images, val_masks))
            predictor.temperature = temperature
        metrics = evaluate(predictor, eval_images, eval_masks, config.n_classes)
        metrics["evaluated_on"] = "val" if val_images else "train (no labelled val images)"
        _, test_images, test_masks, _ = load_split(ctx, project.id, (Split.test.value,))
        if test_images:
            # Held-out test figures: what learning curves and `activeseg simulate` plot.
            metrics["test"] = evaluate(predictor, test_images, test_masks, config.n_classes)
        metrics["history"] = result.history[-50:]
        metrics["best_val_loss"] = result.best_val_loss
        mv_id = _store_version(
            ctx,
            project.id,
            config.model_dump(),
            keys,
            temperature,
            metrics,
            snapshot,
            int(sum(int((m != 255).sum()) for m in masks)),
            parent.id if parent is not None else None,
        )
    ctx.enqueue("evaluate", {"model_version_id": mv_id}, request_id=f"evaluate-{mv_id}")
    do_activate = settings.auto_activate if activate is None else activate
    with ctx.db.session() as s:
        project_row = s.get(Project, ctx.project_id)
        assert project_row is not None
        if do_activate:
            project_row.active_model_id = mv_id
    if do_activate and chain:
        ctx.enqueue(
            "score_pool",
            {
                "model_version_id": mv_id,
                "then": [{"kind": "build_queue", "params": {"model_version_id": mv_id}}],
            },
            request_id=f"after-retrain-{ctx.job_id}",
        )
    notify(ctx, "model.trained", {"model_version_id": mv_id, "activated": do_activate})
    return {"model_version_id": mv_id, "activated": do_activate, "trigger": trigger}


def _same_architecture(old: dict[str, Any], new: dict[str, Any]) -> bool:
    keys = ("in_channels", "n_classes", "depth", "base_channels", "norm", "method", "ensemble_size")
    return all(old.get(k) == new.get(k) for k in keys)


def _store_version(
    ctx: JobContext,
    project_id: int,
    config: dict[str, Any],
    keys: list[str],
    temperature: float | None,
    metrics: dict[str, Any],
    snapshot: dict[str, int],
    labelled_pixels: int,
    parent_id: int | None,
) -> int:
    for _ in range(5):
        try:
            with ctx.db.session() as s:
                number = (
                    s.scalar(
                        select(func.max(ModelVersion.version)).where(
                            ModelVersion.project_id == project_id
                        )
                    )
                    or 0
                ) + 1
                mv = ModelVersion(
                    project_id=project_id,
                    version=number,
                    state=ModelState.ready.value,
                    config=config,
                    member_keys=keys,
                    temperature=temperature,
                    metrics=metrics,
                    label_snapshot=snapshot,
                    labelled_pixels=labelled_pixels,
                    parent_id=parent_id,
                    job_id=ctx.job_id,
                )
                s.add(mv)
                s.flush()
                return mv.id
        except IntegrityError:
            # Either another delivery of this job stored it first (unique job_id), or a
            # concurrent retrain took this version number: look, then try the next number.
            with ctx.db.read_session() as s:
                mv_id = s.scalar(select(ModelVersion.id).where(ModelVersion.job_id == ctx.job_id))
            if mv_id is not None:
                return mv_id
    raise RuntimeError("could not allocate a model version number")
