"""Figures the reliability tests measure (faults survived, requests fuzzed, labels lost ...):
printed at the end of the run, and written as JSON to $ACTIVESEG_RELIABILITY_REPORT if set."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FIGURES: dict[str, list[dict[str, Any]]] = {}


def record(section: str, **row: Any) -> None:
    FIGURES.setdefault(section, []).append(row)


def report(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for section, rows in FIGURES.items():
        for row in rows:
            terminalreporter.write_line(f"{section}: {json.dumps(row, sort_keys=True)}")
    out = os.environ.get("ACTIVESEG_RELIABILITY_REPORT")
    if out:
        Path(out).write_text(json.dumps(FIGURES, indent=2, sort_keys=True))
