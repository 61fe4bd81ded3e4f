"""The server's test hooks are settings: the same ACTIVESEG_* variables, read through
core.settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from activeseg.core import failpoints
from activeseg.core.settings import Settings


def test_hooks_are_read_from_the_environment_as_settings(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert Settings().failpoints == ""
    monkeypatch.setenv("ACTIVESEG_FAILPOINTS", "job.progress:score,job.before_finish:retrain")
    monkeypatch.setenv("ACTIVESEG_FAILPOINT_DIR", str(tmp_path))
    settings = Settings()
    assert settings.failpoints == "job.progress:score,job.before_finish:retrain"
    assert settings.failpoint_dir == tmp_path


def test_a_failpoint_not_named_passes_straight_through(tmp_path: Path) -> None:
    settings = Settings(failpoints="job.before_finish:retrain", failpoint_dir=tmp_path)
    failpoints.hit("job.progress", "retrain", 7, settings)  # another point
    failpoints.hit("job.before_finish", "score", 7, settings)  # another kind
    failpoints.hit("job.before_finish", "retrain", 7, Settings())  # none set
    assert list(tmp_path.iterdir()) == []
