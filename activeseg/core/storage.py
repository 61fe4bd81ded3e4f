"""Blob storage behind a small interface, content-addressed by sha256.

Keys are the sha256 of the content, so the same bytes are stored once and a key always names
the same bytes. Writes are atomic (temporary file then rename locally; a single PUT on S3): a
crash never leaves a half-written blob under a real key.

Two backends with the same behaviour: a local folder (the embedded default, one machine) and
an S3-compatible object store (AWS S3, MinIO, ...) so that API replicas and workers on several
machines share one store.

Services write the blob first and commit the row after, so a failure in between leaves an
*orphan* blob, never a row pointing at a missing blob. Orphans are removed by the periodic
sweep (:mod:`activeseg.core.services.blobs`) once they are older than a grace period; for that
the stores list blobs with their age, and ``put`` of a key that already exists refreshes the
blob's modification time, so a blob that is being referenced again is never "old".
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from activeseg.core.errors import NotFound, Unavailable

log = logging.getLogger(__name__)

# An S3 outage must fail a request in seconds, not hang it for minutes: short connect and read
# timeouts (a read timeout is per socket read, not per object), and few retries.
S3_CONNECT_TIMEOUT_S = 3.0
S3_READ_TIMEOUT_S = 20.0
S3_MAX_ATTEMPTS = 3


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StorageUnavailable(Unavailable, ConnectionError):
    """The blob store cannot be reached or used right now.

    An ``Unavailable`` (503 with the message for a client) and a ``ConnectionError`` (a
    transient error: a job that meets it is retried with backoff, not failed).
    """


class BlobStore(Protocol):
    def put(self, data: bytes) -> str:
        """Store ``data``; return its key (sha256 hex). Idempotent: an existing key is not
        written again, only its modification time is refreshed."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; raises NotFound."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def keys(self) -> list[str]: ...

    def keys_older_than(self, cutoff: datetime) -> list[str]:
        """Keys of blobs last written (or re-put) before ``cutoff`` (timezone-aware)."""

    def delete_if_older(self, key: str, cutoff: datetime) -> bool:
        """Delete ``key`` only if it is still older than ``cutoff`` (not re-put meanwhile);
        True if it was deleted."""

    def check(self) -> None:
        """Raise if the store cannot be used (for /health)."""


def is_blob_key(value: object) -> bool:
    """Whether ``value`` has the shape of a blob key (64 lowercase hex digits)."""
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def _valid_key(key: str) -> str:
    if not is_blob_key(key):
        raise NotFound(f"no blob {key!r}")
    return key


def _fsync_dir(folder: Path) -> None:
    """Make the entries of ``folder`` durable (a new file's name, a new subfolder)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            try:
                os.utime(path)  # referenced again: restart its grace period (orphan sweep)
                return key
            except FileNotFoundError:
                pass  # swept a moment ago: write it again below
            except OSError:
                # A read-only store: nothing can sweep it either, and the bytes are there.
                return key
        new_dirs = [d for d in (path.parent.parent, path.parent) if not d.is_dir()]
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
        # The bytes are on disk; so must be their name (and any folder made for it) before the
        # caller commits a row that names the key: a crash must not leave a row whose blob
        # was never linked in.
        for folder in [path.parent, *(d.parent for d in reversed(new_dirs))]:
            _fsync_dir(folder)
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

    def _blob_paths(self) -> Iterator[Path]:
        return (p for p in self.root.glob("??/??/*") if is_blob_key(p.name))

    def keys(self) -> list[str]:
        return sorted(p.name for p in self._blob_paths())

    def keys_older_than(self, cutoff: datetime) -> list[str]:
        limit = cutoff.timestamp()
        found = []
        for p in self._blob_paths():
            try:
                if p.stat().st_mtime < limit:
                    found.append(p.name)
            except FileNotFoundError:
                continue  # deleted while listing
        return sorted(found)

    def delete_if_older(self, key: str, cutoff: datetime) -> bool:
        path = self._path(key)
        try:
            if path.stat().st_mtime >= cutoff.timestamp():
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        return True

    def check(self) -> None:
        probe = self.root / ".health"
        probe.write_bytes(b"ok")
        probe.unlink()


class S3BlobStore:
    """Blobs in an S3 bucket (AWS S3 or any S3-compatible store) as ``prefix/<sha256>``.

    Credentials and region come from the standard AWS environment (``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, or a profile); the endpoint of an
    S3-compatible store from ``endpoint_url`` or ``AWS_ENDPOINT_URL``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.endpoint_url = (
            endpoint_url
            or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        self.client = client if client is not None else self._make_client()

    def _make_client(self) -> Any:
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=S3_CONNECT_TIMEOUT_S,
            read_timeout=S3_READ_TIMEOUT_S,
            retries={"max_attempts": S3_MAX_ATTEMPTS, "mode": "standard"},
            # MinIO and most S3-compatible stores serve buckets as a path, not a host name.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
        )
        return boto3.client("s3", endpoint_url=self.endpoint_url, config=config)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"S3BlobStore(s3://{self.bucket}/{self.prefix}{where})"

    def _name(self, key: str) -> str:
        return self.prefix + _valid_key(key)

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Turn unreachable-store errors into StorageUnavailable with a message that says
        which store and what to check."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        try:
            yield
        except NoCredentialsError:
            raise StorageUnavailable(
                f"blob storage {self!r}: no AWS credentials; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY"
            ) from None
        except BotoCoreError as exc:
            raise StorageUnavailable(
                f"blob storage {self!r} unreachable while trying to {action}: {exc}; retry"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "?")
            raise StorageUnavailable(f"blob storage {self!r} refused to {action}: {code}") from None

    @staticmethod
    def _is_missing(exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        if not isinstance(exc, ClientError):
            return False
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def _head(self, name: str, action: str = "read") -> dict[str, Any] | None:
        from botocore.exceptions import ClientError

        with self._errors(action):
            try:
                head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=name)
                return head
            except ClientError as exc:
                if self._is_missing(exc):
                    return None
                raise

    def put(self, data: bytes) -> str:
        from botocore.exceptions import ClientError

        key = sha256_hex(data)
        name = self._name(key)
        with self._errors("write"):
            if self._head(name, "write") is not None:
                try:
                    # Referenced again: a server-side copy onto itself refreshes LastModified,
                    # so the orphan sweep's grace period restarts (no bytes are uploaded).
                    self.client.copy_object(
                        Bucket=self.bucket,
                        Key=name,
                        CopySource={"Bucket": self.bucket, "Key": name},
                        MetadataDirective="REPLACE",
                    )
                    return key
                except ClientError as exc:
                    if not self._is_missing(exc):
                        raise
                    # swept a moment ago: upload it again below
            self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
        return key

    def get(self, key: str) -> bytes:
        from botocore.exceptions import ClientError

        name = self._name(key)
        with self._errors("read"):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=name)["Body"]
            except ClientError as exc:
                if self._is_missing(exc):
                    raise NotFound(f"blob {key} is missing from storage") from None
                raise
            data: bytes = body.read()
            return data

    def exists(self, key: str) -> bool:
        try:
            name = self._name(key)
        except NotFound:
            return False
        return self._head(name) is not None

    def delete(self, key: str) -> None:
        name = self._name(key)
        with self._errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=name)  # missing: no error

    def _listing(self) -> Iterator[tuple[str, datetime]]:
        with self._errors("list"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"][len(self.prefix) :]
                    if is_blob_key(name):  # other objects under the prefix are not ours
                        yield name, obj["LastModified"]

    def keys(self) -> list[str]:
        return sorted(name for name, _ in self._listing())

    def keys_older_than(self, cutoff: datetime) -> list[str]:
        return sorted(name for name, modified in self._listing() if modified < cutoff)

    def delete_if_older(self, key: str, cutoff: datetime) -> bool:
        name = self._name(key)
        head = self._head(name)
        if head is None or head["LastModified"] >= cutoff:
            return False
        with self._errors("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=name)
        return True

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "?"))
            if code in ("404", "NoSuchBucket", "NotFound"):
                detail = "does not exist; create it (e.g. `mc mb`) or fix ACTIVESEG_STORAGE_URL"
            elif code in ("403", "AccessDenied"):
                detail = "refuses access; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
            else:
                detail = f"answered {code}"
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} ({self!r}) {detail}") from None
        except BotoCoreError as exc:
            raise StorageUnavailable(f"S3 store {self!r} unreachable: {exc}") from None


_S3_QUERY = ("endpoint_url",)


def _open_s3(url: str) -> S3BlobStore:
    parsed = urlparse(url)
    query = parse_qs(parsed.query, keep_blank_values=True)
    unknown = sorted(set(query) - set(_S3_QUERY))
    example = "s3://activeseg-blobs/prod?endpoint_url=http://minio:9000"
    if not parsed.netloc:
        raise ValueError(f"ACTIVESEG_STORAGE_URL {url!r} names no bucket; e.g. {example}")
    if unknown:
        raise ValueError(
            f"ACTIVESEG_STORAGE_URL {url!r}: unknown parameter(s) {', '.join(unknown)}; "
            f"only endpoint_url is understood, e.g. {example}"
        )
    endpoint = query.get("endpoint_url", [""])[-1] or None
    if endpoint is not None and urlparse(endpoint).scheme not in ("http", "https"):
        raise ValueError(
            f"ACTIVESEG_STORAGE_URL {url!r}: endpoint_url must be http:// or https://, "
            f"e.g. {example}"
        )
    return S3BlobStore(parsed.netloc, parsed.path, endpoint)


def open_store(url: str) -> BlobStore:
    """``file:///abs/path`` (or a plain path) gives a LocalBlobStore;
    ``s3://bucket/optional/prefix[?endpoint_url=http://host:port]`` an S3BlobStore."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme else url
        return LocalBlobStore(Path(path))
    if parsed.scheme == "s3":
        return _open_s3(url)
    raise ValueError(
        f"unsupported ACTIVESEG_STORAGE_URL {url!r}; use a local folder such as "
        "file:///var/lib/activeseg/blobs or an S3 bucket such as "
        "s3://activeseg-blobs/prod?endpoint_url=http://minio:9000"
    )
