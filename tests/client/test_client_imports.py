"""The HTTP client runs with none of the server's code: importing it loads no server module."""

from __future__ import annotations

import subprocess
import sys

SERVER = (
    "activeseg.core",
    "activeseg.worker",
    "activeseg.jobs",
    "activeseg.api",
    "activeseg.admin",
)


def test_the_client_modules_import_nothing_of_the_server() -> None:
    code = (
        "import sys\n"
        "import activeseg.client.api_client, activeseg.client.bulk_upload, "
        "activeseg.client.commands, activeseg.client.http\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('activeseg'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "activeseg.client.commands" in out
    assert [m for m in out if m.startswith(SERVER)] == []
