"""The annotator page in a real headless Chromium against a real server (PostgreSQL stack).

An annotator logs in, picks the project and labels three tasks: by clicking a class button,
by a number key + Enter, and by painting a patch with the brush. The revisions in the
database must be exactly those three, with the chosen classes in the task regions.
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect
from sqlalchemy import select

from activeseg.core.services.jobs import request_job
from activeseg.core.services.scores import ScoredImage
from activeseg.core.tables import Image as ImageRow
from activeseg.core.tables import (
    ImageRegionScores,
    ImageScore,
    LabelRevision,
    ModelVersion,
    Project,
    Task,
)
from activeseg.jobs.registry import inline_dispatcher
from activeseg.jobs.score_pool import encode_heatmaps
from activeseg.uncertainty.regions import grid_regions
from tests.conftest import Stack
from tests.utils import (
    build_queue_inline,
    chromium_browser,
    image_bytes,
    make_project,
    make_user,
    png_bytes,
    unique,
    upload,
)

CLASSES = [
    {"id": 0, "name": "background", "colour": "#3b82f6"},
    {"id": 1, "name": "cell", "colour": "#f97316"},
    {"id": 2, "name": "nucleus", "colour": "#22c55e"},
]
SIZE, TILE = 64, 16

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["postgresql"], indirect=True),
]


def cells_image(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 64x64 RGB picture of a few cells with nuclei, its class map (0 background, 1 cell,
    2 nucleus) and a boundary-shaped "uncertainty" map: stand-ins for what a model gives."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[...] = [40, 48, 62]
    img += (xx + yy)[..., None] * 0.25
    classes = np.zeros((SIZE, SIZE), np.uint8)
    unsure = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(6):
        cy, cx = rng.uniform(6, SIZE - 6, 2)
        r = rng.uniform(5, 11)
        d = np.hypot(yy - cy, xx - cx)
        img[d < r] = [200, 150, 110]
        img[d < r * 0.45] = [110, 60, 130]
        classes[d < r] = 1
        classes[d < r * 0.45] = 2
        unsure = np.maximum(unsure, np.exp(-(((d - r) / 2.0) ** 2)))
        unsure = np.maximum(unsure, 0.8 * np.exp(-(((d - 0.45 * r) / 1.5) ** 2)))
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), classes, unsure


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


@pytest.fixture
def labelling(stack: Stack, admin: Any) -> dict[str, Any]:
    """3 classes, grid tiles of 16 on three 64x64 images, 6 tasks queued (no model yet),
    and an annotator who is a member."""
    settings = {"region_kind": "grid", "region_size": TILE, "batch_size": 6}
    r = admin.post(
        "/projects", json={"name": unique("web"), "classes": CLASSES, "settings": settings}
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    files = [(f"cells{i}.png", png_bytes(cells_image(i)[0])) for i in range(3)]
    up = upload(admin, pid, *files)
    assert up.status_code == 201, up.text
    build_queue_inline(stack, pid)
    assert admin.get(f"/projects/{pid}/queue").json()["queued"] == 6
    uid, token = make_user(admin, "annotator")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    name = admin.get("/users").json()["data"]
    name = next(u["name"] for u in name if u["id"] == uid)
    return {"pid": pid, "token": token, "name": name}


browser = pytest.fixture(scope="module")(chromium_browser)


@dataclass
class Tab:
    """A browser page at 1280x800 and the console errors it logged."""

    page: Any
    errors: list[str] = field(default_factory=list)


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    t = Tab(context.new_page())
    t.page.set_default_timeout(10_000)
    t.page.on("console", lambda m: t.errors.append(m.text) if m.type == "error" else None)
    t.page.on("pageerror", lambda e: t.errors.append(f"pageerror: {e}"))
    yield t
    context.close()


def current_task(page: Any, previous: str | None = None) -> dict[str, Any]:
    """Wait until a task other than ``previous`` is on screen; return what the page shows."""
    page.wait_for_function(
        "prev => { const id = document.getElementById('task-info').dataset.taskId;"
        " return id && id !== prev; }",
        arg=previous or "",
    )
    data = page.eval_on_selector("#task-info", "e => ({...e.dataset})")
    return {
        "id": data["taskId"],
        "image_id": int(data["imageId"]),
        "regions": json.loads(data["regions"]),
        "bbox": json.loads(data["bbox"]),
    }


def screen_xy(page: Any, x: float, y: float) -> tuple[float, float]:
    """Image coordinates -> page coordinates, kept on the canvas (a stroke must start there)."""
    view = json.loads(page.eval_on_selector("#canvas", "e => e.dataset.view"))
    box = page.locator("#canvas").bounding_box()
    px = box["x"] + (view["ox"] + x * view["scale"]) / view["dpr"]
    py = box["y"] + (view["oy"] + y * view["scale"]) / view["dpr"]
    return (
        min(max(px, box["x"] + 2), box["x"] + box["width"] - 2),
        min(max(py, box["y"] + 2), box["y"] + box["height"] - 2),
    )


def test_annotator_labels_three_tasks(
    stack: Stack, admin: Any, labelling: dict[str, Any], tab: Tab
) -> None:
    page = tab.page
    pid = labelling["pid"]
    page.goto(f"{stack.base_url}/annotate")
    expect(page.locator("#login")).to_be_visible()

    # A bad token: a clear error, still on the login form.
    page.fill("#token", "not-a-real-token")
    page.press("#token", "Enter")
    expect(page.locator("#login-error")).to_contain_text("refused")
    expect(page.locator("#status")).to_have_class(re.compile("error"))
    tab.errors.clear()  # the browser logs the refused request (401) as a console error

    page.fill("#token", labelling["token"])
    page.press("#token", "Enter")
    expect(page.locator("#who")).to_contain_text(labelling["name"])
    expect(page.locator("#who")).to_contain_text("annotator")
    page.select_option("#project", str(pid))
    assert f"project={pid}" in page.url
    expect(page.locator(".class-btn")).to_have_count(3)

    # 1) click a class button, then the Submit button.
    t1 = current_task(page)
    page.click(".class-btn[data-class-id='1']")
    expect(page.locator(".class-btn[data-class-id='1']")).to_have_attribute("aria-pressed", "true")
    page.click("#submit")

    # 2) number key 3 (class 2) and Enter.
    t2 = current_task(page, t1["id"])
    page.keyboard.press("3")
    expect(page.locator(".class-btn[data-class-id='2']")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("Enter")

    # 3) brush: fill the region with class 0, paint a stroke of class 2 through its middle
    #    row, from outside the region on the left to outside on the right.
    t3 = current_task(page, t2["id"])
    page.keyboard.press("b")
    expect(page.locator("#brush-tools")).to_be_visible()
    page.keyboard.press("1")
    page.click("#fill")
    page.keyboard.press("3")
    page.locator("#brush-size").fill("3")
    y0, x0, y1, x1 = t3["bbox"]
    row = y0 + 8
    page.mouse.move(*screen_xy(page, x0 - 6, row + 0.5))
    page.mouse.down()
    page.mouse.move(*screen_xy(page, x1 + 6, row + 0.5), steps=12)
    page.mouse.up()
    page.keyboard.press("Enter")

    t4 = current_task(page, t3["id"])
    expect(page.locator("#done")).to_have_attribute("data-submitted", "3")
    expect(page.locator("#queue")).to_contain_text("3 submitted")
    expect(page.locator("#overlay-note")).to_contain_text("No model yet")
    expect(page.locator("#lease")).to_contain_text("left")
    expect(page.locator("#status")).not_to_have_class(re.compile("error"))

    assert tab.errors == [], tab.errors

    # The database holds exactly the three answers.
    ids = [int(t["id"]) for t in (t1, t2, t3)]
    with stack.db.session() as s:  # type: ignore[attr-defined]
        revs = s.scalars(
            select(LabelRevision)
            .join(ImageRow, ImageRow.id == LabelRevision.image_id)
            .where(ImageRow.project_id == pid)
        ).all()
        assert sorted(r.task_id for r in revs) == sorted(ids)
        states = dict(s.execute(select(Task.id, Task.state).where(Task.project_id == pid)).all())
    assert [states[i] for i in ids] == ["submitted"] * 3
    assert states[int(t4["id"])] == "leased"

    masks = {
        t["image_id"]: decode_png(admin.get(f"/images/{t['image_id']}/mask").content)
        for t in (t1, t2, t3)
    }
    expected_outside = {i: np.ones((SIZE, SIZE), bool) for i in masks}
    for task, cls in ((t1, 1), (t2, 2)):
        y0, x0, y1, x1 = task["bbox"]
        assert (y1 - y0, x1 - x0) == (TILE, TILE)
        assert np.all(masks[task["image_id"]][y0:y1, x0:x1] == cls)
        expected_outside[task["image_id"]][y0:y1, x0:x1] = False
    y0, x0, y1, x1 = t3["bbox"]
    patch = masks[t3["image_id"]][y0:y1, x0:x1]
    assert set(np.unique(patch).tolist()) == {0, 2}
    assert np.all(patch[8, :] == 2)  # the stroke crossed the whole region
    assert patch[0, 0] == patch[0, -1] == patch[-1, 0] == patch[-1, -1] == 0
    assert 16 <= int((patch == 2).sum()) <= 4 * 16
    expected_outside[t3["image_id"]][y0:y1, x0:x1] = False
    for image_id, mask in masks.items():
        assert np.all(mask[expected_outside[image_id]] == 255), image_id


@pytest.fixture
def scored(stack: Stack, admin: Any) -> dict[str, Any]:
    """A project whose active model version has scored the pool: stand-in heatmaps and
    predictions written the way score_pool writes them, then a top-k queue built from them."""
    settings = {
        "region_kind": "grid",
        "region_size": TILE,
        "batch_size": 4,
        "measure": "entropy",
        "strategy": "top_k",
    }
    r = admin.post(
        "/projects", json={"name": unique("web"), "classes": CLASSES, "settings": settings}
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    pictures = [cells_image(10 + i) for i in range(2)]
    up = upload(admin, pid, *[(f"c{i}.png", png_bytes(p[0])) for i, p in enumerate(pictures)])
    assert up.status_code == 201, up.text
    image_ids = [d["image"]["id"] for d in up.json()["data"]]
    proposed: dict[tuple[int, int], int] = {}
    with stack.db.session() as s:  # type: ignore[attr-defined]
        mv = ModelVersion(project_id=pid, version=1, state="ready", config={"method": "single"})
        s.add(mv)
        s.flush()
        s.get(Project, pid).active_model_id = mv.id
        for image_id, (_, classes, unsure) in zip(image_ids, pictures, strict=True):
            key = stack.store.put(encode_heatmaps({"entropy": unsure}, classes))  # type: ignore[attr-defined]
            s.add(
                ImageScore(
                    model_version_id=mv.id,
                    image_id=image_id,
                    measure="entropy",
                    mean=float(unsure.mean()),
                    heatmap_key=key,
                    prediction_key=key,
                )
            )
            values, region_class = [], []
            for region in range((SIZE // TILE) ** 2):
                y0, x0 = TILE * (region // (SIZE // TILE)), TILE * (region % (SIZE // TILE))
                tile = np.s_[y0 : y0 + TILE, x0 : x0 + TILE]
                cls = int(np.bincount(classes[tile].ravel(), minlength=3).argmax())
                proposed[image_id, region] = cls
                values.append(float(unsure[tile].mean()))
                region_class.append(cls)
            item = ScoredImage.build(  # the image's region scores row, as score_pool writes it
                image_id,
                0,
                {"entropy": np.asarray(values)},
                np.asarray(region_class),
                grid_regions(SIZE, SIZE, TILE).centroids,
                np.ones(len(values), np.bool_),
                ("grid", TILE, 0.0),
            )
            s.add(ImageRegionScores(**item.row(mv.id)))
        job, _ = request_job(s, project_id=pid, kind="build_queue", params={})
    inline_dispatcher(stack.db, stack.store, stack.settings)(job.id)  # type: ignore[arg-type]
    uid, token = make_user(admin, "annotator")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    return {"pid": pid, "token": token, "proposed": proposed}


def test_proposal_and_heatmap_overlays(
    stack: Stack, scored: dict[str, Any], tab: Tab, tmp_path: Path
) -> None:
    """With a scored model the page pre-selects the proposed class, shows the proposal and
    the uncertainty heatmap; the screenshot of this state is the README's."""
    page = tab.page
    pid = scored["pid"]
    page.goto(f"{stack.base_url}/annotate?project={pid}")
    page.fill("#token", scored["token"])
    page.press("#token", "Enter")
    task = current_task(page)
    cls = scored["proposed"][task["image_id"], task["regions"][0]]
    button = page.locator(f".class-btn[data-class-id='{cls}']")
    expect(button).to_have_attribute("aria-pressed", "true")
    expect(button.locator(".proposed")).to_have_text("model")
    expect(page.locator("#show-proposal")).to_be_enabled()
    expect(page.locator("#show-heat")).not_to_be_checked()
    page.keyboard.press("u")
    expect(page.locator("#show-heat")).to_be_checked()
    page.mouse.move(5, 5)
    # The test keeps its screenshot with its other outputs; the README's picture comes from a
    # real trained model (scripts/screenshot_annotator.py).
    shot = tmp_path / "annotator.png"
    page.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.keyboard.press("Enter")  # accept the proposal
    shown = current_task(page, task["id"])
    expect(page.locator("#done")).to_have_attribute("data-submitted", "1")
    with stack.client(scored["token"]) as c:
        mask = decode_png(c.get(f"/images/{task['image_id']}/mask").content)
    y0, x0, y1, x1 = task["bbox"]
    assert np.all(mask[y0:y1, x0:x1] == cls)

    # Skip the other three (one as "not this project"); then the queue is empty.
    page.select_option("#skip-reason", "not this project")
    page.click("#skip")
    for _ in range(2):
        shown = current_task(page, shown["id"])
        expect(page.locator("#skip-reason")).to_have_value("unclear")
        page.keyboard.press("s")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#status")).to_contain_text("Nothing to label")
    expect(page.locator("#done")).to_contain_text("1 submitted, 3 skipped")
    with stack.db.session() as s:  # type: ignore[attr-defined]
        reasons = s.scalars(
            select(Task.skip_reason).where(Task.project_id == pid, Task.state == "skipped")
        ).all()
    assert sorted(reasons) == ["not this project", "unclear", "unclear"]
    assert tab.errors == [], tab.errors


def test_png_encoder_round_trips(stack: Stack, tab: Tab) -> None:
    """The page's own PNG encoder (stored blocks and CompressionStream) is read back exactly."""
    page = tab.page
    page.goto(f"{stack.base_url}/annotate")
    result = page.evaluate(
        """async () => {
            const m = await import('/static/png.js');
            const w = 301, h = 257;  // > 65535 bytes of scanlines: several stored blocks
            const px = new Uint8Array(w * h);
            for (let i = 0; i < px.length; i++) px[i] = (i * 7919 + (i >> 9)) % 256;
            px.fill(255, 0, 500);
            return {
                stored: m.toBase64(m.encodeGreyPngStored(px, w, h)),
                deflated: m.toBase64(await m.encodeGreyPng(px, w, h)),
                uuid: m.uuid4(),
            };
        }"""
    )
    idx = np.arange(301 * 257)
    expected = ((idx * 7919 + (idx >> 9)) % 256).astype(np.uint8).reshape(257, 301)
    expected.ravel()[:500] = 255
    for key in ("stored", "deflated"):
        im = Image.open(io.BytesIO(base64.b64decode(result[key])))
        assert im.mode == "L" and im.size == (301, 257)
        assert np.array_equal(np.asarray(im), expected), key
    assert len(base64.b64decode(result["deflated"])) < len(base64.b64decode(result["stored"]))
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", result["uuid"]
    )
    assert tab.errors == [], tab.errors


def test_page_and_static_files_are_served(stack: Stack, admin: Any) -> None:
    with stack.client() as c:
        page = c.get("/annotate")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "default-src 'self'" in page.headers["content-security-policy"]
        for name in re.findall(r'(?:src|href)="/static/([^"]+)"', page.text):
            assert c.get(f"/static/{name}").status_code == 200, name
        assert c.get("/static/png.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/static/..%2Fapp.py").status_code == 404
        assert c.get("/static/nope.js").status_code == 404
        assert c.get("/annotate/images/1.png").status_code == 401
    # A TIFF (which browsers cannot show) is served to the page as a PNG.
    pid = make_project(admin, n_classes=2)["id"]
    tiff = image_bytes(20, 30, seed=5, fmt="TIFF")
    up = upload(admin, pid, ("t.tif", tiff))
    assert up.status_code == 201, up.text
    image_id = up.json()["data"][0]["image"]["id"]
    r = admin.get(f"/annotate/images/{image_id}.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(decode_png(r.content), decode_png(tiff))
    assert admin.get("/annotate/images/999999.png").status_code == 404
