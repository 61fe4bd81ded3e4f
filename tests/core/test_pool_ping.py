"""Pooled PostgreSQL connections are pinged on checkout only after sitting idle
(``activeseg.core.db.PING_IDLE_S``): a busy process skips a round trip per transaction, and a
connection that died while idle still costs no request."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from activeseg.core import db as dbmod
from tests.conftest import PG_ADMIN_DSN, fresh_pg_database


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Engine, list[int]]]:
    """An engine as the service makes it, with a pool of one connection, and the pids of the
    backends its pings reached."""
    eng = dbmod.make_engine(fresh_pg_database("activeseg_test_pool_ping"), 1, 0)
    pings: list[int] = []
    real = eng.dialect.do_ping

    def counted(dbapi_conn: Any) -> bool:
        pings.append(dbapi_conn.info.backend_pid)
        return bool(real(dbapi_conn))

    monkeypatch.setattr(eng.dialect, "do_ping", counted)
    yield eng, pings
    eng.dispose()


def _pid(eng: Engine) -> int:
    with eng.connect() as c:
        return int(c.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _kill(pid: int) -> None:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)


def test_a_connection_back_a_moment_ago_is_not_pinged(engine: tuple[Engine, list[int]]) -> None:
    eng, pings = engine
    first = _pid(eng)
    assert [_pid(eng) for _ in range(5)] == [first] * 5  # the pool's one connection, reused
    assert pings == []


def test_an_idle_connection_that_died_is_replaced_without_an_error(
    engine: tuple[Engine, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    eng, pings = engine
    dead = _pid(eng)
    _kill(dead)
    monkeypatch.setattr(dbmod, "PING_IDLE_S", 0.0)  # it has now sat idle long enough
    fresh = _pid(eng)  # no error: the ping failed, the pool connected again
    assert fresh != dead
    assert pings == [dead]


def test_a_busy_connection_that_died_fails_one_request_then_the_pool_reconnects(
    engine: tuple[Engine, list[int]],
) -> None:
    eng, pings = engine
    dead = _pid(eng)
    _kill(dead)
    with pytest.raises(OperationalError):  # the API answers this with 503 and Retry-After
        _pid(eng)
    assert _pid(eng) != dead
    assert pings == []
