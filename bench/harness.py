"""The baselines' own connections to the department sources, counting what they send.

The baselines get connections of their own rather than borrowing the gateway's, so that nothing
the gateway configures (pre-ping, pool sizes, type processing) leaks into the numbers they stand
for. They use the same drivers through the same layer as the gateway (SQLAlchemy's async
engine over aiosqlite or asyncpg, httpx for Housing) on the very same data: the city's SQLite
files opened read-only the way the gateway opens them, or the same PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["POOL_SIZE", "Baseline", "Keyed", "keyed"]

# Connections per source: the gateway's default (catalog.model.Source.pool_size).
POOL_SIZE = 8


@dataclass(frozen=True)
class Keyed:
    """A literal SQL statement with ``IN :keys``, written for each database the way the gateway's
    batched joins are (resolvers/sql_statement.py), the fastest form each offers: one array
    parameter on PostgreSQL (``= ANY(:keys)``), one JSON parameter on SQLite (``IN (SELECT value
    FROM json_each(:keys))``). Every key travels as a bound value, and the statement text is the same
    for any number of keys, so it is compiled (and on PostgreSQL prepared) once."""

    text: str

    def statement(self, dialect: str) -> sa.TextClause:
        if dialect == "postgresql":
            return sa.text(self.text.replace("IN :keys", "= ANY(:keys)")).bindparams(
                sa.bindparam("keys", type_=postgresql.ARRAY(sa.String())))
        if dialect == "sqlite":
            return sa.text(self.text.replace("IN :keys", "IN (SELECT value FROM json_each(:keys))"))
        return sa.text(self.text).bindparams(sa.bindparam("keys", expanding=True))

    @staticmethod
    def values(dialect: str, params: dict[str, Any]) -> dict[str, Any]:
        if dialect == "sqlite" and "keys" in params:
            return {**params, "keys": json.dumps(list(params["keys"]), ensure_ascii=False)}
        return params


def keyed(text: str) -> Keyed:
    return Keyed(text)


class Baseline:
    """Connections for the hand-written contestants, counting source queries as the gateway does.

    ``sql_urls`` maps a department (psb, hrss, mr, civil) to its SQLAlchemy async URL. Departments
    that share a URL (PostgreSQL: one database) share one engine, as they would share a server.
    ``statements`` counts SQL statements sent to a cursor and HTTP requests made, the same units
    as ``Gateway.sources.statements()``.
    """

    def __init__(self, sql_urls: dict[str, str], housing_url: str) -> None:
        self.statements = 0
        self.engines: dict[str, AsyncEngine] = {}
        self._keyed: dict[tuple[Keyed, str], sa.TextClause] = {}
        by_url: dict[str, AsyncEngine] = {}
        sharing = {url: sum(u == url for u in sql_urls.values()) for url in sql_urls.values()}
        for dept, url in sql_urls.items():
            engine = by_url.get(url)
            if engine is None:
                # As many connections as the gateway keeps for these departments (POOL_SIZE each), and
                # no overflow: overflow connections are opened and closed per statement under load,
                # which would make the limit slower than the gateway. No pre-ping: a ping is a round
                # trip that the fewest-round-trips baseline would not make.
                engine = by_url[url] = create_async_engine(url, pool_size=POOL_SIZE * sharing[url], max_overflow=0)
                event.listen(engine.sync_engine, "before_cursor_execute", self._count_statement)
            self.engines[dept] = engine
        # At most as many statements in flight per source as the pool holds connections (the naive
        # contestant would otherwise queue thousands of waiters in SQLAlchemy's pool).
        self.limits = {dept: asyncio.Semaphore(POOL_SIZE) for dept in (*sql_urls, "housing")}
        self.http = httpx.AsyncClient(
            base_url=housing_url, timeout=30.0,
            limits=httpx.Limits(max_connections=POOL_SIZE, max_keepalive_connections=POOL_SIZE),
            event_hooks={"request": [self._count_request]},
        )

    def _count_statement(self, *_: Any) -> None:
        self.statements += 1

    async def _count_request(self, _request: httpx.Request) -> None:
        self.statements += 1

    def _prepare(self, dept: str, stmt: sa.TextClause | Keyed,
                 params: dict[str, Any]) -> tuple[sa.TextClause, dict[str, Any]]:
        if isinstance(stmt, sa.TextClause):
            return stmt, params
        dialect = self.engines[dept].dialect.name
        text = self._keyed.get((stmt, dialect))
        if text is None:
            text = self._keyed[(stmt, dialect)] = stmt.statement(dialect)
        return text, stmt.values(dialect, params)

    async def rows(self, dept: str, stmt: sa.TextClause | Keyed, params: dict[str, Any]) -> Sequence[sa.Row[Any]]:
        """One statement on one department, rows as tuples (the cheapest form SQLAlchemy gives)."""
        text, values = self._prepare(dept, stmt, params)
        async with self.limits[dept], self.engines[dept].connect() as conn:
            return (await conn.execute(text, values)).all()

    async def dicts(self, dept: str, stmt: sa.TextClause | Keyed, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One statement, rows as plain dicts: what graphene's resolvers read."""
        text, values = self._prepare(dept, stmt, params)
        async with self.limits[dept], self.engines[dept].connect() as conn:
            result = await conn.execute(text, values)
            keys = tuple(result.keys())
            return [dict(zip(keys, r, strict=True)) for r in result.all()]

    async def properties(self, params: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Housing records for a batch of owners: ``POST /properties/_query``, as the gateway's REST
        connector sends key batches."""
        async with self.limits["housing"]:
            resp = await self.http.post("/properties/_query", json={"params": [list(p) for p in params]})
        resp.raise_for_status()
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    async def close(self) -> None:
        await self.http.aclose()
        for engine in {id(e): e for e in self.engines.values()}.values():
            await engine.dispose()
