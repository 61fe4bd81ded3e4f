"""Rounds section: did the queue find the model's errors better than the random controls?

Every model round hides a share of tasks drawn uniformly at random from the candidates it did
not select (the *controls*, ``control_fraction``). Annotators answer both kinds alike, so the
error rate of the model on answered selected regions against that on answered control regions
is the project's own, live answer to "does uncertainty sampling pick regions where the model is
wrong more often than random picking does?" (the statistics and their cluster-bootstrap interval
are :func:`activeseg.uncertainty.control.compare_error_rates`, computed by
:func:`activeseg.core.services.rounds.round_summaries`).

Unlike the model sections, this one changes as answers arrive, so it is not stored with the
report: the report routes read it when they serve the report. This module only reshapes the
service's dicts into the report's JSON (no database here).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["rounds_section"]


def _when(value: Any) -> Any:
    return value.isoformat(timespec="seconds") if isinstance(value, datetime) else value


def _row(summary: dict[str, Any]) -> dict[str, Any]:
    comparison = summary.get("comparison") or {}
    return {
        "number": summary.get("number"),
        "model_version_id": summary.get("model_version_id"),
        "measure": summary.get("measure"),
        "strategy": summary.get("strategy"),
        "created_at": _when(summary.get("created_at")),
        "tasks": summary.get("tasks"),
        "answered": summary.get("answered"),
        "labelled_pixels": summary.get("labelled_pixels"),
        "clicks": summary.get("clicks"),
        "selected_error_rate": comparison.get("selected_error_rate"),
        "control_error_rate": comparison.get("control_error_rate"),
        "ratio": comparison.get("ratio"),
        "ratio_ci": [comparison.get("ci_low"), comparison.get("ci_high")],
        "sentence": comparison.get("verdict"),
    }


def rounds_section(
    summaries: list[dict[str, Any]], cumulative: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The report's ``rounds`` section from ``round_summaries`` (oldest first) and
    ``cumulative_summary`` (or None).

    Keys: ``rounds`` [{number, model_version_id, measure, strategy, created_at, tasks,
    answered ({selected, control}), labelled_pixels, clicks, selected_error_rate,
    control_error_rate, ratio (selected / control error rate), ratio_ci [low, high], sentence}],
    ``cumulative`` (the same fields pooled over every round, without the per-round ones, or
    None) and ``summary`` (one sentence).
    """
    rows = [_row(s) for s in summaries]
    pooled = None
    if cumulative is not None:
        pooled = {
            k: v
            for k, v in _row(cumulative).items()
            if k not in ("number", "model_version_id", "measure", "strategy", "created_at")
        }
    if not rows:
        summary = "No acquisition round yet: nothing to compare with random selection."
    elif pooled is not None and pooled["sentence"]:
        summary = f"Over all {len(rows)} rounds so far, {pooled['sentence']}."
    else:
        summary = f"{len(rows)} rounds so far."
    return {"rounds": rows, "cumulative": pooled, "summary": summary}
