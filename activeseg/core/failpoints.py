"""Named pause points for fault-injection tests (tests/reliability).

A worker started with ``ACTIVESEG_FAILPOINTS=job.before_finish:retrain`` stops dead when a
``retrain`` job reaches that point: it touches ``$ACTIVESEG_FAILPOINT_DIR/<point>-<kind>-<job>``
so the test knows, then sleeps until the test kills the process. That lets a test SIGKILL a
worker at an exact moment (mid-job, or after the job's writes but before it is marked done)
instead of racing a timer. Unset (always, outside those tests) each point costs one dict lookup.

Points: ``job.progress`` (the job's first progress report: mid-job) and ``job.before_finish``
(the job function returned; its rows are written; the job is not yet marked succeeded).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

_ENV = "ACTIVESEG_FAILPOINTS"


def hit(point: str, kind: str, job_id: int) -> None:
    spec = os.environ.get(_ENV)
    if not spec or f"{point}:{kind}" not in spec.split(","):
        return
    folder = Path(os.environ.get("ACTIVESEG_FAILPOINT_DIR", "."))
    (folder / f"{point}-{kind}-{job_id}").touch()
    log.warning("failpoint %s reached by %s job %s: holding until killed", point, kind, job_id)
    while True:
        time.sleep(3600)
