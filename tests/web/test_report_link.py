"""A model version's report page opened in a real headless Chromium through a signed link,
with no Authorization header: the page renders with every plot, and the link's own plot
links load cross-origin. The report is computed by the real evaluate job on a freshly
initialised tiny model (no training)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import httpx
import pytest

from tests.conftest import Stack
from tests.integrations.helpers import hand_mask, put_mask
from tests.utils import (
    chromium_browser,
    grid_project,
    image_bytes,
    run_job_inline,
    untrained_version,
    upload,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("stack", ["postgresql"], indirect=True),
]

browser = pytest.fixture(scope="module")(chromium_browser)


@pytest.fixture
def reported(stack: Stack, admin: httpx.Client) -> dict[str, Any]:
    """A project with two hand-labelled val images and an untrained model version whose
    report the evaluate job computed and stored."""
    pid = grid_project(admin)["id"]
    files = [(f"v{i}.png", image_bytes(32, 32, seed=900 + i)) for i in range(2)]
    r = upload(admin, pid, *files, split="val")
    assert r.status_code == 201, r.text
    for k, item in enumerate(r.json()["data"]):
        put_mask(admin, item["image"]["id"], hand_mask(32, 32, seed=k))
    mv = untrained_version(stack, pid, in_channels=3, n_classes=3, depth=2, activate=False)
    run_job_inline(stack, pid, "evaluate", {"model_version_id": mv})
    report = admin.get(f"/models/{mv}/report")
    assert report.status_code == 200, report.text
    return {"mv": mv, "plots": report.json()["plots"]}


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()  # no extra headers: no token anywhere
    yield context.new_page()
    context.close()


def test_report_page_opens_through_a_signed_link(
    stack: Stack, admin: httpx.Client, reported: dict[str, Any], page: Any
) -> None:
    mv, plots = reported["mv"], reported["plots"]
    assert len(plots) > 0
    r = admin.post("/links", json={"path": f"/models/{mv}/report.html", "ttl_s": 600})
    assert r.status_code == 200, r.text
    url = r.json()["url"]
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("requestfailed", lambda req: problems.append(f"failed {req.url}"))
    seen_headers: list[dict[str, str]] = []
    page.on("request", lambda req: seen_headers.append(req.headers))

    response = page.goto(url)
    assert response is not None and response.status == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cache-control"].startswith("private, max-age=")
    page.wait_for_load_state("load")
    assert page.title().endswith(": model version 1 report")
    assert page.locator("h2").first.inner_text().startswith("Is softmax a good uncertainty?")
    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({id: e.id, ok: e.complete && e.naturalWidth > 0}))"
    )
    assert len(images) == len(plots) > 0
    assert {i["id"] for i in images} == {f"plot-{name}" for name in plots}
    assert all(i["ok"] for i in images), images
    assert not any("authorization" in {k.lower() for k in h} for h in seen_headers)
    assert problems == []

    # The signature is what opened it: changed, it is refused, and without it a token is needed.
    pairs = parse_qsl(urlsplit(url).query)
    changed = url.replace(f"/models/{mv}/", f"/models/{mv + 1000}/")
    assert page.goto(changed).status == 403  # type: ignore[union-attr]
    unsigned = url.split("?")[0] + "?" + urlencode([(k, v) for k, v in pairs if k != "sig"])
    assert page.goto(unsigned).status == 401  # type: ignore[union-attr]


def test_signed_plot_links_load_cross_origin(
    stack: Stack, admin: httpx.Client, reported: dict[str, Any], page: Any
) -> None:
    """What a labelling tool's page on another origin does: an <img> and a fetch() of signed
    plot URLs, no token. The fetch reads the bytes only because of Access-Control-Allow-Origin."""
    mv, plots = reported["mv"], reported["plots"]
    urls = []
    for name in sorted(plots):
        r = admin.post("/links", json={"path": f"/models/{mv}/plots/{name}.png"})
        assert r.status_code == 200, r.text
        urls.append(r.json()["url"])
    page.set_content("<!DOCTYPE html><title>another origin</title><body></body>")
    result = page.evaluate(
        """async urls => {
            const loaded = await Promise.all(urls.map(u => new Promise(done => {
                const img = new Image();
                img.onload = () => done(img.naturalWidth);
                img.onerror = () => done(-1);
                img.src = u;
                document.body.appendChild(img);
            })));
            const fetched = [];
            for (const u of urls) {
                const r = await fetch(u);
                fetched.push([r.status, (await r.arrayBuffer()).byteLength]);
            }
            return {origin: self.origin, loaded, fetched};
        }""",
        urls,
    )
    assert result["origin"] != stack.base_url  # really another origin
    assert len(result["loaded"]) == len(plots) and all(w > 0 for w in result["loaded"]), result
    want = [len(admin.get(f"/models/{mv}/plots/{name}.png").content) for name in sorted(plots)]
    assert result["fetched"] == [[200, n] for n in want]
