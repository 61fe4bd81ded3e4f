from __future__ import annotations

import numpy as np
import pytest

from activeseg.datasets import digits, load_dataset


def test_digits_are_deterministic_for_a_seed_and_differ_between_seeds() -> None:
    first = list(digits(6, seed=3))
    second = list(digits(6, seed=3))
    other = list(digits(6, seed=4))
    for a, b in zip(first, second, strict=True):
        assert a.name == b.name
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.mask, b.mask)
    assert not any(np.array_equal(a.image, c.image) for a, c in zip(first, other, strict=True))
    # sample i depends on (seed, i) only: a shorter run is a prefix
    np.testing.assert_array_equal(list(digits(2, seed=3))[1].mask, first[1].mask)


def test_digit_canvases_have_eleven_classes_and_valid_masks() -> None:
    dataset = digits(40, seed=0, size=64)
    assert len(dataset) == 40 and dataset.in_channels == 1
    assert [c.id for c in dataset.classes] == list(range(11))
    assert dataset.classes[0].name == "background" and dataset.classes[4].name == "digit 3"
    seen: set[int] = set()
    for sample in dataset:
        assert sample.image.shape == (64, 64) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (64, 64) and sample.mask.dtype == np.uint8
        values = set(np.unique(sample.mask).tolist())
        assert values <= set(range(11)) and 0 in values
        assert 1 <= len(values - {0}) <= 4  # 2-4 digits, the same digit may come twice
        # strokes are brighter than the background they sit on
        assert sample.image[sample.mask > 0].mean() > sample.image[sample.mask == 0].mean() + 60
        seen |= values
    assert seen == set(range(11))


def test_digits_reject_bad_parameters_and_registry_finds_them() -> None:
    with pytest.raises(ValueError, match="size"):
        digits(1, size=16)
    with pytest.raises(ValueError, match="min_digits"):
        digits(1, min_digits=3, max_digits=2)
    dataset = load_dataset("digits", count=3, seed=1)
    assert [s.name for s in dataset] == [s.name for s in digits(3, seed=1)]
    with pytest.raises(ValueError, match="folder:PATH"):
        load_dataset("mnist", count=1, seed=0)
    with pytest.raises(ValueError, match="lacks the folder path"):
        load_dataset("folder:", count=1, seed=0)
