"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI

from activeseg import __version__
from activeseg.api.bodylimit import BodySizeLimit
from activeseg.api.docs import install_docs
from activeseg.api.errors import install_error_handlers
from activeseg.api.metrics import install_metrics
from activeseg.api.ratelimit import install_rate_limits
from activeseg.api.routes import (
    annotate,
    annotators,
    exports,
    health,
    images,
    jobs,
    labelstudio,
    links,
    loop,
    ls_keys,
    projects,
    reports,
    review,
    tasks,
    users,
    webhooks,
)
from activeseg.api.threads import RequestThreads
from activeseg.core.db import Database
from activeseg.core.settings import Settings, get_settings
from activeseg.core.storage import open_store

log = logging.getLogger(__name__)


def _default_dispatcher(db: Database, settings: Settings) -> Callable[[int], bool]:
    from activeseg.worker.app import make_celery
    from activeseg.worker.dispatch import dispatch as send

    celery = make_celery(settings)

    def dispatch(job_id: int) -> bool:
        return send(db, celery, job_id)

    return dispatch


def create_app(
    settings: Settings | None = None, dispatcher: Callable[[int], bool] | None = None
) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="activeseg",
        version=__version__,
        description="Active-learning annotation service for image segmentation. Every route "
        "but /health and /metrics needs `Authorization: Bearer <token>`.",
        # FastAPI's own /docs and /redoc load their files from a CDN: install_docs serves them.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.db = Database(settings)
    app.state.store = open_store(settings.storage_url)
    app.state.dispatch = dispatcher or _default_dispatcher(app.state.db, settings)
    install_error_handlers(app)
    ls_keys.install_log_redaction()
    install_docs(app)

    for module in (
        health,
        users,
        projects,
        images,
        jobs,
        loop,
        tasks,
        review,
        annotate,
        annotators,
        labelstudio,
        ls_keys,
        exports,
        webhooks,
        reports,
        links,
    ):
        app.include_router(module.router)
    # Plain ASGI middlewares; the last added runs first: the
    # histogram times every answer, the rate limits' 429s included.
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes)
    install_rate_limits(app, settings)
    install_metrics(app, app.state.db)
    # No more requests at once than the database pool holds, the annotation routes in a lane
    # of their own (activeseg.api.threads).
    app.add_middleware(
        RequestThreads, threads=settings.db_pool_size, lane=settings.annotation_threads
    )
    return app
