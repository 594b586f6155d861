"""Stage 5: shape fetched rows into the response, following the plan's shapes.

Values are serialised per the catalogue's data type (dates as ISO 8601, decimals as
strings). A fetch that failed becomes ``null`` at every path where its records would
appear, each with an error carrying the source failure code, while the rest stands. A
conditional value the consent stage refused is ``null`` with the refusal's code.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from catalog.model import DataType
from gateway.consent import Refused
from gateway.cursor import CursorCodec
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.executor import FetchResult
from gateway.plan import (
    ENTITY_KEY,
    Conditional,
    Const,
    EntityRef,
    KeyValue,
    Nested,
    ObjShape,
    Plan,
    RootEntity,
    RootPage,
    RootVerify,
    Scalar,
    Withheld,
)
from gateway.shape_compiled import COMPILE_FROM, CompiledShapes
from policies.masks import Masker
from resolvers.base import Row

__all__ = ["Shaper"]

# Paths are built lazily as linked (parent, key) pairs: they are only needed for errors,
# and copying a list per object costs more than the rest of shaping a row.
PathLink = tuple[Any, str | int] | None


def materialise(link: PathLink) -> list[str | int]:
    out: list[str | int] = []
    while link is not None:
        link, key = link
        out.append(key)
    out.reverse()
    return out


def _date(v: Any) -> str:
    return (v.date() if isinstance(v, datetime) else v).isoformat() if isinstance(v, date) else str(v)


def _datetime(v: Any) -> str:
    return v.isoformat() if isinstance(v, datetime) else str(v)


def _string(v: Any) -> str:
    if v.__class__ is str:
        return v
    return v.isoformat() if isinstance(v, date) else str(v)


def _integer(v: Any) -> int:
    return v if v.__class__ is int else int(v)


# One serialiser per catalogue type, looked up once per value; None never reaches them.
SERIALISERS: dict[DataType, Any] = {
    DataType.STRING: _string,
    DataType.INTEGER: _integer,
    DataType.FLOAT: float,
    DataType.DECIMAL: str,
    DataType.BOOLEAN: bool,
    DataType.DATE: _date,
    DataType.DATETIME: _datetime,
}


class Shaper:
    """Builds one response. Lists of many objects go through compiled functions
    (gateway/shape_compiled.py), which call back here for everything but plain scalars."""

    def __init__(self, plan: Plan, results: dict[int, FetchResult], max_nodes: int, masker: Masker,
                 cursors: CursorCodec, compiled: CompiledShapes | None = None) -> None:
        self.masker = masker
        self.compiled = compiled
        self.cursors = cursors
        self.plan = plan
        self.results = results
        self.errors: list[GraphQLErrorOut] = []
        self.max_nodes = max_nodes
        self.budget = max_nodes

    def withhold(self, entry: Withheld, path: PathLink) -> None:
        self.errors.append(GraphQLErrorOut(entry.message, Code(entry.code), path=materialise(path)))

    def fail(self, result: FetchResult, path: PathLink) -> None:
        assert result.error is not None
        self.errors.append(GraphQLErrorOut(result.error.message, Code(result.error.failure.value),
                                           path=materialise(path),
                                           extra={"source": result.error.source}))

    def root(self, entry: RootPage | RootEntity | RootVerify | Withheld) -> Any:
        if isinstance(entry, Withheld):
            self.withhold(entry, (None, entry.key))
            return None
        if isinstance(entry, RootVerify):
            result = self.results[entry.fetch]
            if result.error is not None:
                self.fail(result, (None, entry.key))
                return None
            return bool(result.rows)
        if isinstance(entry, RootEntity):
            root: PathLink = (None, entry.key)
            if entry.many:
                return self.objs(entry.shape, [{ENTITY_KEY: k} for k in entry.keys], root)
            return self.obj(entry.shape, {ENTITY_KEY: entry.keys[0]}, root)
        result = self.results[entry.fetch]
        if result.error is not None:
            self.fail(result, (None, entry.key))
            return None
        out: dict[str, Any] = {}
        rows = result.rows
        for key, typename in entry.typename:
            out[key] = typename
        for key, shape in entry.nodes:
            out[key] = self.objs(shape, rows, ((None, entry.key), key))
        for info in entry.page_info:
            out[info.key] = {
                k: (result.has_next if what == "hasNextPage"
                    else self.cursor(result, entry.order_by) if what == "endCursor"
                    else "PageInfo")
                for k, what in info.entries
            }
        # GraphQL answers in the order the fields were asked for (pageInfo before nodes, if so).
        return {k: out[k] for k in entry.order} if entry.order else out

    def cursor(self, result: FetchResult, order_by: str) -> str | None:
        return self.cursors.encode(result.fetch.dataset, result.rows[-1][order_by]) if result.rows else None

    def objs(self, shape: ObjShape, rows: list[Row], path: PathLink) -> list[dict[str, Any] | None]:
        if self.compiled is not None and len(rows) >= COMPILE_FROM:
            build = self.compiled.get(shape)
            if build is not None:
                self.count_object(len(rows))  # the compiled functions leave the count to the list
                entries = shape.entries
                return [build(r, (path, i), self, entries) for i, r in enumerate(rows)]
        return [self.obj(shape, r, (path, i)) for i, r in enumerate(rows)]

    def count_object(self, n: int = 1) -> None:
        self.budget -= n
        if self.budget < 0:
            # Fan-out (the same child rows under many parents) can make an answer far larger
            # than the rows fetched; stop before it exhausts memory.
            message = (f"the answer would hold more than {self.max_nodes} objects (max_nodes): "
                       "ask for fewer records or fewer nested levels")
            raise RequestError(Code.QUERY_TOO_COSTLY, message, 400,
                               errors=[GraphQLErrorOut(message, Code.QUERY_TOO_COSTLY)])

    def obj(self, shape: ObjShape, row: Row, path: PathLink) -> dict[str, Any] | None:
        self.count_object()
        out: dict[str, Any] = {}
        for e in shape.entries:
            if isinstance(e, Scalar):
                v = row.get(e.column)
                if e.mask is not None and v is not None:
                    v = self.masker.apply(e.mask, v)
                out[e.key] = None if v is None else SERIALISERS[e.type](v)
            elif isinstance(e, Conditional):
                out[e.key] = self.conditional(e, row, path)
            elif isinstance(e, Nested):
                out[e.key] = self.nested(e, row, (path, e.key))
            elif isinstance(e, EntityRef):
                out[e.key] = self.entity_ref(e, row, path)
            elif isinstance(e, KeyValue):
                out[e.key] = self.key_value(e, row)
            elif isinstance(e, Withheld):
                out[e.key] = self.withheld_value(e, path)
                if e.non_null:
                    # GraphQL: a null in a non-null field nulls the nearest nullable parent, this object
                    # (entity objects are always in nullable positions).
                    return None
            elif isinstance(e, Const):
                out[e.key] = e.value
        return out

    def conditional(self, e: Conditional, row: Row, path: PathLink) -> Any:
        v = row.get(e.column)
        if v.__class__ is Refused:
            self.errors.append(GraphQLErrorOut(v.message, Code(v.code), path=materialise((path, e.key))))
            return None
        if e.mask is not None and v is not None:
            v = self.masker.apply(e.mask, v)
        return None if v is None else SERIALISERS[e.type](v)

    def entity_ref(self, e: EntityRef, row: Row, path: PathLink) -> dict[str, Any] | None:
        k = row.get(e.column)
        return None if k is None else self.obj(e.shape, {ENTITY_KEY: k}, (path, e.key))

    def key_value(self, e: KeyValue, row: Row) -> Any:
        return row[ENTITY_KEY] if e.mask is None else self.masker.apply(e.mask, row[ENTITY_KEY])

    def withheld_value(self, e: Withheld, path: PathLink) -> None:
        self.withhold(e, (path, e.key))
        return None

    def nested(self, e: Nested, row: Row, path: PathLink) -> Any:
        result = self.results[e.fetch]
        if result.error is not None:
            self.fail(result, path)
            return None
        k = row.get(e.parent_column)
        rows = result.by_key.get(k, []) if k is not None else []
        if e.many:
            return self.objs(e.shape, rows, path)
        return self.obj(e.shape, rows[0], path) if rows else None
