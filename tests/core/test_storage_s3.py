"""The S3 blob store behaves exactly like the local one, against a real S3 server (moto in
server mode on loopback, a separate process): the same tests run on both backends. Plus the
s3:// URL parsing, bounded failure when the endpoint is down, and an app on s3:// end to end.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from activeseg.core.errors import NotFound
from activeseg.core.storage import (
    BlobStore,
    LocalBlobStore,
    S3BlobStore,
    StorageUnavailable,
    open_store,
)
from tests.conftest import free_port, start_server
from tests.utils import image_bytes, make_project, upload

BUCKET = "activeseg-test"
KEY_A = hashlib.sha256(b"a").hexdigest()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port, with fake credentials in the environment (the
    store reads the standard AWS variables) and one bucket."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            mp.setenv(name, value)
        mp.delenv("AWS_ENDPOINT_URL", raising=False)
        mp.delenv("AWS_ENDPOINT_URL_S3", raising=False)
        client = boto3.client("s3", endpoint_url=endpoint)
        deadline = time.monotonic() + 300
        while True:
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # noqa: BLE001 - not listening yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    proc.kill()
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def s3_client(endpoint: str) -> Any:
    return boto3.client("s3", endpoint_url=endpoint)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """An empty store of each backend (S3: a fresh prefix in the shared bucket)."""
    if request.param == "local":
        return LocalBlobStore(tmp_path / "blobs")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_store(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}?endpoint_url={endpoint}")


def test_roundtrip_is_content_addressed(store: BlobStore) -> None:
    data = os.urandom(100_000)
    key = store.put(data)
    assert key == hashlib.sha256(data).hexdigest()
    assert store.get(key) == data
    assert store.exists(key)


def test_put_is_idempotent_and_uploads_once(store: BlobStore) -> None:
    uploads: list[str] = []
    if isinstance(store, S3BlobStore):
        store.client.meta.events.register(
            "before-parameter-build.s3.PutObject", lambda **kw: uploads.append(kw["params"]["Key"])
        )
        key = store.put(b"same bytes")
        assert store.put(b"same bytes") == key
        assert uploads == [store.prefix + key]  # the second put uploaded nothing
    else:
        assert isinstance(store, LocalBlobStore)
        key = store.put(b"same bytes")
        inode = store._path(key).stat().st_ino
        assert store.put(b"same bytes") == key
        assert store._path(key).stat().st_ino == inode  # not rewritten
    assert store.keys() == [key]
    assert store.get(key) == b"same bytes"


def test_missing_key_is_not_found(store: BlobStore) -> None:
    with pytest.raises(NotFound, match="missing from storage"):
        store.get(KEY_A)
    assert not store.exists(KEY_A)


@pytest.mark.parametrize(
    "bad", ["../../etc/passwd", "a" * 63, "Z" * 64, "a" * 64 + "/x", "../" + "a" * 61]
)
def test_invalid_keys_are_refused(store: BlobStore, bad: str) -> None:
    with pytest.raises(NotFound, match="no blob"):
        store.get(bad)
    with pytest.raises(NotFound, match="no blob"):
        store.delete(bad)
    assert not store.exists(bad)


def test_delete(store: BlobStore) -> None:
    key = store.put(b"to delete")
    keep = store.put(b"to keep")
    store.delete(key)
    store.delete(key)  # missing is not an error
    assert not store.exists(key)
    assert store.keys() == [keep]
    with pytest.raises(NotFound):
        store.get(key)


def test_keys_lists_exactly_the_blobs(store: BlobStore) -> None:
    keys = {store.put(f"blob {i}".encode()) for i in range(5)}
    assert store.keys() == sorted(keys)


def test_re_put_refreshes_age_for_the_orphan_sweep(store: BlobStore) -> None:
    key = store.put(b"aging")
    time.sleep(1.1)  # S3 keeps LastModified to the second
    cutoff = datetime.now(UTC)
    assert store.keys_older_than(cutoff) == [key]
    time.sleep(1.1)
    store.put(b"aging")  # referenced again: young again, whatever the backend
    assert store.keys_older_than(cutoff) == []
    assert store.delete_if_older(key, cutoff) is False and store.exists(key)
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert store.delete_if_older(key, later) is True
    assert not store.exists(key)
    assert store.delete_if_older(key, later) is False  # already gone


def test_check_passes_then_fails_on_a_missing_bucket_or_folder(
    store: BlobStore, tmp_path: Path
) -> None:
    store.check()
    if isinstance(store, S3BlobStore):
        gone: BlobStore = S3BlobStore("no-such-bucket-here", "", store.endpoint_url)
        with pytest.raises(StorageUnavailable, match="'no-such-bucket-here'.*does not exist"):
            gone.check()
    else:
        assert isinstance(store, LocalBlobStore)
        store.root.rename(tmp_path / "moved")
        (tmp_path / "blobs").write_text("a file where the folder was")
        with pytest.raises(OSError):
            store.check()


def test_s3_objects_outside_the_store_are_ignored(s3_endpoint: str) -> None:
    prefix = f"t-{uuid.uuid4().hex[:12]}"
    store = open_store(f"s3://{BUCKET}/{prefix}/?endpoint_url={s3_endpoint}")
    key = store.put(b"mine")
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/README.txt", Body=b"not a blob")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}/sub/{KEY_A}", Body=b"a")
    client.put_object(Bucket=BUCKET, Key=f"{prefix}-other/{KEY_A}", Body=b"a")
    assert store.keys() == [key]
    assert client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read() == b"mine"


def test_s3_outage_fails_fast_with_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    store = open_store(f"s3://{BUCKET}?endpoint_url=http://127.0.0.1:{port}")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="unreachable") as err:
        store.put(b"x")
    with pytest.raises(StorageUnavailable, match="unreachable"):
        store.check()
    elapsed = time.monotonic() - started
    assert elapsed < 15, f"an outage took {elapsed:.1f}s to report"
    assert err.value.status_code == 503 and isinstance(err.value, ConnectionError)


def test_storage_urls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    s3 = open_store("s3://my-bucket/a/b/?endpoint_url=http://minio:9000")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("my-bucket", "a/b/", "http://minio:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://other:9000")
    s3 = open_store("s3://my-bucket")
    assert isinstance(s3, S3BlobStore)
    assert (s3.bucket, s3.prefix, s3.endpoint_url) == ("my-bucket", "", "http://other:9000")
    assert isinstance(open_store(str(tmp_path / "plain")), LocalBlobStore)
    for bad, why in [
        ("s3:///prefix", "names no bucket"),
        ("s3://b/p?region=x", "unknown parameter"),
        ("s3://b/p?endpoint_url=minio:9000", "http:// or https://"),
        ("gs://bucket/x", "unsupported"),
    ]:
        with pytest.raises(ValueError, match=why):
            open_store(bad)


def test_app_on_s3_end_to_end(s3_endpoint: str, tmp_path: Path) -> None:
    """An API on s3:// storage: upload over HTTP, read back over HTTP; the object is in the
    bucket; the orphan sweep removes an unreferenced object and keeps the image."""
    from activeseg.api.app import create_app
    from activeseg.core.migrate import upgrade
    from activeseg.core.services import auth
    from activeseg.core.services.blobs import sweep_orphan_blobs
    from activeseg.core.settings import Settings

    prefix = f"e2e-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        environment="test",
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'e2e.db'}",
        storage_url=f"s3://{BUCKET}/{prefix}?endpoint_url={s3_endpoint}",
    )
    upgrade(settings.database_url)
    app = create_app(settings, dispatcher=lambda job_id: False)  # no broker needed here
    assert isinstance(app.state.store, S3BlobStore)
    with app.state.db.session() as s:
        _, token = auth.create_token(s, auth.create_user(s, "s3-admin", "admin"))
    server, thread, url = start_server(app)
    try:
        import httpx

        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/health").json()["storage"] == "ok"
            project = make_project(c)
            data = image_bytes(seed=7)
            r = upload(c, project["id"], ("cells.png", data))
            assert r.status_code == 201, r.text
            image = r.json()["data"][0]["image"]
            got = c.get(f"/images/{image['id']}/file")
            assert (got.status_code, got.content) == (200, data)
        key = hashlib.sha256(data).hexdigest()
        client = s3_client(s3_endpoint)
        assert client.get_object(Bucket=BUCKET, Key=f"{prefix}/{key}")["Body"].read() == data
        orphan = app.state.store.put(b"written, never committed")
        later = datetime.now(UTC) + timedelta(seconds=5)
        result = sweep_orphan_blobs(app.state.db, app.state.store, 1.0, now=later)
        assert result.removed == [orphan] and result.referenced == 1
        assert app.state.store.keys() == [key]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        app.state.db.dispose()
