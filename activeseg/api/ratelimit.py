"""Per-API-token rate limits on the annotation and upload routes (429 with ``Retry-After``).

Why: one runaway script (a labeling tool in a retry loop, a misconfigured uploader) must not
starve the annotators sharing the service. Each token gets a token bucket per limit kind:
``tasks`` (lease next, heartbeat, release, skip, submit) and ``uploads`` (image upload, mask
PUT, label import), sized by ``ACTIVESEG_RATE_LIMIT_*_PER_MINUTE`` (0 = off).

Why a plain ASGI middleware and not a route dependency: FastAPI reads (and spools) a multipart
body before it solves a route's dependencies, so a dependency would accept a 60 MB upload only
to refuse it. The middleware answers 429 from the request line and headers alone.

Why in-process memory: annotation must keep working when Redis is down, and a database row per
request would cost a write on every lease. The price: with N API processes a token may get up
to N times its limit. Buckets are keyed by the SHA-256 of the token (as stored in the
database), never by the token itself, and at most ``max_keys`` of them are kept (least recently
used dropped first), so a flood of made-up tokens cannot grow the memory without bound.
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from activeseg.api.metrics import flat_routes
from activeseg.core.services.auth import hash_token
from activeseg.core.settings import Settings

Clock = Callable[[], float]

# (method, route template) -> limit kind. The templates are checked against the app's routes
# when the limits are installed, so renaming a route cannot silently drop its limit.
LIMITED_ROUTES: dict[tuple[str, str], str] = {
    ("POST", "/projects/{project_id}/tasks/next"): "tasks",
    ("POST", "/tasks/{task_id}/heartbeat"): "tasks",
    ("POST", "/tasks/{task_id}/release"): "tasks",
    ("POST", "/tasks/{task_id}/skip"): "tasks",
    ("POST", "/tasks/{task_id}/submit"): "tasks",
    ("POST", "/projects/{project_id}/images"): "uploads",
    ("PUT", "/images/{image_id}/mask"): "uploads",
    ("POST", "/projects/{project_id}/import"): "uploads",
}
_WHAT = {
    "tasks": "task requests (lease, heartbeat, release, skip, submit)",
    "uploads": "uploads (images, masks, label imports)",
}


class TokenBuckets:
    """One token bucket per key: ``per_minute`` requests in a burst, refilled evenly at
    ``per_minute / 60`` per second. Keys are token hashes."""

    def __init__(self, per_minute: int, max_keys: int = 50_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # tokens per second
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float) -> float:
        """Spend one request of ``key``'s bucket. 0.0 when allowed, else the seconds until the
        next request would be (nothing is spent then)."""
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently used last
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._buckets)


class RateLimiter:
    """The buckets of every enabled limit kind of one API process."""

    clock: Clock = staticmethod(time.monotonic)  # a class attribute: tests move time by hand

    def __init__(self, settings: Settings) -> None:
        self.limits = {
            "tasks": settings.rate_limit_tasks_per_minute,
            "uploads": settings.rate_limit_uploads_per_minute,
        }
        self.buckets = {kind: TokenBuckets(n) for kind, n in self.limits.items() if n > 0}

    def check(self, kind: str, token: str) -> float:
        """0.0 if ``token`` may make one more ``kind`` request now, else seconds to wait."""
        buckets = self.buckets.get(kind)
        if buckets is None:
            return 0.0
        return buckets.take(hash_token(token), self.clock())

    def refusal(self, kind: str, wait_s: float) -> JSONResponse:
        retry_after = max(1, math.ceil(wait_s - 1e-9))
        env = f"ACTIVESEG_RATE_LIMIT_{kind.upper()}_PER_MINUTE"
        return JSONResponse(
            {
                "detail": f"rate limit exceeded: at most {self.limits[kind]} {_WHAT[kind]} per "
                f"minute per API token ({env}); retry after {retry_after} s"
            },
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None


class RateLimitMiddleware:
    """ASGI middleware: a limited route called with a Bearer token spends one request from
    that token's bucket, or is answered 429 before the route (or its body) is touched.
    Requests without a token pass: the route answers them 401."""

    def __init__(self, app: ASGIApp, limiter: RateLimiter, rules: list[tuple[Any, str]]) -> None:
        self.app = app
        self.limiter = limiter
        self.rules = rules
        self.methods = {m for (m, _), kind in LIMITED_ROUTES.items() if kind in limiter.buckets}

    def _kind(self, scope: Scope) -> str | None:
        if scope["method"] not in self.methods:
            return None
        for route, kind in self.rules:
            if route.matches(scope)[0] is Match.FULL:
                return kind
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            kind = self._kind(scope)
            token = _bearer_token(scope) if kind is not None else None
            if kind is not None and token is not None:
                wait = self.limiter.check(kind, token)
                if wait > 0.0:
                    await self.limiter.refusal(kind, wait)(scope, receive, send)
                    return
        await self.app(scope, receive, send)


_RESPONSE_429: dict[str, Any] = {
    "description": "too many requests from this API token; retry after Retry-After seconds",
    "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}},
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {"detail": {"type": "string"}},
                "required": ["detail"],
            }
        }
    },
}


def install_rate_limits(app: FastAPI, settings: Settings) -> RateLimiter:
    """Find the limited routes among ``app``'s (call after every router is included), declare
    their 429 in the OpenAPI schema and add the middleware. The limiter is
    ``app.state.rate_limiter``."""
    limiter = RateLimiter(settings)
    app.state.rate_limiter = limiter
    routes = flat_routes(app.router.routes)
    rules: list[tuple[Any, str]] = []
    for (method, template), kind in LIMITED_ROUTES.items():
        found = [r for r in routes if r.path == template and method in (r.methods or ())]
        if not found:
            raise RuntimeError(f"rate-limited route {method} {template} is not in the app")
        if kind in limiter.buckets:
            rules += [(route, kind) for route in found]
    if rules:
        _declare_429(
            app, {(m, t) for (m, t), kind in LIMITED_ROUTES.items() if kind in limiter.buckets}
        )
        app.add_middleware(RateLimitMiddleware, limiter=limiter, rules=rules)
    return limiter


def _declare_429(app: FastAPI, limited: set[tuple[str, str]]) -> None:
    """Add the 429 answer to the limited operations of the generated schema (FastAPI's
    documented way to extend it), so clients and the schema fuzz know it can come."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for method, template in sorted(limited):
                operation = schema.get("paths", {}).get(template, {}).get(method.lower())
                if operation is not None:
                    responses = operation.setdefault("responses", {})
                    responses.setdefault("429", copy.deepcopy(_RESPONSE_429))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
