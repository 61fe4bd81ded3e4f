"""Against a real Label Studio server, set up only as the README says: it connects to the
ML-backend URL activeseg printed, creates its own webhook, fetches brush predictions (decoded
here with Label Studio's own converter), opens task images through signed links, and sends
annotations back: create, update, skip, empty, delete.

``make test`` installs Label Studio into ``.venv-ls`` (scripts/label_studio.sh) and sets
``ACTIVESEG_LABEL_STUDIO=1``; a plain ``pytest`` skips this module. The ``label-studio``
command is taken from ``ACTIVESEG_LABEL_STUDIO_BIN``, ``.venv-ls/bin`` or the PATH.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image as PILImage
from sqlalchemy import select

from activeseg.core.tables import Job, LabelRevision
from tests.conftest import Stack, free_port
from tests.integrations.helpers import (
    add_scored_model,
    brush_results,
    project_with_images,
    put_mask,
)

pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.skipif(
        os.environ.get("ACTIVESEG_LABEL_STUDIO") != "1",
        reason="real Label Studio test: `make test` runs it (ACTIVESEG_LABEL_STUDIO=1 after "
        "scripts/label_studio.sh installed Label Studio into .venv-ls)",
    ),
]
H, W = 24, 32
USER, PASSWORD, TOKEN = "ls-admin@example.com", "ls-pass-123456", "lstoken0123456789abcdef"


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    local = Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"
    binary = (
        os.environ.get("ACTIVESEG_LABEL_STUDIO_BIN")
        or (str(local) if local.exists() else None)
        or shutil.which("label-studio")
    )
    if not binary:
        # Opted in (ACTIVESEG_LABEL_STUDIO=1) but nothing to run: that is a failed set-up.
        pytest.fail(
            "no label-studio command: pip install label-studio, or set ACTIVESEG_LABEL_STUDIO_BIN"
        )
    data: Path = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    # Its SSRF guard refuses loopback URLs and the service under test listens on 127.0.0.1:
    # exactly the two settings the README names, nothing else.
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        SENTRY_DSN="",
        SSRF_PROTECTION_ENABLED="false",
        ML_BLOCK_LOCAL_IP="false",
    )
    log = (data / "ls.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data),
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--user-token",
            TOKEN,
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Label Studio did not start; see {data / 'ls.log'}")
            time.sleep(1)
        _enable_legacy_tokens(url)
        with httpx.Client(
            base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=60
        ) as client:
            yield client
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()


def _enable_legacy_tokens(url: str) -> None:
    """Recent Label Studio versions turn the `--user-token` kind of token off by default."""
    with httpx.Client(base_url=url, follow_redirects=True, timeout=30) as web:
        web.get("/user/login/")
        web.post(
            "/user/login/",
            data={
                "email": USER,
                "password": PASSWORD,
                "csrfmiddlewaretoken": web.cookies.get("csrftoken", ""),
            },
            headers={"Referer": f"{url}/user/login/"},
        )
        r = web.post(
            "/api/jwt/settings",
            json={"api_tokens_enabled": True, "legacy_api_tokens_enabled": True},
            headers={"X-CSRFToken": web.cookies.get("csrftoken", ""), "Referer": f"{url}/"},
        )
        if r.status_code == 404:
            return  # an older Label Studio: legacy tokens are simply on
        assert r.status_code in (200, 201), r.text


def _stroke(r0: int, r1: int, c0: int, c1: int, cls: int) -> np.ndarray:
    mask = np.full((H, W), 255, np.uint8)
    mask[r0:r1, c0:c1] = cls
    return mask


def _mask(admin: httpx.Client, image_id: int) -> np.ndarray:
    r = admin.get(f"/images/{image_id}/mask")
    assert r.status_code == 200, r.text
    return np.array(PILImage.open(io.BytesIO(r.content)))


def _revisions(admin: httpx.Client, image_id: int) -> int:
    return int(admin.get(f"/images/{image_id}/revisions").json()["count"])


def _webhook_calls(stack: Stack) -> float:
    """Requests our server answered on the keyed webhook route (Prometheus counter)."""
    text = httpx.get(f"{stack.base_url}/metrics", timeout=30).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("activeseg_http_request_duration_seconds_count{") and (
            "/k/{key}/webhook" in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _after_webhook(stack: Stack, before: float, want: int = 1) -> None:
    """Wait until Label Studio's webhook for the last action has been answered."""
    deadline = time.monotonic() + 120
    while _webhook_calls(stack) < before + want:
        assert time.monotonic() < deadline, "Label Studio's webhook never arrived"
        time.sleep(0.2)


def _ls_prediction_mask(rle: list[int]) -> np.ndarray:
    """Label Studio's own converter: RLE -> RGBA -> the alpha plane."""
    try:
        from label_studio_converter.brush import decode_rle
    except ImportError:
        from label_studio_sdk.converter.brush import decode_rle
    return np.asarray(decode_rle(rle)).reshape(H, W, 4)[:, :, 3]


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_label_studio_set_up_as_the_readme_says(
    stack: Stack, admin: httpx.Client, label_studio: httpx.Client
) -> None:
    ls = label_studio
    project, images = project_with_images(admin, n=2, h=H, w=W, seed=30)
    pid, scored, labelled = project["id"], images[0], images[1]
    prediction = np.zeros((H, W), np.uint8)
    prediction[4:20, 6:26] = 1
    prediction[:3, :] = 2
    add_scored_model(stack, pid, {scored["id"]: prediction}, {scored["id"]: 0.4})
    before_ls = np.full((H, W), 255, np.uint8)
    before_ls[:12, :] = 1  # labels made through activeseg before Label Studio
    put_mask(admin, labelled["id"], before_ls)

    # README step 1: the ML-backend URL and the label config, from activeseg.
    backend_url = admin.post(f"/projects/{pid}/label-studio/keys").json()["backend_url"]
    config = admin.get(f"/ls/{pid}/label_config").text
    # Step 2: a Label Studio project with that config and activeseg's tasks (signed links).
    r = ls.post("/api/projects", json={"title": "activeseg", "label_config": config})
    assert r.status_code == 201, r.text
    ls_project = r.json()["id"]
    exported = admin.get(f"/projects/{pid}/export", params={"format": "labelstudio"}).json()
    r = ls.post(f"/api/projects/{ls_project}/import", json=[{"data": t["data"]} for t in exported])
    assert r.status_code == 201, r.text
    tasks = ls.get("/api/tasks", params={"project": ls_project}).json()["tasks"]
    by_image = {}
    for task in tasks:
        match = re.search(r"/images/(\d+)/file", task["data"]["image"])
        assert match, task["data"]
        by_image[int(match[1])] = task
    assert set(by_image) == {scored["id"], labelled["id"]}

    # The editor's browser loads the task's image with no Authorization header.
    url = ls.get(f"/api/tasks/{by_image[scored['id']]['id']}").json()["data"]["image"]
    with httpx.Client(timeout=30) as browser:
        got = browser.get(url)
        assert got.status_code == 200, got.text
        assert got.content == admin.get(f"/images/{scored['id']}/file").content
        tampered = re.sub(r"sig=([^&])", lambda m: "sig=" + ("A" if m[1] != "A" else "B"), url)
        assert tampered != url and browser.get(tampered).status_code == 403

    # Step 3: connect the model with that URL, no authentication; Label Studio makes its own
    # webhook (no headers) and annotations must arrive through it.
    r = ls.post(
        "/api/ml",
        json={
            "url": backend_url,
            "project": ls_project,
            "title": "activeseg",
            "auth_method": "NONE",
        },
    )
    assert r.status_code == 201, r.text
    ml = r.json()
    assert ml["state"] == "CO", ml  # connected: /health and /setup answered
    hooks = ls.get("/api/webhooks", params={"project": ls_project}).json()
    assert [h["url"] for h in hooks] == [backend_url + "/webhook"]
    assert hooks[0]["headers"] == {}
    versions = ls.get(f"/api/ml/{ml['id']}/versions")
    assert versions.status_code == 200, versions.text
    assert f"activeseg-p{pid}-v1" in json.dumps(versions.json())

    # Predictions: brush masks that Label Studio's converter decodes to ours; nothing empty.
    r = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": ls_project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert r.status_code == 200, r.text
    preds = ls.get("/api/predictions", params={"task": by_image[scored["id"]]["id"]}).json()
    assert len(preds) == 1, preds
    got_pred = preds[0]
    assert got_pred["model_version"] == f"activeseg-p{pid}-v1"
    painted = {
        res["value"]["brushlabels"][0]: _ls_prediction_mask(res["value"]["rle"]) > 0
        for res in got_pred["result"]
    }
    assert set(painted) == {"class0", "class1", "class2"}
    for cls in range(3):
        assert np.array_equal(painted[f"class{cls}"], prediction == cls), cls
    other = ls.get("/api/predictions", params={"task": by_image[labelled["id"]]["id"]}).json()
    assert all(p["result"] for p in other), other  # never an empty prediction stored

    # Annotations through Label Studio's API, delivered by the webhook it made itself.
    task_id = by_image[labelled["id"]]["id"]
    revs = _revisions(admin, labelled["id"])
    calls = _webhook_calls(stack)
    r = ls.post(
        f"/api/tasks/{task_id}/annotations",
        json={"result": brush_results(_stroke(8, 18, 4, 14, 2), "label", "image")},
    )
    assert r.status_code == 201, r.text
    annotation = r.json()["id"]
    _after_webhook(stack, calls)
    expected = before_ls.copy()
    expected[8:18, 4:14] = 2  # only the stroke changed: labels outside it are kept
    assert np.array_equal(_mask(admin, labelled["id"]), expected)
    assert _revisions(admin, labelled["id"]) == revs + 1

    calls = _webhook_calls(stack)
    r = ls.patch(
        f"/api/annotations/{annotation}",
        json={"result": brush_results(_stroke(20, 24, 0, 8, 0), "label", "image")},
    )
    assert r.status_code == 200, r.text
    _after_webhook(stack, calls)
    expected = before_ls.copy()
    expected[20:24, 0:8] = 0  # the update replaced the annotation's own stroke
    assert np.array_equal(_mask(admin, labelled["id"]), expected)

    for body in ({"result": [], "was_cancelled": True}, {"result": []}):  # skip, then empty
        calls = _webhook_calls(stack)
        revs = _revisions(admin, labelled["id"])
        r = ls.post(f"/api/tasks/{task_id}/annotations", json=body)
        assert r.status_code == 201, r.text
        _after_webhook(stack, calls)
        assert _revisions(admin, labelled["id"]) == revs, body
        assert np.array_equal(_mask(admin, labelled["id"]), expected)

    calls = _webhook_calls(stack)
    r = ls.delete(f"/api/annotations/{annotation}")
    assert r.status_code == 204, r.text
    _after_webhook(stack, calls)
    assert np.array_equal(_mask(admin, labelled["id"]), before_ls)
    with stack.db.session() as s:  # type: ignore[attr-defined]
        sources = [
            rev.source
            for rev in s.scalars(
                select(LabelRevision)
                .where(LabelRevision.image_id == labelled["id"])
                .order_by(LabelRevision.revision)
            )
        ]
        retrain = s.scalar(select(Job).where(Job.project_id == pid, Job.kind == "retrain"))
    assert sources == ["upload", "webhook", "webhook", "webhook"]
    assert retrain is not None
