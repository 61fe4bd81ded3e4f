"""Label Studio as a client of the service: ML-backend predictions and annotations back.

Steps kept apart (decode / predict / encode): :func:`parse_label_config` reads the tag names,
:func:`resolve_image` finds the project image a task URL names, :func:`predict_tasks` reads
the active model's stored predictions (never runs a network), :func:`prediction_results` and
:func:`annotation_mask` translate between index masks and brush RLE results.
"""

from __future__ import annotations

import io
import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from activeseg.core.errors import Invalid
from activeseg.core.services.projects import project_settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import (
    MAX_ROW_ID,
    Image,
    ImageScore,
    ModelVersion,
    Project,
)
from activeseg.integrations.brush_rle import mask_to_rle

MAX_LABEL_CONFIG = 200_000
EXAMPLE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="label" toName="image"><Label value="background"/>'
    '<Label value="cell"/></BrushLabels></View>'
)
_FILE_URL = re.compile(r"/images/(\d+)/file(?:$|[?#])")
_LS_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


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
    ``?d=path``)."""
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


def uncertainty_bound(measure: str, n_classes: int, n_samples: int) -> float:
    """The largest value ``measure`` can take (see activeseg.uncertainty.measures)."""
    log_c = math.log(n_classes)
    bounds = {
        "least_confidence": 1.0 - 1.0 / n_classes,
        "entropy": log_c,
        "predictive_entropy": log_c,
        "expected_entropy": log_c,
        "mutual_information": log_c,
        "variation_ratio": 1.0 - 1.0 / max(n_samples, 2),
        "mean_std": 0.5,
    }
    return bounds.get(measure, 1.0)  # margin, normalised_entropy, ratio: [0, 1]


def confidence(mean_uncertainty: float, measure: str, n_classes: int, n_samples: int) -> float:
    """``1 - mean uncertainty / its bound``, in [0, 1]: low = unsure, so the most informative
    image comes first in Label Studio's ascending prediction-score order."""
    bound = uncertainty_bound(measure, n_classes, n_samples)
    return float(min(1.0, max(0.0, 1.0 - mean_uncertainty / bound)))


def model_samples(mv: ModelVersion) -> int:
    method = mv.config.get("method")
    if method == "ensemble":
        return int(mv.config.get("ensemble_size", 1))
    if method == "mc_dropout":
        return int(mv.config.get("mc_samples", 1))
    return 1


def stored_prediction(data: bytes) -> np.ndarray:
    """The ``prediction`` member (uint8 [H, W]) of a score_pool heatmap blob, read alone."""
    with np.load(io.BytesIO(data)) as npz:
        return np.asarray(npz["prediction"], dtype=np.uint8)


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


def _task_error(version: str, status: int, detail: str) -> dict[str, Any]:
    return {
        "result": [],
        "score": None,
        "model_version": version,
        "error": {"status": status, "detail": detail},
    }


def predict_tasks(
    session: Session,
    store: BlobStore,
    project: Project,
    tasks: list[dict[str, Any]],
    config: LabelConfig,
) -> tuple[str, list[dict[str, Any]]]:
    """One prediction per task, in order, from the active model's stored scores; a task whose
    image is unknown or not scored yet gets an entry with an ``error`` (status 404)."""
    mv = session.get(ModelVersion, project.active_model_id) if project.active_model_id else None
    version = model_version_name(project, mv)
    measure = project_settings(project).measure
    out: list[dict[str, Any]] = []
    for task in tasks:
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(config.value_key) if isinstance(data, dict) else None
        if not isinstance(url, str):
            out.append(_task_error(version, 422, f"task has no data.{config.value_key} URL"))
            continue
        image = resolve_image(session, project, url)
        if image is None:
            out.append(_task_error(version, 404, f"no image of project {project.id} at {url}"))
            continue
        if mv is None:
            out.append(_task_error(version, 404, "the project has no active model yet"))
            continue
        rows = {
            r.measure: r
            for r in session.scalars(
                select(ImageScore).where(
                    ImageScore.model_version_id == mv.id, ImageScore.image_id == image.id
                )
            )
        }
        row = rows.get(measure) or (rows[sorted(rows)[0]] if rows else None)
        if row is None:
            out.append(
                _task_error(version, 404, f"image {image.id} is not scored by {version} yet")
            )
            continue
        prediction = stored_prediction(store.get(row.heatmap_key))
        score = confidence(row.mean, row.measure, len(project.classes), model_samples(mv))
        out.append(
            {
                "result": prediction_results(prediction, list(project.classes), config),
                "score": round(score, 6),
                "model_version": version,
            }
        )
    return version, out
