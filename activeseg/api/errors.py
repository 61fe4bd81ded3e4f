"""One place that maps domain errors to HTTP; a traceback never reaches a client."""

from __future__ import annotations

import errno
import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError, OperationalError

from activeseg.api.schemas import ErrorBody, InvalidBody
from activeseg.core.errors import DomainError, Unauthorized

log = logging.getLogger(__name__)

_MEANING = {
    400: "malformed request",
    401: "missing, invalid, expired or revoked API token",
    403: "your role may not do this",
    404: "no such row, or not one you may see",
    409: "conflicts with the current state (or a concurrent change); read it again and retry",
    413: "request body, file or image too large",
    415: "unsupported file format",
    422: "invalid input: the validation issues, or one sentence",
    429: "too many requests; retry after Retry-After seconds",
    503: "the database or storage is unavailable; retry after Retry-After seconds",
    507: "blob storage is full; nothing was saved",
}


# What any authenticated route may answer: a body that cannot be parsed, no valid token,
# invalid input, the database down.
BASE_ERRORS = (400, 401, 422, 503)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the errors a router's routes may answer (BASE_ERRORS and
    ``codes``), so that clients and the schema fuzz (tests/reliability/test_fuzz.py) know
    every status they can send."""
    return {
        code: {"model": InvalidBody if code == 422 else ErrorBody, "description": _MEANING[code]}
        for code in sorted({*BASE_ERRORS, *codes})
    }


def _finite(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by its name (strict JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(DomainError)
    async def _domain(_: Request, exc: DomainError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthorized) else None
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422, but JSON-safe: it echoes each bad "input", and a NaN or Infinity
        # there (Python's json reads them) made the 422 itself fail to serialise: a 500.
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _db_down(_: Request, exc: OperationalError) -> JSONResponse:
        log.error("database unavailable: %s", exc.orig)
        return JSONResponse(
            {"detail": "the database is unavailable right now; retry in a few seconds"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(IntegrityError)
    async def _conflict(_: Request, exc: IntegrityError) -> JSONResponse:
        # Two concurrent requests raced for the same unique row; the loser gets 409.
        log.info("integrity conflict: %s", exc.orig)
        return JSONResponse({"detail": "conflicting concurrent change; retry"}, status_code=409)

    @app.exception_handler(OSError)
    async def _storage_failed(request: Request, exc: OSError) -> JSONResponse:
        # Blob writes raise OSError (disk full, read-only, I/O error). A blob is written before
        # its row is committed, so the request's rows were rolled back. 507 (Insufficient
        # Storage) when the store is full: retrying will not help until space is freed;
        # 503 otherwise. The path and the traceback stay in the log.
        log.error("storage error on %s %s: %s", request.method, request.url.path, exc)
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return JSONResponse(
                {
                    "detail": f"blob storage is full ({reason}); nothing was saved; free space "
                    "and retry"
                },
                status_code=507,
            )
        return JSONResponse(
            {"detail": f"blob storage failed ({reason}); nothing was saved; retry later"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, status_code=500)
