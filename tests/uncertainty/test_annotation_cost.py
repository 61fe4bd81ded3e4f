"""Annotation cost in clicks and the model's wrong pixels, on masks drawn by hand."""

from __future__ import annotations

import numpy as np
import pytest

from activeseg.uncertainty.annotation_cost import answer_errors, patch_clicks, region_clicks

N = 255  # unlabelled


def test_dominant_label_answers_cost_one_click_per_region() -> None:
    assert region_clicks(1) == 1
    assert region_clicks(3) == 3
    assert region_clicks(0) == 1  # an answer is never free


def test_a_square_is_four_vertices() -> None:
    patch = np.full((8, 8), N, np.uint8)
    patch[2:6, 2:6] = 1
    assert patch_clicks(patch) == 4


def test_two_squares_of_one_class_are_two_outlines() -> None:
    patch = np.full((8, 8), N, np.uint8)
    patch[0:2, 0:2] = 1
    patch[5:8, 5:8] = 1
    assert patch_clicks(patch) == 4 + 4


def test_a_hole_of_another_class_costs_its_outline_twice() -> None:
    # The ring's outer outline (4) and its hole (4), plus the hole's own class drawn (4).
    patch = np.full((8, 8), N, np.uint8)
    patch[2:6, 2:6] = 1
    patch[3:5, 3:5] = 2
    assert patch_clicks(patch) == 12


def test_an_l_shape_is_six_vertices() -> None:
    patch = np.full((10, 10), N, np.uint8)
    patch[1:9, 1:4] = 0
    patch[6:9, 1:9] = 0
    assert patch_clicks(patch) == 6


def test_a_dot_or_an_empty_patch_cost_one_click() -> None:
    dot = np.full((5, 5), N, np.uint8)
    dot[2, 2] = 0
    assert patch_clicks(dot) == 1
    assert patch_clicks(np.full((4, 4), N, np.uint8)) == 1


def test_answer_errors_count_only_answered_pixels() -> None:
    answer = np.array([[0, 1, N], [1, 1, N]], np.uint8)
    prediction = np.array([[0, 0, 0], [1, 2, 2]], np.uint8)
    # answered: 4 pixels; wrong: (0,1) predicted 0 not 1, (1,1) predicted 2 not 1.
    assert answer_errors(answer, prediction) == (4, 2)
    assert answer_errors(answer, None) == (4, None)
    with pytest.raises(ValueError, match="share a shape"):
        answer_errors(answer, prediction[:, :2])
