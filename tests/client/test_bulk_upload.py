"""Bulk upload over real HTTP: the `activeseg upload` CLI (a real subprocess) and its engine
against real servers.

- 1,000 small images with the service's default limits: exit 0, nothing refused, no wait, and
  the uploads bucket charged exactly 1,000 files (not 10 requests).
- The rate limit's real 429 + Retry-After path, waited out by the CLI. The server's limiter
  reads a clock that only the test moves, so the outcome does not depend on the machine's
  speed: the burst is spent by known requests, the next one is refused with Retry-After 1,
  and the test moves the clock on when the CLI says it waits.
- A corrupt file does not sink its batch-mates: the batch is halved down to it (an exact
  sequence of request sizes), it is named, the others land.
- The per-request file limit is learned from the server's 413.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from activeseg.client.api_client import ApiClient
from activeseg.client.bulk_upload import BatchLimits, BulkUploader, LocalFile
from activeseg.core.services.auth import hash_token
from activeseg.core.settings import Settings
from tests.conftest import Stack, stack_env, start_server
from tests.utils import image_bytes, make_project, make_user

# Test stacks shrink these; the servers here keep the service's defaults unless a test says.
DEFAULTED = (
    "ACTIVESEG_RATE_LIMIT_TASKS_PER_MINUTE",
    "ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE",
    "ACTIVESEG_MAX_UPLOAD_BYTES",
    "ACTIVESEG_MAX_IMAGES_PER_UPLOAD",
)


class FrozenClock:
    """A monotonic clock that moves only when told (thread-safe enough: one float)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    base_url: str
    app: Any
    clock: FrozenClock
    admin_token: str

    def uploads_balance(self, token: str) -> float:
        buckets = self.app.state.rate_limiter.buckets["uploads"]
        return float(buckets.balance(hash_token(token), self.clock.now))


@contextmanager
def server(data_dir: Path, **env: str) -> Iterator[Server]:
    """A server of its own on SQLite, with the service's default limits but ``env``; its rate
    limiter reads a frozen clock."""
    from activeseg.api.app import create_app
    from activeseg.core.migrate import upgrade
    from activeseg.core.services import auth

    full = {k: v for k, v in stack_env("sqlite", data_dir).items() if k not in DEFAULTED}
    full.update(env)
    settings = Settings(**{k.removeprefix("ACTIVESEG_").lower(): v for k, v in full.items()})
    upgrade(settings.database_url)
    app = create_app(settings)
    clock = FrozenClock()
    app.state.rate_limiter.clock = clock
    with app.state.db.session() as s:
        _, token = auth.create_token(s, auth.create_user(s, "admin-bulk", "admin"))
    uv, thread, url = start_server(app)
    try:
        yield Server(url, app, clock, token)
    finally:
        uv.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()


def engineer_on_project(srv: Server) -> tuple[int, str]:
    """A project and an engineer token of its own (a bucket of its own)."""
    import httpx

    with httpx.Client(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {srv.admin_token}"}
    ) as admin:
        pid = make_project(admin)["id"]
        uid, token = make_user(admin, "engineer")
        assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    return pid, token


def cli_env(base_url: str, token: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTIVESEG_")}
    env.update(
        ACTIVESEG_URL=base_url,
        ACTIVESEG_TOKEN=token,
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
    )
    return env


def write_images(folder: Path, n: int, seed: int = 0) -> dict[str, str]:
    """``n`` distinct 16x16 PNGs; name -> sha256."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i in range(n):
        data = image_bytes(16, 16, seed=seed + i)
        (folder / f"im{i:04d}.png").write_bytes(data)
        out[f"im{i:04d}.png"] = hashlib.sha256(data).hexdigest()
    return out


def stored_sha256(base_url: str, token: str, pid: int) -> list[str]:
    with ApiClient(base_url, token) as api:
        return sorted(im["sha256"] for im in api.iter_images(pid))


UPLOADED = re.compile(r"uploaded (\d+), skipped (\d+) already in project \d+, failed (\d+)")


def test_cli_uploads_1000_small_images_with_default_limits_and_exits_0(tmp_path: Path) -> None:
    with server(tmp_path / "data") as srv:
        settings = srv.app.state.settings
        # The defaults, not a test's override (a stray ACTIVESEG_* in the environment fails
        # here, not later).
        for name in ("rate_limit_uploads_per_minute", "max_images_per_upload"):
            assert getattr(settings, name) == Settings.model_fields[name].default
        pid, token = engineer_on_project(srv)
        shas = write_images(tmp_path / "imgs", 1000)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "activeseg.cli",
                "upload",
                str(pid),
                str(tmp_path / "imgs"),
            ],
            env=cli_env(srv.base_url, token, tmp_path / "home"),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert UPLOADED.search(proc.stdout).groups() == ("1000", "0", "0"), proc.stdout  # type: ignore[union-attr]
        assert "waiting" not in proc.stderr  # never rate limited, never retried
        assert stored_sha256(srv.base_url, token, pid) == sorted(shas.values())
        # The bucket was charged per file: 1,000 of the default 6,000 (the clock is frozen,
        # so nothing was refilled), whatever the number of requests.
        assert srv.uploads_balance(token) == 5000.0


def test_cli_waits_out_a_real_429_and_completes(tmp_path: Path) -> None:
    """Limit 60 files per minute (1 per second), frozen clock. One request at a time of 20
    files: three requests spend the burst of 60, the fourth (10 files) is refused with
    Retry-After 1 (one file of credit is 1 s away). When the CLI says it waits, the test moves
    the clock to 1 s later (set, not added: a second wait, on a slow machine, moves nothing),
    so the retry is let in and overdraws the bucket to exactly 1 - 10 = -9."""
    with server(tmp_path / "data", ACTIVESEG_RATE_LIMIT_UPLOADS_PER_MINUTE="60") as srv:
        pid, token = engineer_on_project(srv)
        shas = write_images(tmp_path / "imgs", 70, seed=2000)
        start = srv.clock.now
        cmd = [sys.executable, "-m", "activeseg.cli", "upload", str(pid)]
        cmd += [str(tmp_path / "imgs"), "--workers", "1", "--batch-files", "20"]
        proc = subprocess.Popen(
            cmd,
            env=cli_env(srv.base_url, token, tmp_path / "home"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        watchdog = threading.Timer(300, proc.kill)  # never hang the suite
        watchdog.start()
        try:
            waits = []
            assert proc.stderr is not None and proc.stdout is not None
            for line in proc.stderr:
                if line.startswith("waiting"):
                    waits.append(line.strip())
                    srv.clock.now = start + 1.0
            out = proc.stdout.read()
            assert proc.wait() == 0, out + "\n".join(waits)
        finally:
            watchdog.cancel()
        assert waits and set(waits) == {"waiting 1.0 s: rate limited (429)"}
        assert UPLOADED.search(out).groups() == ("70", "0", "0"), out  # type: ignore[union-attr]
        assert stored_sha256(srv.base_url, token, pid) == sorted(shas.values())
        assert srv.uploads_balance(token) == -9.0


class RecordingClient(ApiClient):
    """The real client, remembering the size of every batch it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[int] = []

    def upload_batch(
        self, project_id: int, files: list[tuple[str, bytes]], split: str = "pool"
    ) -> dict[str, Any]:
        self.sent.append(len(files))
        return super().upload_batch(project_id, files, split)


def test_a_corrupt_file_is_isolated_by_halving_and_its_batch_mates_land(
    stack: Stack, admin: Any, tmp_path: Path
) -> None:
    pid = make_project(admin)["id"]
    shas = write_images(tmp_path, 16, seed=3000)
    bad = tmp_path / "im0005.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    del shas["im0005.png"]
    files = [LocalFile.of(p) for p in sorted(tmp_path.glob("*.png"))]
    with RecordingClient(stack.base_url, stack.admin_token) as api:
        uploader = BulkUploader(api, pid, workers=1, limits=BatchLimits(max_files=8))
        report = uploader.run(files)
        # [0-7] refused -> [0-3] ok, [4-7] refused -> [4,5] refused -> [4] ok, [5] refused,
        # [6,7] ok; then [8-15] ok.
        assert api.sent == [8, 4, 4, 2, 1, 1, 2, 8]
    assert (report.created, report.duplicates) == (15, 0)
    assert len(report.failed) == 1 and report.failed[0][0] == bad.resolve()
    assert report.failed[0][1].startswith("im0005.png: ")
    assert stored_sha256(stack.base_url, stack.admin_token, pid) == sorted(shas.values())


def test_the_per_request_file_limit_is_learned_from_the_413(
    stack: Stack, admin: Any, tmp_path: Path
) -> None:
    """The test stacks take at most 20 files per request; the client starts at 100."""
    assert stack.settings.max_images_per_upload == 20  # type: ignore[attr-defined]
    pid = make_project(admin)["id"]
    shas = write_images(tmp_path, 45, seed=4000)
    files = [LocalFile.of(p) for p in sorted(tmp_path.glob("*.png"))]
    with RecordingClient(stack.base_url, stack.admin_token) as api:
        uploader = BulkUploader(api, pid, workers=1)
        report = uploader.run(files)
        assert api.sent == [45, 20, 20, 5]
    assert uploader.limits.max_files == 20
    assert (report.created, report.duplicates, report.failed) == (45, 0, [])
    assert stored_sha256(stack.base_url, stack.admin_token, pid) == sorted(shas.values())


def test_cli_names_refused_files_and_exits_1_only_for_them(
    stack: Stack, admin: Any, tmp_path: Path
) -> None:
    pid = make_project(admin)["id"]
    uid, token = make_user(admin, "engineer")
    assert admin.post(f"/projects/{pid}/members", json={"user_id": uid}).status_code == 204
    shas = write_images(tmp_path / "imgs", 30, seed=5000)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"garbage")
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    proc = subprocess.run(
        [sys.executable, "-m", "activeseg.cli", "upload", str(pid), str(tmp_path / "imgs")],
        env=cli_env(stack.base_url, token, tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert UPLOADED.search(proc.stdout).groups() == ("30", "0", "2"), proc.stdout  # type: ignore[union-attr]
    errors = sorted(line for line in proc.stderr.splitlines() if line.startswith("error:"))
    assert len(errors) == 2
    assert errors[0].startswith(f"error: {tmp_path / 'imgs' / 'broken.png'}: broken.png: ")
    assert errors[1] == (f"error: {tmp_path / 'imgs' / 'empty.png'}: empty.png: the file is empty")
    assert stored_sha256(stack.base_url, token, pid) == sorted(shas.values())


def scripted_client(
    answers: list[int | Exception], monkeypatch: pytest.MonkeyPatch
) -> tuple[ApiClient, list[float], list[str]]:
    """A real ApiClient whose transport answers ``answers`` in turn (a status, with
    ``Retry-After: 3`` on 429s, or an exception raised as a lost connection); waits are
    recorded instead of slept."""
    import httpx

    script = iter(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        answer = next(script)
        if isinstance(answer, Exception):
            raise answer
        headers = {"Retry-After": "3"} if answer == 429 else {}
        body = {"created": 1, "duplicates": 0, "data": []} if answer < 400 else {"detail": "no"}
        return httpx.Response(answer, json=body, headers=headers)

    slept: list[float] = []
    monkeypatch.setattr("activeseg.client.http.time.sleep", slept.append)
    reasons: list[str] = []
    api = ApiClient("http://test", "t", on_wait=lambda reason, _: reasons.append(reason))
    api.http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    return api, slept, reasons


def test_an_upload_is_resent_after_transient_failures_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    lost = httpx.ConnectError("connection refused")
    api, slept, reasons = scripted_client([503, lost, 429, 500, 201], monkeypatch)
    assert api.upload_batch(1, [("a.png", b"x")])["created"] == 1
    # Backoff 0.5 s, 1 s, then the 429's Retry-After (3 s, not a failure), then 2 s.
    assert slept == [0.5, 1.0, 3.0, 2.0]
    assert reasons == [
        "HTTP 503",
        "ConnectError: connection refused",
        "rate limited (429)",
        "HTTP 500",
    ]


def test_a_non_idempotent_request_is_not_resent_after_a_failure(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import httpx

    from activeseg.client.http import ApiError

    api, slept, _ = scripted_client([503], monkeypatch)
    with pytest.raises(ApiError) as refused:
        api.post("/projects/1/retrain", json={})
    assert refused.value.status == 503 and slept == []
    api, slept, _ = scripted_client([httpx.ConnectError("down")], monkeypatch)
    with pytest.raises(httpx.ConnectError):
        api.post("/projects/1/retrain", json={})
    assert slept == []
    api, slept, _ = scripted_client([400], monkeypatch)  # a refusal is never resent
    with pytest.raises(ApiError):
        api.upload_batch(1, [("a.png", b"x")])
    assert slept == []


def test_a_refusal_of_the_request_itself_stops_without_splitting(
    stack: Stack, admin: Any, tmp_path: Path
) -> None:
    """FastAPI's 422 for a bad form field (a list of field errors, not a file's sentence) and
    a 404 for a missing project are the same for any half of the batch: one request, then the
    error, nothing stored."""
    from activeseg.client.http import ApiError

    pid = make_project(admin)["id"]
    write_images(tmp_path, 6, seed=6000)
    files = [LocalFile.of(p) for p in sorted(tmp_path.glob("*.png"))]
    for project_id, split, status in ((pid, "bogus", 422), (10_000_000, "pool", 404)):
        with RecordingClient(stack.base_url, stack.admin_token) as api:
            with pytest.raises(ApiError) as refused:
                BulkUploader(api, project_id, split=split, workers=1).run(files)
            assert refused.value.status == status and api.sent == [6]
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
