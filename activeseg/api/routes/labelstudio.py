"""Label Studio ML backend protocol under ``/ls/{project_id}``: health, setup, predict and
webhook. Point a Label Studio project's "Model" at ``http://HOST/ls/{project_id}``; it may
authenticate with ``Authorization: Bearer <token>`` or HTTP Basic (any user name, the API
token as password), as Label Studio sends it."""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from activeseg.api.deps import DbDep, StoreDep
from activeseg.api.errors import error_responses
from activeseg.api.schemas import RowId
from activeseg.core.errors import Invalid, Unauthorized
from activeseg.core.services import auth, jobs
from activeseg.core.tables import JobState, ModelVersion, Role, User
from activeseg.integrations import label_studio, label_studio_annotations

router = APIRouter(
    prefix="/ls/{project_id}",
    tags=["label studio"],
    responses=error_responses(403, 404, 409, 413, 415),
)
log = logging.getLogger(__name__)
ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
TRAIN_EVENT = "START_TRAINING"


def ls_user(request: Request, db: DbDep) -> User:
    """Bearer token, or HTTP Basic whose password is the API token."""
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
    with db.session() as s:
        auth.get_project_for(s, user, project_id)
    return {"status": "UP", "model_class": "activeseg"}


@router.post("/setup", summary="Label Studio connects: check the label config")
def setup(project_id: RowId, body: SetupRequest, user: LsUser, db: DbDep) -> dict[str, Any]:
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        if body.schema_:
            label_studio.parse_label_config(body.schema_)  # 422 with an example if unusable
        mv = s.get(ModelVersion, project.active_model_id) if project.active_model_id else None
        return {"model_version": label_studio.model_version_name(project, mv)}


@router.post("/predict", summary="Brush-mask predictions of the active model, one per task")
def predict(
    project_id: RowId, body: PredictRequest, user: LsUser, db: DbDep, store: StoreDep
) -> dict[str, Any]:
    """Reads the active model's stored predictions and scores (written by scoring jobs); no
    network runs in the request. ``score`` = 1 - normalised mean uncertainty."""
    config = label_studio.parse_label_config(body.label_config)
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        version, results = label_studio.predict_tasks(s, store, project, body.tasks, config)
    return {"results": results, "model_version": version}


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
    """ANNOTATION_CREATED / ANNOTATION_UPDATED store the brush annotation as a new label
    revision (source ``webhook``) and request a retrain; START_TRAINING requests a retrain.
    Other events are acknowledged and ignored."""
    try:
        payload = await request.json()
    except ValueError:
        raise Invalid("the webhook body must be JSON") from None
    event = payload.get("action") if isinstance(payload, dict) else None
    with db.session() as s:  # outsiders learn nothing, not even that an event is ignored
        auth.get_project_for(s, user, project_id)
    if event not in (*ANNOTATION_EVENTS, TRAIN_EVENT):
        shown = event if isinstance(event, str) else None  # a NaN "action" is no JSON to echo
        return JSONResponse({"status": "ignored", "event": shown}, status_code=200)
    revision = None
    with db.session() as s:
        project = auth.get_project_for(s, user, project_id)
        auth.require_role(user, Role.annotator if event != TRAIN_EVENT else Role.engineer)
        if event in ANNOTATION_EVENTS:
            rev = label_studio_annotations.store_annotation(s, store, project, user, payload)
            revision = rev.revision if rev is not None else None
        job, _ = jobs.request_job(
            s,
            project_id=project.id,
            kind="retrain",
            params={"from_scratch": False, "activate": None},
            user=user,
        )
        job_id, pending = job.id, job.state == JobState.pending.value
    if pending:
        request.app.state.dispatch(job_id)  # after the commit
    body = {"status": "ok", "event": event, "revision": revision, "job_id": job_id}
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
