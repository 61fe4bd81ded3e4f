"""``activeseg migrate``: bring the database schema to the latest version."""

from __future__ import annotations

import typer

from activeseg.core.settings import get_settings


def migrate() -> None:
    """Bring the database schema to the latest version (alembic upgrade head)."""
    from activeseg.core.migrate import upgrade

    settings = get_settings()
    upgrade(settings.database_url)
    typer.echo(f"database at head: {redact(settings.database_url)}")


def redact(url: str) -> str:
    """The URL with its password hidden, fit for a terminal or a log."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
