"""The annotator page's review mode, in headless Chromium against a real server (PostgreSQL),
at the laptop sizes people work on (1280x800, 1366x768).

A project of overlap 2 on one uniformly grey 64x64 image (16-px tiles): two annotators answer
the same three tiles differently (agreement 0.5 < 0.8), so all three are disputed. A reviewer
opens /annotate, switches to review mode (key m), sees the consensus and each answer drawn
over the region (switched with the arrow keys, labelled by annotator id and agreement), then:

- accepts the first task (key a): the consensus is the tile's label revision (source review);
- leaves review mode with the second task open (its review lease is given back), comes back
  (a heartbeat a minute keeps the lease), and rejects it with a reason (key r, the reason,
  Enter): both annotators see the rejection;
- corrects the third by painting (fill with one class, a brush stroke of another): the mask
  holds exactly the painted pixels.

An annotator's page has no review switch, and ``?mode=review`` does not put them in it.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from activeseg.core.tables import Task
from tests.conftest import Stack
from tests.utils import build_queue_inline, chromium_browser, make_user, png_bytes, unique
from tests.web.test_annotator_layout import assert_in_view_and_on_top, overlap, rect
from tests.web.test_annotator_page import Tab, current_task, screen_xy

CLASSES = [
    {"id": 0, "name": "background", "colour": "#3b82f6"},
    {"id": 1, "name": "cell", "colour": "#f97316"},
    {"id": 2, "name": "nucleus", "colour": "#22c55e"},
]
RGB = {c["id"]: np.array([int(c["colour"][i : i + 2], 16) for i in (1, 3, 5)]) for c in CLASSES}
GREY = 100  # every pixel of the image
SIZE, TILE, N = 64, 16, 255
VIEWPORTS = [(1280, 800), (1366, 768)]
REASON = "rows 8-15 are the nucleus: look again"
# Set to a folder (e.g. docs) to keep a picture of review mode at 1280x800 there.
SCREENSHOT_DIR = os.environ.get("ACTIVESEG_SCREENSHOT_DIR")


def _rows(rows: dict[range, int]) -> np.ndarray:
    out = np.full((TILE, TILE), N, np.uint8)
    for span, cls in rows.items():
        out[span.start : span.stop] = cls
    return out


# The two answers of every tile agree on rows 0-7 only (128 of the 256 labelled pixels).
# The consensus: rows 0-7 -> 1, rows 8-11 a tie (255), rows 12-15 -> 2 (B's lone vote).
# A labels 192 pixels, 128 as the consensus (67 %); B 256, 192 as the consensus (75 %).
A = _rows({range(0, 8): 1, range(8, 12): 0})
B = _rows({range(0, 8): 1, range(8, 16): 2})
CONSENSUS = _rows({range(0, 8): 1, range(12, 16): 2})

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["postgresql"], indirect=True),
]

browser = pytest.fixture(scope="module")(chromium_browser)


def decode_png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def _answer_all(client: Any, pid: int, window: np.ndarray) -> list[tuple[int, list[int]]]:
    """Lease and answer every task the annotator may answer; (task id, bbox) in that order."""
    done = []
    while (r := client.post(f"/projects/{pid}/tasks/next")).status_code == 200:
        lease = r.json()
        task_id = lease["task"]["id"]
        patch = base64.b64encode(png_bytes(window)).decode()
        submitted = client.post(f"/tasks/{task_id}/submit", json={"patch_png": patch})
        assert submitted.status_code == 201, submitted.text
        done.append((task_id, lease["bbox"]))
    assert r.status_code == 204, r.text
    return done


@pytest.fixture
def disputed(stack: Stack, admin: Any) -> Iterator[dict[str, Any]]:
    """Three disputed one-tile tasks (oldest dispute first in ``order``), the two annotators
    who answered them (clients and tokens) and a reviewer who answered none."""
    settings = {
        "region_kind": "grid",
        "region_size": TILE,
        "batch_size": 3,
        "per_image_cap": None,
        "overlap": 2,
        "agreement_threshold": 0.8,
    }
    r = admin.post(
        "/projects", json={"name": unique("review"), "classes": CLASSES, "settings": settings}
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    grey = np.full((SIZE, SIZE, 3), GREY, np.uint8)
    up = admin.post(
        f"/projects/{pid}/images",
        files=[("files", ("grey.png", png_bytes(grey), "application/octet-stream"))],
    )
    assert up.status_code == 201, up.text
    image_id = up.json()["data"][0]["image"]["id"]
    build_queue_inline(stack, pid)
    people: dict[str, Any] = {}
    for name, role in (("a1", "annotator"), ("a2", "annotator"), ("reviewer", "reviewer")):
        uid, token = make_user(admin, role)
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
        people[name] = {"id": uid, "token": token, "client": stack.client(token)}
    first = _answer_all(people["a1"]["client"], pid, A)
    second = _answer_all(people["a2"]["client"], pid, B)
    assert len(first) == 3 and sorted(first) == sorted(second)
    queue = admin.get(f"/projects/{pid}/queue").json()
    assert (queue["disputed"], queue["queued"]) == (3, 0)
    yield {
        "pid": pid,
        "image_id": image_id,
        "order": [t for t, _ in second],  # the second answer made each task disputed
        "bbox": dict(second),
        **people,
    }
    for person in people.values():
        person["client"].close()


@pytest.fixture
def opened(browser: Any) -> Iterator[list[Tab]]:
    """The tabs a test opens (see ``open_tab``): closed after it, each failing the test if
    it logged an error."""
    tabs: list[Tab] = []
    yield tabs
    for tab in tabs:
        tab.page.context.close()
    assert [t.errors for t in tabs] == [[] for _ in tabs]


def open_tab(
    opened: list[Tab], browser: Any, stack: Stack, size: tuple[int, int], path: str, token: str
) -> Any:
    """``path`` in a fresh browser context at ``size``, logged in with ``token``."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    tab = Tab(context.new_page())
    opened.append(tab)
    tab.page.set_default_timeout(10_000)
    tab.page.on("console", lambda m: tab.errors.append(m.text) if m.type == "error" else None)
    tab.page.on("pageerror", lambda e: tab.errors.append(f"pageerror: {e}"))
    tab.page.clock.install()  # runs as real time until a test moves it on
    tab.page.goto(f"{stack.base_url}{path}")
    tab.page.fill("#token", token)
    tab.page.press("#token", "Enter")
    return tab.page


def canvas_rgb(page: Any, y: int, x: int) -> np.ndarray:
    """The canvas colour at the centre of image pixel (y, x)."""
    rgb = page.evaluate(
        """([y, x]) => {
            const c = document.getElementById('canvas');
            const v = JSON.parse(c.dataset.view);
            const px = Math.floor(v.ox + (x + 0.5) * v.scale);
            const py = Math.floor(v.oy + (y + 0.5) * v.scale);
            return Array.from(c.getContext('2d').getImageData(px, py, 1, 1).data.slice(0, 3));
        }""",
        [y, x],
    )
    return np.array(rgb)


def expect_drawn(page: Any, bbox: list[int], rows: dict[int, int | None]) -> None:
    """Each region row (its middle column) shows the class's colour at 50 % over the grey
    image, or the image itself (None)."""
    y0, x0 = bbox[0], bbox[1]
    for row, cls in rows.items():
        want = GREY if cls is None else 0.5 * GREY + 0.5 * RGB[cls]
        got = canvas_rgb(page, y0 + row, x0 + TILE // 2)
        assert np.abs(got - want).max() <= 3, (row, cls, got.tolist())


def mask_tile(client: Any, image_id: int, bbox: list[int]) -> np.ndarray:
    r = client.get(f"/images/{image_id}/mask")
    assert r.status_code == 200, r.text
    y0, x0, y1, x1 = bbox
    return decode_png(r.content)[y0:y1, x0:x1]


@pytest.mark.parametrize("size", VIEWPORTS, ids=lambda v: f"{v[0]}x{v[1]}")
def test_reviewer_accepts_rejects_and_corrects(
    stack: Stack,
    admin: Any,
    browser: Any,
    opened: list[Tab],
    disputed: dict[str, Any],
    size: tuple[int, int],
) -> None:
    pid, image_id, order = disputed["pid"], disputed["image_id"], disputed["order"]
    a1, a2, reviewer = disputed["a1"], disputed["a2"], disputed["reviewer"]
    page = open_tab(opened, browser, stack, size, f"/annotate?project={pid}", reviewer["token"])

    # Annotate mode first: nothing queued (every task waits for review).
    expect(page.locator("#tab-review")).to_be_visible()
    expect(page.locator("#tab-annotate")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#status")).to_contain_text("Nothing to label")
    page.keyboard.press("m")
    expect(page.locator("#tab-review")).to_have_attribute("aria-selected", "true")
    assert "mode=review" in page.url
    t1 = current_task(page)
    assert int(t1["id"]) == order[0] and t1["bbox"] == disputed["bbox"][order[0]]
    expect(page.locator("#review-actions")).to_be_visible()
    expect(page.locator("#annotate-actions")).to_be_hidden()
    expect(page.locator("#lease")).to_contain_text("left")
    expect(page.locator("#queue")).to_have_text("3 disputed")

    # The consensus and each answer, labelled by annotator and agreement.
    buttons = page.eval_on_selector_all(
        ".layer-btn",
        "bs => bs.map(b => [b.querySelector('.name').textContent,"
        " b.querySelector('.detail').textContent, b.getAttribute('aria-pressed')])",
    )
    assert buttons == [
        ["Consensus", "per-pixel majority", "true"],
        [f"Annotator {a1['id']}", "agrees 67 %", "false"],
        [f"Annotator {a2['id']}", "agrees 75 %", "false"],
    ]
    bbox = t1["bbox"]
    expect_drawn(page, bbox, {2: 1, 10: None, 14: 2})  # the consensus
    page.keyboard.press("ArrowRight")
    expect(page.locator(".layer-btn[data-layer='1']")).to_have_attribute("aria-pressed", "true")
    expect_drawn(page, bbox, {2: 1, 10: 0, 14: None})  # a1's answer
    page.keyboard.press("ArrowRight")
    expect_drawn(page, bbox, {2: 1, 10: 2, 14: 2})  # a2's answer
    page.keyboard.press("ArrowRight")  # around to the consensus
    expect(page.locator(".layer-btn[data-layer='0']")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("ArrowLeft")
    expect(page.locator(".layer-btn[data-layer='2']")).to_have_attribute("aria-pressed", "true")
    page.keyboard.press("c")
    expect(page.locator(".layer-btn[data-layer='0']")).to_have_attribute("aria-pressed", "true")

    # Everything the reviewer needs is on screen, the info box on top; the page never scrolls.
    for selector in ("dl.info", "#task-info", "#lease", "#queue", "#done", "footer.help"):
        assert_in_view_and_on_top(page, selector)
    for selector in ("#accept", "#correct", "#reject-reason", "#reject", "[data-layer='2']"):
        assert_in_view_and_on_top(page, selector)
    canvas, panel, info = rect(page, "#canvas"), rect(page, ".panel"), rect(page, "dl.info")
    assert not overlap(canvas, panel) and info[3] <= rect(page, "footer")[1]
    assert page.evaluate("document.documentElement.scrollHeight") <= size[1]
    if SCREENSHOT_DIR and size == (1280, 800):
        page.keyboard.press("ArrowRight")  # an answer on screen, as a reviewer compares them
        page.screenshot(path=str(Path(SCREENSHOT_DIR) / "review-mode.png"))
        page.keyboard.press("c")

    # 1) Accept: the consensus becomes the tile's label, a revision of the reviewer's.
    page.keyboard.press("a")
    t2 = current_task(page, t1["id"])
    assert int(t2["id"]) == order[1]
    expect(page.locator("#done")).to_have_attribute("data-reviewed", "1")
    revisions = admin.get(f"/images/{image_id}/revisions").json()["data"]
    assert [(r["task_id"], r["source"], r["author_id"]) for r in revisions] == [
        (int(t1["id"]), "review", reviewer["id"])
    ]
    assert revisions[0]["labelled_pixels"] == int((CONSENSUS != N).sum()) == 192
    assert np.array_equal(mask_tile(admin, image_id, bbox), CONSENSUS)

    # Leaving review mode gives the review lease back; coming back leases the task again.
    assert admin.get(f"/tasks/{t2['id']}").json()["lease_expires_at"] is not None
    page.click("#tab-annotate")
    expect(page.locator("#status")).to_contain_text("Nothing to label")
    task = admin.get(f"/tasks/{t2['id']}").json()
    assert (task["state"], task["lease_expires_at"]) == ("disputed", None)
    page.click("#tab-review")
    assert current_task(page)["id"] == t2["id"]
    # While the task is open the page keeps its review lease alive (a heartbeat a minute).
    with stack.db.session() as s:  # type: ignore[attr-defined]
        s.get(Task, int(t2["id"])).lease_expires_at = datetime.now(UTC) + timedelta(seconds=30)
    lease_s = admin.get(f"/projects/{pid}").json()["settings"]["lease_seconds"]
    before = datetime.now(UTC)
    with page.expect_response(
        lambda r: r.url.endswith(f"/tasks/{t2['id']}/review/heartbeat")
    ) as hb:
        page.clock.fast_forward(61_000)
    assert hb.value.status == 200
    after = datetime.now(UTC)
    expires = datetime.fromisoformat(admin.get(f"/tasks/{t2['id']}").json()["lease_expires_at"])
    assert before + timedelta(seconds=lease_s) <= expires <= after + timedelta(seconds=lease_s)
    expect(page.locator("#lease")).to_contain_text("left")

    # 2) Reject with a reason: key r, the reason, Enter. The task goes back to the queue.
    page.keyboard.press("r")
    expect(page.locator("#reject-reason")).to_be_focused()
    page.keyboard.type(REASON)
    expect(page.locator("#reject-reason")).to_have_value(REASON)  # "a", "r" typed, not keys
    page.keyboard.press("Enter")
    t3 = current_task(page, t2["id"])
    assert int(t3["id"]) == order[2]
    expect(page.locator("#reject-reason")).to_have_value("")
    assert admin.get(f"/tasks/{t2['id']}").json()["state"] == "queued"
    for annotator in (a1, a2):
        seen = annotator["client"].get("/users/me/rejections", params={"project_id": pid}).json()
        assert [(x["task_id"], x["reason"], x["reviewer_id"]) for x in seen["data"]] == [
            (int(t2["id"]), REASON, reviewer["id"])
        ]

    # 3) Correct by painting: fill the region with nucleus (key 3), then a background stroke
    #    (key 1) along row 8, from outside the region on the left to outside on the right.
    page.keyboard.press("b")
    expect(page.locator("#brush-tools")).to_be_visible()
    page.keyboard.press("3")
    page.click("#fill")
    page.keyboard.press("1")
    page.locator("#brush-size").fill("3")
    y0, x0, _, x1 = t3["bbox"]
    page.mouse.move(*screen_xy(page, x0 - 6, y0 + 8.5))
    page.mouse.down()
    page.mouse.move(*screen_xy(page, x1 + 6, y0 + 8.5), steps=12)
    page.mouse.up()
    page.keyboard.press("Enter")
    expect(page.locator("#empty")).to_be_visible()
    expect(page.locator("#empty-title")).to_have_text("No disputed task waits for you.")
    expect(page.locator("#status")).to_contain_text(f"Corrected task #{t3['id']}")
    expect(page.locator("#done")).to_contain_text("3 reviewed")
    patch = mask_tile(admin, image_id, t3["bbox"])
    assert set(np.unique(patch).tolist()) == {0, 2}
    assert np.all(patch[8, :] == 0)  # the stroke crossed the whole region
    assert patch[0, 0] == patch[0, -1] == patch[-1, 0] == patch[-1, -1] == 2
    assert 16 <= int((patch == 0).sum()) <= 4 * 16
    last = admin.get(f"/images/{image_id}/revisions").json()["data"]
    assert sorted((r["task_id"], r["source"]) for r in last) == sorted(
        [(int(t1["id"]), "review"), (int(t3["id"]), "review")]
    )
    # Nothing else moved: the first tile keeps the consensus, the rejected one no label.
    assert np.array_equal(mask_tile(admin, image_id, bbox), CONSENSUS)
    assert np.all(mask_tile(admin, image_id, t2["bbox"]) == N)
    assert admin.get(f"/projects/{pid}/queue").json()["disputed"] == 0
    expect(page.locator("#status")).not_to_have_class(re.compile("error"))


def test_an_annotator_has_no_review_mode(
    stack: Stack, browser: Any, opened: list[Tab], disputed: dict[str, Any]
) -> None:
    pid, a1 = disputed["pid"], disputed["a1"]
    path = f"/annotate?project={pid}&mode=review"
    page = open_tab(opened, browser, stack, (1280, 800), path, a1["token"])
    expect(page.locator("#who")).to_contain_text("annotator")
    expect(page.locator("#status")).to_contain_text("Nothing to label")
    expect(page.locator("#modes")).to_be_hidden()
    expect(page.locator("#tab-review")).to_be_hidden()
    expect(page.locator("#help-mode")).to_be_hidden()
    page.keyboard.press("m")  # no switch by key either
    expect(page.locator("#annotate-actions")).to_be_visible()
    expect(page.locator("#review-actions")).to_be_hidden()
    expect(page.locator("#answers-box")).to_be_hidden()
    assert page.evaluate("document.body.dataset.view") == "annotate"
    assert json.loads(page.eval_on_selector("#done", "e => JSON.stringify(e.dataset)")) == {
        "submitted": "0",
        "reviewed": "0",
    }
