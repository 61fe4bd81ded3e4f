"""Everything under tests/reliability is marked `reliability`: run by `make reliability` (and
.ci/run), left out of `make test` because fault injection and fuzzing take minutes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.reliability import figures


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    figures.report(terminalreporter)
