"""The API documentation pages, Swagger UI at ``/docs`` and ReDoc at ``/redoc``, served entirely
by this server.

FastAPI's built-in pages load Swagger UI's and ReDoc's JavaScript and CSS (and a favicon) from
CDNs, so on a machine without internet ``/docs`` and ``/redoc`` are blank. Here the same pages
are built with FastAPI's own ``get_swagger_ui_html`` / ``get_redoc_html``, pointing at files
served under ``/docs-assets``. Those files come from the ``fastapi-offline`` package (a
dependency, kept up to date with swagger-ui-dist 5 and redoc 2), of which only the ``static``
folder is used: the pages are FastAPI's, only the URLs differ.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/docs"
REDOC_URL = "/redoc"
ASSETS_URL = "/docs-assets"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"
ASSET_FILES = (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON)

# Swagger UI's online validator sends the schema's URL to validator.swagger.io; FastAPI's
# layout hides its badge today, this keeps it off whatever the layout.
SWAGGER_UI_PARAMETERS = {"validatorUrl": None}
# The pages may load nothing from another origin: ReDoc's side menu shows a logo from
# cdn.redoc.ly (no option turns it off; offline it fails and hides itself), and a future
# version of either bundle could add more. Inline code and styles stay allowed: FastAPI's
# Swagger page configures it in an inline script, and both bundles inject styles; data: and
# blob: for their icons and ReDoc's search worker.
DOCS_CSP = (
    "default-src 'self' 'unsafe-inline' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def _same_origin_only(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    return page


def assets_dir() -> Path:
    """The folder of the installed ``fastapi-offline`` package holding every file of
    ``ASSET_FILES``; a clear error when the install lacks one (the pages would be blank)."""
    folder = Path(str(files("fastapi_offline").joinpath("static")))
    missing = [name for name in ASSET_FILES if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the fastapi-offline package has no {', '.join(missing)} in {folder}, so /docs and "
            "/redoc cannot be served; reinstall it: pip install --force-reinstall "
            "'fastapi-offline>=1.7'"
        )
    return folder


def install_docs(app: FastAPI) -> None:
    """Serve ``/docs`` (and its OAuth2 redirect page), ``/redoc`` and their files under
    ``/docs-assets``, none of them in the OpenAPI schema. The app must be made with
    ``docs_url=None, redoc_url=None`` so that FastAPI's CDN pages are not served instead."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("make the app with docs_url=None and redoc_url=None before install_docs")
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    oauth2_redirect_url = app.swagger_ui_oauth2_redirect_url
    # A mount is never in the schema; StaticFiles answers ETag / 304 for these large files.
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")

    def prefix(request: Request) -> str:
        """What comes before the app's own paths (behind a proxy that sets ``root_path``)."""
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_URL}/{SWAGGER_JS}",
            swagger_css_url=f"{root}{ASSETS_URL}/{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            oauth2_redirect_url=root + oauth2_redirect_url if oauth2_redirect_url else None,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
        )
        return _same_origin_only(page)

    if oauth2_redirect_url:

        @app.get(oauth2_redirect_url, include_in_schema=False)
        def swagger_ui_oauth2_redirect() -> HTMLResponse:
            return _same_origin_only(get_swagger_ui_oauth2_redirect_html())

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = prefix(request)
        page = get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_URL}/{REDOC_JS}",
            redoc_favicon_url=f"{root}{ASSETS_URL}/{FAVICON}",
            with_google_fonts=False,
        )
        return _same_origin_only(page)
