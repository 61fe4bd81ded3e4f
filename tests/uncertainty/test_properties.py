"""Hypothesis properties of the measures on random probability stacks."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from activeseg.uncertainty.calibration import error_detection_auroc, softmax
from activeseg.uncertainty.measures import (
    ENSEMBLE_MEASURES,
    SOFTMAX_MEASURES,
    compute_measures,
    ensemble_measures,
    softmax_measures,
)

# No example database: it would write .hypothesis/ into the checkout.
SETTINGS = settings(max_examples=60, deadline=None, database=None)
TOL = 2e-6


@st.composite
def prob_stacks(draw: st.DrawFn, min_members: int = 1) -> np.ndarray:
    """float32 ``[S, C, H, W]`` probabilities: softmax of bounded logits, some near one-hot."""
    s = draw(st.integers(min_members, 4))
    c = draw(st.integers(2, 6))
    h = draw(st.integers(1, 5))
    w = draw(st.integers(1, 5))
    logits = draw(arrays(np.float64, (s, c, h, w), elements=st.floats(-30, 30, allow_nan=False)))
    scale = draw(st.sampled_from([0.1, 1.0, 5.0]))
    return softmax(logits * scale, axis=1).astype(np.float32)


@SETTINGS
@given(prob_stacks(min_members=2))
def test_mutual_information_is_non_negative_and_jensen_holds(stack: np.ndarray) -> None:
    out = ensemble_measures(stack)
    assert np.all(out["mutual_information"] >= 0)
    assert np.all(out["predictive_entropy"] >= out["expected_entropy"] - TOL)
    np.testing.assert_allclose(
        out["mutual_information"],
        np.maximum(out["predictive_entropy"] - out["expected_entropy"], 0),
        atol=TOL,
    )


@SETTINGS
@given(prob_stacks())
def test_measures_stay_in_their_ranges(stack: np.ndarray) -> None:
    n_members, n_classes = stack.shape[:2]
    log_c = math.log(n_classes)
    soft = softmax_measures(stack[0])
    assert np.all(
        (soft["least_confidence"] >= 0) & (soft["least_confidence"] <= 1 - 1 / n_classes + TOL)
    )
    for name in ("margin", "ratio", "normalised_entropy"):
        assert np.all((soft[name] >= 0) & (soft[name] <= 1)), name
    assert np.all((soft["entropy"] >= 0) & (soft["entropy"] <= log_c + TOL))
    ens = ensemble_measures(stack)
    for name in ("predictive_entropy", "expected_entropy", "mutual_information"):
        assert np.all((ens[name] >= 0) & (ens[name] <= log_c + TOL)), name
    assert np.all(
        (ens["variation_ratio"] >= 0) & (ens["variation_ratio"] <= 1 - 1 / n_members + TOL)
    )
    assert np.all((ens["mean_std"] >= 0) & (ens["mean_std"] <= 0.5))


@SETTINGS
@given(prob_stacks(), st.randoms(use_true_random=False))
def test_class_permutation_invariance(stack: np.ndarray, rnd: object) -> None:
    perm = np.arange(stack.shape[1])
    rnd.shuffle(perm)  # type: ignore[attr-defined]
    permuted = stack[:, perm]
    for name, value in softmax_measures(stack[0]).items():
        np.testing.assert_allclose(
            softmax_measures(permuted[0])[name], value, atol=TOL, err_msg=name
        )
    for name, value in ensemble_measures(stack).items():
        np.testing.assert_allclose(ensemble_measures(permuted)[name], value, atol=TOL, err_msg=name)


@SETTINGS
@given(prob_stacks())
def test_single_member_stack_equals_direct_softmax_measures(stack: np.ndarray) -> None:
    one = stack[:1]
    via_stack = compute_measures(one, SOFTMAX_MEASURES)
    direct = softmax_measures(one[0])
    for name in SOFTMAX_MEASURES:
        np.testing.assert_array_equal(via_stack[name], direct[name], err_msg=name)


@SETTINGS
@given(prob_stacks(min_members=2))
def test_ensemble_measures_of_a_repeated_member_vanish(stack: np.ndarray) -> None:
    repeated = np.repeat(stack[:1], stack.shape[0], axis=0)
    out = ensemble_measures(repeated)
    np.testing.assert_allclose(out["mutual_information"], 0, atol=TOL)
    np.testing.assert_array_equal(out["variation_ratio"], 0)
    np.testing.assert_allclose(out["mean_std"], 0, atol=1e-6)
    assert set(out) == set(ENSEMBLE_MEASURES)


@SETTINGS
@given(
    arrays(np.float64, st.integers(2, 40), elements=st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.data(),
)
def test_auroc_is_symmetric_under_negating_the_score(u: np.ndarray, data: st.DataObject) -> None:
    errors = data.draw(arrays(np.bool_, u.shape))
    a = error_detection_auroc(u, errors)
    if math.isnan(a):
        assert errors.all() or not errors.any()
    else:
        assert 0 <= a <= 1
        assert math.isclose(error_detection_auroc(-u, errors), 1 - a, abs_tol=1e-12)
