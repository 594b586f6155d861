"""Plumbing the benchmark's contestants share: the Housing service in a thread, and the
baselines' own connections to the department sources, which count what they send.

The baselines get connections of their own rather than borrowing the gateway's, so that
nothing the gateway configures (pre-ping, pool sizes, type processing) leaks into the
numbers they stand for. They open the very same SQLite files, read-only, as the gateway does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from demo.server_thread import ServerThread

__all__ = ["SQL_DEPARTMENTS", "Baseline", "ServerThread", "keyed"]

# The departments kept in SQLite files by demo.build, named <code>.sqlite.
SQL_DEPARTMENTS = ("psb", "hrss", "mr", "health", "civil")
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

    One async engine per department file (read-only URI, the gateway's own form) and one
    HTTP client for the Housing service. ``statements`` counts SQL statements sent to a
    cursor and HTTP requests made, the same units as ``Gateway.sources.statements()``.
    """

    def __init__(self, data_dir: Path, housing_url: str) -> None:
        self.statements = 0
        self.engines: dict[str, AsyncEngine] = {}
        for dept in SQL_DEPARTMENTS:
            path = (data_dir / f"{dept}.sqlite").resolve()
            # Engine defaults otherwise: no pre-ping, because a ping is a round trip that the
            # fewest-round-trips baseline would not make.
            engine = create_async_engine(f"sqlite+aiosqlite:///file:{path}?mode=ro&uri=true")
            event.listen(engine.sync_engine, "before_cursor_execute", self._count_statement)
            self.engines[dept] = engine
        # At most as many statements in flight per source as the pool holds connections, and
        # as many requests as the HTTP client keeps connections. Without these, graphql-core
        # starts every resolver of a 1,000-item list at once, and the thousands of waiters
        # make SQLAlchemy's pool and httpx's connection pool spend seconds on queueing alone
        # (with pool timeouts after 30 s): a failure no real N+1 server would be left with.
        self.limits = {dept: asyncio.Semaphore(POOL_SIZE) for dept in (*SQL_DEPARTMENTS, "housing")}
        self.http = httpx.AsyncClient(
            base_url=housing_url, timeout=10.0,
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
        """One statement, rows as plain dicts: what graphene's default resolvers can read."""
        async with self.limits[dept], self.engines[dept].connect() as conn:
            return [dict(r) for r in (await conn.execute(stmt, params)).mappings()]

    async def properties(self, params: list[tuple[str, str]], *, batched: bool) -> list[dict[str, Any]]:
        """Housing records: ``POST /properties/_query`` for key batches (keys do not fit in a
        URL), ``GET /properties`` otherwise; the gateway's REST connector does the same."""
        async with self.limits["housing"]:
            if batched:
                resp = await self.http.post("/properties/_query", json={"params": [list(p) for p in params]})
            else:
                resp = await self.http.get("/properties", params=params)
        resp.raise_for_status()
        items: list[dict[str, Any]] = resp.json()["items"]
        return items

    async def close(self) -> None:
        await self.http.aclose()
        for engine in self.engines.values():
            await engine.dispose()
