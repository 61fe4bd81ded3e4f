"""Job kind -> plain job function, and an in-process executor for tests and tools."""

from __future__ import annotations

import time

from activeseg.core.db import Database
from activeseg.core.settings import Settings
from activeseg.core.storage import BlobStore
from activeseg.core.tables import Job
from activeseg.jobs.build_queue import build_queue
from activeseg.jobs.deliver_webhook import deliver_webhook
from activeseg.jobs.evaluate import evaluate
from activeseg.jobs.retrain import retrain
from activeseg.jobs.runner import Dispatcher, JobFunction, RetryLater, run_job
from activeseg.jobs.score_pool import score_pool
from activeseg.jobs.sweep_orphan_blobs import sweep_orphan_blobs
from activeseg.jobs.verify_storage import verify_storage

JOB_FUNCTIONS: dict[str, JobFunction] = {
    "verify_storage": verify_storage,
    "score_pool": score_pool,
    "build_queue": build_queue,
    "retrain": retrain,
    "evaluate": evaluate,
    "deliver_webhook": deliver_webhook,
    "sweep_orphan_blobs": sweep_orphan_blobs,
}


def inline_dispatcher(db: Database, store: BlobStore, settings: Settings) -> Dispatcher:
    """Run each dispatched job at once in this process (follow-ups recursively): the same job
    functions and runner as a Celery worker, without a broker. A job that asks to run again
    later (RetryLater) is run again here after its countdown: there is no worker to hold."""

    def dispatch(job_id: int) -> bool:
        with db.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            kind = job.kind
        while True:
            try:
                run_job(db, store, settings, job_id, JOB_FUNCTIONS[kind], dispatch)
            except RetryLater as exc:
                time.sleep(exc.countdown_s)
                continue
            return True

    return dispatch
