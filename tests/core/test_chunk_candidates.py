"""A chunk's candidates for the merged queue, computed with no session: the candidates of
two chunks, merged, are the candidates of the whole pool (fixed seed)."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.core.services.scores import (
    ChunkCandidates,
    ImageCandidates,
    QueueParams,
    ScoredImage,
    chunk_candidates,
)


def pool(n_images: int = 12, seed: int = 0) -> list[ScoredImage]:
    """Scored images of 5-20 grid regions each, random entropy scores, a few regions closed."""
    rng = np.random.default_rng(seed)
    items = []
    for image_id in range(1, n_images + 1):
        n = int(rng.integers(5, 21))
        items.append(
            ScoredImage.build(
                image_id,
                revision=1,
                values={"entropy": rng.random(n)},
                classes=rng.integers(0, 3, n),
                centroids=rng.random((n, 2)) * 64,
                open_regions=rng.random(n) > 0.2,
                region=("grid", 16, 0.0),
            )
        )
    return items


def params(strategy: str, **overrides: object) -> QueueParams:
    fields: dict[str, object] = {
        "measure": "entropy",
        "strategy": strategy,
        "beta": 1.0,
        "per_image_cap": 3,
        "min_distance": None,
        "seed": 7,
        "n_select": 10,
        "n_control": 3,
        "region_kind": "grid",
        "region_size": 16,
        "region_sigma": 0.0,
    }
    fields.update(overrides)
    return QueueParams(**fields)  # type: ignore[arg-type]


def as_parts(chunk: ChunkCandidates) -> ImageCandidates:
    return ImageCandidates(chunk.selected, chunk.controls)


def key_list(entries: np.ndarray) -> list[tuple[int, int]]:
    return [(int(e["image"]), int(e["region"])) for e in entries]


@pytest.mark.parametrize("strategy", ["top_k", "power", "softmax", "random"])
def test_two_chunks_merged_equal_the_whole(strategy: str) -> None:
    items, p = pool(), params(strategy)
    whole = chunk_candidates(42, p, [items])
    first = chunk_candidates(42, p, [items[:5]])
    second = chunk_candidates(42, p, [items[5:8], items[8:]])  # batching does not matter
    merged = ChunkCandidates.merge(p, [as_parts(first), as_parts(second)])
    assert key_list(merged.selected) == key_list(whole.selected)
    assert key_list(merged.controls) == key_list(whole.controls)
    assert len(whole.selected) == p.n_select
    assert not whole.selected_complete  # more candidates than the batch: some were cut


def test_top_k_keeps_the_best_open_regions_under_the_cap() -> None:
    items, p = pool(), params("top_k")
    chosen = chunk_candidates(42, p, [items])
    picked = key_list(chosen.selected)
    per_image: dict[int, int] = {}
    for image_id, region in picked:
        item = items[image_id - 1]
        assert item.open_regions[region]
        per_image[image_id] = per_image.get(image_id, 0) + 1
    assert max(per_image.values()) <= 3
    scores = [float(items[i - 1].scores[0, r]) for i, r in picked]
    assert scores == sorted(scores, reverse=True)  # top_k keys are the scores themselves


def test_the_draw_depends_on_the_seed_and_version() -> None:
    items = pool()
    base = key_list(chunk_candidates(42, params("power"), [items]).selected)
    assert base == key_list(chunk_candidates(42, params("power"), [items]).selected)
    assert base != key_list(chunk_candidates(43, params("power"), [items]).selected)
    assert base != key_list(chunk_candidates(42, params("power", seed=8), [items]).selected)


def test_no_images_offer_nothing() -> None:
    empty = chunk_candidates(1, params("power"), [])
    assert empty.selected.size == 0 and empty.selected_complete and empty.controls_complete
