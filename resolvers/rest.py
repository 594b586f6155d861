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
from urllib.parse import urlencode

import httpx
import orjson

from catalog.model import DataType
from resolvers.base import Row
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import Condition, Op, SourceQuery

__all__ = ["RESTConnector", "request_params", "wrong_types"]

_JSON_BODY = {"Content-Type": "application/json"}
MAX_QUERY_STRING = 2000  # characters; well inside the URL limits of common servers and proxies

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
        if query.matches_nothing:
            return []
        if query.keys is not None:
            keys = list(query.keys)
            chunks = [keys[i:i + self.max_batch] for i in range(0, len(keys), self.max_batch)]
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
        self.statements += 1
        try:
            # Key batches, and filters too long for a URL, travel in the body of POST _query.
            if keys is None and len(urlencode(params)) <= MAX_QUERY_STRING:
                resp = await self.client.get(query.location, params=params)
            else:
                resp = await self.client.post(query.location.rstrip("/") + "/_query",
                                              content=orjson.dumps({"params": params}), headers=_JSON_BODY)
        except httpx.TimeoutException:
            raise SourceError(self.code, SourceFailure.TIMEOUT,
                              f"source {self.code!r} did not answer within {self.timeout:g} s") from None
        except httpx.TransportError:
            raise SourceError(self.code, SourceFailure.UNAVAILABLE, f"source {self.code!r} is unavailable") from None
        if resp.status_code in (502, 503):  # a proxy or the service itself says it is down: as unreachable
            raise SourceError(self.code, SourceFailure.UNAVAILABLE,
                              f"source {self.code!r} is unavailable (HTTP {resp.status_code})")
        if resp.status_code == 504:
            raise SourceError(self.code, SourceFailure.TIMEOUT, f"source {self.code!r} timed out (HTTP 504)")
        if resp.status_code >= 500:
            raise SourceError(self.code, SourceFailure.ERROR, f"source {self.code!r} answered HTTP {resp.status_code}")
        if resp.status_code >= 400:
            raise SourceError(self.code, SourceFailure.ERROR,
                              f"source {self.code!r} refused the request (HTTP {resp.status_code})")
        try:
            body = orjson.loads(resp.content)  # orjson: a tenth of json's time on a large answer
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
    """Keep the asked columns and check each JSON value against the catalogue type.

    JSON is loosely typed and REST services vary; a value of the wrong type ("12" for an
    integer, "false" for a boolean) is the source's error, never silently coerced.
    """
    out: Row = {}
    for col in query.columns:
        v = row.get(col)
        if v is not None:
            try:
                v = _DECODERS[query.types[col]](v)
            except (ValueError, TypeError, ArithmeticError):
                # The message names the field, never the value: it may be personal data.
                raise SourceError(source, SourceFailure.ERROR,
                                  f"source {source!r} answered a value of the wrong type for "
                                  f"{query.dataset}.{col} ({query.types[col].value} expected)") from None
        out[col] = v
    return out


def wrong_types(row: Row, types: dict[str, DataType]) -> list[str]:
    """The columns of ``row`` whose JSON values the catalogue's types cannot read (the live check of
    ``hutong catalog check`` uses the connector's own decoding)."""
    out = []
    for col, data_type in types.items():
        v = row.get(col)
        if v is None:
            continue
        try:
            _DECODERS[data_type](v)
        except (ValueError, TypeError, ArithmeticError):
            out.append(col)
    return out


def _strict(*types: type) -> Any:
    def check(v: Any) -> Any:
        if (isinstance(v, bool) and bool not in types) or not isinstance(v, types):
            raise TypeError
        return v
    return check


def _number(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise TypeError
    return float(v)


def _decimal(v: Any) -> Decimal:
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise TypeError
    return Decimal(str(v))


def _date(v: Any) -> date:
    if not isinstance(v, str) or len(v) != 10:
        raise TypeError
    return date.fromisoformat(v)


def _datetime(v: Any) -> datetime:
    if not isinstance(v, str):
        raise TypeError
    return datetime.fromisoformat(v)


_DECODERS: dict[DataType, Any] = {
    DataType.STRING: _strict(str),
    DataType.INTEGER: _strict(int),
    DataType.FLOAT: _number,
    DataType.DECIMAL: _decimal,
    DataType.BOOLEAN: _strict(bool),
    DataType.DATE: _date,
    DataType.DATETIME: _datetime,
}
