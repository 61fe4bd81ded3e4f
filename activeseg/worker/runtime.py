"""Per-process resources of a worker: the database and the blob store, created lazily.

Imports nothing else of ``activeseg.worker``: the app resets it after a fork, and the task
shells (``worker.tasks``) combine it with the app and dispatch."""

from __future__ import annotations

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
