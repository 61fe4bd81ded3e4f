"""Label Studio ML backend protocol under ``/ls/{project_id}``: health, setup, predict, versions
and webhook.

Connect Label Studio with the URL ``activeseg labelstudio connect PROJECT`` prints,
``/ls/{project_id}/k/{key}``: the key in the path reaches every call Label Studio makes,
including the webhook it creates itself at that URL plus ``/webhook`` (with no headers). The
plain ``/ls/{project_id}`` routes take ``Authorization: Bearer <token>`` or HTTP Basic (any
user name, the API token as password)."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import DbDep, SettingsDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import RowId
from activeseg.core.errors import Invalid, NotFound, Unauthorized
from activeseg.core.services import auth, backend_keys, jobs
from activeseg.core.tables import JobState, ModelVersion, Role, User
from activeseg.integrations import label_studio, label_studio_annotations

router = APIRouter(
    prefix="/ls/{project_id}",
    tags=["label studio"],
    responses=error_responses(403, 404, 409, 413, 415),
)
log = logging.getLogger(__name__)
ANNOTATION_EVENTS = (
    *label_studio_annotations.ANNOTATION_EVENTS,
    label_studio_annotations.DELETE_EVENT,
)
TRAIN_EVENT = "START_TRAINING"


def ls_user(request: Request, db: DbDep) -> User:
    """A backend key in the path, a Bearer token, or HTTP Basic whose password is the API
    token."""
    key = request.path_params.get("key")
    if key is not None:
        project_id = str(request.path_params.get("project_id", ""))
        if not project_id.isdigit() or len(project_id) > 12:
            raise NotFound("no such project")
        with db.read_session() as s:
            return backend_keys.authenticate(s, int(project_id), key)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    token = ""
    if scheme.lower() == "bearer":
        token = value.strip()
    elif scheme.lower() == "basic":
        try:
            token = base64.b64decode(value.strip(), validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthorized("malformed HTTP Basic credentials") from None
    if not token:
        raise Unauthorized(
            "missing API token: send 'Authorization: Bearer <token>', or HTTP Basic auth with "
            "the token as password (Label Studio: Model > Basic auth)"
        )
    with db.session() as s:
        return auth.authenticate(s, token)


LsUser = Annotated[User, Depends(ls_user)]


class SetupRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    project: str | int | None = None
    schema_: str | None = Field(default=None, alias="schema", description="label config XML")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    tasks: list[dict[str, Any]] = Field(max_length=10_000)
    label_config: str | None = None
    project: str | int | None = None
    params: dict[str, Any] | None = None


@router.get("/health", summary="ML backend health (Label Studio's connection check)")
@router.get("", include_in_schema=False)
@router.get("/", include_in_schema=False)
def health(project_id: RowId, user: LsUser, db: DbDep) -> dict[str, Any]:
    with db.read_session() as s:
        auth.get_project_for(s, user, project_id)
    return {"status": "UP", "model_class": "activeseg"}


@router.post("/setup", summary="Label Studio connects: check the label config")
def setup(project_id: RowId, body: SetupRequest, user: LsUser, db: DbDep) -> dict[str, Any]:
    """422 when the config has no usable BrushLabels tag (with an example) or names a label
    that is not a class of the project (a subset of the classes is fine)."""
    with db.read_session() as s:
        project = auth.get_project_for(s, user, project_id)
        if body.schema_:
            config = label_studio.parse_label_config(body.schema_)
            label_studio.check_labels(project, config)
        mv = s.get(ModelVersion, project.active_model_id) if project.active_model_id else None
        return {"model_version": label_studio.model_version_name(project, mv)}


@router.post("/predict", summary="Brush-mask predictions of the active model, one per task")
def predict(
    project_id: RowId,
    body: PredictRequest,
    user: LsUser,
    db: DbDep,
    store: StoreDep,
    settings: SettingsDep,
) -> dict[str, Any]:
    """One entry per task, in order: ``{"result", "score", "model_version"}`` or, when there
    is no prediction, ``{"model_version", "skipped"}`` with no ``result`` (Label Studio then
    stores nothing and asks again). Stored predictions come from the scoring jobs; images the
    active model has not scored are predicted here, for at most ``ACTIVESEG_LS_PREDICT_BUDGET_S``
    seconds per request. ``score`` is the prediction's expected mIoU under the model's
    temperature-scaled probabilities (:class:`activeseg.models.scoring.ExpectedIou`)."""
    config = label_studio.parse_label_config(body.label_config)
    with db.read_session() as s:
        project = auth.get_project_for(s, user, project_id)
        plan = label_studio.plan_predictions(s, project, body.tasks, config)
    # No session is open while images are predicted (a sync route: FastAPI's thread pool).
    results = label_studio.run_predictions(plan, store, settings)
    return {"results": results, "model_version": plan.version}


@router.get("/versions", summary="The project's model versions (Label Studio's version list)")
def versions(
    project_id: RowId,
    user: LsUser,
    db: DbDep,
    project: Annotated[
        str | None, Query(max_length=200, description="Label Studio's project uid; unused")
    ] = None,
) -> dict[str, Any]:
    """``{"versions": [names, newest first], "model_version": the active one}``; predictions
    always come from the active version."""
    with db.read_session() as s:
        row = auth.get_project_for(s, user, project_id)
        return label_studio.model_versions(s, row)


@router.post(
    "/webhook",
    status_code=status.HTTP_201_CREATED,
    summary="Label Studio events",
    responses={200: {"description": "an event this backend ignores: acknowledged"}},
    # The body is read as raw JSON (Label Studio's payload varies by event); declared so that
    # clients and the schema fuzz know one is expected.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"action": {"type": "string"}},
                        "description": "Label Studio's webhook payload",
                    }
                }
            },
        }
    },
)
async def webhook(
    project_id: RowId, request: Request, user: LsUser, db: DbDep, store: StoreDep
) -> Response:
    """Annotation events change labels by the rule in
    :mod:`activeseg.core.services.contributions`: ANNOTATION_CREATED / ANNOTATION_UPDATED /
    ANNOTATIONS_CREATED set the pixels the annotation paints (its own contribution, replaced on
    update), ANNOTATIONS_DELETED takes that contribution back; skipped (``was_cancelled``) and
    empty annotations change nothing. A change makes a label revision (source ``webhook``) and
    requests a retrain. START_TRAINING requests a retrain. Other events are acknowledged and
    ignored (200)."""
    try:
        payload = await request.json()
    except ValueError:
        raise Invalid("the webhook body must be JSON") from None
    event = payload.get("action") if isinstance(payload, dict) else None
    with db.read_session() as s:  # outsiders learn nothing, not even that an event is ignored
        auth.get_project_for(s, user, project_id)
    if event not in (*ANNOTATION_EVENTS, TRAIN_EVENT):
        shown = event[:40] if isinstance(event, str) else None  # a NaN "action" is no JSON
        return JSONResponse({"status": "ignored", "event": shown}, status_code=200)
    assert isinstance(payload, dict)
    outcomes: list[dict[str, Any]] = []
    job_id, pending = None, False
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        auth.require_role(user, Role.annotator if event != TRAIN_EVENT else Role.engineer)
        changed = event == TRAIN_EVENT
        if event in ANNOTATION_EVENTS:
            result = label_studio_annotations.handle_event(s, store, project, user, payload)
            outcomes, changed = result.outcomes, result.changed
        if event == TRAIN_EVENT:
            jobs.require_training_labels(s, project.id)  # 409 now, not a job that fails
        if changed and jobs.has_training_labels(s, project.id):
            job, _ = jobs.request_job(
                s,
                project_id=project.id,
                kind="retrain",
                params={"from_scratch": False, "activate": None},
                user=user,
            )
            job_id, pending = job.id, job.state == JobState.pending.value
    if pending and job_id is not None:
        request.app.state.dispatch(job_id)  # after the commit
    revisions = [o["revision"] for o in outcomes if o.get("revision") is not None]
    body = {
        "status": "ok",
        "event": event,
        "annotations": outcomes,
        "revision": revisions[-1] if revisions else None,
        "job_id": job_id,
    }
    return JSONResponse(body, status_code=status.HTTP_201_CREATED)


@router.get(
    "/label_config",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
    summary="A Label Studio labeling config for this project's classes",
)
def label_config(project_id: RowId, user: LsUser, db: DbDep) -> Response:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        xml = label_studio.suggested_label_config(project)
    return Response(xml, media_type="application/xml")


def _add_keyed_routes() -> None:
    """Every route above again under ``/k/{key}``: the URL ``activeseg labelstudio connect``
    prints, which Label Studio keeps for all its calls and for the webhook it makes itself.
    ``ls_user`` reads the key from the path. Left out of the schema: the key is a secret."""
    for route in list(router.routes):
        if not isinstance(route, APIRoute) or "/k/{key}" in route.path:
            continue
        sub = route.path.removeprefix(router.prefix)
        router.add_api_route(
            "/k/{key}" + sub,
            route.endpoint,
            methods=sorted(route.methods or ()),
            status_code=route.status_code,
            response_class=route.response_class,
            summary=route.summary,
            include_in_schema=False,
        )


_add_keyed_routes()
