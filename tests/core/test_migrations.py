"""The migrated schema must equal the ORM metadata, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from activeseg.core.db import make_engine
from activeseg.core.migrate import alembic_config, upgrade
from activeseg.core.tables import Base
from tests.conftest import fresh_pg_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'm.db'}"
    return fresh_pg_database(f"activeseg_migrate_{os.getpid()}")


def test_upgrade_head_creates_exactly_the_orm_schema(empty_url: str) -> None:
    upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
        tables = set(inspect(conn).get_table_names())
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("tasks")}
    engine.dispose()
    assert diff == []
    assert set(Base.metadata.tables) <= tables
    assert "ix_tasks_queue" in indexes  # the lease query's index exists on both backends


def _state(url: str) -> tuple[str | None, set[str], int]:
    """(the database's Alembic revision, its tables, rows in users)."""
    engine = make_engine(url)
    with engine.connect() as conn:
        revision = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
        users = conn.execute(text("SELECT count(*) FROM users")).scalar_one()
    engine.dispose()
    return revision, tables, users


def test_upgrade_is_idempotent(empty_url: str) -> None:
    """A second upgrade to head changes nothing: the revision stays the scripts' head, the
    tables stay the ORM's (plus alembic_version), and the row written in between is kept."""
    upgrade(empty_url)
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO users (name, role, created_at) "
                "VALUES ('kept', 'admin', CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()
    first = _state(empty_url)
    upgrade(empty_url)
    second = _state(empty_url)
    head = ScriptDirectory.from_config(alembic_config(empty_url)).get_current_head()
    assert head is not None
    assert first == second == (head, set(Base.metadata.tables) | {"alembic_version"}, 1)
