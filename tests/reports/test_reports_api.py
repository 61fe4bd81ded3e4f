"""Reports end to end: a retrain job requests the evaluate job, which stores the report; the
API serves it as JSON, PNG plots and a self-contained HTML page that a real headless Chromium
renders without errors. Jobs run through the inline job runner (no broker)."""

from __future__ import annotations

import io
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from activeseg.admin.simulation import write_csv
from activeseg.core.project_config import ModelSettings, ProjectSettings
from activeseg.core.services.jobs import request_job
from activeseg.core.tables import Job, ModelVersion, User
from activeseg.datasets.digits import digits
from activeseg.datasets.importer import import_dataset
from activeseg.jobs.registry import inline_dispatcher
from activeseg.reports.detection import detection_verdict
from tests.conftest import Stack
from tests.utils import chromium_browser, unique

TINY = ModelSettings(
    method="mc_dropout",
    mc_samples=3,
    depth=2,
    base_channels=8,
    steps=8,
    batch_size=4,
    patch_size=64,
    patience=None,
)
PLOTS = {"reliability", "error_detection_roc", "shift", "learning_curve"}

pytestmark = pytest.mark.slow


def run_inline(stack: Stack, job_id: int) -> Job:
    inline_dispatcher(stack.db, stack.store, stack.settings)(job_id)  # type: ignore[arg-type]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job = s.get(Job, job_id)
        s.expunge(job)
    assert job.state == "succeeded", job.error
    return job


@pytest.fixture(scope="module")
def trained(stack: Stack) -> dict[str, int]:
    """A digits project (6 pool images fully labelled, 3 val, 3 test) and one retrain, whose
    chain ran the evaluate job."""
    with stack.db.session() as s:  # type: ignore[attr-defined]
        owner = User(name=unique("owner"), role="engineer")
        s.add(owner)
        s.flush()
        imported = import_dataset(
            s,
            stack.store,  # type: ignore[arg-type]
            owner,
            unique("reports"),
            digits(12, seed=3),
            ProjectSettings(region_kind="grid", region_size=16, model=TINY),
            val_fraction=0.25,
            test_fraction=0.25,
            label_pool=True,
        )
        pid = imported.project.id
        job, _ = request_job(s, project_id=pid, kind="retrain", params={"activate": False})
        job_id = job.id
    mv_id = run_inline(stack, job_id).result["model_version_id"]  # type: ignore[index]
    return {"pid": pid, "mv": mv_id}


def test_retrain_stores_a_report_served_as_json_png_and_html(
    stack: Stack, trained: dict[str, int], admin: httpx.Client
) -> None:
    pid, mv = trained["pid"], trained["mv"]
    jobs = admin.get(f"/projects/{pid}/jobs").json()["data"]
    [evaluate] = [j for j in jobs if j["kind"] == "evaluate"]
    assert evaluate["state"] == "succeeded" and evaluate["progress"] == 1.0
    r = admin.get(f"/models/{mv}/report")
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["split"] == "val" and report["model"]["n_samples"] == 3
    cal = report["calibration"]
    assert cal["n_images"] == 3 and cal["temperature"] is not None
    assert cal["before"]["ece"] >= 0 and cal["after"]["nll"] is not None
    measures = {row["measure"] for row in report["error_detection"]["rows"]}
    assert {"entropy", "margin", "least_confidence", "entropy_t", "mutual_information"} <= measures
    det = report["error_detection"]
    assert det["verdict"] == detection_verdict(det)
    assert det["verdict"].startswith(("Best error detector", "No uncertainty measure finds"))
    # foreground and per-region figures beside the pixel ones, on the project's grid tiles
    assert det["foreground"]["n_pixels"] > 0 and det["regions"]["kind"] == "grid 16"
    assert det["regions"]["n_regions"] == 3 * (64 // 16) ** 2  # 3 fully labelled val canvases
    assert all("foreground" in r and "region" in r for r in det["rows"])
    assert cal["foreground"]["before"]["ece"] is not None
    assert cal["regions"]["n_regions"] == det["regions"]["n_regions"]
    assert set(report["shift"]["conditions"]) >= {"clean", "gaussian_noise", "uniform_noise"}
    [point] = report["learning_curve"]["points"]
    assert point["split"] == "test" and point["labelled_fraction"] == pytest.approx(1.0)
    assert set(report["plots"]) == PLOTS
    # read live: the retrain opened no acquisition round yet
    assert (
        report["rounds"]["rounds"] == [] and "No acquisition round" in report["rounds"]["summary"]
    )

    png = admin.get(f"/models/{mv}/plots/reliability.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] > 100
    missing = admin.get(f"/models/{mv}/plots/nope.png")
    assert missing.status_code == 404 and "reliability" in missing.json()["detail"]
    page = admin.get(f"/models/{mv}/report.html")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count("data:image/png;base64,") == len(PLOTS)
    assert "AUROC foreground" in page.text and "AUROC regions" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no external assets


def test_missing_report_is_a_clear_404_and_post_recomputes(
    stack: Stack, trained: dict[str, int], admin: httpx.Client
) -> None:
    mv = trained["mv"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.get(ModelVersion, mv).report = None
    r = admin.get(f"/models/{mv}/report")
    assert r.status_code == 404 and "not computed yet" in r.json()["detail"]
    assert admin.get(f"/models/{mv}/report.html").status_code == 404
    assert admin.get("/models/999999/report").status_code == 404
    job = admin.post(f"/models/{mv}/report", json={"split": "test"})
    assert job.status_code == 202, job.text
    assert job.json()["kind"] == "evaluate"
    run_inline(stack, job.json()["id"])
    report = admin.get(f"/models/{mv}/report").json()
    assert report["split"] == "test" and "out-of-sample" in report["calibration"]["note"]
    assert admin.post(f"/models/{mv}/report", json={"split": "pool"}).status_code == 422


def test_baseline_csv_is_drawn_in_later_reports(
    stack: Stack, trained: dict[str, int], admin: httpx.Client, tmp_path: Any
) -> None:
    pid, mv = trained["pid"], trained["mv"]
    assert admin.get(f"/projects/{pid}/baseline").status_code == 404
    bad = admin.post(f"/projects/{pid}/baseline", files={"file": ("x.csv", b"a,b\n1,2\n")})
    assert bad.status_code == 422 and "lacks column" in bad.json()["detail"]
    rows = [
        {"label": "random (grid)", "strategy": "random", "seed": seed, "round": rnd,
         "labelled_regions": 5 * rnd, "labelled_pixels": 900 * rnd,
         "labelled_fraction": 0.05 * rnd, "test_miou": 0.1 * rnd + 0.01 * seed}
        for seed in (0, 1) for rnd in (1, 2)
    ]  # fmt: skip
    write_csv(rows, tmp_path / "curve.csv")
    r = admin.post(
        f"/projects/{pid}/baseline",
        files={"file": ("curve.csv", (tmp_path / "curve.csv").read_bytes())},
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["n_rows"] == 4 and body["curves"][0]["points"][1]["n"] == 2
    run_inline(stack, body["job"]["id"])
    curve = admin.get(f"/models/{mv}/report").json()["learning_curve"]
    assert curve["baseline"]["source"] == body["baseline_key"]
    assert curve["baseline"]["curves"][0]["label"] == "random (grid)"
    assert admin.get(f"/projects/{pid}/baseline").json()["baseline_key"] == body["baseline_key"]
    # A later evaluate job without the parameter keeps the attached baseline.
    with stack.db.session() as s:  # type: ignore[attr-defined]
        job, _ = request_job(s, project_id=pid, kind="evaluate", params={"model_version_id": mv})
        job_id = job.id
    run_inline(stack, job_id)
    again = admin.get(f"/models/{mv}/report").json()["learning_curve"]["baseline"]
    assert again["source"] == body["baseline_key"]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        assert s.scalar(select(ModelVersion.report).where(ModelVersion.id == mv)) is not None


browser = pytest.fixture(scope="module")(chromium_browser)


@pytest.mark.parametrize("stack", ["postgresql"], indirect=True)
def test_report_page_renders_in_chromium(
    stack: Stack, trained: dict[str, int], browser: Any
) -> None:
    context = browser.new_context(
        extra_http_headers={"Authorization": f"Bearer {stack.admin_token}"}
    )
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda req: problems.append(f"failed {req.url}"))
    response = page.goto(f"{stack.base_url}/models/{trained['mv']}/report.html")
    assert response is not None and response.status == 200
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(
        "img",
        "els => els.map(e => ({id: e.id, ok: e.complete && e.naturalWidth > 0,"
        " w: e.naturalWidth}))",
    )
    assert {i["id"] for i in images} == {f"plot-{name}" for name in PLOTS}
    assert all(i["ok"] for i in images), images
    assert page.locator("h1").inner_text().endswith("model version 1 report")
    assert page.locator("table").count() >= 4
    assert problems == []
    shot = page.screenshot(full_page=True)
    assert np.asarray(Image.open(io.BytesIO(shot))).std() > 0
    context.close()
