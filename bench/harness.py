"""The baselines' own connections to the department sources, counting what they send.

The baselines get connections of their own rather than borrowing the gateway's, so that nothing
the gateway configures (pre-ping, pool sizes, type processing) leaks into the numbers they stand
for. They use the same drivers through the same layer as the gateway (SQLAlchemy's async
engine over aiosqlite or asyncpg, httpx for Housing) on the very same data: the city's SQLite
files opened read-only the way the gateway opens them, or the same PostgreSQL database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = ["POOL_SIZE", "Baseline", "keyed"]

# Connections per source: SQLAlchemy's default pool size, and the gateway's for REST sources.
POOL_SIZE = 5


def keyed(text: str) -> sa.TextClause:
    """A literal SQL statement whose ``:keys`` parameter expands to ``IN (?, ?, ...)``.

    Expanding binds keep the statement text constant (so SQLAlchemy compiles it once) while
    every key still travels as a bound parameter, as the gateway's batched joins do.
    """
    return sa.text(text).bindparams(sa.bindparam("keys", expanding=True))


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
        by_url: dict[str, AsyncEngine] = {}
        for dept, url in sql_urls.items():
            engine = by_url.get(url)
            if engine is None:
                # Engine defaults otherwise: no pre-ping, because a ping is a round trip that the
                # fewest-round-trips baseline would not make.
                engine = by_url[url] = create_async_engine(url)
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

    async def rows(self, dept: str, stmt: sa.TextClause, params: dict[str, Any]) -> Sequence[sa.Row[Any]]:
        """One statement on one department, rows as tuples (the cheapest form SQLAlchemy gives)."""
        async with self.limits[dept], self.engines[dept].connect() as conn:
            return (await conn.execute(stmt, params)).all()

    async def dicts(self, dept: str, stmt: sa.TextClause, params: dict[str, Any]) -> list[dict[str, Any]]:
        """One statement, rows as plain dicts: what graphene's resolvers read."""
        async with self.limits[dept], self.engines[dept].connect() as conn:
            result = await conn.execute(stmt, params)
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
