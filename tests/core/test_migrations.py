"""The migrated schema must equal the ORM metadata, on SQLite and on PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from activeseg.core.db import make_engine
from activeseg.core.migrate import upgrade
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


def test_upgrade_is_idempotent(empty_url: str) -> None:
    upgrade(empty_url)
    upgrade(empty_url)
