"""The body-size limit holds for bodies without a Content-Length too (chunked uploads): the
413 comes as soon as the stream passes the limit, and nothing is stored."""

from __future__ import annotations

from collections.abc import Iterator

from tests.conftest import Stack
from tests.utils import make_project

LIMIT = 2 * 1024 * 1024  # ACTIVESEG_MAX_UPLOAD_BYTES of the test stack


def multipart_stream(total: int) -> Iterator[bytes]:
    yield (
        b'--xx\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n"
    )
    chunk = b"\0" * 65536
    for _ in range(total // len(chunk)):
        yield chunk
    yield b"\r\n--xx--\r\n"


def test_a_chunked_upload_over_the_limit_is_refused_413(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    r = admin.post(
        f"/projects/{pid}/images",
        content=multipart_stream(4 * LIMIT),
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == f"request body over {LIMIT} bytes (ACTIVESEG_MAX_UPLOAD_BYTES)"
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
    # The middleware answered mid-stream and closes the connection rather than read the rest.
    assert r.headers["connection"] == "close"


def test_a_declared_length_over_the_limit_is_refused_before_reading(stack: Stack, admin) -> None:  # type: ignore[no-untyped-def]
    pid = make_project(admin)["id"]
    body = b"\0" * (LIMIT + 1024 * 1024 + 1)
    r = admin.post(
        f"/projects/{pid}/images",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert r.status_code == 413
    assert admin.get(f"/projects/{pid}/images").json()["count"] == 0
