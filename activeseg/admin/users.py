"""``activeseg user`` and ``activeseg token``: users and API tokens, straight in the database;
and the first ``admin`` user that ``serve`` creates on a fresh data folder."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from activeseg.admin.database import open_database
from activeseg.core.settings import get_settings

user_app = typer.Typer(help="Manage users.", no_args_is_help=True)
token_app = typer.Typer(help="Manage API tokens.", no_args_is_help=True)


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[
        str, typer.Option(help="annotator | reviewer | engineer | admin")
    ] = "annotator",
    expires_days: Annotated[float | None, typer.Option(help="token lifetime")] = None,
) -> None:
    """Create a user and print a new API token for them."""
    from activeseg.core.errors import DomainError
    from activeseg.core.services import auth

    try:
        with open_database().session() as s:
            user = auth.create_user(s, name, role)
            _, secret = auth.create_token(
                s, user, timedelta(days=expires_days) if expires_days else None
            )
    except DomainError as exc:
        typer.echo(f"error: {exc.detail}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="user name")],
    expires_days: Annotated[float | None, typer.Option(help="token lifetime")] = None,
) -> None:
    """Print a new API token for an existing user."""
    from sqlalchemy import select

    from activeseg.core.services import auth
    from activeseg.core.tables import User

    with open_database().session() as s:
        user = s.scalar(select(User).where(User.name == name))
        if user is None:
            typer.echo(f"error: no user named {name!r}", err=True)
            raise typer.Exit(2)
        _, secret = auth.create_token(
            s, user, timedelta(days=expires_days) if expires_days else None
        )
    typer.echo(secret)


@token_app.command("revoke")
def token_revoke(
    token: Annotated[str, typer.Argument(help="the token itself, or its id")],
) -> None:
    """Revoke a token so it can no longer be used."""
    from datetime import UTC, datetime

    from sqlalchemy import select

    from activeseg.core.services.auth import hash_token
    from activeseg.core.tables import ApiToken

    with open_database().session() as s:
        query = select(ApiToken)
        query = (
            query.where(ApiToken.id == int(token))
            if token.isdigit()
            else query.where(ApiToken.token_hash == hash_token(token))
        )
        row = s.scalar(query)
        if row is None:
            typer.echo("error: no such token", err=True)
            raise typer.Exit(2)
        row.revoked_at = row.revoked_at or datetime.now(UTC)
        typer.echo(f"revoked token {row.id} ({row.prefix}…)")


def bootstrap_admin() -> None:
    """On a fresh database: the ``admin`` user, its token printed and saved to
    DATA_DIR/admin-token (mode 0600). Later starts only say where the token is."""
    from sqlalchemy import func, select

    from activeseg.core.services import auth
    from activeseg.core.tables import User

    settings = get_settings()
    with open_database().session() as s:
        if s.scalar(select(func.count()).select_from(User)):
            path = settings.data_dir / "admin-token"
            if path.exists():
                typer.echo(f"admin token: see {path}")
            return
        user = auth.create_user(s, "admin", "admin")
        _, secret = auth.create_token(s, user)
    path = settings.data_dir / "admin-token"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    typer.echo(f"created user 'admin'; token (saved in {path}):\n  {secret}")
