"""Factories for tests: users, projects, images and masks made by hand."""

from __future__ import annotations

import io
import itertools
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
from PIL import Image

# Debian's Chromium, headless, as root, on a machine without outside network.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_counter)}-{np.random.default_rng().integers(1 << 30)}"


def make_user(admin: httpx.Client, role: str) -> tuple[int, str]:
    r = admin.post("/users", json={"name": unique(role), "role": role})
    assert r.status_code == 201, r.text
    body = r.json()
    return body["user"]["id"], body["secret"]


def make_project(client: httpx.Client, n_classes: int = 3, **settings: Any) -> dict[str, Any]:
    classes = [
        {"id": i, "name": f"class{i}", "colour": f"#{i * 40:02x}8000"} for i in range(n_classes)
    ]
    r = client.post(
        "/projects", json={"name": unique("proj"), "classes": classes, "settings": settings}
    )
    assert r.status_code == 201, r.text
    return r.json()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def grid_project(client: httpx.Client, **overrides: Any) -> dict[str, Any]:
    """A 3-class project of 16-px grid tiles, 6 regions per round, no per-image cap, 60 s
    leases: the small queue most API tests lease from (``overrides`` change any setting)."""
    settings: dict[str, Any] = {
        "region_kind": "grid",
        "region_size": 16,
        "batch_size": 6,
        "per_image_cap": None,
        "lease_seconds": 60,
        **overrides,
    }
    return make_project(client, n_classes=3, **settings)


def image_bytes(
    h: int = 32, w: int = 48, seed: int = 0, fmt: str = "PNG", rgb: bool = True
) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(h, w, 3) if rgb else (h, w), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def upload(
    client: httpx.Client, project_id: int, *files: tuple[str, bytes], **form: str
) -> httpx.Response:
    return client.post(
        f"/projects/{project_id}/images",
        files=[("files", (name, data, "application/octet-stream")) for name, data in files],
        data=form,
    )


def run_job_inline(
    stack: Any, project_id: int, kind: str, params: dict[str, Any] | None = None
) -> int:
    """Request a job and run it, and its follow-ups, in this process (no broker); returns its
    id."""
    from activeseg.core.services.jobs import request_job
    from activeseg.jobs.registry import inline_dispatcher

    with stack.db.session() as s:
        job, _ = request_job(s, project_id=project_id, kind=kind, params=params or {})
        job_id = int(job.id)
    inline_dispatcher(stack.db, stack.store, stack.settings)(job_id)
    return job_id


def build_queue_inline(stack: Any, project_id: int) -> int:
    """Request a build_queue job and run it in this process (no broker); returns its id."""
    return run_job_inline(stack, project_id, "build_queue")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium_browser() -> Iterator[Any]:
    """The headless Debian Chromium under Playwright, for a module-scoped ``browser``
    fixture: ``browser = pytest.fixture(scope="module")(chromium_browser)``."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def untrained_version(
    stack: Any, project_id: int, *, in_channels: int, n_classes: int, depth: int, activate: bool
) -> int:
    """A ready model version of freshly initialised weights (a tiny UNet, one softmax) stored
    straight into the stack's database and blob store: for tests of what runs after training
    (scoring, metrics) that must not spend minutes training. ``activate`` makes it the
    project's active version."""
    from activeseg.core.tables import ModelState, ModelVersion, Project
    from activeseg.models.checkpoint import state_to_bytes
    from activeseg.models.config import ModelConfig
    from activeseg.models.unet import UNet

    config = ModelConfig(
        in_channels=in_channels, n_classes=n_classes, method="single", depth=depth, base_channels=4
    )
    key = stack.store.put(state_to_bytes(UNet.from_config(config).state_dict()))
    with stack.db.session() as s:
        mv = ModelVersion(
            project_id=project_id,
            version=1,
            state=ModelState.ready.value,
            config=config.model_dump(),
            member_keys=[key],
        )
        s.add(mv)
        s.flush()
        if activate:
            s.get(Project, project_id).active_model_id = mv.id
        return int(mv.id)


@contextmanager
def sql_statements(stack: Any) -> Iterator[list[str]]:
    """The SQL the stack's engine sends meanwhile (its server runs in this process)."""
    from sqlalchemy import event

    seen: list[str] = []

    def note(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql)

    engine = stack.db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)
