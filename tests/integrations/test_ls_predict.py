"""Label Studio predictions over real HTTP: on-demand predictions of images the active model
has not scored (any split), the time budget, skip entries that Label Studio does not store,
the expected-IoU score, the versions list and the label check of /setup."""

from __future__ import annotations

import itertools
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from sqlalchemy import select
from torch import nn

from activeseg.core.imaging import decode_image
from activeseg.core.services.models import load_predictor
from activeseg.core.settings import Settings
from activeseg.core.tables import Image, ImageScore, ModelState, ModelVersion, Project
from activeseg.integrations import label_studio
from activeseg.integrations.brush_rle import rle_to_mask
from activeseg.jobs.score_pool import encode_heatmaps
from activeseg.models.checkpoint import state_from_bytes, state_to_bytes
from activeseg.models.config import ModelConfig
from activeseg.models.preprocess import normalise_image
from activeseg.models.scoring import score_images
from activeseg.models.unet import UNet
from tests.conftest import Stack
from tests.integrations.helpers import put_mask
from tests.integrations.test_labelstudio_contract import add_stored_scores
from tests.utils import image_bytes, make_project, run_job_inline, untrained_version, upload

H, W = 24, 32
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="label" toName="image">'
    '<Label value="class0"/><Label value="class1"/><Label value="class2"/></BrushLabels></View>'
)
TEMPERATURE = 2.0
BUDGET_WORDS = "ACTIVESEG_LS_PREDICT_BUDGET_S"


def task(number: int, url: str) -> dict[str, Any]:
    return {"id": number, "data": {"image": url}}


def file_url(image_id: int) -> str:
    return f"http://ls.example/images/{image_id}/file"


def upload_one(admin: httpx.Client, pid: int, name: str, seed: int, split: str = "pool") -> int:
    r = upload(admin, pid, (name, image_bytes(H, W, seed=seed)), split=split)
    assert r.status_code == 201, r.text
    return int(r.json()["data"][0]["image"]["id"])


def decoded(entry: dict[str, Any]) -> np.ndarray:
    """A prediction entry's brush results painted back into one index mask (255: none)."""
    mask = np.full((H, W), 255, np.uint8)
    for res in entry["result"]:
        assert (res["original_width"], res["original_height"]) == (W, H)
        [name] = res["value"]["brushlabels"]
        painted = rle_to_mask(res["value"]["rle"], H, W) > 0
        assert (mask[painted] == 255).all()  # every pixel painted once
        mask[painted] = int(name.removeprefix("class"))
    return mask


def varied_version(stack: Stack, pid: int, image_ids: list[int]) -> int:
    """``untrained_version`` (a tiny UNet, no training), active, with BatchNorm statistics of
    the project's images, so that its predicted classes vary over each image (fresh
    statistics predict one class everywhere), and a temperature of ``TEMPERATURE``."""
    mv_id = untrained_version(stack, pid, in_channels=3, n_classes=3, depth=2, activate=True)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = s.get(ModelVersion, mv_id)
        keys = [s.get(Image, i).blob_key for i in image_ids]
        net = UNet.from_config(ModelConfig.from_dict(mv.config))
        net.load_state_dict(state_from_bytes(stack.store.get(mv.member_keys[0])))  # type: ignore[attr-defined]
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        batch = [normalise_image(decode_image(stack.store.get(k)), 3) for k in keys]  # type: ignore[attr-defined]
        net.train()
        with torch.no_grad():
            net(torch.from_numpy(np.stack(batch)))
        mv.member_keys = [stack.store.put(state_to_bytes(net.eval().state_dict()))]  # type: ignore[attr-defined]
        mv.temperature = TEMPERATURE
    return mv_id


def own_prediction(
    stack: Stack, mv_id: int, image_id: int, temperature: float | None = TEMPERATURE
) -> tuple[np.ndarray, float]:
    """The version's own argmax and expected IoU of the image, computed here."""
    with stack.db.read_session() as s:  # type: ignore[attr-defined]
        mv = s.get(ModelVersion, mv_id)
        key = s.get(Image, image_id).blob_key
    predictor = load_predictor(stack.store, mv, stack.settings)  # type: ignore[arg-type]
    predictor.temperature = temperature
    [scored] = score_images(predictor, [decode_image(stack.store.get(key))], ())  # type: ignore[attr-defined]
    return scored.prediction, scored.expected_iou


@pytest.fixture
def demand(stack: Stack, admin: httpx.Client) -> dict[str, Any]:
    """Two pool images (the second fully labelled), a val and a test image; an active,
    never-scored model version with a temperature."""
    pid = int(make_project(admin, n_classes=3)["id"])
    ids = {
        "pool": upload_one(admin, pid, "pool.png", 11),
        "labelled": upload_one(admin, pid, "labelled.png", 12),
        "val": upload_one(admin, pid, "val.png", 13, split="val"),
        "test": upload_one(admin, pid, "test.png", 14, split="test"),
    }
    put_mask(admin, ids["labelled"], np.ones((H, W), np.uint8))
    mv_id = varied_version(stack, pid, list(ids.values()))
    return {"pid": pid, "ids": ids, "mv_id": mv_id, "version": f"activeseg-p{pid}-v1"}


def predict(admin: httpx.Client, pid: int, tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = admin.post(f"/ls/{pid}/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == len(tasks)
    return body["results"]  # type: ignore[no-any-return]


def plan_and_run(
    stack: Stack, pid: int, tasks: list[dict[str, Any]], **overrides: Any
) -> list[dict[str, Any]]:
    """The route's two steps called here, with settings and a clock of the test's choosing."""
    clock = overrides.pop("clock", None)
    settings = stack.settings.model_copy(update=overrides)  # type: ignore[attr-defined]
    assert isinstance(settings, Settings)
    with stack.db.read_session() as s:  # type: ignore[attr-defined]
        project = s.get(Project, pid)
        plan = label_studio.plan_predictions(
            s, project, tasks, label_studio.parse_label_config(CONFIG)
        )
    kwargs = {"clock": clock} if clock is not None else {}
    return label_studio.run_predictions(plan, stack.store, settings, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# on-demand predictions


def test_images_of_every_split_not_scored_yet_are_predicted_on_demand(
    stack: Stack, admin: httpx.Client, demand: dict[str, Any]
) -> None:
    ids = demand["ids"]
    names = list(ids)
    results = predict(
        admin, demand["pid"], [task(n, file_url(ids[k])) for n, k in enumerate(names)]
    )
    for name, entry in zip(names, results, strict=True):
        assert set(entry) == {"result", "score", "model_version"}, (name, entry)
        assert entry["model_version"] == demand["version"]
        want, iou = own_prediction(stack, demand["mv_id"], ids[name])
        assert len(np.unique(want)) >= 2  # a prediction worth comparing
        np.testing.assert_array_equal(decoded(entry), want)
        assert entry["score"] == pytest.approx(iou, abs=2e-6)
        # An untrained network is no judge of its own work: the score says so.
        assert entry["score"] < 0.5
        # The version's temperature is applied: without it the score would differ.
        _, raw = own_prediction(stack, demand["mv_id"], ids[name], temperature=None)
        assert abs(raw - entry["score"]) > 0.01


def test_scores_stored_by_score_pool_are_served_and_the_rest_predicted(
    stack: Stack, admin: httpx.Client, demand: dict[str, Any]
) -> None:
    pid, ids = demand["pid"], demand["ids"]
    run_job_inline(stack, pid, "score_pool")  # the unlabelled pool image only
    with stack.db.read_session() as s:  # type: ignore[attr-defined]
        scored_ids = set(
            s.scalars(
                select(ImageScore.image_id).where(ImageScore.model_version_id == demand["mv_id"])
            )
        )
        key = s.scalar(select(ImageScore.heatmap_key).where(ImageScore.image_id == ids["pool"]))
    assert scored_ids == {ids["pool"]}
    stored, stored_iou = label_studio.stored_score(stack.store.get(key))  # type: ignore[attr-defined]
    assert stored_iou is not None
    want, iou = own_prediction(stack, demand["mv_id"], ids["pool"])
    np.testing.assert_array_equal(stored, want)
    assert stored_iou == pytest.approx(iou, abs=2e-6)  # score_pool applied the temperature

    tasks = [task(n, file_url(i)) for n, i in enumerate(ids.values())]
    # Budget 0: the stored prediction is served as stored, every other task skipped.
    entries = plan_and_run(stack, pid, tasks, ls_predict_budget_s=0.0)
    assert decoded(entries[0]).tolist() == stored.tolist()
    assert entries[0]["score"] == round(stored_iou, 6)
    for entry in entries[1:]:
        assert set(entry) == {"model_version", "skipped"}
        assert BUDGET_WORDS in entry["skipped"] and "asks again" in entry["skipped"]
    # Over HTTP (a 10 s budget) the others are predicted on demand.
    results = predict(admin, pid, tasks)
    assert results[0] == entries[0]
    assert all("result" in e for e in results)


def test_a_blob_stored_before_the_expected_iou_is_predicted_again(
    stack: Stack, admin: httpx.Client, demand: dict[str, Any]
) -> None:
    image_id = demand["ids"]["pool"]
    fake = np.zeros((H, W), np.uint8)  # class 0, which this model predicts nowhere
    key = stack.store.put(encode_heatmaps({"entropy": np.zeros((H, W), np.float32)}, fake))  # type: ignore[attr-defined]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.add(
            ImageScore(
                model_version_id=demand["mv_id"],
                image_id=image_id,
                measure="entropy",
                mean=0.0,
                heatmap_key=key,
                prediction_key=key,
            )
        )
    want, iou = own_prediction(stack, demand["mv_id"], image_id)
    [entry] = predict(admin, demand["pid"], [task(1, file_url(image_id))])
    np.testing.assert_array_equal(decoded(entry), want)
    assert entry["score"] == pytest.approx(iou, abs=2e-6)
    [skipped] = plan_and_run(
        stack, demand["pid"], [task(1, file_url(image_id))], ls_predict_budget_s=0
    )
    assert BUDGET_WORDS in skipped["skipped"]


def test_the_budget_bounds_on_demand_work_in_task_order(
    stack: Stack, demand: dict[str, Any]
) -> None:
    ids = list(demand["ids"].values())
    tasks = [task(n, file_url(i)) for n, i in enumerate(ids)]

    def predicted(budget: float) -> list[bool]:
        ticks = itertools.count()  # a clock that moves one second every time it is read
        entries = plan_and_run(
            stack,
            demand["pid"],
            tasks,
            ls_predict_budget_s=budget,
            clock=lambda: float(next(ticks)),
        )
        for entry in entries:
            assert "result" in entry or BUDGET_WORDS in entry["skipped"], entry
        return ["result" in e for e in entries]

    assert predicted(0.0) == [False] * 4
    assert predicted(1000.0) == [True] * 4
    some = predicted(3.0)
    assert some[0] and not all(some)
    assert some == sorted(some, reverse=True)  # the first tasks got the time
    # The same image twice is predicted once and answered twice.
    twice = [task(1, file_url(ids[0])), task(2, f"/images/{ids[0]}/file")]
    first, second = plan_and_run(stack, demand["pid"], twice)
    assert first == second and "result" in first


# ------------------------------------------------------------------------------------------
# skips: entries without "result"


def test_a_project_without_a_model_skips_every_task(stack: Stack, admin: httpx.Client) -> None:
    pid = int(make_project(admin, n_classes=3)["id"])
    image_id = upload_one(admin, pid, "a.png", 1)
    [entry] = predict(admin, pid, [task(1, file_url(image_id))])
    assert entry == {
        "model_version": "activeseg-no-model",
        "skipped": f"project {pid} has no active model yet; Label Studio asks again once a "
        "retrain activates one",
    }


def test_unknown_foreign_and_data_uri_images_are_skipped_without_echoing_the_url(
    stack: Stack, admin: httpx.Client, demand: dict[str, Any]
) -> None:
    pid, image_id = demand["pid"], demand["ids"]["pool"]
    other = int(make_project(admin, n_classes=3)["id"])
    foreign = upload_one(admin, other, "foreign.png", 99)
    data_uri = "data:image/png;base64," + "A" * 20_000
    long_url = "http://ls.example/data/upload/" + "x" * 5_000 + ".png"
    signed = f"http://host/images/{image_id}/file?exp=1700000000&kid=k1&sig=" + "f" * 64
    tasks = [
        task(1, file_url(foreign)),
        task(2, data_uri),
        task(3, long_url),
        {"id": 4, "data": {"picture": "wrong key"}},
        {"id": 5},
        task(6, signed),
    ]
    r = admin.post(f"/ls/{pid}/predict", json={"tasks": tasks, "label_config": CONFIG})
    assert r.status_code == 200, r.text[:300]
    assert "AAAAAAAAAA" not in r.text and "x" * 100 not in r.text
    results = r.json()["results"]
    for entry in results[:5]:
        assert set(entry) == {"model_version", "skipped"}, entry
        assert len(entry["skipped"]) < 200
    assert results[0]["skipped"] == f"no image of project {pid} at {file_url(foreign)}"
    assert results[1]["skipped"] == label_studio.DATA_URI
    assert results[2]["skipped"] == f"no image of project {pid} at {long_url[:80]}..."
    assert results[3]["skipped"] == results[4]["skipped"] == "the task has no data.image image URL"
    assert "result" in results[5]  # a signed link names its image like the plain URL


def test_a_config_that_lists_none_of_the_predicted_classes_skips(
    stack: Stack, admin: httpx.Client
) -> None:
    pid = int(make_project(admin, n_classes=3)["id"])
    image_id = upload_one(admin, pid, "a.png", 5)
    add_stored_scores(stack, pid, {image_id: np.ones((H, W), np.uint8)}, {image_id: 0.4})
    only0 = CONFIG.replace('<Label value="class1"/>', "").replace('<Label value="class2"/>', "")
    body = {"tasks": [task(1, file_url(image_id))], "label_config": only0}
    [entry] = admin.post(f"/ls/{pid}/predict", json=body).json()["results"]
    assert entry == {
        "model_version": f"activeseg-p{pid}-v1",
        "skipped": "the labeling config's BrushLabels list none of the predicted classes (class1)",
    }
    [painted] = predict(admin, pid, [task(1, file_url(image_id))])
    assert painted["score"] == 0.4 and decoded(painted).tolist() == np.ones((H, W)).tolist()


def test_a_model_that_cannot_be_loaded_skips_what_is_not_stored(
    stack: Stack, admin: httpx.Client
) -> None:
    pid = int(make_project(admin, n_classes=3)["id"])
    stored_id = upload_one(admin, pid, "a.png", 6)
    other_id = upload_one(admin, pid, "b.png", 7)
    add_stored_scores(stack, pid, {stored_id: np.ones((H, W), np.uint8)}, {stored_id: 0.3})
    stored, missing = predict(
        admin, pid, [task(1, file_url(stored_id)), task(2, file_url(other_id))]
    )
    assert stored["score"] == 0.3
    assert missing == {
        "model_version": f"activeseg-p{pid}-v1",
        "skipped": f"activeseg-p{pid}-v1 could not be loaded; the API log says why",
    }


# ------------------------------------------------------------------------------------------
# versions and setup


def test_versions_lists_ready_versions_newest_first(stack: Stack, admin: httpx.Client) -> None:
    pid = int(make_project(admin, n_classes=3)["id"])
    assert admin.get(f"/ls/{pid}/versions").json() == {
        "versions": [],
        "model_version": "activeseg-no-model",
    }
    image_id = upload_one(admin, pid, "a.png", 8)
    add_stored_scores(stack, pid, {image_id: np.zeros((H, W), np.uint8)}, {image_id: 0.5})
    with stack.db.session() as s:  # type: ignore[attr-defined]
        for number, state in ((2, ModelState.ready), (3, ModelState.failed)):
            s.add(
                ModelVersion(
                    project_id=pid, version=number, state=state.value, config={}, member_keys=[]
                )
            )
    # Label Studio sends its project uid; it changes nothing.
    r = admin.get(f"/ls/{pid}/versions", params={"project": f"{pid}.1700000000"})
    assert r.status_code == 200
    assert r.json() == {
        "versions": [f"activeseg-p{pid}-v2", f"activeseg-p{pid}-v1"],
        "model_version": f"activeseg-p{pid}-v1",
    }
    setup = admin.post(f"/ls/{pid}/setup", json={"project": "1.1", "schema": CONFIG})
    assert setup.json()["model_version"] == r.json()["model_version"]


def test_setup_accepts_a_subset_of_the_classes_and_names_unknown_labels(
    stack: Stack, admin: httpx.Client
) -> None:
    pid = int(make_project(admin, n_classes=3)["id"])
    subset = CONFIG.replace('<Label value="class1"/>', "")
    assert admin.post(f"/ls/{pid}/setup", json={"schema": subset}).status_code == 200
    bad = CONFIG.replace('<Label value="class1"/>', '<Label value="dog"/><Label value="cat"/>')
    r = admin.post(f"/ls/{pid}/setup", json={"project": "1.1", "schema": bad})
    assert r.status_code == 422
    assert r.json()["detail"] == (
        f"label_config's BrushLabels name 2 label(s) that are not classes of project {pid}: "
        f"dog, cat; known classes: class0, class1, class2 (GET /ls/{pid}/label_config gives "
        "a config of all of them)"
    )
    huge = CONFIG.replace('<Label value="class1"/>', f'<Label value="{"z" * 5000}"/>' * 3)
    r = admin.post(f"/ls/{pid}/setup", json={"schema": huge})
    assert r.status_code == 422 and len(r.json()["detail"]) < 600
    assert "z" * 301 not in r.json()["detail"]
