"""Mergeable draws: hashed Gumbel noise, and parts of the pool whose best entries merge into
exactly the global selection and control draw."""

from __future__ import annotations

import math

import numpy as np
import pytest

from activeseg.uncertainty.selection import (
    MERGEABLE_STRATEGIES,
    control_depth,
    draw_controls,
    hashed_gumbel,
    ranked_controls,
    ranked_selection,
    select_regions,
)


def test_hashed_gumbel_is_a_function_of_seed_salt_stream_image_and_region() -> None:
    images = np.array([7, 7, 7, 9, 9, 12])
    regions = np.array([0, 1, 2, 0, 1, 5])
    full = hashed_gumbel(3, 41, images, regions, 0)
    # Any subset in any order gets the same values: what lets a chunk draw the pool's keys.
    perm = np.array([5, 2, 0, 3])
    np.testing.assert_array_equal(hashed_gumbel(3, 41, images[perm], regions[perm], 0), full[perm])
    for other in (
        hashed_gumbel(4, 41, images, regions, 0),  # another seed
        hashed_gumbel(3, 42, images, regions, 0),  # another version
        hashed_gumbel(3, 41, images, regions, 1),  # the control stream
    ):
        assert not np.any(other == full)
    # Image 7 region 1 and image 1 region 7 are different candidates.
    a, b = hashed_gumbel(0, 0, [7, 1], [1, 7])
    assert a != b

    # The spec, in plain Python integers: a SplitMix64 chain over (seed, salt, stream, image,
    # region), 53 bits to a uniform in (0, 1), then -log(-log u). Stored chunk candidates hold
    # these keys, so the function must never drift from it.
    def mix(x: int) -> int:
        m = (1 << 64) - 1
        x = (x + 0x9E3779B97F4A7C15) & m
        x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & m
        x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & m
        return x ^ (x >> 31)

    def spec(seed: int, salt: int, stream: int, image: int, region: int) -> float:
        h = mix(mix(mix(mix(mix(seed) ^ salt) ^ stream) ^ image) ^ region)
        u = ((h >> 11) + 0.5) / 2.0**53
        return -math.log(-math.log(u))

    for args in ((0, 0, 0, 0, 0), (3, 41, 1, 12, 5), (2**32 - 1, 2**31 - 1, 0, 2**31 - 1, 9)):
        got = hashed_gumbel(args[0], args[1], [args[3]], [args[4]], args[2])[0]
        assert got == pytest.approx(spec(*args), rel=1e-12, abs=1e-12), args
    np.testing.assert_allclose(
        hashed_gumbel(0, 0, [0, 1, 2], [0, 0, 0]),
        [0.2849841632907877, -0.54798986785415, -0.47734080492679576],
        rtol=1e-12,
    )


def test_hashed_gumbel_is_gumbel_distributed() -> None:
    n = 200_000
    g = hashed_gumbel(11, 5, np.arange(n) // 50, np.arange(n) % 50)
    # Gumbel(0, 1): mean = Euler's gamma, P(g < 0) = exp(-1), P(g < 2) = exp(-exp(-2)).
    se = np.pi / np.sqrt(6) / np.sqrt(n)
    assert abs(g.mean() - 0.5772156649) < 4 * se
    for x, p in ((0.0, np.exp(-1.0)), (2.0, np.exp(-np.exp(-2.0)))):
        assert abs((g < x).mean() - p) < 4 * np.sqrt(p * (1 - p) / n)


def _case(rng: np.random.Generator) -> dict[str, object]:
    n_images = int(rng.integers(1, 12))
    sizes = rng.integers(1, 20, n_images)
    image_ids = np.repeat(np.sort(rng.choice(1000, n_images, replace=False)), sizes)
    regions = np.concatenate([np.arange(s) for s in sizes])
    # Ties, zeros (only random may pick them) and NaN (never) on purpose.
    scores = rng.integers(0, 6, image_ids.size) / 5.0
    scores[rng.random(image_ids.size) < 0.1] = np.nan
    return {
        "image_ids": image_ids,
        "regions": regions,
        "scores": scores,
        "centroids": rng.random((image_ids.size, 2)) * 40,
        "strategy": str(rng.choice(MERGEABLE_STRATEGIES)),
        "cap": [None, 1, 2, 3][int(rng.integers(4))],
        "min_distance": [None, 8.0][int(rng.integers(2))],
        "k": int(rng.integers(0, 15)),
        "n_control": int(rng.integers(0, 6)),
        "beta": float(rng.choice([0.5, 1.0, 3.0])),
        "cuts": int(rng.integers(1, 5)),
    }


def _order(image: np.ndarray, region: np.ndarray, key: np.ndarray) -> np.ndarray:
    return np.lexsort((region, image, -key))


@pytest.mark.parametrize("seed", range(300))
def test_the_best_of_the_parts_is_the_global_draw(seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = _case(rng)
    ids, regions, scores = c["image_ids"], c["regions"], c["scores"]
    assert isinstance(ids, np.ndarray) and isinstance(regions, np.ndarray)
    assert isinstance(scores, np.ndarray)
    k, n_ctl, cap = int(c["k"]), int(c["n_control"]), c["cap"]  # type: ignore[call-overload]
    index = np.unique(ids, return_inverse=True)[1]
    noise = hashed_gumbel(seed, 1, ids, regions, 0)
    draw = hashed_gumbel(seed, 1, ids, regions, 1)
    rules = {
        "strategy": c["strategy"],
        "per_image_cap": cap,
        "min_distance": c["min_distance"],
        "centroids": c["centroids"],
        "beta": c["beta"],
    }
    want = select_regions(scores, index, k, noise=noise, **rules)  # type: ignore[arg-type]
    want_ctl = draw_controls(scores, index, want, n_ctl, cap, noise=draw)  # type: ignore[arg-type]

    # Parts hold whole images (cut between images), each ranked on its own.
    bounds = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    cuts = np.sort(rng.choice(bounds, min(int(c["cuts"]), bounds.size), replace=False))
    edges = [*cuts.tolist(), ids.size] if cuts[0] == 0 else [0, *cuts.tolist(), ids.size]
    sel_parts, sel_keys, ctl_parts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        part = slice(lo, hi)
        picked, keys, complete = ranked_selection(
            scores[part],
            index[part],
            k,
            noise[part],
            **rules | {"centroids": c["centroids"][part]},  # type: ignore[index, arg-type]
        )
        assert complete == (picked.size < k or k == 0)
        sel_parts.append(picked + lo)
        sel_keys.append(keys)
        drawn, _ = ranked_controls(scores[part], index[part], k, n_ctl, draw[part], cap)  # type: ignore[arg-type]
        assert drawn.size <= control_depth(k, n_ctl)
        ctl_parts.append(drawn + lo)
    merged = np.concatenate(sel_parts)
    keys = np.concatenate(sel_keys)
    merged = merged[_order(ids[merged], regions[merged], keys)][:k]
    np.testing.assert_array_equal(merged, want)

    # Controls: the parts' draws in draw order, skipping the selected and full images.
    drawn = np.concatenate(ctl_parts)
    drawn = drawn[_order(ids[drawn], regions[drawn], draw[drawn])]
    chosen, per_image, got = set(merged.tolist()), {}, []
    for i in drawn.tolist():
        if len(got) == n_ctl:
            break
        if i in chosen or (cap is not None and per_image.get(ids[i], 0) >= cap):
            continue
        per_image[ids[i]] = per_image.get(ids[i], 0) + 1
        got.append(i)
    np.testing.assert_array_equal(np.asarray(got, np.int64), want_ctl)


def test_control_depth_reaches_past_selected_and_full_images() -> None:
    """The last control can sit behind every selected region, every earlier control and the
    extra draws of images already holding ``cap`` controls: position n_select + 2 n_control
    - 2. A part keeping only n_select + n_control entries would miss it."""
    ids = np.array([0, 1, 1, 2, 3])  # draw order = index order
    scores = np.ones(5)
    draw = -np.arange(5.0)
    selected = np.array([0, 3])  # n_select = 2
    want = draw_controls(scores, ids, selected, 2, per_image_cap=1, noise=draw)
    assert want.tolist() == [1, 4]  # 2 is skipped: image 1 holds its one control
    kept, complete = ranked_controls(scores, ids, 2, 2, draw, per_image_cap=1)
    assert kept.tolist() == [0, 1, 2, 3, 4] and complete
    assert control_depth(2, 2) == 6 > 4 == 2 + 2


def test_softrank_is_not_mergeable() -> None:
    with pytest.raises(ValueError, match="cannot be merged"):
        ranked_selection(np.ones(3), np.zeros(3, int), 2, np.zeros(3), strategy="softrank")
