"""The HTML page renders whatever a stored report holds, escapes text and embeds plots."""

from __future__ import annotations

import base64

from activeseg.reports.html import render_html


def test_empty_sections_render_with_guidance() -> None:
    page = render_html({"held_out_note": "no labelled val or test images"}, {})
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "nothing to calibrate against" in page and "No baseline" not in page
    assert "<img" not in page and "no labelled val or test images" in page


def test_text_is_escaped_and_plots_are_embedded() -> None:
    report = {
        "model": {"project_name": "<script>alert(1)</script>", "version": 3},
        "learning_curve": {
            "points": [
                {"version": 3, "rounds": 2, "labelled_pixels": 10, "labelled_fraction": None,
                 "labelled_regions": 1, "miou": None, "split": None}
            ],
            "baseline": None,
            "summary": "a < b",
        },
    }  # fmt: skip
    page = render_html(report, {"learning_curve": b"\x89PNG fake"})
    assert "<script>" not in page and "&lt;script&gt;" in page and "a &lt; b" in page
    assert base64.b64encode(b"\x89PNG fake").decode() in page
    assert 'id="plot-learning_curve"' in page
