"""The Label Studio ML backend protocol under /ls/{project_id}, with the exact shapes Label
Studio sends and expects, over real HTTP. (On-demand predictions, budgets, skips and versions:
test_ls_predict.py.)"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from activeseg.core.heatmaps import encode_heatmaps
from activeseg.core.tables import ImageScore, ModelState, ModelVersion, Project
from activeseg.integrations.brush_rle import rle_to_mask
from tests.conftest import Stack
from tests.integrations.helpers import project_with_images

H, W = 24, 32
CONFIG = (
    '<View><Image name="img" value="$picture"/>'
    '<BrushLabels name="tag" toName="img"><Label value="class0"/><Label value="class1"/>'
    '<Label value="class2"/></BrushLabels></View>'
)


def add_stored_scores(
    stack: Stack,
    project_id: int,
    predictions: dict[int, np.ndarray],
    expected_iou: dict[int, float],
    *,
    version: int = 1,
) -> int:
    """A ready, active model version (no weights: it can never predict on demand) whose
    score blobs say ``predictions[image_id]`` with ``expected_iou[image_id]``."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = ModelVersion(
            project_id=project_id,
            version=version,
            state=ModelState.ready.value,
            config={"method": "single"},
            member_keys=[],
            metrics={"miou": 0.5},
        )
        s.add(mv)
        s.flush()
        for image_id, pred in predictions.items():
            ent = np.full(pred.shape, 0.5, np.float32)
            blob = encode_heatmaps({"entropy": ent}, pred, expected_iou[image_id])
            key = stack.store.put(blob)  # type: ignore[attr-defined]
            s.add(
                ImageScore(
                    model_version_id=mv.id,
                    image_id=image_id,
                    measure="entropy",
                    mean=0.5,
                    heatmap_key=key,
                    prediction_key=key,
                )
            )
        project = s.scalar(select(Project).where(Project.id == project_id))
        assert project is not None
        project.active_model_id = mv.id
        return int(mv.id)


@pytest.fixture
def scored(stack: Stack, admin) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    """Three images; the active model predicts known masks; image 1 is the least sure."""
    project, images = project_with_images(admin, n=3, h=H, w=W)
    preds, ious = {}, {}
    for k, im in enumerate(images):
        pred = np.zeros((H, W), np.uint8)
        pred[:, k * 5 : k * 5 + 10] = 1
        pred[:4, :] = 2
        preds[im["id"]] = pred
        ious[im["id"]] = [0.7, 0.123456789, 0.5][k]
    mv_id = add_stored_scores(stack, project["id"], preds, ious)
    return {"pid": project["id"], "images": images, "preds": preds, "mv_id": mv_id}


def test_health_and_setup(stack: Stack, admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    r = admin.get(f"/ls/{pid}/health")
    assert r.status_code == 200
    assert r.json() == {"status": "UP", "model_class": "activeseg"}
    assert admin.get(f"/ls/{pid}/").json()["status"] == "UP"
    r = admin.post(f"/ls/{pid}/setup", json={"project": f"{pid}.1700000000", "schema": CONFIG})
    assert r.status_code == 200
    assert r.json() == {"model_version": f"activeseg-p{pid}-v1"}


def test_setup_refuses_a_config_without_brush_labels_with_an_example(admin, scored) -> None:  # type: ignore[no-untyped-def]
    bad = '<View><Image name="i" value="$image"/><Choices name="c" toName="i"/></View>'
    r = admin.post(f"/ls/{scored['pid']}/setup", json={"project": "1.1", "schema": bad})
    assert r.status_code == 422
    assert "BrushLabels" in r.json()["detail"] and "<View>" in r.json()["detail"]


def test_predict_returns_one_brush_result_list_per_task_in_order(admin, scored) -> None:  # type: ignore[no-untyped-def]
    pid, images = scored["pid"], scored["images"]
    tasks = [
        {"id": 10 + k, "data": {"picture": f"http://ls.example/images/{im['id']}/file"}}
        for k, im in enumerate(images)
    ]
    tasks.append({"id": 99, "data": {"picture": "/data/upload/1/0a1b2c3d-img2.png"}})
    tasks.append({"id": 100, "data": {"picture": "/data/upload/1/deadbeef-unknown.png"}})
    body = {"tasks": tasks, "label_config": CONFIG, "project": f"{pid}.1", "params": {}}
    r = admin.post(f"/ls/{pid}/predict", json=body)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(tasks)
    version = f"activeseg-p{pid}-v1"
    for k, im in enumerate(images):
        entry = results[k]
        assert set(entry) == {"result", "score", "model_version"}
        assert entry["model_version"] == version
        names = []
        decoded = np.full((H, W), 255, np.uint8)
        for res in entry["result"]:
            assert res["from_name"] == "tag" and res["to_name"] == "img"
            assert res["type"] == "brushlabels"
            assert (res["original_width"], res["original_height"]) == (W, H)
            assert res["value"]["format"] == "rle"
            [name] = res["value"]["brushlabels"]
            names.append(name)
            decoded[rle_to_mask(res["value"]["rle"], H, W) > 0] = int(name[-1])
        assert names == ["class0", "class1", "class2"]
        assert np.array_equal(decoded, scored["preds"][im["id"]])
    # score = the stored expected IoU (rounded to 6 places): the least sure image is lowest.
    assert [results[k]["score"] for k in range(3)] == [0.7, 0.123457, 0.5]
    # a file-name match (Label Studio's upload prefix removed), then an unknown image: no
    # "result" key at all, so Label Studio stores nothing and asks again later.
    assert results[3]["result"] == results[2]["result"]
    assert results[4] == {
        "model_version": version,
        "skipped": f"no image of project {pid} at /data/upload/1/deadbeef-unknown.png",
    }


def test_predict_leaves_out_classes_the_config_does_not_list(admin, scored) -> None:  # type: ignore[no-untyped-def]
    only = CONFIG.replace('<Label value="class0"/>', "").replace('<Label value="class2"/>', "")
    image = scored["images"][0]
    task = {"id": 1, "data": {"picture": f"/images/{image['id']}/file"}}
    r = admin.post(f"/ls/{scored['pid']}/predict", json={"tasks": [task], "label_config": only})
    [entry] = r.json()["results"]
    assert [res["value"]["brushlabels"] for res in entry["result"]] == [["class1"]]


def test_basic_auth_with_the_token_as_password(stack: Stack, scored) -> None:  # type: ignore[no-untyped-def]
    pid = scored["pid"]
    with stack.client() as anon:
        assert anon.get(f"/ls/{pid}/health").status_code == 401
        creds = base64.b64encode(f"labelstudio:{stack.admin_token}".encode()).decode()
        r = anon.get(f"/ls/{pid}/health", headers={"Authorization": f"Basic {creds}"})
        assert r.status_code == 200
        wrong = base64.b64encode(b"labelstudio:nope").decode()
        r = anon.get(f"/ls/{pid}/health", headers={"Authorization": f"Basic {wrong}"})
        assert r.status_code == 401
