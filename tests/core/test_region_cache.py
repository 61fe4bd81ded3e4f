"""The decoded-region-map cache: one decode per blob key, shared read-only arrays, eviction of
the least recently used map past its byte budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from activeseg.core.services.regions import RegionMapCache, encode_region_map
from activeseg.core.storage import LocalBlobStore
from activeseg.uncertainty.regions import grid_regions


class CountingStore(LocalBlobStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: list[str] = []

    def get(self, key: str) -> bytes:
        self.reads.append(key)
        return super().get(key)


def test_a_map_is_decoded_once_and_shared_read_only(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    key = store.put(encode_region_map(grid_regions(32, 48, 16)))
    cache = RegionMapCache()
    first, again = cache.get(store, key), cache.get(store, key)
    assert again is first and store.reads == [key]
    assert first.n_regions == 6 and first.labels[31, 47] == 5
    with pytest.raises(ValueError, match="read-only"):
        first.labels[0, 0] = 9


def test_the_least_recently_used_map_goes_past_the_budget(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    keys = [store.put(encode_region_map(grid_regions(64, 64, s))) for s in (8, 16, 32)]
    one = grid_regions(64, 64, 8)
    size = one.labels.nbytes  # 16 KiB of labels; counts and bboxes add a little per region
    cache = RegionMapCache(max_bytes=2 * size + 2000)
    cache.get(store, keys[0])
    cache.get(store, keys[1])
    cache.get(store, keys[0])  # keys[0] is now the most recently used
    cache.get(store, keys[2])  # over budget: keys[1] goes
    store.reads.clear()
    cache.get(store, keys[0])
    cache.get(store, keys[2])
    assert store.reads == []
    cache.get(store, keys[1])
    assert store.reads == [keys[1]]
    assert np.array_equal(cache.get(store, keys[1]).labels, grid_regions(64, 64, 16).labels)
