"""The stores the gateway owns (clients, audit log, consents, policy, sharing requests, console
accounts): SQLite files created owner-only before first use, and the few things every such store
does alike, on SQLite or PostgreSQL: create its tables when several workers start at once, and
give writers a transaction that takes the database's write lock at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["create_tables", "prepare_sqlite_file", "sqlite_store", "store_engine", "write_transaction"]

_WRITE = "hutong_write_lock"  # the execution option that makes a SQLite transaction BEGIN IMMEDIATE


def prepare_sqlite_file(url: str) -> None:
    """Create a SQLite store's folder (0700) and file (0600) before SQLAlchemy opens it with the
    process umask, which would leave secrets' hashes or the audit log readable by others."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another worker created it meanwhile
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def store_engine(url: str, engine: AsyncEngine | None = None, *, synchronous: str = "FULL") -> AsyncEngine:
    """The engine of a store at ``url`` (or ``engine``, given by a test): a SQLite file is created
    owner-only first and set up by :func:`sqlite_store`; bound values never appear in error texts
    (they may be personal data); PostgreSQL connections are checked before use."""
    if engine is None:
        prepare_sqlite_file(url)
        engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=url.startswith("postgresql"))
    if engine.dialect.name == "sqlite":
        sqlite_store(engine, synchronous=synchronous)
    return engine


def sqlite_store(engine: AsyncEngine, *, synchronous: str = "FULL") -> None:
    """Set up a SQLite store's connections: WAL, a 30 s busy timeout, ``synchronous`` (FULL waits for
    the disk at every commit), and transactions begun by SQLAlchemy, not the driver, so that
    :func:`write_transaction` can take the write lock before it reads (``BEGIN IMMEDIATE``)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions are begun below, not by the driver
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {synchronous}")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


@contextlib.asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that commits on exit and rolls back on error. On SQLite it holds the write lock
    from its first statement (set up by :func:`sqlite_store`), so what a writer reads stays true
    until it commits; on PostgreSQL the caller takes whatever row or advisory lock it needs."""
    async with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            await conn.execution_options(**{_WRITE: True})
        async with conn.begin():
            yield conn


async def create_tables(engine: AsyncEngine, metadata: sa.MetaData) -> None:
    """Create the tables that are missing. Several workers starting together may race to create them:
    the loser's error is retried, and it then finds them."""
    for attempt in (1, 2, 3):
        try:
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all, checkfirst=True)
            return
        except DBAPIError:  # IntegrityError and OperationalError ("already exists") are DBAPIErrors
            if attempt == 3:
                raise
            await asyncio.sleep(0.2 * attempt)
