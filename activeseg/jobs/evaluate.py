"""evaluate: compute a model version's report and store it in ``ModelVersion.report``.

Requested after every retrain (``request_id = evaluate-<version id>``), by
``POST /models/{id}/report`` (recompute) and by ``POST /projects/{id}/baseline`` (with the new
baseline). Held-out images: labelled ``val`` images, else labelled ``test`` images (the report
says which); without either, the model sections are empty and only the learning curve is
reported. Plots are stored as blobs, their keys in ``report["plots"]``.

Baseline design: a baseline CSV (``activeseg simulate``'s ``curve.csv``) is stored as a blob
and its key travels in the ``baseline_key`` parameter of an evaluate job. A later evaluate job
without that parameter uses the baseline of the project's most recent evaluate job that had
one, so once attached, a baseline appears in every later report.

Idempotent: the report is recomputed from ids and overwritten; the computation is seeded, and
blobs are content-addressed, so a redelivered job writes the same report.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import func, select

from activeseg.core.services.models import load_predictor
from activeseg.core.services.projects import project_settings
from activeseg.core.services.regions import compute_region_map
from activeseg.core.services.reports import latest_baseline_key
from activeseg.core.services.training_data import load_split
from activeseg.core.tables import (
    Image,
    ModelState,
    ModelVersion,
    Project,
    Round,
    Split,
    Task,
    TaskState,
)
from activeseg.jobs.runner import JobContext

if TYPE_CHECKING:
    from activeseg.core.project_config import ProjectSettings
    from activeseg.models.inference import Predictor
    from activeseg.reports.build import ReportOptions

log = logging.getLogger(__name__)

HELD_OUT_SPLITS = (Split.val.value, Split.test.value)


def _held_out(
    ctx: JobContext, project_id: int, split: str | None
) -> tuple[str | None, list[np.ndarray], list[np.ndarray], str]:
    """``(split, images, masks, note)``: the requested split, else val, else test."""
    candidates = (split,) if split else HELD_OUT_SPLITS
    for name in candidates:
        _, images, masks, _ = load_split(ctx.db, ctx.store, project_id, (name,))
        if images:
            if name == Split.val.value or split:
                note = f"held-out images: {len(images)} labelled {name} images"
            else:
                note = f"no labelled val images; used {len(images)} labelled test images instead"
            return name, images, masks, note
    wanted = " or ".join(candidates)
    return (
        None,
        [],
        [],
        f"no labelled {wanted} images: calibration, error detection and the shift check need "
        "held-out labels (PATCH /images/{id} with split=val, then PUT /images/{id}/mask)",
    )


def _history(ctx: JobContext, project_id: int, mv: ModelVersion) -> tuple[list[dict], int]:
    """Ready versions up to ``mv`` (oldest first) with their labelling effort, and the pixel
    count of the trainable (pool + train) images."""
    with ctx.db.read_session() as s:
        versions = list(
            s.scalars(
                select(ModelVersion)
                .where(
                    ModelVersion.project_id == project_id,
                    ModelVersion.state == ModelState.ready.value,
                    ModelVersion.version <= mv.version,
                )
                .order_by(ModelVersion.version)
            )
        )
        round_times = list(
            s.scalars(select(Round.created_at).where(Round.project_id == project_id))
        )
        submitted = list(
            s.execute(
                select(Task.submitted_at, Task.regions).where(
                    Task.project_id == project_id, Task.state == TaskState.submitted.value
                )
            )
        )
        total = s.scalar(
            select(func.coalesce(func.sum(Image.width * Image.height), 0)).where(
                Image.project_id == project_id,
                Image.split.in_((Split.pool.value, Split.train.value)),
            )
        )
        out = []
        for v in versions:
            made = v.created_at
            out.append(
                {
                    "id": v.id,
                    "version": v.version,
                    "labelled_pixels": v.labelled_pixels,
                    "labelled_regions": sum(
                        len(regions or [])
                        for at, regions in submitted
                        if at is not None and at <= made
                    ),
                    "rounds": sum(1 for at in round_times if at < made),
                    "metrics": dict(v.metrics or {}),
                }
            )
    return out, int(total or 0)


def _baseline(
    ctx: JobContext, project_id: int, baseline_key: str | None
) -> tuple[list[dict[str, Any]] | None, str | None, str | None]:
    """``(rows, key, error)`` of the baseline to draw: the given key, else the latest attached."""
    from activeseg.reports.learning_curve import parse_baseline_csv

    key = baseline_key
    if key is None:
        with ctx.db.read_session() as s:
            key = latest_baseline_key(s, project_id)
    if key is None:
        return None, None, None
    try:
        return parse_baseline_csv(ctx.store.get(key).decode("utf-8-sig")), key, None
    except (KeyError, FileNotFoundError, UnicodeDecodeError, ValueError) as exc:
        log.warning("baseline %s unusable: %s", key, exc)
        return None, key, f"baseline {key} unusable: {exc}"


def evaluate(
    ctx: JobContext,
    model_version_id: int,
    split: str | None = None,
    baseline_key: str | None = None,
    shift: bool = True,
) -> dict[str, Any]:
    """Compute and store the report of model version ``model_version_id``.

    ``split``: force ``val`` or ``test`` (default: val, else test). ``baseline_key``: blob key of
    a baseline CSV to draw (default: the project's latest attached one). ``shift``: run the
    shift check.
    """
    from activeseg.reports.build import ReportOptions

    if split is not None and split not in HELD_OUT_SPLITS:
        raise ValueError(f"split must be 'val' or 'test', got {split!r}")
    started = time.monotonic()
    mv, project, settings = _version_to_report(ctx, model_version_id)
    ctx.progress(0.02, "loading held-out images", force=True)
    used_split, images, masks, note = _held_out(ctx, project.id, split)
    predictor = load_predictor(ctx.store, mv, ctx.settings)
    options = ReportOptions(shift=shift)
    timings: dict[str, float] = {}
    sections: dict[str, Any] = {"calibration": None, "error_detection": None, "shift": None}
    if used_split is not None:
        t0 = time.monotonic()
        sections = _model_sections(ctx, predictor, mv, settings, used_split, images, masks, options)
        timings["model_sections_s"] = time.monotonic() - t0
    ctx.progress(0.78, "learning curve", force=True)
    curve, key = _learning_curve(ctx, project.id, mv, baseline_key)
    report = _report_document(
        ctx.job_id, mv, project, predictor, used_split, note, sections, curve, options
    )
    ctx.progress(0.85, "drawing plots", force=True)
    t0 = time.monotonic()
    report["plots"] = _draw_plots(ctx, report)
    timings["plots_s"] = time.monotonic() - t0
    timings["total_s"] = time.monotonic() - started
    report["timings"] = {k: round(v, 3) for k, v in timings.items()}
    with ctx.db.session() as s:
        row = s.get(ModelVersion, model_version_id)
        assert row is not None
        row.report = report
    ctx.progress(1.0, "report stored", force=True)
    return {
        "model_version_id": model_version_id,
        "split": used_split,
        "plots": sorted(report["plots"]),
        "baseline_key": key,
    }


def _version_to_report(
    ctx: JobContext, model_version_id: int
) -> tuple[ModelVersion, Project, ProjectSettings]:
    """The ready model version of this job's project, its project and settings (detached)."""
    with ctx.db.read_session() as s:
        mv = s.get(ModelVersion, model_version_id)
        if mv is None or (ctx.project_id is not None and mv.project_id != ctx.project_id):
            raise ValueError(f"model version {model_version_id} is not in project {ctx.project_id}")
        if mv.state != ModelState.ready.value:
            raise ValueError(f"model version {model_version_id} is {mv.state}, not ready")
        project = s.get(Project, mv.project_id)
        assert project is not None
        return mv, project, project_settings(project)


def _model_sections(
    ctx: JobContext,
    predictor: Predictor,
    mv: ModelVersion,
    settings: ProjectSettings,
    split: str,
    images: list[np.ndarray],
    masks: list[np.ndarray],
    options: ReportOptions,
) -> dict[str, Any]:
    """Calibration, error detection and the shift check of ``predictor`` on the held-out
    images. The per-region figures use the regions annotators are given: the project's kind,
    size and smoothing, made exactly as the service makes them; computed, not read with
    region_set, so the report job writes no rows."""
    from activeseg.reports.build import model_sections

    sigma = settings.slic_sigma if settings.region_kind != "grid" else 0.0
    region_maps = [
        compute_region_map(image, settings.region_kind, settings.region_size, sigma).labels
        for image in images
    ]
    return model_sections(
        predictor,
        images,
        masks,
        split=split,
        temperature=mv.temperature,
        options=options,
        progress=lambda f, m: ctx.progress(0.05 + 0.7 * f, m),
        region_maps=region_maps,
        region_kind=f"{settings.region_kind} {settings.region_size}",
    )


def _learning_curve(
    ctx: JobContext, project_id: int, mv: ModelVersion, baseline_key: str | None
) -> tuple[dict[str, Any], str | None]:
    """The learning-curve section (every version so far, and the baseline CSV if any) and the
    baseline's blob key."""
    from activeseg.reports.learning_curve import learning_curve_section

    versions, total_pixels = _history(ctx, project_id, mv)
    rows, key, baseline_error = _baseline(ctx, project_id, baseline_key)
    curve = learning_curve_section(versions, total_pixels, rows, key)
    if baseline_error:
        curve["baseline_error"] = baseline_error
    return curve, key


def _report_document(
    job_id: int | None,
    mv: ModelVersion,
    project: Project,
    predictor: Predictor,
    split: str | None,
    note: str | None,
    sections: dict[str, Any],
    curve: dict[str, Any],
    options: ReportOptions,
) -> dict[str, Any]:
    """The stored report, JSON-ready (plots and timings are added by the job)."""
    from activeseg.models.evaluation import jsonable
    from activeseg.reports import REPORT_SCHEMA_VERSION

    report: dict[str, Any] = {
        "schema": REPORT_SCHEMA_VERSION,
        "computed_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "job_id": job_id,
        "model": {
            "id": mv.id,
            "version": mv.version,
            "project_id": project.id,
            "project_name": project.name,
            "method": predictor.config.method,
            "n_samples": predictor.n_samples,
            "temperature": mv.temperature,
        },
        "split": split,
        "held_out_note": note,
        **sections,
        "learning_curve": curve,
        "options": {
            "n_bins": options.n_bins,
            "max_pixels": options.max_pixels,
            "n_boot": options.n_boot,
            "max_shift_images": options.max_shift_images,
            "seed": options.seed,
        },
    }
    result: dict[str, Any] = jsonable(report)
    return result


def _draw_plots(ctx: JobContext, report: dict[str, Any]) -> dict[str, str]:
    """Draw the report's plots and store them: {plot name: blob key}."""
    from activeseg.reports.plots import report_plots

    return {name: ctx.store.put(data) for name, data in report_plots(report).items()}
