"""Model-version reports (calibration, error detection, shift, learning curve) and baselines.

The report itself is computed by the ``evaluate`` job (:mod:`activeseg.jobs.evaluate`) and read
back through :mod:`activeseg.core.services.reports`; these routes serve the stored JSON, its
plots and an HTML page, request a recomputation, and attach a baseline learning curve
(``activeseg simulate``'s ``curve.csv``).
"""

from __future__ import annotations

import csv
from typing import Annotated, Any

from fastapi import APIRouter, File, Path, Request, Response, UploadFile, status
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from activeseg.api.deps import (
    CurrentUser,
    DbDep,
    Engineer,
    SettingsDep,
    StoreDep,
    UserOrLink,
    link_headers,
)
from activeseg.api.errors import error_responses
from activeseg.api.routes.images import read_limited
from activeseg.api.routes.jobs import start_job
from activeseg.api.schemas import NO_NUL, JobPublic, RowId
from activeseg.core.errors import Conflict, Invalid, NotFound
from activeseg.core.services import auth, jobs, links, models, reports, rounds
from activeseg.core.tables import ModelState
from activeseg.reports.html import render_html
from activeseg.reports.learning_curve import aggregate_baseline, parse_baseline_csv
from activeseg.reports.rounds import rounds_section

router = APIRouter(tags=["reports"], responses=error_responses(403, 404, 409, 413))

PLOT_NAME_PATTERN = "^[a-z_]{1,40}$"


class ReportRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    split: str | None = Field(default=None, pattern="^(val|test)$", description="default: val")


class BaselinePublic(BaseModel):
    baseline_key: str
    n_rows: int
    curves: list[dict[str, Any]]
    job: JobPublic | None = None


def _report_of(s: Session, who: Any, model_id: int, live: bool = False) -> dict[str, Any]:
    """The stored report; with ``live``, plus the ``rounds`` section (it changes with every
    answer, so it is read when served rather than stored with the report). ``who``: a user,
    or the grant of a signed link."""
    mv = links.model_for(s, who, model_id)
    report = reports.stored_report(s, mv)
    if live:
        report["rounds"] = rounds_section(*rounds.summaries(s, mv.project_id))
    return report


@router.get("/models/{model_id}/report", response_model=dict[str, Any])
def get_report(model_id: RowId, user: CurrentUser, db: DbDep) -> dict[str, Any]:
    """The stored report of a model version: ``calibration`` (ECE/MCE/Brier/NLL before and
    after temperature scaling, reliability bins; also on foreground pixels and per region),
    ``error_detection`` (AUROC/AUPR per measure over pixels, foreground pixels and regions,
    verdict), ``shift``, ``learning_curve``, ``rounds`` (selected vs random control tasks per
    round, read live) and ``plots`` (names; fetch ``/models/{id}/plots/{name}.png``). 404 while
    it is not computed yet."""
    with db.session() as s:
        return _report_of(s, user, model_id, live=True)


@router.post(
    "/models/{model_id}/report", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED
)
def recompute_report(
    model_id: RowId, body: ReportRequest, user: Engineer, db: DbDep, request: Request
) -> JobPublic:
    """Request the evaluate job that (re)computes this version's report."""
    with db.session() as s:
        mv = models.get_model_for(s, user, model_id)
        if mv.state != ModelState.ready.value:
            raise Conflict(f"model version {model_id} is {mv.state}; only a ready one has a report")
        params: dict[str, Any] = {"model_version_id": mv.id}
        if body.split:
            params["split"] = body.split
        job, created = jobs.request_job(
            s,
            project_id=mv.project_id,
            kind="evaluate",
            params=params,
            request_id=body.request_id,
            user=user,
        )
    return start_job(request, job, created)


@router.get(
    "/models/{model_id}/report.html",
    # Response, not HTMLResponse: the errors are JSON, and FastAPI documents them under the
    # response class's media type.
    response_class=Response,
    responses={200: {"content": {"text/html": {}}}},
)
def report_html(model_id: RowId, who: UserOrLink, db: DbDep, store: StoreDep) -> HTMLResponse:
    """The report as one self-contained HTML page (plots embedded as base64 PNG). Opens with a
    token or a signed link (POST /links; `activeseg report MODEL` prints one)."""
    with db.session() as s:
        report = _report_of(s, who, model_id, live=True)
    plots = {name: store.get(key) for name, key in (report.get("plots") or {}).items()}
    return HTMLResponse(render_html(report, plots), headers=link_headers(who))


@router.get(
    "/models/{model_id}/plots/{name}.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def report_plot(
    model_id: RowId,
    name: Annotated[str, Path(pattern=PLOT_NAME_PATTERN)],
    who: UserOrLink,
    db: DbDep,
    store: StoreDep,
) -> Response:
    """One plot of the report: ``reliability``, ``error_detection_roc``, ``shift`` or
    ``learning_curve`` (those the report has data for). Opens with a token or a signed link."""
    with db.session() as s:
        report = _report_of(s, who, model_id)
    keys = report.get("plots") or {}
    if name not in keys:
        raise NotFound(
            f"model version {model_id} has no plot {name!r}; available: {', '.join(sorted(keys))}"
        )
    return Response(store.get(keys[name]), media_type="image/png", headers=link_headers(who))


@router.post(
    "/projects/{project_id}/baseline",
    response_model=BaselinePublic,
    status_code=status.HTTP_202_ACCEPTED,
)
async def attach_baseline(
    project_id: RowId,
    file: Annotated[UploadFile, File(description="curve.csv written by `activeseg simulate`")],
    user: Engineer,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> BaselinePublic:
    """Attach a baseline learning curve (e.g. random selection) to the project's reports.

    The CSV is stored as a blob and an evaluate job of the newest model version is requested
    with it; later reports keep drawing the latest attached baseline."""
    data = await read_limited(file, settings.max_upload_bytes)
    try:
        rows = parse_baseline_csv(data.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise Invalid(
            "baseline must be a UTF-8 CSV file (curve.csv from `activeseg simulate`)"
        ) from None
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    except csv.Error as exc:  # e.g. a bare carriage return inside a field
        raise Invalid(f"baseline is not a readable CSV file: {exc}") from None
    with db.session() as s:
        mv_id = reports.baseline_model_version(s, auth.get_project_for(s, user, project_id))
    key = store.put(data)
    with db.session() as s:
        job, created = jobs.request_job(
            s,
            project_id=project_id,
            kind="evaluate",
            params={"model_version_id": mv_id, "baseline_key": key},
            request_id=f"baseline-{key[:24]}-{mv_id}",
            user=user,
        )
    return BaselinePublic(
        baseline_key=key,
        n_rows=len(rows),
        curves=aggregate_baseline(rows),
        job=start_job(request, job, created),
    )


@router.get("/projects/{project_id}/baseline", response_model=BaselinePublic)
def get_baseline(
    project_id: RowId, user: CurrentUser, db: DbDep, store: StoreDep
) -> BaselinePublic:
    """The latest baseline attached to the project, averaged over seeds per round."""
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        key = reports.latest_baseline_key(s, project_id)
    if key is None:
        raise NotFound(
            f"project {project_id} has no baseline; POST /projects/{project_id}/baseline with "
            "the curve.csv of `activeseg simulate --strategy random`"
        )
    rows = parse_baseline_csv(store.get(key).decode("utf-8-sig"))
    return BaselinePublic(baseline_key=key, n_rows=len(rows), curves=aggregate_baseline(rows))
