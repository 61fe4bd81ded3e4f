"""Label Studio as a client of the service: ML-backend predictions and annotations back.

Steps kept apart (decode / predict / encode): :func:`parse_label_config` reads the tag names,
:func:`resolve_image` finds the project image a task URL names, :func:`plan_predictions`
reads what the database knows (in a session), :func:`run_predictions` reads the active
model's stored predictions and predicts the other images on demand within a time budget (no
session open), :func:`prediction_results` translates index masks into brush RLE results.

Label Studio (1.23, ``ml/models.py``) stores every entry of ``results`` that has a ``result``
key and never asks again for a task that has a prediction of the current model version; an
entry without one is logged and dropped, and the task is asked for again later. So a task
with no prediction gets ``{"model_version": ..., "skipped": "<why>"}``, never an empty
``result`` that would stand as the model's answer for good.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid
from activeseg.core.heatmaps import EXPECTED_IOU
from activeseg.core.imaging import decode_image
from activeseg.core.services.models import list_models, load_predictor
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    MAX_ROW_ID,
    Image,
    ImageScore,
    ModelState,
    ModelVersion,
    Project,
)
from activeseg.integrations.brush_rle import mask_to_rle

if TYPE_CHECKING:
    from activeseg.models.inference import Predictor

log = logging.getLogger(__name__)

MAX_LABEL_CONFIG = 200_000
EXAMPLE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="label" toName="image"><Label value="background"/>'
    '<Label value="cell"/></BrushLabels></View>'
)
_FILE_URL = re.compile(r"/images/(\d+)/file(?:$|[?#])")
_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
MAX_SHOWN = 80
"""Characters of a request value an error message or skip reason repeats (then "...")."""
MAX_SHOWN_LIST = 300
"""Characters of a list of names (labels, classes) an error message repeats."""
DATA_URI = (
    "a data: URI cannot name a project image; import tasks with the image URL from "
    "activeseg's Label Studio export"
)
PREDICTOR_CACHE_SIZE = 2
"""Model versions whose loaded predictor a process keeps for on-demand predictions."""


def shown(value: Any, limit: int = MAX_SHOWN) -> str:
    """``value`` as text for a message, cut to ``limit`` characters (then "...")."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def is_data_uri(url: str) -> bool:
    return url.lstrip()[:5].lower() == "data:"


def unresolved(project_id: int, url: str) -> str:
    """Why ``url`` names no image of the project, in one sentence."""
    if is_data_uri(url):
        return DATA_URI
    return f"no image of project {project_id} at {shown(url)}"


@dataclass(frozen=True)
class LabelConfig:
    """The tags of a Label Studio labeling config that brush predictions refer to."""

    from_name: str  # the BrushLabels tag's name
    to_name: str  # the Image tag's name
    value_key: str  # task data key of the image URL ($image -> "image")
    labels: tuple[str, ...]  # Label values inside BrushLabels (may be empty)


DEFAULT_CONFIG = LabelConfig("label", "image", "image", ())


def parse_label_config(xml: str | None) -> LabelConfig:
    """The BrushLabels and Image tag names of ``xml``; the defaults when ``xml`` is empty."""
    if not xml:
        return DEFAULT_CONFIG
    if not isinstance(xml, str):  # a webhook's project.label_config is whatever was sent
        raise Invalid(f"label_config must be a string of XML; e.g. {EXAMPLE_CONFIG}")
    if len(xml) > MAX_LABEL_CONFIG:
        raise Invalid(f"label_config is longer than {MAX_LABEL_CONFIG} characters")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise Invalid(f"label_config is not valid XML ({exc}); e.g. {EXAMPLE_CONFIG}") from None
    brush = next((el for el in root.iter() if el.tag.lower() == "brushlabels"), None)
    if brush is None or not brush.get("name") or not brush.get("toName"):
        raise Invalid(
            "label_config needs a <BrushLabels name=... toName=...> tag for segmentation "
            f"masks; e.g. {EXAMPLE_CONFIG}"
        )
    to_name = brush.get("toName", "").split(",")[0]
    image = next(
        (el for el in root.iter() if el.tag.lower() == "image" and el.get("name") == to_name),
        None,
    )
    value = (image.get("value") if image is not None else None) or "$image"
    found = [el.get("value", "") for el in brush if el.tag.lower() == "label"]
    return LabelConfig(brush.get("name", ""), to_name, value.lstrip("$"), tuple(found))


def check_labels(project: Project, config: LabelConfig) -> None:
    """Refuse (422) BrushLabels labels that are not class names of ``project``; a subset of
    the classes is fine."""
    known = [c["name"] for c in sorted(project.classes, key=lambda c: c["id"])]
    unknown = [label for label in config.labels if label not in set(known)]
    if unknown:
        raise Invalid(
            f"label_config's BrushLabels name {len(unknown)} label(s) that are not classes of "
            f"project {project.id}: {shown(', '.join(unknown), MAX_SHOWN_LIST)}; known classes: "
            f"{shown(', '.join(known), MAX_SHOWN_LIST)} (GET /ls/{project.id}/label_config "
            "gives a config of all of them)"
        )


def suggested_label_config(project: Project) -> str:
    """A labeling config for ``project``: one brush label per class, in the class colours."""
    root = ET.Element("View")
    ET.SubElement(root, "Image", name="image", value="$image", zoom="true")
    brush = ET.SubElement(root, "BrushLabels", name="label", toName="image")
    for c in sorted(project.classes, key=lambda c: c["id"]):
        ET.SubElement(brush, "Label", value=c["name"], background=c["colour"])
    return ET.tostring(root, encoding="unicode")


def model_version_name(project: Project, mv: ModelVersion | None) -> str:
    return f"activeseg-p{project.id}-v{mv.version}" if mv is not None else "activeseg-no-model"


def resolve_image(session: Session, project: Project, url: str) -> Image | None:
    """The project image a task URL names: our ``/images/{id}/file`` URL, else a file name
    (Label Studio prefixes uploads with 8 hex digits and a dash; local files come as
    ``?d=path``). A signed link's query (``?exp=...&kid=...&sig=...``) is not read: the
    caller's token already decides what it may see. A ``data:`` URI names no image."""
    if is_data_uri(url):
        return None
    match = _FILE_URL.search(url)
    if match:
        image_id = int(match[1])
        image = session.get(Image, image_id) if image_id <= MAX_ROW_ID else None
        return image if image is not None and image.project_id == project.id else None
    parsed = urlparse(url)
    path = parse_qs(parsed.query).get("d", [parsed.path])[0]
    name = unquote(path.replace("\\", "/").rsplit("/", 1)[-1])
    if not name or "\x00" in name:  # no stored file name holds a NUL (PostgreSQL text cannot)
        return None
    names = [name]
    if _LS_UPLOAD_PREFIX.match(name):
        names.append(name[9:])
    for candidate in names:
        image = session.scalar(
            select(Image)
            .where(Image.project_id == project.id, Image.filename == candidate)
            .order_by(Image.id)
            .limit(1)
        )
        if image is not None:
            return image
    return None


def stored_score(data: bytes) -> tuple[np.ndarray, float | None]:
    """``(prediction uint8 [H, W], expected IoU)`` of a score_pool blob; the IoU is None in
    blobs written before it was stored (the uncertainty maps are not decompressed)."""
    with np.load(io.BytesIO(data)) as npz:
        prediction = np.asarray(npz["prediction"], dtype=np.uint8)
        score = float(npz[EXPECTED_IOU]) if EXPECTED_IOU in npz.files else None
    return prediction, score if score is not None and math.isfinite(score) else None


def prediction_results(
    prediction: np.ndarray, classes: list[dict[str, Any]], config: LabelConfig
) -> list[dict[str, Any]]:
    """An index mask ``[H, W]`` -> one brushlabels result per class present (classes the
    config does not list are left out when it lists any)."""
    height, width = prediction.shape
    wanted = set(config.labels)
    results = []
    for cls in sorted(classes, key=lambda c: c["id"]):
        if wanted and cls["name"] not in wanted:
            continue
        painted = prediction == cls["id"]
        if not painted.any():
            continue
        results.append(
            {
                "id": f"c{cls['id']}",
                "from_name": config.from_name,
                "to_name": config.to_name,
                "type": "brushlabels",
                "original_width": int(width),
                "original_height": int(height),
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": mask_to_rle(painted.astype(np.uint8) * 255),
                    "brushlabels": [cls["name"]],
                },
            }
        )
    return results


def model_versions(session: Session, project: Project) -> dict[str, Any]:
    """What Label Studio's ``GET {backend}/versions`` expects (``ml/api.py`` reads
    ``versions``): the names of the project's ready versions, newest first, and the active
    one's name (the one predictions carry)."""
    mv = session.get(ModelVersion, project.active_model_id) if project.active_model_id else None
    names = [
        model_version_name(project, v)
        for v in list_models(session, project.id)
        if v.state == ModelState.ready.value
    ]
    return {"versions": names, "model_version": model_version_name(project, mv)}


# --- predictions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTask:
    """One task of a predict request: its image and stored score blob, or why it is skipped."""

    skipped: str | None = None
    image_id: int = 0
    image_key: str = ""  # the image's blob
    score_key: str | None = None  # the active model's score blob of the image, if scored


@dataclass(frozen=True)
class PredictionPlan:
    """What :func:`run_predictions` needs, read in one session: nothing here is attached."""

    project_id: int
    version: str
    model: ModelVersion | None  # the active version (detached), None without one
    classes: list[dict[str, Any]]
    config: LabelConfig
    tasks: list[PlannedTask]


def plan_predictions(
    session: Session, project: Project, tasks: list[dict[str, Any]], config: LabelConfig
) -> PredictionPlan:
    """Resolve each task's image and find the active model's stored score blob for it."""
    mv = session.get(ModelVersion, project.active_model_id) if project.active_model_id else None
    version = model_version_name(project, mv)
    planned: list[PlannedTask] = []
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(config.value_key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            reason = f"the task has no data.{shown(config.value_key)} image URL"
            planned.append(PlannedTask(skipped=reason))
            continue
        image = resolve_image(session, project, url)
        if image is None:
            planned.append(PlannedTask(skipped=unresolved(project.id, url)))
        elif mv is None:
            reason = (
                f"project {project.id} has no active model yet; Label Studio asks again once "
                "a retrain activates one"
            )
            planned.append(PlannedTask(skipped=reason))
        else:
            planned.append(PlannedTask(image_id=image.id, image_key=image.blob_key))
    if mv is not None:
        keys = _score_keys(session, mv.id, {t.image_id for t in planned if t.skipped is None})
        planned = [
            PlannedTask(t.skipped, t.image_id, t.image_key, keys.get(t.image_id)) for t in planned
        ]
    return PredictionPlan(project.id, version, mv, list(project.classes), config, planned)


def _score_keys(session: Session, mv_id: int, image_ids: set[int]) -> dict[int, str]:
    """image id -> the score blob of ``mv_id`` (every measure's row names the same blob)."""
    keys: dict[int, str] = {}
    ordered = sorted(image_ids)
    for start in range(0, len(ordered), 500):
        rows = session.execute(
            select(ImageScore.image_id, ImageScore.heatmap_key).where(
                ImageScore.model_version_id == mv_id,
                ImageScore.image_id.in_(ordered[start : start + 500]),
            )
        )
        keys.update({int(image_id): key for image_id, key in rows})
    return keys


def run_predictions(
    plan: PredictionPlan,
    store: BlobStore,
    settings: Settings,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> list[dict[str, Any]]:
    """One entry per planned task, in order: ``{"result", "score", "model_version"}``, or
    ``{"model_version", "skipped"}`` (no ``result`` key: Label Studio stores nothing and asks
    again later).

    Stored predictions are read from their score blobs. Images the active model has not
    scored (pool images before the scoring job reaches them, labelled, val and test images,
    blobs written before the expected IoU was stored) are predicted here, in task order,
    until ``settings.ls_predict_budget_s`` seconds (by ``clock``) of on-demand work are
    spent; the rest are skipped. A tiled image is abandoned between two windows when the
    budget runs out; an untiled one (at most ``max_untiled_pixels``) may overrun it by its
    one forward pass. One on-demand prediction runs at a time per process; the loaded
    predictor is kept per model version (:func:`cached_predictor`).
    """
    found: dict[int, tuple[np.ndarray, float] | str] = {}
    for task in plan.tasks:
        if task.skipped is None and task.score_key and task.image_id not in found:
            prediction, score = stored_score(store.get(task.score_key))
            if score is not None:
                found[task.image_id] = (prediction, score)
    missing = [t for t in plan.tasks if t.skipped is None and t.image_id not in found]
    if missing:
        assert plan.model is not None
        found.update(_predict_on_demand(plan, missing, store, settings, clock))
    out: list[dict[str, Any]] = []
    for task in plan.tasks:
        got = task.skipped if task.skipped is not None else found[task.image_id]
        out.append(_entry(plan, got))
    return out


def _entry(plan: PredictionPlan, got: tuple[np.ndarray, float] | str) -> dict[str, Any]:
    if isinstance(got, str):
        return {"model_version": plan.version, "skipped": got}
    prediction, score = got
    result = prediction_results(prediction, plan.classes, plan.config)
    if not result:
        painted = np.unique(prediction).tolist()
        names = [c["name"] for c in plan.classes if c["id"] in painted]
        reason = (
            f"the labeling config's BrushLabels list none of the predicted classes "
            f"({shown(', '.join(names), MAX_SHOWN_LIST)})"
        )
        return {"model_version": plan.version, "skipped": reason}
    return {"result": result, "score": round(score, 6), "model_version": plan.version}


_predictors: OrderedDict[tuple[Any, ...], Predictor] = OrderedDict()
_on_demand = threading.Lock()  # one on-demand prediction at a time; guards _predictors too


def cached_predictor(store: BlobStore, mv: ModelVersion, settings: Settings) -> Predictor:
    """The predictor of ``mv`` (its temperature applied), loaded once per process; the
    :data:`PREDICTOR_CACHE_SIZE` most recently used are kept. Call with ``_on_demand`` held.
    The key holds the weights' content keys, config and temperature, so two databases whose
    version ids coincide never share a predictor."""
    key = (
        mv.id,
        tuple(mv.member_keys),
        json.dumps(mv.config, sort_keys=True),
        mv.temperature,
        settings.device,
        settings.torch_threads,
    )
    predictor = _predictors.pop(key, None)
    if predictor is None:
        predictor = load_predictor(store, mv, settings)
    _predictors[key] = predictor
    while len(_predictors) > PREDICTOR_CACHE_SIZE:
        _predictors.popitem(last=False)
    return predictor


def _predict_on_demand(
    plan: PredictionPlan,
    missing: list[PlannedTask],
    store: BlobStore,
    settings: Settings,
    clock: Callable[[], float],
) -> dict[int, tuple[np.ndarray, float] | str]:
    """image id -> (prediction, expected IoU) or why there is none, for ``missing``."""
    from activeseg.models.scoring import ScoringStopped, score_images

    mv = plan.model
    assert mv is not None
    budget = settings.ls_predict_budget_s
    deadline = clock() + budget
    spent = (
        f"{plan.version} has not scored this image yet and this request's on-demand budget "
        f"({budget:g} s, ACTIVESEG_LS_PREDICT_BUDGET_S) is spent; Label Studio asks again later"
    )
    out: dict[int, tuple[np.ndarray, float] | str] = {}
    todo = list(dict.fromkeys((t.image_id, t.image_key) for t in missing))
    held = False
    try:
        for image_id, image_key in todo:
            left = deadline - clock()
            if left <= 0:
                out[image_id] = spent
                continue
            if not held:
                held = _on_demand.acquire(timeout=left)
                if not held:  # another request's prediction took the budget
                    out[image_id] = spent
                    continue
            try:
                predictor = cached_predictor(store, mv, settings)
            except Exception:
                log.exception("could not load model version %s for Label Studio", mv.id)
                reason = f"{plan.version} could not be loaded; the API log says why"
                out.update({i: reason for i, _ in todo if i not in out})
                return out
            if clock() >= deadline:
                out[image_id] = spent
                continue
            image = decode_image(store.get(image_key))
            try:
                [scored] = score_images(predictor, [image], (), stop=lambda: clock() >= deadline)
            except ScoringStopped:
                out[image_id] = (
                    f"predicting image {image_id} takes longer than the on-demand budget "
                    f"({budget:g} s, ACTIVESEG_LS_PREDICT_BUDGET_S); a scoring job or a larger "
                    "budget gives it a prediction"
                )
                continue
            out[image_id] = (scored.prediction, scored.expected_iou)
    finally:
        if held:
            _on_demand.release()
    return out
