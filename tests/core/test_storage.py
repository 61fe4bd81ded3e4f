from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from activeseg.core.errors import NotFound
from activeseg.core.storage import LocalBlobStore, open_store


def test_content_addressed_put_get_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "b")
    key = store.put(b"hello")
    assert key == hashlib.sha256(b"hello").hexdigest()
    assert store.put(b"hello") == key  # same bytes, same key, stored once
    assert store.get(key) == b"hello" and store.exists(key)
    assert store.keys() == [key]
    store.delete(key)
    store.delete(key)  # missing is not an error
    assert not store.exists(key)
    with pytest.raises(NotFound):
        store.get(key)


def test_keys_cannot_escape_the_folder(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "b")
    for bad in ["../../etc/passwd", "a" * 63, "Z" * 64]:
        with pytest.raises(NotFound):
            store.get(bad)
        assert not store.exists(bad)


def test_no_temp_files_left_and_urls(tmp_path: Path) -> None:
    store = open_store(f"file://{tmp_path / 'x'}")
    store.put(b"a" * 1000)
    assert not [p for p in (tmp_path / "x").rglob(".tmp-*")]
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://host/x")
