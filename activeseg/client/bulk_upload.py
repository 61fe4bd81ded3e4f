"""Bulk image upload: many files per request, several requests in flight, resumable.

Why batches: the upload route takes up to ``ACTIVESEG_MAX_IMAGES_PER_UPLOAD`` files and
``ACTIVESEG_MAX_UPLOAD_BYTES`` per request, all or nothing, and the per-token limit counts
files, not requests; one file per request pays a round trip, a transaction and the
middlewares for every image. The client does not know the server's limits: it starts from
``BatchLimits()`` (under the defaults) and shrinks them when a 413 names a smaller one.

Why split on a refusal: the server stores all of a request's files or none, so one corrupt
file would sink its batch-mates. A batch refused for its content (400, 413, 415, 422) is sent
again in halves, down to the file at fault, which is reported by name; the others land.

Why a journal and no listing of the project: resuming a 100,000-image folder must not read
every file again nor page through 100,000 image rows. Each file the server confirmed is
appended (path, size, mtime, sha256) to a local journal per server and project; a rerun skips
the files whose path, size and mtime match without reading them. Files sent but not journaled
(in flight when the upload was cut) are simply sent again: the server keeps images by content,
so they come back as duplicates, never as copies.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from activeseg.client.http import ApiError

if TYPE_CHECKING:
    from activeseg.client.api_client import ApiClient

# Answers that blame the request's content: split the batch to find the file at fault.
CONTENT_REFUSALS = (400, 413, 415, 422)
_FILE_LIMIT = re.compile(r"files in one upload; the limit is (\d+)")
_BYTE_LIMIT = "ACTIVESEG_MAX_UPLOAD_BYTES"


@dataclass(frozen=True)
class LocalFile:
    """A file to upload, identified for the journal by its absolute path, size and mtime."""

    path: Path
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> LocalFile:
        st = path.stat()
        return cls(path.resolve(), st.st_size, st.st_mtime_ns)


@dataclass
class BatchLimits:
    """Files and bytes per request; the defaults stay under the server's (500 files, 64 MiB)
    and keep ``workers`` requests' bytes in memory small."""

    max_files: int = 100
    max_bytes: int = 16 * 1024 * 1024


def cut_batch(files: deque[LocalFile], limits: BatchLimits) -> list[LocalFile]:
    """Take the next batch off the front of ``files``: as many as ``limits`` allow, and always
    at least one (a file over ``max_bytes`` goes alone; the server judges it)."""
    batch: list[LocalFile] = []
    size = 0
    while files and len(batch) < limits.max_files:
        if batch and size + files[0].size > limits.max_bytes:
            break
        size += files[0].size
        batch.append(files.popleft())
    return batch


class Journal:
    """Append-only JSON lines of the files a server confirmed for one project. One file per
    (server URL, project id, project creation time), so a project made again under a reused
    id never inherits an old journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._out: IO[str] | None = None

    @classmethod
    def for_project(cls, url: str, project: dict[str, Any]) -> Journal:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        key = f"{url.rstrip('/')}|{project['id']}|{project.get('created_at', '')}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return cls(Path(base) / "activeseg" / "uploads" / f"{digest}.jsonl")

    def load(self) -> dict[Path, tuple[int, int, str]]:
        """path -> (size, mtime_ns, sha256) of every journaled file; a torn last line (the
        process was killed mid-write) is ignored."""
        out: dict[Path, tuple[int, int, str]] = {}
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                row = json.loads(line)
                out[Path(row["path"])] = (int(row["size"]), int(row["mtime_ns"]), row["sha256"])
            except (ValueError, KeyError, TypeError):
                continue
        return out

    def record(self, files: Iterable[tuple[LocalFile, str]]) -> None:
        """Append (file, sha256 the server stored) rows and flush them to the OS, so an abrupt
        exit right after keeps them."""
        if self._out is None:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._out = self.path.open("a")
        for f, sha in files:
            row = {"path": str(f.path), "size": f.size, "mtime_ns": f.mtime_ns, "sha256": sha}
            self._out.write(json.dumps(row) + "\n")
        self._out.flush()

    def close(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None


def split_by_journal(
    files: list[LocalFile], journal: dict[Path, tuple[int, int, str]]
) -> tuple[list[LocalFile], set[str]]:
    """(files still to send, sha256s of the journaled ones skipped)."""
    todo: list[LocalFile] = []
    skipped: set[str] = set()
    for f in files:
        known = journal.get(f.path)
        if known is not None and known[:2] == (f.size, f.mtime_ns):
            skipped.add(known[2])
        else:
            todo.append(f)
    return todo, skipped


@dataclass
class UploadReport:
    created: int = 0
    duplicates: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class _Outcome:
    batch: list[LocalFile]
    response: dict[str, Any] | None = None
    error: ApiError | None = None
    unreadable: list[tuple[LocalFile, str]] = field(default_factory=list)


class BulkUploader:
    """Sends files in batches, ``workers`` requests in flight. ``on_batch(files, response)``
    runs in the calling thread after each stored batch (journal, progress), and
    ``on_refused(path, reason)`` after each file refused for good; every decision about what
    to send next is taken there too, so no state is shared between threads."""

    def __init__(
        self,
        api: ApiClient,
        project_id: int,
        *,
        split: str = "pool",
        workers: int = 4,
        limits: BatchLimits | None = None,
        on_batch: Callable[[list[LocalFile], dict[str, Any]], None] | None = None,
        on_refused: Callable[[Path, str], None] | None = None,
    ) -> None:
        self.api = api
        self.project_id = project_id
        self.split = split
        self.workers = workers
        self.limits = limits or BatchLimits()
        self.on_batch = on_batch
        self.on_refused = on_refused
        self.report = UploadReport()
        self._remaining: deque[LocalFile] = deque()
        self._halves: deque[list[LocalFile]] = deque()  # batches to send exactly as they are

    def run(self, files: list[LocalFile]) -> UploadReport:
        """Upload ``files``; a refusal that is not about a file's content (401, 403, 404, a
        server error after retries, the server unreachable) stops everything and is raised."""
        self._remaining = deque(files)
        pending: set[Future[_Outcome]] = set()
        with ThreadPoolExecutor(self.workers) as pool:
            try:
                while True:
                    while len(pending) < self.workers and (batch := self._next_batch()):
                        pending.add(pool.submit(self._send, batch))
                    if not pending:
                        return self.report
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        self._handle(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise

    def _next_batch(self) -> list[LocalFile]:
        if self._halves:
            return self._halves.popleft()
        return cut_batch(self._remaining, self.limits)

    def _send(self, batch: list[LocalFile]) -> _Outcome:
        payload, readable, unreadable = [], [], []
        for f in batch:
            try:
                payload.append((f.path.name, f.path.read_bytes()))
                readable.append(f)
            except OSError as exc:
                unreadable.append((f, f"cannot read: {exc.strerror or exc}"))
        if not payload:
            return _Outcome(batch, unreadable=unreadable)
        try:
            response = self.api.upload_batch(self.project_id, payload, self.split)
        except ApiError as exc:
            return _Outcome(readable, error=exc, unreadable=unreadable)
        return _Outcome(readable, response=response, unreadable=unreadable)

    def _handle(self, outcome: _Outcome) -> None:
        for f, why in outcome.unreadable:
            self._fail(f.path, why)
        if outcome.response is not None:
            self.report.created += int(outcome.response["created"])
            self.report.duplicates += int(outcome.response["duplicates"])
            if self.on_batch is not None:
                self.on_batch(outcome.batch, outcome.response)
        elif outcome.error is not None:
            self._refused(outcome.batch, outcome.error)

    def _refused(self, batch: list[LocalFile], error: ApiError) -> None:
        # A request-level refusal (auth, project, a form field: FastAPI's 422 carries a list
        # of field errors, a file's refusal a sentence) is the same for any half: stop.
        if error.status not in CONTENT_REFUSALS or not isinstance(error.detail, str):
            raise error
        detail = error.detail
        if len(batch) == 1:
            self._fail(batch[0].path, detail)
        elif error.status == 413 and self._shrink_limits(batch, detail):
            self._remaining.extendleft(reversed(batch))  # cut again under the new limits
        else:
            half = len(batch) // 2
            self._halves.extendleft([batch[half:], batch[:half]])

    def _fail(self, path: Path, reason: str) -> None:
        self.report.failed.append((path, reason))
        if self.on_refused is not None:
            self.on_refused(path, reason)

    def _shrink_limits(self, batch: list[LocalFile], detail: str) -> bool:
        """Learn a smaller per-request limit from a 413 that names one; False when the 413 is
        about one file (too many pixels), not the request."""
        match = _FILE_LIMIT.search(detail)
        if match:
            self.limits.max_files = max(1, min(self.limits.max_files, int(match.group(1))))
            return True
        if _BYTE_LIMIT in detail:
            size = sum(f.size for f in batch)
            self.limits.max_bytes = max(1, min(self.limits.max_bytes, size // 2))
            return True
        return False
