"""The Celery app. ``celery -A activeseg.worker.app worker`` or ``activeseg worker``."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from activeseg.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {"visibility_timeout": settings.visibility_timeout_s}
    if settings.broker_url.startswith("filesystem"):
        # Embedded mode: messages are files in a folder both the API and the worker see.
        folder = settings.broker_folder
        (folder / "queue").mkdir(parents=True, exist_ok=True)
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        (folder / "control").mkdir(parents=True, exist_ok=True)
        transport.update(
            data_folder_in=str(folder / "queue"),
            data_folder_out=str(folder / "queue"),
            processed_folder=str(folder / "processed"),
            # Broadcast/control messages; kombu would otherwise make ./control in the cwd.
            control_folder=str(folder / "control"),
            store_processed=False,
        )
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_ignore_result": settings.result_backend is None,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue,
        # A job is acknowledged only when it ends, so a killed worker's job is redelivered;
        # jobs are idempotent, which is what makes that safe.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Publishing must not hang a request when the broker is down: the job row stays
        # pending (outbox) and the maintenance sweep dispatches it later.
        "task_publish_retry_policy": {
            "max_retries": 1,
            "interval_start": 0.2,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        "broker_connection_timeout": 3,
        "beat_schedule": {
            "maintenance": {
                "task": "activeseg.maintenance",
                "schedule": settings.maintenance_interval_s,
                # Beat keeps sending while a long job holds the only pool process; without an
                # expiry the messages of a 3-minute retrain (18 at 10 s) all ran after it,
                # before the retrain's own follow-up jobs. Expired ones are dropped unrun.
                "options": {"expires": maintenance_expiry_s(settings.maintenance_interval_s)},
            },
        },
        "worker_hijack_root_logger": False,
    }


MAINTENANCE_EXPIRY_MIN_S = 30.0
"""A maintenance message older than this (or than 3 intervals) is dropped unrun: long enough
for a busy broker or a slow poll to deliver it, short enough to drop the pile-up of a long job."""


def maintenance_expiry_s(interval_s: float) -> float:
    return max(MAINTENANCE_EXPIRY_MIN_S, 3 * interval_s)


def make_celery(settings: Settings | None = None) -> Celery:
    app = Celery("activeseg")
    app.conf.update(celery_config(settings or get_settings()))
    app.conf.imports = ("activeseg.worker.tasks",)
    return app


celery_app = make_celery()


@worker_process_init.connect
def _dispose_pooled_connections(**_: Any) -> None:
    # No pooled DB connection may cross a fork: the child gets fresh ones.
    from activeseg.worker import runtime

    runtime.reset_after_fork()


READY_FILE_ENV = "ACTIVESEG_WORKER_READY_FILE"
"""Set by ``activeseg serve``: the worker creates this file once it consumes jobs and removes
it when it stops, so serve can say when the whole service is up."""


@worker_ready.connect
def _announce_ready(**_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).touch()


@worker_shutdown.connect
def _withdraw_ready(**_: Any) -> None:
    path = os.environ.get(READY_FILE_ENV)
    if path:
        Path(path).unlink(missing_ok=True)
