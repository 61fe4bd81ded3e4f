"""Consensus, agreement and Fleiss' kappa of overlapping answers, on hand-made windows."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.core.services.overlap import (
    agreement,
    answer_agreement,
    consensus,
    fleiss_kappa,
    kappa_stats,
)

N = 255


def w(*rows: str) -> np.ndarray:
    return np.array([[N if c == "." else int(c) for c in row] for row in rows], np.uint8)


INSIDE = np.array([[True, True, True, True], [True, True, True, False]])


def test_consensus_is_the_plurality_and_a_tie_stays_unlabelled() -> None:
    answers = [w("0112", "2..9"), w("0122", "...9"), w("0.23", "2..9")]
    # px (0,2): 1, 2, 2 -> 2; (0,3): 2, 2, 3 -> 2; (1,0): 2, abstain, 2 -> 2;
    # (1,1),(1,2): nobody -> 255; (1,3) is outside the regions -> 255.
    assert np.array_equal(consensus(answers, INSIDE), w("0122", "2..."))
    two = [w("0123", "...."), w("1120", "....")]  # k = 2: any disagreement is a tie
    assert np.array_equal(consensus(two, INSIDE), w(".12.", "...."))


def test_agreement_counts_pixels_every_answer_gives_the_same_class() -> None:
    answers = [w("0112", "2..."), w("0122", "...."), w("0.22", "2...")]
    # labelled by someone: (0,0..3), (1,0) = 5 pixels; all three agree on (0,0) and (0,3)
    assert agreement(answers, INSIDE) == pytest.approx(2 / 5)
    agreed = consensus(answers, INSIDE)
    assert answer_agreement(answers[0], agreed, INSIDE) == pytest.approx(4 / 5)
    assert answer_agreement(w("....", "...."), agreed, INSIDE) is None


def test_fleiss_kappa_matches_the_worked_example() -> None:
    """Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters,
    5 categories, kappa = 0.210. Each subject is one pixel; rater r's answer is one window."""
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    ratings = np.array([np.repeat(np.arange(5), row) for row in table], np.uint8)  # [10, 14]
    windows = [ratings[:, r][None, :] for r in range(14)]
    inside = np.ones((1, 10), bool)
    # Split the subjects over two tasks: the statistics add up to the same kappa.
    first = kappa_stats([x[:, :4] for x in windows], inside[:, :4])
    second = kappa_stats([x[:, 4:] for x in windows], inside[:, 4:])
    assert fleiss_kappa([first, second]) == pytest.approx(0.20993, abs=5e-5)
    assert fleiss_kappa([kappa_stats(windows, inside)]) == pytest.approx(0.20993, abs=5e-5)


def test_kappa_is_one_for_perfect_agreement_and_refuses_mixed_rater_counts() -> None:
    same = [w("0120", "1201")] * 3
    assert fleiss_kappa([kappa_stats(same, np.ones((2, 4), bool))]) == pytest.approx(1.0)
    two = kappa_stats([w("01"), w("01")], np.ones((1, 2), bool))
    three = kappa_stats([w("01")] * 3, np.ones((1, 2), bool))
    with pytest.raises(ValueError, match="same number of answers"):
        fleiss_kappa([two, three])
    assert fleiss_kappa([]) is None
