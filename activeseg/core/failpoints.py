"""Named pause points for fault-injection tests (tests/reliability).

A worker started with ``ACTIVESEG_FAILPOINTS=job.before_finish:retrain`` stops dead when a
``retrain`` job reaches that point: it touches ``$ACTIVESEG_FAILPOINT_DIR/<point>-<kind>-<job>``
so the test knows, then sleeps until the test kills the process. That lets a test SIGKILL a
worker at an exact moment (mid-job, or after the job's writes but before it is marked done)
instead of racing a timer. Both variables are read as settings (``Settings.failpoints`` and
``failpoint_dir``); unset (always, outside those tests) each point costs one string test.

Points: ``job.progress`` (the job's first progress report: mid-job) and ``job.before_finish``
(the job function returned; its rows are written; the job is not yet marked succeeded).
"""

from __future__ import annotations

import logging
import time

from activeseg.core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def hit(point: str, kind: str, job_id: int, settings: Settings | None = None) -> None:
    """Hold here until killed when ``point:kind`` is one of the settings' ``failpoints``
    (``ACTIVESEG_FAILPOINTS``); ``settings`` defaults to the process's own."""
    cfg = settings or get_settings()
    if not cfg.failpoints or f"{point}:{kind}" not in cfg.failpoints.split(","):
        return
    (cfg.failpoint_dir / f"{point}-{kind}-{job_id}").touch()
    log.warning("failpoint %s reached by %s job %s: holding until killed", point, kind, job_id)
    while True:
        time.sleep(3600)
