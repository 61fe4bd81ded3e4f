"""Per-process resources of a worker: the database and the blob store, created lazily."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from activeseg.core.db import Database
from activeseg.core.settings import get_settings
from activeseg.core.storage import BlobStore, open_store


@lru_cache
def database() -> Database:
    return Database(get_settings())


@lru_cache
def store() -> BlobStore:
    return open_store(get_settings().storage_url)


def reset_after_fork() -> None:
    if database.cache_info().currsize:
        database().engine.dispose(close=False)
    database.cache_clear()


def dispatcher() -> Callable[[int], bool]:
    """Dispatch follow-up jobs through this worker's own Celery app."""
    from activeseg.worker.app import celery_app
    from activeseg.worker.dispatch import dispatch

    db = database()
    return lambda job_id: dispatch(db, celery_app, job_id)
