from __future__ import annotations

import importlib
import importlib.util

import numpy as np
import pytest

from activeseg.datasets import load_dataset, nuclei

requires_stardist = pytest.mark.skipif(
    importlib.util.find_spec("stardist") is None,
    reason="stardist is not installed: pip install 'activeseg[nuclei]'",
)


@requires_stardist
def test_nuclei_tiles() -> None:
    dataset = nuclei(tile_size=128)
    samples = list(dataset)
    assert len(dataset) == len(samples) == 16  # the sample image is 512x512
    assert [c.name for c in dataset.classes] == ["background", "nucleus"]
    for sample in samples:
        assert sample.image.shape == sample.mask.shape == (128, 128)
        assert sample.image.dtype == sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask).tolist()) <= {0, 1}
    foreground = np.mean([s.mask.mean() for s in samples])
    assert 0.05 < foreground < 0.6
    all_pixels = np.concatenate([s.image.ravel() for s in samples])
    assert all_pixels.max() == 255 and all_pixels.min() == 0  # percentile normalised
    inside = np.concatenate([s.image[s.mask == 1] for s in samples]).mean()
    outside = np.concatenate([s.image[s.mask == 0] for s in samples]).mean()
    assert inside > outside + 20  # nuclei are bright


@requires_stardist
def test_nuclei_count_seed_and_registry() -> None:
    assert len(list(nuclei(count=5, tile_size=64))) == 5
    shuffled = [s.name for s in nuclei(count=5, seed=1, tile_size=64)]
    assert shuffled == [s.name for s in nuclei(count=5, seed=1, tile_size=64)]
    assert shuffled != [s.name for s in nuclei(count=5, tile_size=64)]
    assert len(load_dataset("nuclei", count=3, seed=0)) == 3


def test_missing_stardist_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # the package exports a function of the module's name, so fetch the module itself
    nuclei_module = importlib.import_module("activeseg.datasets.nuclei")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "stardist" else real_find_spec(name, *args),
    )
    with pytest.raises(nuclei_module.DatasetUnavailableError, match=r"activeseg\[nuclei\]"):
        nuclei()
