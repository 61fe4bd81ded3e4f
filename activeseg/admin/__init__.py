"""Server administration from the ``activeseg`` command line: run the service (serve, worker),
bring the schema up (migrate), manage users and tokens, the demo project, and simulations.

These commands need the server's code and its database (or start a service of their own);
the HTTP client's commands live in :mod:`activeseg.client.commands`, and
:mod:`activeseg.cli` offers both under one ``activeseg`` entry point.
"""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the administration commands to the ``activeseg`` Typer app."""
    from activeseg.admin import migrate, serve, simulate, users, worker

    app.add_typer(users.user_app, name="user")
    app.add_typer(users.token_app, name="token")
    app.command()(migrate.migrate)
    app.command()(worker.worker)
    app.command()(serve.serve)
    app.command()(serve.api)
    app.command()(simulate.simulate)
