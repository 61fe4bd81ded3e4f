"""Request body size limit as a plain ASGI middleware (no BaseHTTPMiddleware: that one costs
a task and a queue per request, on every lease).

A declared ``Content-Length`` over the limit is refused before anything is read; a body sent
without one (chunked) is counted as it streams and refused with the same 413 the moment it
passes the limit, so nothing beyond the limit is ever buffered.
"""

from __future__ import annotations

import json
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Any, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.max_bytes} bytes (ACTIVESEG_MAX_UPLOAD_BYTES)"
        limit = self.max_bytes + 1024 * 1024
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if not length.isdigit():
                await self._refuse(send, 400, "invalid Content-Length")
                return
            if int(length) > limit:
                await self._refuse(send, 413, too_large)
                return
        seen = 0
        refused = started = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message: Message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # Answer now, and tell the app the client left: it stops reading, and
                    # whatever it answers is dropped below.
                    refused = True
                    if not started:
                        await self._refuse(send, 413, too_large)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if not refused:
                started = started or message["type"] == "http.response.start"
                await send(message)

        await self.app(scope, counting_receive, guarded_send)
