"""A small typed HTTP client for the activeseg API (used by the CLI and `simulate`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed")


class ApiError(RuntimeError):
    """The server refused a request; ``detail`` is its explanation."""

    def __init__(self, status: int, detail: Any, method: str, url: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {detail}")
        self.status = status
        self.detail = detail


# Answers worth sending an idempotent request again for: a lost race on a unique row (409,
# e.g. two batches carrying the same new image), a server error, a proxy or database outage.
TRANSIENT = (409, 500, 502, 503, 504)


class Client:
    """Waits out a 429 (rate limit; the server refused before reading the request, so any
    request may be sent again) and a 503 on reads (the database is briefly down), for as long
    as ``Retry-After`` says, up to ``max_retries`` times (``max_rate_waits`` for 429s: a limit
    is no failure, only a pace). A request marked ``idempotent`` (an image upload: images are
    content-addressed, so a resent one is a duplicate, never a copy) is also sent again after a
    transient answer (``TRANSIENT``) or a lost connection, with exponential backoff.
    ``on_wait(reason, seconds)`` hears about every wait, for progress output."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 120,
        max_retries: int = 8,
        max_wait_s: float = 60.0,
        max_rate_waits: int = 100,
        on_wait: Callable[[str, float], None] | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.max_rate_waits = max_rate_waits
        self.on_wait = on_wait
        self.retries = 0  # how many times this client waited (for tests and progress)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _retry_after(self, r: httpx.Response, default: float) -> float:
        try:
            wait = float(r.headers.get("Retry-After", default))
        except ValueError:
            wait = default
        return min(max(wait, 0.1), self.max_wait_s)

    def _backoff(self, failures: int) -> float:
        return float(min(0.5 * 2 ** (failures - 1), self.max_wait_s))

    def _wait(self, reason: str, seconds: float) -> None:
        self.retries += 1
        if self.on_wait is not None:
            self.on_wait(reason, seconds)
        time.sleep(seconds)

    def request(
        self, method: str, url: str, *, idempotent: bool = False, **kwargs: Any
    ) -> httpx.Response:
        failures = rate_waits = 0
        while True:
            try:
                r = self.http.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                if not idempotent or failures >= self.max_retries:
                    raise
                failures += 1
                self._wait(f"{type(exc).__name__}: {exc}", self._backoff(failures))
                continue
            if r.status_code == 429 and rate_waits < self.max_rate_waits:
                rate_waits += 1
                self._wait("rate limited (429)", self._retry_after(r, 1.0))
                continue
            transient = r.status_code == 503 and method in ("GET", "HEAD")
            transient = transient or (idempotent and r.status_code in TRANSIENT)
            if transient and failures < self.max_retries:
                failures += 1
                backoff = self._backoff(failures)
                self._wait(f"HTTP {r.status_code}", self._retry_after(r, backoff))
                continue
            break
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise ApiError(r.status_code, detail, method, url)
        return r

    def get(self, url: str, **kw: Any) -> Any:
        return self.request("GET", url, **kw).json()

    def post(self, url: str, json: Any = None, **kw: Any) -> Any:
        r = self.request("POST", url, json=json, **kw)
        return None if r.status_code == 204 else r.json()

    def wait_job(self, job_id: int, timeout: float = 3600, poll: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.get(f"/jobs/{job_id}")
            if job["state"] == "failed":
                raise ApiError(
                    500,
                    f"job {job_id} ({job['kind']}) failed: {job['error']}",
                    "GET",
                    f"/jobs/{job_id}",
                )
            if job["state"] == "succeeded":
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['state']} after {timeout}s")
            time.sleep(poll)

    def wait_idle(self, project_id: int, timeout: float = 3600, poll: float = 0.5) -> None:
        """Until no job of the project is pending, queued, running or waiting."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.get(f"/projects/{project_id}/jobs", params={"limit": 100})["data"]
            failed = [j for j in jobs if j["state"] == "failed"]
            if failed:
                raise ApiError(
                    500,
                    f"job {failed[0]['id']} ({failed[0]['kind']}) failed: {failed[0]['error']}",
                    "GET",
                    "/jobs",
                )
            if all(j["state"] in TERMINAL for j in jobs):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"project {project_id} jobs still busy after {timeout}s")
            time.sleep(poll)
