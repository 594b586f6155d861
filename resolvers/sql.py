"""SQL sources through SQLAlchemy's async engine (SQLite, PostgreSQL, MySQL/MariaDB).

One :class:`SourceQuery` becomes one ``SELECT`` of only the needed columns, with the
filters in ``WHERE``, ``LIMIT`` in the database, and batched joins as ``key IN (...)``
(chunked by ``max_batch`` keys; statements are built once per query shape, see
resolvers/sql_statement.py). Per-parent limits on nested lists use
``ROW_NUMBER() OVER (PARTITION BY key ...)`` so that they too run in the source.
Every value is a bound parameter; identifiers come only from the validated catalogue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from resolvers.base import Row
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import SourceQuery
from resolvers.sql_statement import StatementCache

__all__ = ["SQLConnector"]

class SQLConnector:
    kind = "sql"

    def __init__(self, code: str, url: str, *, pool_size: int = 5, timeout: float = 10.0,
                 max_batch: int = 5000) -> None:
        self.code = code
        self.timeout = timeout
        self.max_batch = max_batch
        self.statements = 0
        # - AUTOCOMMIT: the gateway only reads, one statement at a time, so a BEGIN and a ROLLBACK around
        #   every SELECT are round trips for nothing (measured: a fifth of a source query's cost).
        # - pool_size connections and no overflow: the pool is the source's concurrency cap. Overflow
        #   connections are opened for one statement and closed after it, which under load meant a new
        #   connection (and, with aiosqlite, a new thread) per query.
        # - No pre-ping: a SELECT 1 before every statement doubled the round trips. A connection the
        #   server dropped fails its statement instead, and the read is retried once on a fresh one.
        # - hide_parameters: SQLAlchemy puts bound values into exception text; ours may be personal data.
        pool: dict[str, Any] = {"pool_size": pool_size, "max_overflow": 0, "pool_timeout": timeout}
        if url.startswith("sqlite") and sa.engine.make_url(url).database in (None, "", ":memory:"):
            pool = {}  # one in-memory database, one connection (SQLAlchemy's StaticPool)
        self.engine: AsyncEngine = create_async_engine(url, hide_parameters=True, isolation_level="AUTOCOMMIT", **pool)
        self.dialect = self.engine.dialect.name
        self.cache = StatementCache(self.dialect)

    async def fetch(self, query: SourceQuery) -> list[Row]:
        if query.matches_nothing:
            return []
        if query.keys is not None:
            chunks = [query.keys[i:i + self.max_batch] for i in range(0, len(query.keys), self.max_batch)]
            parts = await asyncio.gather(*(self._run(*self.cache.get(query, chunk)) for chunk in chunks))
            return [row for part in parts for row in part]
        return await self._run(*self.cache.get(query, None))

    def select(self, query: SourceQuery, keys: Sequence[Any] | None) -> sa.Select[Any]:
        """The statement for one batch with its values bound: for tests and `hutong plan` to show."""
        stmt, values = self.cache.get(query, keys)
        return stmt.params(values)

    async def _run(self, stmt: sa.Select[Any], values: dict[str, Any]) -> list[Row]:
        try:
            async with asyncio.timeout(self.timeout):
                try:
                    return await self._execute(stmt, values)
                except DBAPIError as exc:
                    if not exc.connection_invalidated:
                        raise
                    # The server closed this pooled connection (restart, idle timeout): the pool has
                    # discarded it; a read is safe to repeat once on a new connection.
                    return await self._execute(stmt, values)
        except Exception as exc:
            raise self._failure(exc) from None

    def _failure(self, exc: BaseException) -> SourceError:
        """The SourceError for a driver or pool failure: its kind only (the text may quote values)."""
        if isinstance(exc, SourceError):
            return exc
        if isinstance(exc, TimeoutError):
            return SourceError(self.code, SourceFailure.TIMEOUT,
                               f"source {self.code!r} did not answer within {self.timeout:g} s")
        if isinstance(exc, OperationalError | InterfaceError | OSError | ConnectionError):
            if _is_connect_failure(exc):
                return SourceError(self.code, SourceFailure.UNAVAILABLE, f"source {self.code!r} is unavailable")
            return SourceError(self.code, SourceFailure.ERROR, f"source {self.code!r} failed: {_kind(exc)}")
        if isinstance(exc, DBAPIError | SQLAlchemyError):
            return SourceError(self.code, SourceFailure.ERROR, f"source {self.code!r} failed: {_kind(exc)}")
        raise exc

    async def _execute(self, stmt: sa.Select[Any], values: dict[str, Any]) -> list[Row]:
        self.statements += 1
        async with self.engine.connect() as conn:
            result = await conn.execute(stmt, values)
            # zip over plain tuples: building a RowMapping per row costs more than the fetch.
            keys = tuple(result.keys())
            return [dict(zip(keys, r, strict=True)) for r in result.all()]
    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except TimeoutError:
            raise SourceError(self.code, SourceFailure.TIMEOUT, "no answer to SELECT 1") from None
        except Exception as exc:  # any failure means not ready; the kind is reported
            raise SourceError(self.code, SourceFailure.UNAVAILABLE, f"unavailable: {_kind(exc)}") from None

    async def close(self) -> None:
        await self.engine.dispose()


def _is_connect_failure(exc: BaseException) -> bool:
    text = f"{type(getattr(exc, 'orig', None) or exc).__name__} {exc}".lower()
    needles = ("connect", "refused", "unable to open database", "no such host", "could not translate",
               "name or service not known", "connection", "server has gone away", "lost connection")
    return isinstance(exc, OSError | ConnectionError) or any(n in text for n in needles)


def _kind(exc: BaseException) -> str:
    """The class of the driver error: enough to diagnose, without SQL text or values."""
    orig = getattr(exc, "orig", None)
    return type(orig).__name__ if orig is not None else type(exc).__name__

