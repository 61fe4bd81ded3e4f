"""`activeseg report MODEL` and `activeseg link PATH` print signed links that open without a
token (real subprocesses against a running server)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np

from activeseg.core.tables import ModelVersion
from tests.client.test_cli import cli, run  # noqa: F401 - the `cli` fixture
from tests.conftest import Stack
from tests.integrations.helpers import add_scored_model
from tests.utils import image_bytes, png_bytes, upload


def test_report_and_link_print_links_that_open_without_a_token(
    stack: Stack,
    admin: httpx.Client,
    cli: dict[str, Any],  # noqa: F811
) -> None:
    env = cli["env"]
    made = run(env, "project", "create", f"links-{id(cli)}", "--classes", "a,b,c")
    pid = json.loads(made.stdout)["id"]
    data = image_bytes(16, 16, seed=61)
    image_id = upload(admin, pid, ("c.png", data)).json()["data"][0]["image"]["id"]
    mv = add_scored_model(stack, pid, {image_id: np.zeros((16, 16), np.uint8)}, {image_id: 0.1})

    # No report yet: the server's explanation, exit 1.
    proc = run(env, "report", str(mv), check=False)
    assert proc.returncode == 1 and "not computed yet" in proc.stderr

    plot = png_bytes(np.full((6, 9), 200, np.uint8))
    with stack.db.session() as s:  # type: ignore[attr-defined]
        row = s.get(ModelVersion, mv)
        row.report = {
            "model": {"id": mv, "version": 1, "project_name": "cli-links"},
            "plots": {"reliability": stack.store.put(plot)},  # type: ignore[attr-defined]
        }
    out = run(env, "report", str(mv))
    url = out.stdout.strip()
    assert url.startswith(f"{stack.base_url}/models/{mv}/report.html?exp=") and "&sig=" in url
    assert "open it in a browser; it works until" in out.stderr
    with httpx.Client(timeout=60) as anonymous:
        page = anonymous.get(url)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "cli-links: model version 1 report" in page.text
        assert anonymous.get(url.split("?")[0]).status_code == 401
    assert json.loads(run(env, "report", str(mv), "--json").stdout)["plots"] == row.report["plots"]

    out = run(env, "link", f"/images/{image_id}/file", "--ttl", "120")
    file_url = out.stdout.strip()
    with httpx.Client(timeout=60) as anonymous:
        r = anonymous.get(file_url)
    assert r.status_code == 200 and r.content == data
    assert int(r.headers["cache-control"].rsplit("=", 1)[1]) <= 120
    proc = run(env, "link", f"/projects/{pid}", check=False)
    assert proc.returncode == 1 and "cannot be signed" in proc.stderr and "HTTP 422" in proc.stderr


def test_labelstudio_connect_prints_a_backend_url_that_works_without_a_header(
    stack: Stack,
    admin: httpx.Client,
    cli: dict[str, Any],  # noqa: F811
    tmp_path: Any,
) -> None:
    env = cli["env"]
    made = run(env, "project", "create", f"ls-{id(cli)}", "--classes", "bg,cell")
    pid = json.loads(made.stdout)["id"]
    out = run(env, "labelstudio", "connect", str(pid), "--config-out", str(tmp_path / "c.xml"))
    url, xml = out.stdout.split("\n", 1)
    assert url.startswith(f"{stack.base_url}/ls/{pid}/k/lsk_")
    assert '<Label value="cell"' in xml and (tmp_path / "c.xml").read_text().strip() == xml.strip()
    assert "ML_BLOCK_LOCAL_IP=false SSRF_PROTECTION_ENABLED=false" in out.stderr
    with httpx.Client(timeout=60) as label_studio:  # no Authorization header, as LS calls it
        assert label_studio.get(f"{url}/health").json()["status"] == "UP"
    [key] = admin.get(f"/projects/{pid}/label-studio/keys").json()["data"]
    assert key["prefix"] == url.rsplit("/k/", 1)[1][:12] and key["revoked_at"] is None
