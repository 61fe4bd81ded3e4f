"""How many requests an API process runs at once: no more than its database pool holds.

FastAPI runs every ``def`` route in anyio's worker threads, 40 at most by default. Each of
them holds a pooled database connection while its route runs, so with a pool smaller than 40
a busy process opens connections beyond the pool, and SQLAlchemy closes each again on its
return: on PostgreSQL a backend process started and ended per request, which cost a third of
the annotator loop's throughput at 32 clients (BENCHMARKS.md, issue 17). The limit makes the
extra requests wait for a thread instead, in the order they came.

anyio keeps the limit per event loop (a test client may run a loop per request), so it is
checked from inside the loop on every call, a lookup of a few microseconds, and set when it
differs (also when uvicorn runs without lifespan events).
"""

from __future__ import annotations

from typing import Any

from anyio.to_thread import current_default_thread_limiter


class RequestThreads:
    """ASGI middleware: the running event loop's thread limit is ``threads``."""

    def __init__(self, app: Any, threads: int) -> None:
        self.app = app
        self.threads = threads

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        limiter = current_default_thread_limiter()
        if limiter.total_tokens != self.threads:
            limiter.total_tokens = self.threads
        await self.app(scope, receive, send)
