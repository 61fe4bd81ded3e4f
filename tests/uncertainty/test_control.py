"""Selected versus control error rates (compare_error_rates), control draws and their
interleaving, with answers worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.control import compare_error_rates
from activeseg.uncertainty.selection import draw_controls, interleave


def test_ratio_and_interval_worked_out_by_hand() -> None:
    # Selected: two tasks, 3 and 1 wrong of 10 -> rate 4/20 = 0.2. Controls: five tasks, 1 of
    # 10 each -> rate 0.1 in every resample. Ratio 2.0.
    # Bootstrap of the selected pair: (3,3) p=1/4 -> 0.3, (3,1)/(1,3) p=1/2 -> 0.2,
    # (1,1) p=1/4 -> 0.1; ratios 3, 2, 1. The 2.5th and 97.5th percentiles are 1 and 3:
    # the interval holds 1, so no difference is shown.
    c = compare_error_rates([3, 1], [10, 10], [1] * 5, [10] * 5, seed=0)
    assert c.selected_error_rate == pytest.approx(0.2)
    assert c.control_error_rate == pytest.approx(0.1)
    assert c.ratio == pytest.approx(2.0)
    assert c.ci_low == pytest.approx(1.0)
    assert c.ci_high == pytest.approx(3.0)
    assert c.verdict == "no difference shown (2.0x [1.0, 3.0])"


def test_identical_tasks_give_a_point_interval_and_a_finding() -> None:
    # Every selected task 2 of 10 wrong, every control 1 of 10: each resample gives 2.0.
    c = compare_error_rates([2] * 6, [10] * 6, [1] * 5, [10] * 5)
    assert (c.ratio, c.ci_low, c.ci_high) == pytest.approx((2.0, 2.0, 2.0))
    assert c.verdict == "the queue found 2.0x [2.0, 2.0] more wrong pixels than random"


def test_pooled_not_averaged_rates() -> None:
    # 1 of 1 and 0 of 99: the pooled rate is 1/100, not the mean of 1.0 and 0.0.
    c = compare_error_rates([1, 0], [1, 99], [1] * 5, [100] * 5)
    assert c.selected_error_rate == pytest.approx(0.01)
    assert c.ratio == pytest.approx(1.0)


def test_fewer_than_the_minimum_controls_give_no_ratio() -> None:
    c = compare_error_rates([5, 5], [10, 10], [1, 1], [10, 10])
    assert c.ratio is None and c.ci_low is None
    assert c.verdict == "too few control answers (2 of at least 5)"


def test_error_free_controls_give_no_ratio() -> None:
    c = compare_error_rates([5], [10], [0] * 5, [10] * 5)
    assert c.ratio is None
    assert "random found no wrong pixels" in c.verdict


def test_seeded_and_checked() -> None:
    rng = np.random.default_rng(3)
    sw, cw = rng.integers(0, 50, 30), rng.integers(0, 20, 12)
    a = compare_error_rates(sw, np.full(30, 50), cw, np.full(12, 50), seed=4)
    b = compare_error_rates(sw, np.full(30, 50), cw, np.full(12, 50), seed=4)
    assert a == b
    assert a.ci_low is not None and a.ci_high is not None and a.ratio is not None
    assert a.ci_low <= a.ratio <= a.ci_high
    with pytest.raises(ValueError, match="0..answered"):
        compare_error_rates([11], [10], [0] * 5, [10] * 5)


def test_controls_avoid_the_selected_and_respect_the_cap() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, np.nan])
    image = np.array([0, 0, 0, 1, 1, 1])
    ctl = draw_controls(scores, image, selected=[0, 3], k=5, per_image_cap=1, seed=1)
    assert set(ctl.tolist()).isdisjoint({0, 3, 5})  # never selected, never ineligible
    assert len(ctl) == 2 and len(set(image[ctl].tolist())) == 2  # one per image


def test_interleave_keeps_the_sampled_order_and_hides_controls() -> None:
    order, is_control = interleave([10, 11, 12, 13], [20, 21], seed=5)
    assert order[~is_control].tolist() == [10, 11, 12, 13]
    assert sorted(order[is_control].tolist()) == [20, 21]
    # every placement of the controls is possible: over seeds, each position holds one
    seen = np.zeros(6, int)
    for seed in range(200):
        seen += interleave([1, 2, 3, 4], [5, 6], seed=seed)[1]
    assert seen.min() > 30
