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
from tests.conftest import Stack
from tests.integrations.helpers import (
    add_scored_model,
    brush_results,
    project_with_images,
    put_mask,
)
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


def _event(
    image_id: int,
    mask: np.ndarray | None,
    action: str = "ANNOTATION_CREATED",
    annotation_id: int = 501,
    **extra: Any,
) -> dict[str, Any]:
    result = brush_results(mask, "tag", "img") if mask is not None else []
    return {
        "action": action,
        "annotation": {"id": annotation_id, "result": result, "completed_by": 9, **extra},
        "task": {"id": 7, "data": {"picture": f"http://ls/images/{image_id}/file"}},
        "project": {"id": 3, "label_config": CONFIG},
    }


def _deleted(*annotation_ids: int) -> dict[str, Any]:
    return {
        "action": "ANNOTATIONS_DELETED",
        "annotations": [{"id": a} for a in annotation_ids],
        "project": {"id": 3},
    }


def _mask(client: Any, image_id: int) -> np.ndarray:
    r = client.get(f"/images/{image_id}/mask")
    assert r.status_code == 200, r.text
    return np.array(PILImage.open(io.BytesIO(r.content)))


def _stroke(r0: int, r1: int, c0: int, c1: int, cls: int) -> np.ndarray:
    mask = np.full((H, W), 255, np.uint8)
    mask[r0:r1, c0:c1] = cls
    return mask


def _revisions(client: Any, image_id: int) -> int:
    return int(client.get(f"/images/{image_id}/revisions").json()["count"])


def test_a_stroke_over_labelled_pixels_changes_only_what_it_paints(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][0]
    labelled = np.full((H, W), 255, np.uint8)
    labelled[:12, :] = 1  # 384 pixels labelled through the API before Label Studio
    put_mask(admin, image["id"], labelled)
    stroke = _stroke(8, 18, 4, 14, 2)  # 10x10, half over the labelled rows
    r = admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], stroke))
    assert r.status_code == 201, r.text
    assert r.json()["revision"] == 2 and r.json()["annotations"][0]["status"] == "applied"
    expected = labelled.copy()
    expected[8:18, 4:14] = 2
    assert np.array_equal(_mask(admin, image["id"]), expected)


def test_update_replaces_only_the_annotations_own_contribution(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][0]
    labelled = np.full((H, W), 255, np.uint8)
    labelled[:, :8] = 0
    put_mask(admin, image["id"], labelled)
    admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], _stroke(0, 10, 4, 12, 2)))
    r = admin.post(
        f"/ls/{pid}/webhook",
        json=_event(image["id"], _stroke(14, 20, 20, 30, 1), "ANNOTATION_UPDATED"),
    )
    assert r.status_code == 201 and r.json()["revision"] == 3, r.text
    expected = labelled.copy()  # the first stroke's pixels are back to what they were
    expected[14:20, 20:30] = 1
    assert np.array_equal(_mask(admin, image["id"]), expected)
    # Label Studio retries: the same update again changes nothing and asks for no retrain.
    again = admin.post(
        f"/ls/{pid}/webhook",
        json=_event(image["id"], _stroke(14, 20, 20, 30, 1), "ANNOTATION_UPDATED"),
    )
    assert again.status_code == 201 and again.json()["revision"] is None
    assert again.json()["annotations"][0]["status"] == "unchanged"
    assert again.json()["job_id"] is None


def test_delete_takes_back_the_contribution_and_keeps_later_labels(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][1]
    labelled = np.full((H, W), 255, np.uint8)
    labelled[:6, :] = 1
    put_mask(admin, image["id"], labelled)
    admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], _stroke(0, 10, 0, 10, 2)))
    # A second annotation (another annotator) paints over part of the first.
    admin.post(
        f"/ls/{pid}/webhook",
        json=_event(image["id"], _stroke(5, 12, 5, 12, 0), annotation_id=502),
    )
    # An engineer relabels one pixel of the first stroke afterwards.
    now = _mask(admin, image["id"])
    now[1, 1] = 0
    put_mask(admin, image["id"], now)
    r = admin.post(f"/ls/{pid}/webhook", json=_deleted(501))
    assert r.status_code == 201, r.text
    assert r.json()["annotations"] == [{"annotation": "501", "status": "withdrawn", "revision": 5}]
    expected = labelled.copy()
    expected[5:12, 5:12] = 0  # annotation 502 stays
    expected[1, 1] = 0  # the engineer's later label stays
    assert np.array_equal(_mask(admin, image["id"]), expected)
    # Deleting 502 too leaves exactly the labels from before Label Studio, plus pixel (1, 1).
    admin.post(f"/ls/{pid}/webhook", json=_deleted(502))
    expected = labelled.copy()
    expected[1, 1] = 0
    assert np.array_equal(_mask(admin, image["id"]), expected)
    # An unknown or already deleted annotation changes nothing.
    r = admin.post(f"/ls/{pid}/webhook", json=_deleted(501, 999))
    assert [o["status"] for o in r.json()["annotations"]] == ["unknown", "unknown"]
    assert r.json()["job_id"] is None


@pytest.mark.parametrize(
    "extra",
    [
        {"was_cancelled": True},  # a skip: Label Studio sends result []
        {},  # an empty annotation
    ],
    ids=["skip", "empty"],
)
def test_skips_and_empty_annotations_change_no_labels(admin, scored, extra) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][2]
    labelled = np.full((H, W), 255, np.uint8)
    labelled[3:20, 2:30] = 1  # 476 labelled pixels
    put_mask(admin, image["id"], labelled)
    admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], _stroke(0, 2, 0, 2, 2)))
    for action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        r = admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], None, action, **extra))
        assert r.status_code == 201, r.text
        want = "skipped" if extra else "empty"
        assert r.json()["annotations"][0]["status"] == want
        assert r.json()["revision"] is None and r.json()["job_id"] is None
    expected = labelled.copy()
    expected[0:2, 0:2] = 2
    assert np.array_equal(_mask(admin, image["id"]), expected)
    assert _revisions(admin, image["id"]) == 2


def test_a_change_requests_a_retrain(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][0]
    r = admin.post(f"/ls/{pid}/webhook", json=_event(image["id"], _stroke(2, 10, 3, 20, 1)))
    body = r.json()
    assert body["status"] == "ok" and body["revision"] == 1
    with stack.db.session() as s:  # type: ignore[attr-defined]
        rev = s.scalar(select(LabelRevision).where(LabelRevision.image_id == image["id"]))
        assert rev is not None and rev.source == "webhook"
        job = s.get(Job, body["job_id"])
        assert job is not None and job.kind == "retrain" and job.project_id == pid


def test_webhook_start_training_and_other_events(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    start = {"action": "START_TRAINING", "project": {"id": 1}}
    r = admin.post(f"/ls/{pid}/webhook", json=start)  # nothing labelled: refused at once
    assert r.status_code == 409 and "no labelled pool or train images" in r.json()["detail"]
    put_mask(admin, scored["images"][0]["id"], _stroke(0, 4, 0, 4, 1))
    r = admin.post(f"/ls/{pid}/webhook", json=start)
    assert r.status_code == 201 and r.json()["job_id"] > 0
    r = admin.post(f"/ls/{pid}/webhook", json={"action": "PROJECT_UPDATED"})
    assert r.status_code == 200 and r.json()["status"] == "ignored"


def test_webhook_with_an_unknown_class_stores_nothing(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][1]
    payload = _event(image["id"], _stroke(0, 4, 0, 4, 1))
    payload["annotation"]["result"][0]["value"]["brushlabels"] = ["cat" * 100]
    r = admin.post(f"/ls/{pid}/webhook", json=payload)
    assert r.status_code == 422 and "catcat" in r.json()["detail"]
    assert len(r.json()["detail"]) < 400  # the value is cut, not echoed whole
    assert _revisions(admin, image["id"]) == 0


def test_annotators_may_annotate_but_not_start_training(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    uid, token = make_user(admin, "annotator")
    admin.post(f"/projects/{pid}/members", json={"user_id": uid})
    with stack.client(token) as ann:
        r = ann.post(f"/ls/{pid}/webhook", json={"action": "START_TRAINING"})
        assert r.status_code == 403
        assert ann.get(f"/ls/{pid}/health").status_code == 200


def test_the_backend_key_in_the_url_admits_label_studio_and_nobody_else(
    stack: Stack, admin, scored
) -> None:  # type: ignore[no-untyped-def]
    pid, image = scored["pid"], scored["images"][0]
    r = admin.post(f"/projects/{pid}/label-studio/keys")
    assert r.status_code == 201, r.text
    created = r.json()
    url = created["backend_url"]
    assert url.startswith(stack.base_url) and f"/ls/{pid}/k/lsk_" in url
    path = url.removeprefix(stack.base_url)
    key = path.rsplit("/", 1)[-1]
    listed = admin.get(f"/projects/{pid}/label-studio/keys").json()["data"]
    assert [k["prefix"] for k in listed] == [key[:12]] and "lsk_" not in str(
        [k for k in listed if "key_hash" in k]
    )
    other, _ = project_with_images(admin, n=1, h=H, w=W, seed=3)
    with stack.client() as anon:  # no header at all, as Label Studio's own webhook calls
        assert anon.get(f"{path}/health").status_code == 200
        assert anon.get(f"{path}/").status_code == 200
        r = anon.post(f"{path}/webhook", json=_event(image["id"], _stroke(0, 3, 0, 3, 2)))
        assert r.status_code == 201 and r.json()["revision"] == 1, r.text
        # The key is bound to its project, and a wrong key is refused.
        assert anon.get(f"/ls/{other['id']}/k/{key}/health").status_code == 401
        assert anon.get(f"/ls/{pid}/k/{key[:-2]}xx/health").status_code == 401
        assert anon.post(f"/ls/{pid}/webhook", json=_deleted(501)).status_code == 401
        # Revoked: refused at once, and nothing is written.
        assert admin.delete(f"/projects/{pid}/label-studio/keys/{created['id']}").status_code == 200
        r = anon.post(f"{path}/webhook", json=_deleted(501))
        assert r.status_code == 401 and key not in r.text
    assert _revisions(admin, image["id"]) == 1


def test_annotators_cannot_make_backend_keys(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    uid, token = make_user(admin, "annotator")
    admin.post(f"/projects/{pid}/members", json={"user_id": uid})
    with stack.client(token) as ann:
        assert ann.post(f"/projects/{pid}/label-studio/keys").status_code == 403


def test_access_logs_never_show_a_backend_key() -> None:
    import logging

    from activeseg.api.routes.ls_keys import RedactBackendKeys

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "POST", "/ls/3/k/lsk_Ab-9_x/webhook?x=1", "1.1", 201),
        None,
    )
    assert RedactBackendKeys().filter(record)
    assert record.getMessage() == '127.0.0.1:5 - "POST /ls/3/k/<key>/webhook?x=1 HTTP/1.1" 201'
