"""PNG index masks in a zip: ``classes.json``, ``masks/<name>.png`` (class id per pixel, the
ignore index where unlabelled) and ``images.json`` mapping each mask to its image.

The writer streams: each entry is flushed as soon as it is written, with fixed timestamps and
attributes so the same labels always give the same bytes.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import Any

FIXED_TIME = (1980, 1, 1, 0, 0, 0)
CLASSES_JSON = "classes.json"
IMAGES_JSON = "images.json"
MASK_DIR = "masks/"


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class _Sink(io.RawIOBase):
    """A write-only, unseekable stream whose bytes are taken out by :meth:`drain`."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._chunks.append(data)
        return len(data)

    def drain(self) -> bytes:
        out, self._chunks = b"".join(self._chunks), []
        return out


class ZipStream:
    """Build a zip entry by entry and take its bytes out as it grows."""

    def __init__(self) -> None:
        self._sink = _Sink()
        self._zip = zipfile.ZipFile(self._sink, mode="w", compression=zipfile.ZIP_DEFLATED)

    def _info(self, name: str) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
        info.compress_type = zipfile.ZIP_DEFLATED
        info.external_attr = 0o644 << 16
        info.create_system = 3
        return info

    def add(self, name: str, data: bytes) -> bytes:
        self._zip.writestr(self._info(name), data)
        return self._sink.drain()

    def add_lines(self, name: str, parts: Iterator[bytes]) -> Iterator[bytes]:
        """Write an entry from pieces (for a listing too long to hold), yielding output."""
        with self._zip.open(self._info(name), mode="w", force_zip64=True) as f:
            for part in parts:
                f.write(part)
                out = self._sink.drain()
                if out:
                    yield out
        yield self._sink.drain()

    def close(self) -> bytes:
        self._zip.close()
        return self._sink.drain()


def mask_stem(filename: str) -> str:
    stem = PurePosixPath(filename).stem or "image"
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)


def mask_entry(filename: str, sha256: str, duplicated: set[str]) -> str:
    """``masks/<stem>.png``; stems shared by several images get a hash suffix."""
    stem = mask_stem(filename)
    return f"{MASK_DIR}{stem}-{sha256[:8]}.png" if stem in duplicated else f"{MASK_DIR}{stem}.png"
