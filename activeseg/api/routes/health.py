from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Response
from sqlalchemy import text

from activeseg import __version__
from activeseg.api.deps import DbDep, SettingsDep, StoreDep
from activeseg.api.schemas import Health
from activeseg.core.settings import Settings

router = APIRouter(tags=["health"])
log = logging.getLogger(__name__)


def broker_status(settings: Settings) -> str:
    url = settings.broker_url
    try:
        if url.startswith(("redis://", "rediss://")):
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1).ping()
        elif url.startswith("filesystem"):
            folder: Path = settings.broker_folder / "queue"
            if not folder.is_dir():
                return "down: broker folder missing"
        else:
            from kombu import Connection

            with Connection(url, connect_timeout=1) as conn:
                conn.ensure_connection(max_retries=0)
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        return f"down: {type(exc).__name__}"
    return "ok"


@router.get(
    "/health",
    response_model=Health,
    summary="Database, broker and storage status",
    responses={503: {"model": Health, "description": "the database or storage is down"}},
)
def health(db: DbDep, store: StoreDep, settings: SettingsDep, response: Response) -> Health:
    """Open to everyone (load balancers); 503 when the database or storage is down. A broker
    outage is reported but keeps 200: annotation does not need the broker."""
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # noqa: BLE001
        database = f"down: {type(exc).__name__}"
    try:
        store.check()
        storage = "ok"
    except Exception as exc:  # noqa: BLE001
        storage = f"down: {type(exc).__name__}"
    broker = broker_status(settings)
    ok = database == "ok" and storage == "ok"
    if not ok:
        response.status_code = 503
    status = "ok" if ok and broker == "ok" else ("degraded" if ok else "down")
    return Health(
        status=status, database=database, broker=broker, storage=storage, version=__version__
    )
