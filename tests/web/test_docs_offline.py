"""/docs (Swagger UI) and /redoc (ReDoc) on a machine without internet: a real headless Chromium
against a real server, every request to a host other than the loopback aborted and recorded.

FastAPI's own pages load their JS/CSS from a CDN and stay blank offline; activeseg serves them
from the fastapi-offline package under /docs-assets (activeseg/api/docs.py). Each page must
render the whole API (one Swagger operation block, or one ReDoc section, per operation of
/openapi.json) without having tried to reach any other host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from activeseg import __version__
from activeseg.api.docs import ASSETS_URL, assets_dir
from tests.conftest import Stack
from tests.utils import chromium_browser

pytestmark = pytest.mark.slow
# One server is enough: the pages do not touch the database.
ON_SQLITE = pytest.mark.parametrize("stack", ["sqlite"], indirect=True)

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Readiness bounds, not waits: parsing 1.5 MB of Swagger UI on a machine whose cores are all
# busy takes seconds.
TIMEOUT_MS = 60_000

# Rendered when the whole API is on screen: the title with the version, and one operation
# block (Swagger UI) or one operation section (ReDoc) per operation of /openapi.json.
SWAGGER_READY = """([title, n]) => {
    const t = document.querySelector('.info .title');
    return t !== null && t.textContent.startsWith(title)
        && document.querySelectorAll('.opblock').length === n;
}"""
REDOC_READY = """([title, n]) => {
    const h1 = [...document.querySelectorAll('h1')].map(e => e.textContent);
    return h1.includes(title)
        && document.querySelectorAll('[data-section-id*="/operation/"]').length === n;
}"""
# Every <img> has loaded or failed: a refused or aborted image request has then been seen.
IMAGES_SETTLED = "() => [...document.images].every(i => i.complete)"
RECORD_CSP_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
    e => window.__cspViolations.push(e.effectiveDirective + ' ' + e.blockedURI));
"""


def is_loopback(url: str) -> bool:
    return urlsplit(url).hostname in LOOPBACK


def elsewhere(url: str) -> bool:
    """A network URL of a host other than this machine."""
    return urlsplit(url).scheme in ("http", "https", "ws", "wss") and not is_loopback(url)


def operation_count(base_url: str) -> int:
    spec = httpx.get(f"{base_url}/openapi.json", timeout=60).json()
    return sum(1 for item in spec["paths"].values() for method in item if method in METHODS)


class AssetRefs(HTMLParser):
    """The URLs a page loads by itself: ``src`` of scripts and images, ``href`` of links."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        wanted = {"script": "src", "img": "src", "link": "href"}.get(tag)
        for name, value in attrs:
            if name == wanted and value:
                self.urls.append(value)


@dataclass
class OfflineTab:
    """A browser page whose requests to any host but the loopback are aborted and recorded,
    with the uncaught script errors it raised."""

    page: Any
    refused: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # "<directive> <blocked URI>" of each request the page's Content-Security-Policy refused
    csp_violations: list[str] = field(default_factory=list)


def open_offline_tab(browser: Any) -> tuple[Any, OfflineTab]:
    """A new browser context (returned, to close) and its one offline page."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = OfflineTab(context.new_page())

    def only_loopback(route: Any) -> None:
        url = route.request.url
        if elsewhere(url):
            tab.refused.append(url)
            route.abort("internetdisconnected")
        else:
            route.continue_()

    # On the context, not the page: a worker's or a popup's requests are routed too.
    context.route("**/*", only_loopback)
    context.add_init_script(RECORD_CSP_VIOLATIONS)
    tab.page.set_default_timeout(TIMEOUT_MS)
    tab.page.on("pageerror", lambda e: tab.errors.append(str(e)))
    return context, tab


def render_offline(browser: Any, url: str, ready: str, arg: Any) -> OfflineTab:
    """Open ``url`` offline, wait until ``ready(arg)`` holds and every image has settled; fail
    with the refused requests when it never renders."""
    context, tab = open_offline_tab(browser)
    try:
        tab.page.goto(url)
        try:
            tab.page.wait_for_function(ready, arg=arg)
            tab.page.wait_for_function(IMAGES_SETTLED)
        except Exception as exc:
            raise AssertionError(
                f"{url} did not render offline: {exc}; refused {tab.refused}; errors {tab.errors}"
            ) from exc
        tab.csp_violations = list(tab.page.evaluate("() => window.__cspViolations"))
    finally:
        context.close()
    return tab


def check_page_html(base_url: str, path: str) -> set[str]:
    """``path``'s HTML names no URL of another host, and every file it loads answers 200 with
    the type of its extension. Returns the paths of those files."""
    r = httpx.get(base_url + path, timeout=60)
    assert r.status_code == 200, r.text[:200]
    absolute = re.findall(r"""(?:https?:)?//[^\s'"<>()]+""", r.text)
    outside = [u for u in absolute if not is_loopback(urljoin(base_url, u))]
    assert outside == [], f"{path} names URLs of other hosts: {outside}"
    refs = AssetRefs()
    refs.feed(r.text)
    loaded = set()
    for ref in refs.urls:
        url = urljoin(base_url + path, ref)
        assert is_loopback(url), f"{path} loads {url} from another host"
        asset = httpx.get(url, timeout=60)
        assert asset.status_code == 200, (url, asset.status_code)
        kind = {"js": "javascript", "css": "text/css", "png": "image/png"}[url.rsplit(".", 1)[1]]
        assert kind in asset.headers["content-type"], (url, asset.headers["content-type"])
        loaded.add(urlsplit(url).path)
    return loaded


browser = pytest.fixture(scope="module")(chromium_browser)


@ON_SQLITE
def test_docs_page_names_only_local_files_and_they_are_served(stack: Stack) -> None:
    loaded = check_page_html(stack.base_url, "/docs")
    assert loaded == {
        f"{ASSETS_URL}/swagger-ui-bundle.js",
        f"{ASSETS_URL}/swagger-ui.css",
        f"{ASSETS_URL}/favicon.png",
    }
    # The very files of the installed package, not an error page with a 200.
    for name in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"):
        served = httpx.get(f"{stack.base_url}{ASSETS_URL}/{name}", timeout=60).content
        assert served == (assets_dir() / name).read_bytes(), name
    assert b"SwaggerUIBundle" in (assets_dir() / "swagger-ui-bundle.js").read_bytes()


@ON_SQLITE
def test_redoc_page_names_only_local_files_and_they_are_served(stack: Stack) -> None:
    loaded = check_page_html(stack.base_url, "/redoc")
    assert loaded == {f"{ASSETS_URL}/redoc.standalone.js", f"{ASSETS_URL}/favicon.png"}
    served = httpx.get(f"{stack.base_url}{ASSETS_URL}/redoc.standalone.js", timeout=60).content
    assert served == (assets_dir() / "redoc.standalone.js").read_bytes()


@ON_SQLITE
def test_docs_urls_are_kept_and_out_of_the_schema(stack: Stack) -> None:
    with stack.client() as c:
        spec = c.get("/openapi.json")
        assert spec.status_code == 200
        assert (spec.json()["info"]["title"], spec.json()["info"]["version"]) == (
            "activeseg",
            __version__,
        )
        for path in ("/docs", "/docs/oauth2-redirect", "/redoc"):
            r = c.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith("text/html"), path
            # The browser may load nothing from another origin (ReDoc's logo would).
            csp = r.headers.get("content-security-policy", "")
            assert csp.startswith("default-src 'self' 'unsafe-inline' data: blob:;"), csp
            assert "http" not in csp, csp
        assert c.get(f"{ASSETS_URL}/no-such-file.js").status_code == 404
    paths = spec.json()["paths"]
    assert [p for p in paths if p.startswith(("/docs", "/redoc"))] == []


@ON_SQLITE
def test_swagger_ui_renders_every_operation_offline(stack: Stack, browser: Any) -> None:
    n = operation_count(stack.base_url)
    assert n > 10
    tab = render_offline(browser, f"{stack.base_url}/docs", SWAGGER_READY, ["activeseg", n])
    assert tab.refused == []
    assert tab.errors == []
    assert tab.csp_violations == []


@ON_SQLITE
def test_redoc_renders_every_operation_offline(stack: Stack, browser: Any) -> None:
    n = operation_count(stack.base_url)
    assert n > 10
    title = f"activeseg ({__version__})"
    tab = render_offline(browser, f"{stack.base_url}/redoc", REDOC_READY, [title, n])
    assert tab.refused == []
    assert tab.errors == []
    # The policy refuses only what is elsewhere (ReDoc's logo), never the page's own code.
    own = [v for v in tab.csp_violations if not elsewhere(v.split(" ", 1)[1])]
    assert own == [], tab.csp_violations


def test_offline_tab_records_a_request_to_another_host(browser: Any) -> None:
    """The guard itself: a page that asks another host is seen doing it (and gets nothing)."""
    context, tab = open_offline_tab(browser)
    try:
        tab.page.set_content('<img src="https://cdn.jsdelivr.net/x.png">')
        tab.page.wait_for_function(IMAGES_SETTLED)
        assert tab.refused == ["https://cdn.jsdelivr.net/x.png"]
    finally:
        context.close()
