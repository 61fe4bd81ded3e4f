"""The annotator page at the laptop screen sizes people label on (1280x800, 1366x768).

A project of 12 classes (more than the ten number keys) on a uniformly dark image, in headless
Chromium against a real server:

- the number keys pick the classes in the order the page shows them, with the key printed on
  each class button: 1-9 and 0 for the first ten, Shift+1 and Shift+2 for the 11th and 12th,
  "," and "." step through them; a key chosen that way is what the saved mask holds;
- the task / lease / queue box is inside the window and on top (``elementFromPoint`` at its
  centre and corners hits the box itself), in the whole-region and the brush tool;
- the background class (black) tints the region visibly on the dark image, while a light class
  is tinted with exactly its own colour.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect

from tests.conftest import Stack
from tests.utils import build_queue_inline, chromium_browser, make_user, png_bytes, unique
from tests.web.test_annotator_page import current_task

DARK = 20  # the grey level of every pixel of the image
CLASSES = [
    {"id": 0, "name": "background", "colour": "#000000"},
    {"id": 1, "name": "road", "colour": "#f97316"},
    {"id": 2, "name": "pavement", "colour": "#22c55e"},
    {"id": 3, "name": "building", "colour": "#3b82f6"},
    {"id": 4, "name": "wall", "colour": "#a855f7"},
    {"id": 5, "name": "fence", "colour": "#eab308"},
    {"id": 6, "name": "pole", "colour": "#ec4899"},
    {"id": 7, "name": "traffic light", "colour": "#14b8a6"},
    {"id": 8, "name": "traffic sign", "colour": "#f43f5e"},
    {"id": 9, "name": "vegetation", "colour": "#84cc16"},
    {"id": 10, "name": "terrain", "colour": "#d97706"},
    {"id": 11, "name": "sky", "colour": "#38bdf8"},
]
# What each class button must show, and the key Playwright presses for it.
LABELS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "\u21e71", "\u21e72"]
KEYS = [*LABELS[:10], "Shift+Digit1", "Shift+Digit2"]
VIEWPORTS = [(1280, 800), (1366, 768)]
SIZE, TILE = 64, 16

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["postgresql"], indirect=True),
]

browser = pytest.fixture(scope="module")(chromium_browser)


@pytest.fixture
def dark_project(stack: Stack, admin: Any) -> dict[str, Any]:
    """12 classes, one uniformly dark 64x64 image in 16-px tiles, 6 tasks queued (no model,
    so no proposal), and an annotator who is a member."""
    settings = {"region_kind": "grid", "region_size": TILE, "batch_size": 6, "per_image_cap": None}
    r = admin.post(
        "/projects", json={"name": unique("layout"), "classes": CLASSES, "settings": settings}
    )
    assert r.status_code == 201, r.text
    pid = r.json()["id"]
    dark = np.full((SIZE, SIZE, 3), DARK, np.uint8)
    up = admin.post(
        f"/projects/{pid}/images",
        files=[("files", ("dark.png", png_bytes(dark), "application/octet-stream"))],
    )
    assert up.status_code == 201, up.text
    build_queue_inline(stack, pid)
    assert admin.get(f"/projects/{pid}/queue").json()["queued"] == 6
    uid, token = make_user(admin, "annotator")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    return {"pid": pid, "token": token}


@pytest.fixture
def page(
    request: pytest.FixtureRequest, browser: Any, stack: Stack, dark_project: dict[str, Any]
) -> Iterator[Any]:
    """The page at the test's viewport, logged in, with the project's first task on screen;
    fails the test if the page logged an error."""
    width, height = request.param
    context = browser.new_context(viewport={"width": width, "height": height})
    tab = context.new_page()
    tab.set_default_timeout(10_000)
    errors: list[str] = []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
    tab.goto(f"{stack.base_url}/annotate?project={dark_project['pid']}")
    tab.fill("#token", dark_project["token"])
    tab.press("#token", "Enter")
    current_task(tab)
    expect(tab.locator(".class-btn")).to_have_count(len(CLASSES))
    yield tab
    context.close()
    assert errors == [], errors


def viewport_ids(v: tuple[int, int]) -> str:
    return f"{v[0]}x{v[1]}"


def expect_selected(page: Any, class_id: int) -> None:
    """Exactly one class button is pressed, the one of ``class_id`` (strict locator)."""
    expect(page.locator(".class-btn[aria-pressed=true]")).to_have_attribute(
        "data-class-id", str(class_id)
    )


def selected_or_none(page: Any) -> int | None:
    ids = page.eval_on_selector_all(
        ".class-btn[aria-pressed=true]", "bs => bs.map(b => Number(b.dataset.classId))"
    )
    return int(ids[0]) if ids else None


def on_top(page: Any, selector: str) -> dict[str, Any]:
    """The element's box, the window size, and for its centre and four corners (4 px in: a
    point in a rounded corner's cut-off is not the element's) whether ``elementFromPoint``
    there is the element or inside it."""
    return page.eval_on_selector(
        selector,
        """e => {
            const r = e.getBoundingClientRect();
            const points = [
                [(r.left + r.right) / 2, (r.top + r.bottom) / 2],
                [r.left + 4, r.top + 4], [r.right - 4, r.top + 4],
                [r.left + 4, r.bottom - 4], [r.right - 4, r.bottom - 4],
            ];
            const hits = points.map(([x, y]) => {
                const hit = document.elementFromPoint(x, y);
                return hit !== null && e.contains(hit);
            });
            return {
                box: [r.left, r.top, r.right, r.bottom],
                window: [innerWidth, innerHeight],
                hits,
            };
        }""",
    )


def assert_in_view_and_on_top(page: Any, selector: str) -> None:
    seen = on_top(page, selector)
    left, top, right, bottom = seen["box"]
    width, height = seen["window"]
    assert 0 <= left < right <= width and 0 <= top < bottom <= height, (selector, seen)
    assert all(seen["hits"]), (selector, seen)


def rect(page: Any, selector: str) -> tuple[float, float, float, float]:
    r = page.locator(selector).bounding_box()
    assert r is not None, selector
    return r["x"], r["y"], r["x"] + r["width"], r["y"] + r["height"]


def overlap(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def region_pixels(page: Any, task: dict[str, Any]) -> np.ndarray:
    """uint8 [h, w, 3]: the canvas over the task's region (a 16x16 tile), 6 screen pixels in
    from its edges so that the region outline is left out."""
    data = page.evaluate(
        """bbox => {
            const c = document.getElementById('canvas');
            const v = JSON.parse(c.dataset.view);
            const [y0, x0, y1, x1] = bbox;
            const left = Math.ceil(v.ox + x0 * v.scale) + 6;
            const top = Math.ceil(v.oy + y0 * v.scale) + 6;
            const w = Math.floor(v.ox + x1 * v.scale) - 6 - left;
            const h = Math.floor(v.oy + y1 * v.scale) - 6 - top;
            const px = c.getContext('2d').getImageData(left, top, w, h);
            return {w, h, rgba: Array.from(px.data)};
        }""",
        task["bbox"],
    )
    assert data["w"] > 20 and data["h"] > 20, data["w"]
    rgba = np.array(data["rgba"], np.int16).reshape(data["h"], data["w"], 4)
    assert np.all(rgba[..., 3] == 255)
    return rgba[..., :3]


@pytest.mark.parametrize("page", VIEWPORTS, ids=viewport_ids, indirect=True)
def test_number_keys_follow_the_classes_as_shown(
    page: Any, admin: Any, dark_project: dict[str, Any]
) -> None:
    shown = page.eval_on_selector_all(
        ".class-btn",
        """bs => bs.map(b => ({
            id: Number(b.dataset.classId),
            name: b.querySelector('.name').textContent,
            key: b.querySelector('.key')?.textContent ?? '',
        }))""",
    )
    assert [b["name"] for b in shown] == [c["name"] for c in CLASSES]
    assert [b["key"] for b in shown] == LABELS
    assert selected_or_none(page) is None  # no model: nothing proposed, nothing chosen

    for key, button in zip(KEYS, shown, strict=True):
        page.keyboard.press(key)
        expect_selected(page, button["id"])
        # The chosen class is in sight, even where the class list scrolls.
        assert_in_view_and_on_top(page, ".class-btn[aria-pressed=true]")

    # There is no 13th class: Shift+3 keeps "sky"; "," then steps back to "terrain".
    page.keyboard.press("Shift+Digit3")
    page.keyboard.press(",")
    expect_selected(page, 10)
    page.keyboard.press(".")
    page.keyboard.press(".")  # past the last class: around to the first
    expect_selected(page, 0)
    page.keyboard.press(",")
    expect_selected(page, 11)
    page.keyboard.press("5")
    expect_selected(page, 4)

    # The 12th class, chosen by its key, is what the saved mask holds in the region.
    task = current_task(page)
    page.keyboard.press("Shift+Digit2")
    page.keyboard.press("Enter")
    current_task(page, task["id"])
    expect(page.locator("#done")).to_have_attribute("data-submitted", "1")
    r = admin.get(f"/images/{task['image_id']}/mask")
    assert r.status_code == 200, r.text
    mask = np.asarray(Image.open(io.BytesIO(r.content)))
    y0, x0, y1, x1 = task["bbox"]
    assert np.all(mask[y0:y1, x0:x1] == 11)
    outside = np.ones_like(mask, bool)
    outside[y0:y1, x0:x1] = False
    assert np.all(mask[outside] == 255)


@pytest.mark.parametrize("page", [*VIEWPORTS, (1920, 1080)], ids=viewport_ids, indirect=True)
def test_info_box_is_in_view_and_on_top(page: Any) -> None:
    expect(page.locator("#lease")).to_contain_text("left")
    for tool in ("r", "b"):  # the brush tool's settings make the panel taller
        page.keyboard.press(tool)
        expect(page.locator("#brush-tools")).to_be_visible(visible=tool == "b")
        assert_in_view_and_on_top(page, "dl.info")
        for row in ("#task-info", "#lease", "#queue", "#done"):
            assert_in_view_and_on_top(page, row)
        assert_in_view_and_on_top(page, "footer.help")
        assert_in_view_and_on_top(page, "#submit")
        # The class list shows at least its first two rows.
        assert_in_view_and_on_top(page, ".class-btn[data-class-id='0']")
        assert_in_view_and_on_top(page, ".class-btn[data-class-id='3']")
        canvas, panel, footer = rect(page, "#canvas"), rect(page, ".panel"), rect(page, "footer")
        info = rect(page, "dl.info")
        assert not overlap(canvas, panel) and not overlap(canvas, footer)
        assert not overlap(panel, footer) and info[3] <= footer[1]
        width, height = page.viewport_size["width"], page.viewport_size["height"]
        assert canvas[2] - canvas[0] >= width / 2 and canvas[3] - canvas[1] >= height / 2
        # Nothing below the window: the page itself never scrolls.
        assert page.evaluate("document.documentElement.scrollHeight") <= height


@pytest.mark.parametrize("page", VIEWPORTS, ids=viewport_ids, indirect=True)
def test_background_tint_shows_on_a_dark_image(page: Any) -> None:
    task = current_task(page)
    image = region_pixels(page, task)  # no class chosen and no proposal: the image itself
    assert np.abs(image - DARK).max() <= 2

    # Background (#000000): light stripes over the black tint, clearly off the image's grey.
    page.keyboard.press("1")
    expect_selected(page, 0)  # drawn in the same key handler
    tinted = region_pixels(page, task)
    diff = np.abs(tinted - image).max(axis=-1)
    assert diff.max() >= 120, diff.max()
    assert (diff >= 60).mean() >= 0.1, (diff >= 60).mean()
    # The legend keeps the class colour.
    swatch = page.eval_on_selector(
        ".class-btn[data-class-id='0'] .swatch", "e => getComputedStyle(e).backgroundColor"
    )
    assert swatch == "rgb(0, 0, 0)"

    # A light class: its own colour at 30 % over the image everywhere, no stripes.
    page.keyboard.press("2")
    expect_selected(page, 1)
    road = np.array([0xF9, 0x73, 0x16])
    assert np.abs(region_pixels(page, task) - (0.7 * DARK + 0.3 * road)).max() <= 2

    # Painted with the brush, the background is striped as well.
    page.keyboard.press("b")
    page.keyboard.press("1")
    page.click("#fill")
    painted = np.abs(region_pixels(page, task) - image).max(axis=-1)
    assert painted.max() >= 120 and (painted >= 60).mean() >= 0.1
