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


def test_put_makes_the_bytes_and_their_name_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before put returns (and the caller commits a row naming the key): the file's bytes,
    its name in its folder and any folder made for it are fsync'ed; a put of bytes already
    stored syncs nothing."""
    import os

    import activeseg.core.storage as storage

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.path.realpath(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    root = (tmp_path / "b").resolve()
    store = LocalBlobStore(root)
    key = store.put(b"first")
    ab, abcd = root / key[:2], root / key[:2] / key[2:4]
    assert len(synced) == 4 and Path(synced[0]).parent == abcd  # the bytes (a temp name)
    assert synced[1:] == [str(abcd), str(ab), str(root)]  # then the name and new folders
    synced.clear()
    assert store.put(b"first") == key and synced == []
    other = hashlib.sha256(b"second").hexdigest()
    store._path(other).parent.parent.mkdir(parents=True)  # its first folder exists already
    store.put(b"second")
    parent = root / other[:2] / other[2:4]
    assert synced[1:] == [str(parent), str(parent.parent)]
