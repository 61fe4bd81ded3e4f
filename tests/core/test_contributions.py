"""The labelling-tool rule on hand-made masks: a tool annotation sets only what it paints; an
update or delete takes back only its own contribution."""

from __future__ import annotations

import numpy as np

from activeseg.core.services.contributions import Layer, apply, withdraw

N = 255  # unlabelled / not painted


def grid(rows: list[str]) -> np.ndarray:
    """'.' = 255, digits = class ids."""
    return np.array([[N if c == "." else int(c) for c in row] for row in rows], np.uint8)


def test_apply_sets_only_painted_pixels_and_remembers_what_was_there() -> None:
    mask = grid(["11..", "11..", "...."])
    values = grid([".2..", ".22.", "...."])
    out, layer = apply(mask, values)
    assert np.array_equal(out, grid(["12..", "122.", "...."]))
    assert np.array_equal(layer.prior[layer.painted], np.array([1, 1, N], np.uint8))


def test_withdraw_restores_what_the_annotation_painted_over() -> None:
    mask = grid(["11..", "11..", "...."])
    out, layer = apply(mask, grid([".2..", ".22.", "...."]))
    assert np.array_equal(withdraw(out, layer, []), mask)


def test_withdraw_keeps_a_label_made_since() -> None:
    mask = grid(["11..", "11..", "...."])
    out, layer = apply(mask, grid([".2..", ".22.", "...."]))
    out[1, 2] = 0  # an annotator relabelled one of the painted pixels through a task
    assert np.array_equal(withdraw(out, layer, []), grid(["11..", "110.", "...."]))


def test_a_later_annotation_keeps_its_pixels_and_inherits_the_earlier_prior() -> None:
    mask = grid(["1111"])
    out_a, a = apply(mask, grid(["22.."]))  # A paints 2 on the first two pixels
    out_b, b = apply(out_a, grid([".00."]))  # B paints 0 over A's second pixel and one more
    assert np.array_equal(out_b, grid(["2001"]))
    without_a = withdraw(out_b, a, [b])
    assert np.array_equal(without_a, grid(["1001"]))  # B's pixels stay
    assert b.prior[0, 1] == 1  # B now falls back to what was there before A
    assert np.array_equal(withdraw(without_a, b, []), mask)


def test_withdraw_order_does_not_matter_for_the_end_result() -> None:
    rng = np.random.default_rng(4)
    base = rng.integers(0, 3, (12, 12)).astype(np.uint8)
    base[rng.random((12, 12)) < 0.3] = N
    paints = []
    for _ in range(3):
        v = rng.integers(0, 3, (12, 12)).astype(np.uint8)
        v[rng.random((12, 12)) < 0.6] = N
        paints.append(v)
    for order in ([0, 1, 2], [2, 1, 0], [1, 0, 2]):
        mask = base
        stack: list[tuple[int, Layer]] = []
        for n, v in enumerate(paints):
            mask, layer = apply(mask, v)
            stack.append((n, layer))
        for n in order:
            at = next(k for k, (m, _) in enumerate(stack) if m == n)
            mask = withdraw(mask, stack[at][1], [layer for _, layer in stack[at + 1 :]])
            del stack[at]
        assert np.array_equal(mask, base), order
