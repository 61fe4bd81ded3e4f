"""Against a real Label Studio server: it connects to /ls/{project_id} as its ML backend,
fetches brush predictions, and sends annotations back by webhook.

Deselected by default (it needs `pip install label-studio`, ~1 GB, and a minute to start):
run with ``ACTIVESEG_LABEL_STUDIO=1 pytest -m labelstudio tests/integrations``. The
``label-studio`` command is taken from ``ACTIVESEG_LABEL_STUDIO_BIN`` or the PATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from activeseg.core.tables import Job, LabelRevision
from activeseg.integrations.brush_rle import mask_to_rle, rle_to_mask
from tests.conftest import Stack, free_port
from tests.integrations.helpers import add_scored_model, project_with_images

pytestmark = [
    pytest.mark.labelstudio,
    pytest.mark.skipif(
        os.environ.get("ACTIVESEG_LABEL_STUDIO") != "1",
        reason="real Label Studio test: set ACTIVESEG_LABEL_STUDIO=1 (needs `pip install "
        "label-studio`; the command from ACTIVESEG_LABEL_STUDIO_BIN or PATH)",
    ),
]
H, W = 24, 32
USER, PASSWORD, TOKEN = "ls-admin@example.com", "ls-pass-123456", "lstoken0123456789abcdef"


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    binary = os.environ.get("ACTIVESEG_LABEL_STUDIO_BIN") or shutil.which("label-studio")
    if not binary:
        # Opted in (ACTIVESEG_LABEL_STUDIO=1) but nothing to run: that is a failed set-up.
        pytest.fail(
            "no label-studio command: pip install label-studio, or set ACTIVESEG_LABEL_STUDIO_BIN"
        )
    data: Path = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    # Its SSRF guard refuses loopback URLs; the service under test listens on 127.0.0.1.
    env = dict(
        os.environ,
        LABEL_STUDIO_BASE_DATA_DIR=str(data),
        SSRF_PROTECTION_ENABLED="false",
        ML_BLOCK_LOCAL_IP="false",
        USE_DEFAULT_BANNED_SUBNETS="false",
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


@pytest.mark.parametrize("stack", ["sqlite"], indirect=True)
def test_label_studio_uses_the_service_as_ml_backend(
    stack: Stack, admin: httpx.Client, label_studio: httpx.Client
) -> None:
    ls = label_studio
    project, images = project_with_images(admin, n=1, h=H, w=W, seed=30)
    pid, image = project["id"], images[0]
    prediction = np.zeros((H, W), np.uint8)
    prediction[4:20, 6:26] = 1
    add_scored_model(stack, pid, {image["id"]: prediction}, {image["id"]: 0.4})
    config = admin.get(f"/ls/{pid}/label_config").text

    r = ls.post("/api/projects", json={"title": "activeseg", "label_config": config})
    assert r.status_code == 201, r.text
    ls_project = r.json()["id"]
    r = ls.post(
        f"/api/projects/{ls_project}/import",
        json=[{"image": f"{stack.base_url}/images/{image['id']}/file"}],
    )
    assert r.status_code == 201, r.text
    [task] = ls.get("/api/tasks", params={"project": ls_project}).json()["tasks"]

    r = ls.post(
        "/api/ml",
        json={
            "url": f"{stack.base_url}/ls/{pid}",
            "project": ls_project,
            "title": "activeseg",
            "auth_method": "BASIC_AUTH",
            "basic_auth_user": "labelstudio",
            "basic_auth_pass": stack.admin_token,
        },
    )
    assert r.status_code == 201, r.text
    ml = r.json()
    assert ml["state"] == "CO", ml  # connected: /health and /setup answered

    r = ls.post(
        "/api/dm/actions",
        params={"id": "retrieve_tasks_predictions", "project": ls_project},
        json={"selectedItems": {"all": True, "excluded": []}},
    )
    assert r.status_code == 200, r.text
    preds = ls.get("/api/predictions", params={"task": task["id"]}).json()
    assert len(preds) == 1, preds
    got = preds[0]
    assert got["model_version"] == f"activeseg-p{pid}-v1"
    assert got["score"] == pytest.approx(1 - 0.4 / np.log(3), abs=1e-4)
    painted = {
        r["value"]["brushlabels"][0]: rle_to_mask(r["value"]["rle"], H, W) > 0
        for r in got["result"]
    }
    assert set(painted) == {"class0", "class1"}
    assert np.array_equal(painted["class1"], prediction == 1)

    # An annotation saved in Label Studio reaches /ls/{pid}/webhook.
    label = np.zeros((H, W), np.uint8)
    label[2:12, 3:15] = 255
    result = [
        {
            "from_name": "label",
            "to_name": "image",
            "type": "brushlabels",
            "original_width": W,
            "original_height": H,
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(label), "brushlabels": ["class2"]},
        }
    ]
    r = ls.post(
        "/api/webhooks",
        json={
            "project": ls_project,
            "url": f"{stack.base_url}/ls/{pid}/webhook",
            "send_payload": True,
            "send_for_all_actions": False,
            "actions": ["ANNOTATION_CREATED", "ANNOTATION_UPDATED"],
            "headers": {"Authorization": f"Bearer {stack.admin_token}"},
        },
    )
    assert r.status_code == 201, r.text
    r = ls.post(f"/api/tasks/{task['id']}/annotations", json={"result": result})
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 300
    while True:
        with stack.db.session() as s:  # type: ignore[attr-defined]
            rev = s.scalar(select(LabelRevision).where(LabelRevision.image_id == image["id"]))
            retrain = s.scalar(select(Job).where(Job.project_id == pid, Job.kind == "retrain"))
        if rev is not None or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert rev is not None and rev.source == "webhook", "no annotation arrived"
    assert retrain is not None
    stored = admin.get(f"/images/{image['id']}/mask").content
    import io

    from PIL import Image as PILImage

    mask = np.asarray(PILImage.open(io.BytesIO(stored)))
    assert np.array_equal(mask == 2, label > 0) and set(np.unique(mask)) == {2, 255}
