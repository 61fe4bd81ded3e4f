"""How many requests an API process runs at once, and the annotation routes' own threads.

FastAPI runs every ``def`` route in anyio's worker threads, 40 at most by default. Each of
them holds a pooled database connection while its route runs, so with a pool smaller than 40
a busy process opens connections beyond the pool, and SQLAlchemy closes each again on its
return: on PostgreSQL a backend process started and ended per request, which cost a third of
the annotator loop's throughput at 32 clients (BENCHMARKS.md, issue 17). The limit makes the
extra requests wait for a thread instead, in the order they came.

The annotation routes (:func:`annotation_lane`) run in a lane of their own, a few threads
(``annotation_threads``) taken in arrival order; every other ``def`` route shares the rest of
the pool (``db_pool_size - annotation_threads``). Two reasons, both measured (BENCHMARKS.md):
an upload, an export or an on-demand prediction holds its thread for seconds and must not
stall the annotators behind it; and 32 annotators' requests in 20 threads of one process
take turns at its interpreter lock in no order, so some wait many turns (a long latency
tail), while in a lane of two they are served first come, first served.

anyio keeps limiters per event loop (a test client may run a loop per request), so both are
checked from inside the loop on every call, a lookup of a few microseconds, and set when they
differ (also when uvicorn runs without lifespan events).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from anyio import CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from anyio.to_thread import current_default_thread_limiter

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_LANE_THREADS = 2
"""The lane's size in an event loop the middleware has not seen (a bare test app)."""

_LANE: RunVar[CapacityLimiter] = RunVar("activeseg_annotation_lane")


def lane_limiter() -> CapacityLimiter:
    """The running event loop's annotation lane."""
    try:
        return _LANE.get()
    except LookupError:
        limiter = CapacityLimiter(DEFAULT_LANE_THREADS)
        _LANE.set(limiter)
        return limiter


def annotation_lane(route: Callable[P, R]) -> Callable[P, Any]:
    """Route decorator: run the ``def`` route in the annotation lane instead of the shared
    thread pool. FastAPI reads the route's parameters through the wrapper (``__wrapped__``),
    so its dependencies and validation are unchanged; the route's own dependencies must be
    ``async`` (no I/O) or they would take a thread of the shared pool first."""

    @functools.wraps(route)
    async def in_lane(*args: P.args, **kwargs: P.kwargs) -> R:
        call = functools.partial(route, *args, **kwargs)
        return await to_thread.run_sync(call, limiter=lane_limiter())

    return in_lane


class RequestThreads:
    """ASGI middleware: the running event loop runs at most ``threads`` ``def`` routes at
    once, ``lane`` of them in the annotation lane."""

    def __init__(self, app: Any, threads: int, lane: int) -> None:
        # Settings refuse a lane as large as the pool (ACTIVESEG_ANNOTATION_THREADS).
        self.app, self.shared, self.lane = app, threads - lane, lane

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limiter = current_default_thread_limiter()
        if limiter.total_tokens != self.shared:
            limiter.total_tokens = self.shared
        lane = lane_limiter()
        if lane.total_tokens != self.lane:
            lane.total_tokens = self.lane
        await self.app(scope, receive, send)
