"""Label Studio's webhook under /ls/{project_id}/webhook: annotations become label revisions
(only what a tool annotation paints changes), over real HTTP."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from activeseg.core.tables import Job, LabelRevision
from activeseg.integrations.brush_rle import mask_to_rle
from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model, project_with_images
from tests.utils import make_user

H, W = 24, 32
CONFIG = (
    '<View><Image name="img" value="$picture"/>'
    '<BrushLabels name="tag" toName="img"><Label value="class0"/><Label value="class1"/>'
    '<Label value="class2"/></BrushLabels></View>'
)


@pytest.fixture
def scored(stack: Stack, admin) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Three images with an active scored model (so a retrain can be requested)."""
    project, images = project_with_images(admin, n=3, h=H, w=W)
    preds = {im["id"]: np.zeros((H, W), np.uint8) for im in images}
    mv_id = add_scored_model(stack, project["id"], preds, {im["id"]: 0.5 for im in images})
    return {"pid": project["id"], "images": images, "mv_id": mv_id}


def _annotation_payload(pid: int, image_id: int, mask: np.ndarray, action: str) -> dict[str, Any]:
    result = []
    for cls in (1, 2):
        painted = (mask == cls).astype(np.uint8) * 255
        result.append(
            {
                "id": f"r{cls}",
                "from_name": "tag",
                "to_name": "img",
                "type": "brushlabels",
                "original_width": W,
                "original_height": H,
                "image_rotation": 0,
                "value": {
                    "format": "rle",
                    "rle": mask_to_rle(painted),
                    "brushlabels": [f"class{cls}"],
                },
            }
        )
    return {
        "action": action,
        "annotation": {"id": 501, "result": result},
        "task": {"id": 7, "data": {"picture": f"http://ls/images/{image_id}/file"}},
        "project": {"id": 3, "label_config": CONFIG},
    }


def test_webhook_stores_the_annotation_and_requests_a_retrain(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][0]
    mask = np.full((H, W), 255, np.uint8)
    mask[2:10, 3:20] = 1
    mask[12:20, 5:9] = 2
    r = admin.post(
        f"/ls/{pid}/webhook", json=_annotation_payload(pid, image["id"], mask, "ANNOTATION_CREATED")
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "ok" and body["revision"] == 1
    stored = admin.get(f"/images/{image['id']}/mask")
    assert np.array_equal(np.asarray(PILImage.open(io.BytesIO(stored.content))), mask)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rev = s.scalar(select(LabelRevision).where(LabelRevision.image_id == image["id"]))
        assert rev is not None and rev.source == "webhook"
        job = s.get(Job, body["job_id"])
        assert job is not None and job.kind == "retrain" and job.project_id == pid
    # the same event again (Label Studio retries) stores nothing new; an update does.
    again = admin.post(
        f"/ls/{pid}/webhook", json=_annotation_payload(pid, image["id"], mask, "ANNOTATION_CREATED")
    )
    assert again.status_code == 201 and again.json()["revision"] is None
    mask[0, 0] = 2
    upd = admin.post(
        f"/ls/{pid}/webhook", json=_annotation_payload(pid, image["id"], mask, "ANNOTATION_UPDATED")
    )
    assert upd.status_code == 201 and upd.json()["revision"] == 2


def test_webhook_start_training_and_other_events(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    r = admin.post(f"/ls/{pid}/webhook", json={"action": "START_TRAINING", "project": {"id": 1}})
    assert r.status_code == 201 and r.json()["job_id"] > 0
    r = admin.post(f"/ls/{pid}/webhook", json={"action": "PROJECT_UPDATED"})
    assert r.status_code == 200 and r.json()["status"] == "ignored"


def test_webhook_with_an_unknown_class_stores_nothing(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][1]
    payload = _annotation_payload(pid, image["id"], np.ones((H, W), np.uint8), "ANNOTATION_CREATED")
    payload["annotation"]["result"][0]["value"]["brushlabels"] = ["cat"]
    r = admin.post(f"/ls/{pid}/webhook", json=payload)
    assert r.status_code == 422 and "cat" in r.json()["detail"]
    assert admin.get(f"/images/{image['id']}/revisions").json()["count"] == 0


def test_annotators_may_annotate_but_not_start_training(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    uid, token = make_user(admin, "annotator")
    admin.post(f"/projects/{pid}/members", json={"user_id": uid})
    with stack.client(token) as ann:
        r = ann.post(f"/ls/{pid}/webhook", json={"action": "START_TRAINING"})
        assert r.status_code == 403
        assert ann.get(f"/ls/{pid}/health").status_code == 200
