"""REST/JSON sources through httpx, speaking the hutong REST source convention.

``GET {base}{endpoint}?fields=a,b&col=v&col__in=v1&col__in=v2&order_by=c&after=v&limit=n``
answers ``{"items": [...]}`` (see docs/rest-sources.md). Filters, projection, ordering
and limits are pushed into the request. Batched joins send the same parameters in the
body of ``POST {endpoint}/_query`` (``{"params": [[name, value], ...]}``), because a few
hundred keys do not fit in a URL: one request per ``max_batch`` keys. Per-key limits are
applied here, since the convention has no per-key limit.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import httpx

from catalog.model import DataType
from resolvers.base import Row
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import Condition, Op, SourceQuery

__all__ = ["RESTConnector", "request_params"]

_SUFFIX = {Op.EQ: "", Op.NE: "__ne", Op.IN: "__in", Op.LT: "__lt", Op.LTE: "__lte", Op.GT: "__gt",
           Op.GTE: "__gte", Op.PREFIX: "__prefix", Op.IS_NULL: "__isnull"}


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, date | datetime):
        return value.isoformat()
    return str(value)


def request_params(query: SourceQuery, keys: list[Any] | None) -> list[tuple[str, str]]:
    """Query-string parameters for one request; httpx percent-encodes every value."""
    params: list[tuple[str, str]] = [("fields", ",".join(query.columns))]
    conds: list[Condition] = list(query.conditions)
    if keys is not None and query.key_column:
        conds.append(Condition(query.key_column, Op.IN, keys))
    for c in conds:
        name = c.column + _SUFFIX[c.op]
        values = c.value if c.op is Op.IN else [c.value]
        params.extend((name, _text(v)) for v in values)
    if query.order_by:
        params.append(("order_by", query.order_by))
    if query.after is not None:
        params.append(("after", _text(query.after)))
    if query.limit is not None:
        params.append(("limit", str(query.limit)))
    return params


class RESTConnector:
    kind = "rest"

    def __init__(self, code: str, base_url: str, *, headers: dict[str, str] | None = None,
                 pool_size: int = 5, timeout: float = 10.0, max_batch: int = 5000,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.code = code
        self.timeout = timeout
        self.max_batch = max_batch
        self.statements = 0
        self.client = httpx.AsyncClient(
            base_url=base_url, headers=headers or {}, timeout=timeout, transport=transport,
            limits=httpx.Limits(max_connections=pool_size, max_keepalive_connections=pool_size),
        )

    async def fetch(self, query: SourceQuery) -> list[Row]:
        if query.keys is not None:
            if not query.keys:
                return []
            keys = list(query.keys)
            chunks = [keys[i:i + self.max_batch] for i in range(0, len(keys), self.max_batch)]
            # A key-batched request asks for every matching row; the limit applies per key below.
            parts = await asyncio.gather(*(self._get(query, chunk) for chunk in chunks))
            rows = [row for part in parts for row in part]
        else:
            rows = await self._get(query, None)
        rows = [_decode(r, query, self.code) for r in rows]
        if query.limit_per_key is not None and query.key_column:
            seen: dict[Any, int] = defaultdict(int)
            kept = []
            for r in rows:
                k = r.get(query.key_column)
                if seen[k] < query.limit_per_key:
                    kept.append(r)
                    seen[k] += 1
            rows = kept
        return rows

    async def _get(self, query: SourceQuery, keys: list[Any] | None) -> list[Row]:
        params = request_params(query, keys)
        if keys is not None:  # per-key limits are applied by the caller
            params = [p for p in params if p[0] != "limit"]
        self.statements += 1
        try:
            if keys is None:
                resp = await self.client.get(query.location, params=params)
            else:
                resp = await self.client.post(query.location.rstrip("/") + "/_query", json={"params": params})
        except httpx.TimeoutException:
            raise SourceError(self.code, SourceFailure.TIMEOUT,
                              f"source {self.code!r} did not answer within {self.timeout:g} s") from None
        except httpx.TransportError:
            raise SourceError(self.code, SourceFailure.UNAVAILABLE, f"source {self.code!r} is unavailable") from None
        if resp.status_code >= 500:
            raise SourceError(self.code, SourceFailure.ERROR, f"source {self.code!r} answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise SourceError(self.code, SourceFailure.ERROR,
                              f"source {self.code!r} refused the request (HTTP {resp.status_code})")
        try:
            body = resp.json()
            items = body["items"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise SourceError(self.code, SourceFailure.ERROR,
                              f"source {self.code!r} answered something other than {{\"items\": [...]}}") from None
        return items

    async def ping(self) -> None:
        try:
            resp = await self.client.get("/healthz")
        except httpx.TimeoutException:
            raise SourceError(self.code, SourceFailure.TIMEOUT, "no answer to GET /healthz") from None
        except httpx.TransportError:
            raise SourceError(self.code, SourceFailure.UNAVAILABLE, "unavailable") from None
        if resp.status_code != 200:
            raise SourceError(self.code, SourceFailure.ERROR, f"GET /healthz answered HTTP {resp.status_code}")

    async def close(self) -> None:
        await self.client.aclose()


def _decode(row: Row, query: SourceQuery, source: str) -> Row:
    """Keep the asked columns and turn JSON values into the catalogue's types."""
    out: Row = {}
    for col in query.columns:
        v = row.get(col)
        t = query.types[col]
        if v is None:
            out[col] = None
            continue
        try:
            if t is DataType.DATE and isinstance(v, str):
                v = date.fromisoformat(v[:10])
            elif t is DataType.DATETIME and isinstance(v, str):
                v = datetime.fromisoformat(v)
            elif t is DataType.DECIMAL:
                v = Decimal(str(v))
            elif t is DataType.FLOAT and isinstance(v, int | float) and not isinstance(v, bool):
                v = float(v)
        except ValueError:
            raise SourceError(source, SourceFailure.ERROR,
                              f"source answered a value of the wrong type for {query.dataset}.{col}") from None
        out[col] = v
    return out
