"""The ``activeseg`` command line: one entry point for both kinds of command.

- the HTTP client (:mod:`activeseg.client.commands`): ``login``, ``project``, ``upload``,
  ``export``, ``jobs``, ...; they talk to a running server and import none of its code;
- server administration (:mod:`activeseg.admin`): ``serve``, ``worker``, ``migrate``,
  ``user``, ``token``, ``simulate``; they run the server's code on its database.
"""

from __future__ import annotations

import typer

from activeseg import admin
from activeseg.client import commands

app = typer.Typer(
    help="activeseg: active-learning annotation service for segmentation.", no_args_is_help=True
)
admin.register(app)
commands.register(app)

if __name__ == "__main__":
    app()
