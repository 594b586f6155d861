"""The live connectors of one gateway process, one per catalogue source."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from catalog.loader import expand_env
from catalog.model import Catalog, Source
from resolvers.base import Connector, Row
from resolvers.breaker import Breaker
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import SourceQuery
from resolvers.rest import RESTConnector
from resolvers.sql import SQLConnector

__all__ = ["Sources", "resolve_url"]


def resolve_url(source: Source, base_dir: Path, override: str | None = None) -> str:
    """The URL to connect to: override or catalogue, ``${VAR}`` expanded, SQLite made read-only.

    A relative SQLite path is taken relative to ``base_dir`` (the configuration file's folder).
    SQLite files are opened read-only (URI ``mode=ro``): the gateway never writes to a
    department's store, and a missing file is reported as unavailable instead of created empty.
    """
    url = expand_env(override or source.url)
    if source.kind == "sql" and url.startswith("sqlite"):
        scheme, _, path = url.partition(":///")
        if path.startswith("file:"):
            return url
        path, _, query = path.partition("?")
        p = Path(path)
        if not p.is_absolute():
            p = (base_dir / p).resolve()
        extra = "&" + query if query else ""
        return f"{scheme}:///file:{p}?mode=ro&uri=true{extra}"
    return url


class Sources:
    """Connectors by source code, created lazily on first use and closed together."""

    def __init__(self, catalog: Catalog, base_dir: Path, overrides: Mapping[str, str] | None = None, *,
                 circuit_failures: int = 5, circuit_open_seconds: float = 10.0) -> None:
        self.catalog = catalog
        self.base_dir = base_dir
        self.overrides = dict(overrides or {})
        self._connectors: dict[str, Connector] = {}
        self.breakers = {code: Breaker(code, circuit_failures, circuit_open_seconds) for code in catalog.sources}

    async def fetch(self, code: str, query: SourceQuery) -> list[Row]:
        """Run ``query`` in source ``code``, through its circuit breaker (resolvers/breaker.py)."""
        return await self.breakers[code].call(lambda: self.get(code).fetch(query))

    def get(self, code: str) -> Connector:
        conn = self._connectors.get(code)
        if conn is None:
            conn = self._connectors[code] = self._create(self.catalog.sources[code])
        return conn

    def _create(self, src: Source) -> Connector:
        try:
            url = resolve_url(src, self.base_dir, self.overrides.get(src.code))
        except KeyError as exc:
            raise SourceError(src.code, SourceFailure.UNAVAILABLE, str(exc.args[0])) from None
        try:
            if src.kind == "sql":
                return SQLConnector(src.code, url, pool_size=src.pool_size, timeout=src.timeout,
                                    max_batch=src.max_batch)
            headers = {k: expand_env(v) for k, v in src.headers.items()}
            return RESTConnector(src.code, url, headers=headers, pool_size=src.pool_size, timeout=src.timeout,
                                 max_batch=src.max_batch)
        except KeyError as exc:
            raise SourceError(src.code, SourceFailure.UNAVAILABLE, str(exc.args[0])) from None
        except Exception as exc:  # a bad URL or a missing driver: by kind, the URL may hold a password
            raise SourceError(src.code, SourceFailure.UNAVAILABLE,
                              f"source {src.code!r} cannot be opened ({type(exc).__name__})") from None

    def statements(self) -> dict[str, int]:
        """Source queries issued so far, per source (for tests, metrics and benchmarks)."""
        return {code: c.statements for code, c in self._connectors.items()}

    async def readiness(self) -> dict[str, dict[str, str]]:
        """Ping every source concurrently: ``{code: {"status": "ok" | failure code, ...}}``."""

        async def one(code: str) -> tuple[str, dict[str, str]]:
            src = self.catalog.sources[code]
            try:
                await self.get(code).ping()
            except SourceError as exc:
                return code, {"status": exc.failure.value, "kind": src.kind, "detail": exc.message,
                              **self.breakers[code].status()}
            return code, {"status": "ok", "kind": src.kind, **self.breakers[code].status()}

        return dict(await asyncio.gather(*(one(code) for code in sorted(self.catalog.sources))))

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._connectors.values()))
        self._connectors.clear()
