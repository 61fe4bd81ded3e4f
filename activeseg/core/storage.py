"""Blob storage behind a small interface, content-addressed by sha256.

Keys are the sha256 of the content, so the same bytes are stored once and a key always names
the same bytes. Writes are atomic (temporary file, then rename): a crash never leaves a
half-written blob under a real key.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from activeseg.core.errors import NotFound


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data``; return its key (sha256 hex). Idempotent."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises NotFound."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def keys(self) -> list[str]: ...

    def check(self) -> None:
        """Raise if the store cannot be used (for /health)."""


def _valid_key(key: str) -> str:
    if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
        raise NotFound(f"no blob {key!r}")
    return key


class LocalBlobStore:
    """Blobs in a local folder as ``root/ab/cd/abcd…``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        key = _valid_key(key)
        return self.root / key[:2] / key[2:4] / key

    def put(self, data: bytes) -> str:
        key = sha256_hex(data)
        path = self._path(key)
        if path.exists():
            return key
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"blob {key} is missing from storage") from None

    def exists(self, key: str) -> bool:
        try:
            return self._path(key).exists()
        except NotFound:
            return False

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.root.glob("??/??/*") if not p.name.startswith("."))

    def check(self) -> None:
        probe = self.root / ".health"
        probe.write_bytes(b"ok")
        probe.unlink()


def open_store(url: str) -> BlobStore:
    """``file:///abs/path`` (or a plain path) gives a LocalBlobStore."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        return LocalBlobStore(Path(path))
    raise ValueError(
        f"unsupported ACTIVESEG_STORAGE_URL {url!r}; use a local folder such as "
        "file:///var/lib/activeseg/blobs"
    )
