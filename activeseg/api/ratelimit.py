"""Per-API-token rate limits on the annotation and upload routes (429 with ``Retry-After``).

Why: one runaway script (a labeling tool in a retry loop, a misconfigured uploader) must not
starve the annotators sharing the service. Each token gets a token bucket per limit kind:
``tasks`` (lease next, heartbeat, release, skip, submit, and the review stage's lease next,
heartbeat, release and decision) counts requests; ``uploads`` (image upload, mask PUT, label
import) counts uploaded *files*, so a client that sends 100 images in one request spends 100,
exactly as one sending them one by one, and batching is never punished.
Both are sized by ``ACTIVESEG_RATE_LIMIT_*_PER_MINUTE`` (0 = off).

Why a plain ASGI middleware and not a route dependency: FastAPI reads (and spools) a multipart
body before it solves a route's dependencies, so a dependency would accept a 60 MB upload only
to refuse it. The middleware answers 429 from the request line and headers alone. It cannot
know a request's file count then, so the uploads bucket is a *debt* bucket: a request is let in
while its token has at least one file of credit (one is spent at the door), and the files
beyond the first are charged as the multipart body streams past (counted by python-multipart's
parser, the one Starlette parses the form with), possibly driving the balance below zero; the
next request then waits until the debt is paid back. A lone request may therefore carry more
files than the limit, but no token sustains more than the limit per minute.

Why in-process memory: annotation must keep working when Redis is down, and a database row per
request would cost a write on every lease. The price: with N API processes a token may get up
to N times its limit. Buckets are keyed by the SHA-256 of the token (as stored in the
database), never by the token itself, and at most ``max_keys`` of them are kept (least recently
used dropped first), so a flood of made-up tokens cannot grow the memory without bound.

The clock is injectable (``RateLimiter(settings, clock=...)``, or the class attribute
``RateLimiter.clock`` for limiters that ``create_app`` makes), so tests move time by hand.
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
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
    # the review stage's lease and decision: the same kind of request, the same bucket
    ("POST", "/projects/{project_id}/reviews/next"): "tasks",
    ("POST", "/tasks/{task_id}/review/heartbeat"): "tasks",
    ("POST", "/tasks/{task_id}/review/release"): "tasks",
    ("POST", "/tasks/{task_id}/review"): "tasks",
    ("POST", "/projects/{project_id}/images"): "uploads",
    ("PUT", "/images/{image_id}/mask"): "uploads",
    ("POST", "/projects/{project_id}/import"): "uploads",
}
_WHAT = {
    "tasks": "task requests (lease, heartbeat, release, skip, submit)",
    "uploads": "uploaded files (images, masks, label imports)",
}
# Limit kinds charged per file of the multipart body rather than per request.
PER_FILE = frozenset({"uploads"})


class TokenBuckets:
    """One token bucket per key: ``per_minute`` units in a burst, refilled evenly at
    ``per_minute / 60`` per second. Keys are token hashes. A unit is a request (``take``),
    plus whatever ``charge`` adds afterwards: the balance may go negative (a debt), and no
    request is let in until it is back to one unit."""

    def __init__(self, per_minute: int, max_keys: int = 50_000) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0  # units per second
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (units, at)
        self._lock = threading.Lock()

    def _spend(self, key: str, now: float, units: float, only_if_credit: bool) -> float:
        with self._lock:
            tokens, at = self._buckets.pop(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + max(0.0, now - at) * self.rate)
            wait = 0.0
            if tokens >= 1.0 or not only_if_credit:
                tokens -= units
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)  # most recently used last
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    def take(self, key: str, now: float) -> float:
        """Let one request of ``key`` in, spending one unit. 0.0 when allowed, else the seconds
        until the balance is back to one unit (nothing is spent then)."""
        return self._spend(key, now, 1.0, only_if_credit=True)

    def charge(self, key: str, units: float, now: float) -> None:
        """Spend ``units`` more of ``key``'s bucket after the request was let in (a request's
        true cost, known only once its body was read); the balance may go below zero."""
        if units > 0:
            self._spend(key, now, units, only_if_credit=False)

    def balance(self, key: str, now: float) -> float:
        """The units ``key`` has now (negative: a debt); a full bucket for an unknown key."""
        with self._lock:
            tokens, at = self._buckets.get(key, (self.capacity, now))
            return min(self.capacity, tokens + max(0.0, now - at) * self.rate)

    def keys(self) -> list[str]:
        with self._lock:
            return list(self._buckets)


class RateLimiter:
    """The buckets of every enabled limit kind of one API process."""

    clock: Clock = staticmethod(time.monotonic)  # the default for limiters made by create_app

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        if clock is not None:
            self.clock = clock
        self.limits = {
            "tasks": settings.rate_limit_tasks_per_minute,
            "uploads": settings.rate_limit_uploads_per_minute,
        }
        self.buckets = {kind: TokenBuckets(n) for kind, n in self.limits.items() if n > 0}

    def check(self, kind: str, token: str) -> float:
        """0.0 if ``token`` may make one more ``kind`` request now (one unit is spent), else
        the seconds to wait."""
        buckets = self.buckets.get(kind)
        if buckets is None:
            return 0.0
        return buckets.take(hash_token(token), self.clock())

    def charge(self, kind: str, token: str, units: int) -> None:
        """Charge ``units`` more to ``token``'s ``kind`` bucket (files beyond a request's
        first)."""
        buckets = self.buckets.get(kind)
        if buckets is not None:
            buckets.charge(hash_token(token), units, self.clock())

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


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((v for k, v in scope["headers"] if k == name), None)


def _bearer_token(scope: Scope) -> str | None:
    value = _header(scope, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class FileCounter:
    """Counts the file parts (a ``filename`` in their Content-Disposition) of a
    multipart/form-data body as its chunks stream past, without keeping any of it. A body the
    parser cannot read stops the count where it is: the route refuses that body anyway."""

    def __init__(self, boundary: bytes) -> None:
        self.files = 0
        self._field = bytearray()
        self._value = bytearray()
        self._broken = False
        self._parser = MultipartParser(
            boundary,
            callbacks={
                "on_header_field": lambda data, start, end: self._field.extend(data[start:end]),
                "on_header_value": lambda data, start, end: self._value.extend(data[start:end]),
                "on_header_end": self._header_end,
            },
        )

    @classmethod
    def for_scope(cls, scope: Scope) -> FileCounter | None:
        """A counter for the request's body, or None when it is not multipart/form-data."""
        content_type = _header(scope, b"content-type")
        if content_type is None:
            return None
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return None
        try:
            return cls(boundary)
        except Exception:  # noqa: BLE001 - a boundary the parser refuses: the route says why
            return None

    def _header_end(self) -> None:
        if bytes(self._field).lower() == b"content-disposition":
            _, options = parse_options_header(bytes(self._value))
            self.files += b"filename" in options
        self._field.clear()
        self._value.clear()

    def feed(self, chunk: bytes) -> None:
        if not self._broken and chunk:
            try:
                self._parser.write(chunk)
            except Exception:  # noqa: BLE001 - counting must never fail a request
                self._broken = True


class RateLimitMiddleware:
    """ASGI middleware: a limited route called with a Bearer token spends one unit from that
    token's bucket, or is answered 429 before the route (or its body) is touched; on the
    uploads routes each file beyond the first costs one unit more, charged once the request is
    done. Requests without a token pass: the route answers them 401."""

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
        kind = self._kind(scope) if scope["type"] == "http" else None
        token = _bearer_token(scope) if kind is not None else None
        if kind is None or token is None:
            await self.app(scope, receive, send)
            return
        wait = self.limiter.check(kind, token)
        if wait > 0.0:
            await self.limiter.refusal(kind, wait)(scope, receive, send)
            return
        counter = FileCounter.for_scope(scope) if kind in PER_FILE else None
        if counter is None:
            await self.app(scope, receive, send)
            return

        charged = False

        def charge() -> None:
            nonlocal charged
            if not charged:
                charged = True
                self.limiter.charge(kind, token, counter.files - 1)

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counter.feed(message.get("body", b""))
                if not message.get("more_body", False):
                    charge()  # before the answer: the client's next request sees the debt
            return message

        try:
            await self.app(scope, counting_receive, send)
        finally:
            charge()  # a body cut short is charged for the files seen


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


def install_rate_limits(
    app: FastAPI, settings: Settings, clock: Clock | None = None
) -> RateLimiter:
    """Find the limited routes among ``app``'s (call after every router is included), declare
    their 429 in the OpenAPI schema and add the middleware. The limiter is
    ``app.state.rate_limiter``; ``clock`` (default: ``RateLimiter.clock``) is its time."""
    limiter = RateLimiter(settings, clock)
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
