"""Engines and sessions. One engine per process; workers dispose it after fork.

Two kinds of session share the engine's pool:

- :meth:`Database.session` writes. On SQLite it begins with ``BEGIN IMMEDIATE``: it takes the
  database's single write lock up front and holds it until commit, so it must stay short
  (no blob reads, decoding, numpy, torch or SLIC inside; big inserts go in chunks).
- :meth:`Database.read_session` only reads. On SQLite it begins ``DEFERRED`` under
  ``PRAGMA query_only``: in WAL mode a reader takes no lock, never waits for the writer and
  never blocks it, and an accidental write fails at once instead of upgrading to the write
  lock mid-transaction. On PostgreSQL it runs ``SET TRANSACTION READ ONLY``, so a job that
  writes in a read session fails in the PostgreSQL tests as it would on SQLite.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from activeseg.core.settings import Settings

READ_ONLY = "activeseg_read_only"
"""Execution option that marks the connections of :meth:`Database.read_session`."""

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _is_read_only(conn: Any) -> bool:
    return bool(conn.get_execution_options().get(READ_ONLY))


def _sqlite_engine(url: str, pool_size: int, max_overflow: int, **kwargs: Any) -> Engine:
    path = make_url(url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A file database has a queue pool, as PostgreSQL (an in-memory one, one connection).
        kwargs = {"pool_size": pool_size, "max_overflow": max_overflow, **kwargs}
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        **kwargs,
    )

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers and the one writer run at once; foreign keys are off by default.
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn: Any) -> None:
        read_only = _is_read_only(conn)
        # query_only belongs to the pooled DB-API connection: set it only when this
        # transaction's kind differs from the last one's (the record's info survives check-in).
        info = conn.connection.info
        if info.get(READ_ONLY, False) != read_only:
            conn.exec_driver_sql(f"PRAGMA query_only={int(read_only)}")
            info[READ_ONLY] = read_only
        # A reader begins DEFERRED: a WAL snapshot, no lock. A writer begins IMMEDIATE: it
        # takes the write lock up front, so two writers queue on busy_timeout instead of one
        # failing with "database is locked" when it upgrades a read to a write.
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


PING_IDLE_S = 5.0
"""A pooled PostgreSQL connection that sat unused this long is pinged before it is handed out."""


def _ping_when_idle(engine: Engine) -> None:
    """Ping a connection on checkout only when it sat in the pool ``PING_IDLE_S`` or longer.

    A connection that died while idle (a restarted PostgreSQL, a firewall's or a proxy's idle
    timeout) costs one failed ping, not a failed request: the pool drops it and hands out
    another. SQLAlchemy's ``pool_pre_ping`` pings on every checkout, one round trip more per
    transaction; a busy process reuses its connections within milliseconds, so here it skips
    that trip (BENCHMARKS.md "Pinging only idle connections"). A connection that dies while in
    use fails its request (503, see activeseg.api.errors) and makes the pool drop every
    connection opened before it, so the next requests connect afresh.
    """

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_conn: Any, record: Any) -> None:
        record.info["returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("returned_at")
        if returned is None or time.monotonic() - returned < PING_IDLE_S:
            return  # new, or back in the pool a moment ago
        try:
            engine.dialect.do_ping(dbapi_conn)
        except Exception as e:  # noqa: BLE001 - any failure means the connection is gone
            raise DisconnectionError(f"an idle pooled connection is gone: {e}") from e


def make_engine(url: str, pool_size: int = 20, max_overflow: int = 10, **kwargs: Any) -> Engine:
    """The process's engine. On PostgreSQL it keeps ``pool_size`` connections open and opens
    at most ``max_overflow`` more (each closed again on its return: a backend started and
    ended per use, which is why the API runs no more requests at once than the pool holds).
    A SQLite file database gets the same pool sizes."""
    if url.startswith("sqlite"):
        return _sqlite_engine(url, pool_size, max_overflow, **kwargs)
    engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow, **kwargs)
    _ping_when_idle(engine)

    @event.listens_for(engine, "begin")
    def _read_only_begin(conn: Any) -> None:
        if _is_read_only(conn):
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")

    return engine


class Database:
    """An engine and its two session factories (write and read-only) on one pool."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = make_engine(
            settings.database_url, settings.db_pool_size, settings.db_max_overflow
        )
        # Same pool and events, with the read-only mark on every connection it hands out.
        self.read_engine = self.engine.execution_options(**{READ_ONLY: True})
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessionmaker = sessionmaker(
            self.read_engine, expire_on_commit=False, autoflush=False
        )

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write session: commits on success, rolls back on error. On SQLite it holds the
        write lock from its first line to its last: keep slow work outside it."""
        with self.sessionmaker() as session, session.begin():
            yield session

    @contextmanager
    def read_session(self) -> Iterator[Session]:
        """A read-only session on one consistent snapshot that blocks no writer (see the
        module docstring). Objects stay loaded after it closes (``expire_on_commit=False``);
        a write inside fails."""
        with self.read_sessionmaker() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
