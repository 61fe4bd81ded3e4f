"""The import split is a permutation seeded by the project's seed."""

from __future__ import annotations

from collections import Counter

from activeseg.core.tables import Split
from activeseg.datasets.importer import split_for, splits_for


def test_one_seed_one_split_two_seeds_two_splits() -> None:
    a, again = splits_for(50, 0.1, 0.2, seed=1), splits_for(50, 0.1, 0.2, seed=1)
    b = splits_for(50, 0.1, 0.2, seed=2)
    assert a == again
    assert a != b
    for split in (a, b):  # the sizes do not depend on the seed
        assert Counter(split) == {Split.test: 10, Split.val: 5, Split.pool: 35}


def test_split_for_reads_the_same_permutation() -> None:
    whole = splits_for(20, 0.2, 0.2, seed=9)
    assert [split_for(i, 20, 0.2, 0.2, seed=9) for i in range(20)] == whole
    assert whole[:4] != [Split.test] * 4  # no longer "the first images go to test"
