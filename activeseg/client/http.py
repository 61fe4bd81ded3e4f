"""A small typed HTTP client for the activeseg API (used by the CLI and `simulate`)."""

from __future__ import annotations

import time
from typing import Any

import httpx

TERMINAL = ("succeeded", "failed")


class ApiError(RuntimeError):
    """The server refused a request; ``detail`` is its explanation."""

    def __init__(self, status: int, detail: Any, method: str, url: str) -> None:
        super().__init__(f"{method} {url} -> {status}: {detail}")
        self.status = status
        self.detail = detail


class Client:
    """Waits out a 429 (rate limit; the server refused before reading the request, so any
    request may be sent again) and a 503 on reads (the database is briefly down), for as long
    as ``Retry-After`` says, up to ``max_retries`` times."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = 120,
        max_retries: int = 8,
        max_wait_s: float = 60.0,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout)
        self.max_retries = max_retries
        self.max_wait_s = max_wait_s
        self.retries = 0  # how many times this client waited (for tests and progress)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _should_retry(self, r: httpx.Response, method: str, attempt: int) -> float | None:
        retryable = r.status_code == 429 or (r.status_code == 503 and method in ("GET", "HEAD"))
        if not retryable or attempt >= self.max_retries:
            return None
        try:
            wait = float(r.headers.get("Retry-After", "1"))
        except ValueError:
            wait = 1.0
        return min(max(wait, 0.1), self.max_wait_s)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        attempt = 0
        while True:
            r = self.http.request(method, url, **kwargs)
            wait = self._should_retry(r, method, attempt)
            if wait is None:
                break
            attempt += 1
            self.retries += 1
            time.sleep(wait)
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
