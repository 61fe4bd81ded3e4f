"""The active-learning loop: retrain, score, rounds, model versions, heatmaps."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import CurrentUser, DbDep, Engineer, StoreDep, UserOrLink, link_headers
from activeseg.api.errors import error_responses
from activeseg.api.routes.jobs import start_job
from activeseg.api.schemas import MAX_ROW_ID, NO_NUL, JobPublic, Page, RowId
from activeseg.core.errors import NotFound
from activeseg.core.services import auth, jobs, links, models, rounds, score_images
from activeseg.uncertainty.measures import DEFAULT_MEASURE

router = APIRouter(tags=["active learning"], responses=error_responses(403, 404, 409))


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    from_scratch: bool = False
    activate: bool | None = Field(default=None, description="default: project's auto_activate")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    model_version_id: int | None = Field(default=None, ge=1, le=MAX_ROW_ID)


class RoundRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    strategy: str | None = Field(default=None, pattern="^(top_k|random|power|softmax|softrank)$")


class ModelPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    project_id: int
    version: int
    state: str
    config: dict[str, Any]
    temperature: float | None
    metrics: dict[str, Any]
    labelled_pixels: int
    parent_id: int | None
    job_id: int | None
    active: bool = False


class SelectedControl(BaseModel):
    selected: int
    control: int


class ErrorRateComparisonPublic(BaseModel):
    """Selected versus control tasks (activeseg.uncertainty.control.compare_error_rates)."""

    selected_tasks: int
    control_tasks: int
    selected_error_rate: float | None = Field(description="wrong / answered pixels, pooled")
    control_error_rate: float | None
    ratio: float | None = Field(description="selected / control error rate")
    ci_low: float | None = Field(description="95% cluster-bootstrap interval over tasks")
    ci_high: float | None
    verdict: str


class RoundTotals(BaseModel):
    tasks: SelectedControl
    answered: SelectedControl
    labelled_pixels: int = Field(description="pixels labelled by the answered tasks")
    clicks: int = Field(description="annotation cost of the answered tasks, in clicks")
    comparison: ErrorRateComparisonPublic


class RoundSummary(RoundTotals):
    number: int
    model_version_id: int | None
    measure: str
    strategy: str
    created_at: datetime
    pool_labelled_pixels_before: int = Field(
        description="labelled pool pixels when the round was built"
    )


class RegionPurity(BaseModel):
    purity: float | None = Field(
        description="share of held-out labelled pixels that carry their region's majority label"
    )
    images: int
    pixels: int
    region_kind: str
    region_size: int
    slic_sigma: float | None


class RoundsPublic(Page[RoundSummary]):
    cumulative: RoundTotals
    region_purity: RegionPurity


def _request(
    request: Request,
    db: Any,
    user: Any,
    project_id: int,
    kind: str,
    params: dict[str, Any],
    request_id: str | None,
) -> JobPublic:
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
        job, created = jobs.request_job(
            s, project_id=project_id, kind=kind, params=params, request_id=request_id, user=user
        )
    return start_job(request, job, created)


@router.post(
    "/projects/{project_id}/retrain", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED
)
def retrain(
    project_id: RowId, body: RetrainRequest, user: Engineer, db: DbDep, request: Request
) -> JobPublic:
    """Train a new model version on the current labels; when it is activated the pool is
    re-scored and a new queue built. 409 while no pool or train image has labels."""
    params: dict[str, Any] = {"from_scratch": body.from_scratch, "activate": body.activate}
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        jobs.require_training_labels(s, project.id)
        # A manual retrain covers the labels counted so far toward the automatic one.
        project.labels_since_retrain = 0
    return _request(request, db, user, project_id, "retrain", params, body.request_id)


@router.post(
    "/projects/{project_id}/score", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED
)
def score(
    project_id: RowId, body: ScoreRequest, user: Engineer, db: DbDep, request: Request
) -> JobPublic:
    """Score the unlabelled pool with a model version (default: the active one)."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        mv_id = body.model_version_id or project.active_model_id
        if mv_id is None:
            raise NotFound("this project has no model version yet; POST /retrain first")
        models.check_version_of(s, project, mv_id)
    return _request(
        request, db, user, project_id, "score_pool", {"model_version_id": mv_id}, body.request_id
    )


@router.post(
    "/projects/{project_id}/rounds", response_model=JobPublic, status_code=status.HTTP_202_ACCEPTED
)
def new_round(
    project_id: RowId, body: RoundRequest, user: Engineer, db: DbDep, request: Request
) -> JobPublic:
    """Score the pool with the active model, then queue the next batch of regions. Without
    a model (day one) the batch is drawn at random so annotation can start."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        mv_id = project.active_model_id
    queue_params: dict[str, Any] = {"model_version_id": mv_id, "strategy": body.strategy}
    if mv_id is None:
        return _request(request, db, user, project_id, "build_queue", queue_params, body.request_id)
    params = {"model_version_id": mv_id, "then": [{"kind": "build_queue", "params": queue_params}]}
    return _request(request, db, user, project_id, "score_pool", params, body.request_id)


@router.get("/projects/{project_id}/rounds", response_model=RoundsPublic)
def list_rounds(project_id: RowId, user: CurrentUser, db: DbDep, store: StoreDep) -> RoundsPublic:
    """Per round: what was queued (selected and hidden control tasks), what the answers cost
    (pixels, clicks), and whether the queue found more of the model's wrong pixels than the
    random controls (ratio of error rates with a 95% interval); a cumulative line over all
    rounds; and the purity of the project's regions on its held-out images."""
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        return RoundsPublic.model_validate(rounds.rounds_report(s, store, project))


@router.get("/projects/{project_id}/models", response_model=Page[ModelPublic])
def list_models(project_id: RowId, user: CurrentUser, db: DbDep) -> Page[ModelPublic]:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        rows = models.list_models(s, project_id)
        data = [
            ModelPublic.model_validate(m).model_copy(
                update={"active": m.id == project.active_model_id}
            )
            for m in rows
        ]
    return Page(data=data, count=len(data))


@router.get("/models/{model_id}", response_model=ModelPublic)
def get_model(model_id: RowId, user: CurrentUser, db: DbDep) -> ModelPublic:
    with db.session() as s:
        mv = models.get_model_for(s, user, model_id)
        return ModelPublic.model_validate(mv).model_copy(update={"active": models.is_active(s, mv)})


@router.post("/models/{model_id}/activate", response_model=ModelPublic)
def activate_model(model_id: RowId, user: Engineer, db: DbDep) -> ModelPublic:
    with db.session() as s:
        mv = models.get_model_for(s, user, model_id)
        models.activate(s, mv)
        return ModelPublic.model_validate(mv).model_copy(update={"active": True})


@router.get(
    "/images/{image_id}/uncertainty.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def uncertainty_png(
    image_id: RowId,
    who: UserOrLink,
    db: DbDep,
    store: StoreDep,
    measure: Annotated[str, Query(max_length=40)] = DEFAULT_MEASURE,
    overlay_image: Annotated[bool, Query(alias="overlay")] = False,
) -> Response:
    """The active model's uncertainty heatmap of the image (inferno colours, bright = unsure),
    optionally blended over the image. Opens with a token or a signed link (POST /links)."""
    with db.session() as s:
        scores = score_images.active_scores(s, links.image_for(s, who, image_id))
    body = score_images.uncertainty_png(store, scores, measure, overlay_image)
    return Response(body, media_type="image/png", headers=link_headers(who))


@router.get(
    "/images/{image_id}/prediction.png",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
def prediction_png(
    image_id: RowId,
    who: UserOrLink,
    db: DbDep,
    store: StoreDep,
    raw: Annotated[bool, Query(description="index PNG of class ids instead of colours")] = False,
) -> Response:
    """The active model's predicted class per pixel, in class colours (or raw class ids).
    Opens with a token or a signed link (POST /links)."""
    with db.session() as s:
        scores = score_images.active_scores(s, links.image_for(s, who, image_id))
    body = score_images.prediction_png(store, scores, raw)
    return Response(body, media_type="image/png", headers=link_headers(who))
