"""The Housing department's own REST service: property records over a JSON file.

It speaks the "hutong REST source convention", the small contract the gateway's REST
resolver relies on (docs/rest-sources.md):

- ``GET /healthz`` -> ``{"status": "ok"}``.
- ``GET /properties`` -> ``{"items": [...]}``, with query parameters ``fields=a,b``
  (projection); filters ``f=v`` (or ``f__eq=v``), ``f__ne``, ``f__in`` (repeated for
  several values), ``f__lt``, ``f__lte``, ``f__gt``, ``f__gte``, ``f__prefix``,
  ``f__isnull=true|false``, all ANDed; ``order_by=f`` (ascending, default property_id);
  ``after=v`` (keyset: only items whose order_by value is greater than v); ``limit=N``
  (1..100000, default 1000).
- ``POST /properties/_query`` with ``{"params": [["name", "value"], ...]}``: exactly the same
  parameters, carried in the body. The gateway uses it for batched key lookups
  (``owner_id_number__in`` with hundreds of keys), which would not fit in a URL.

Values arrive as strings and are coerced to the field's kind (float, bool, date as an
ISO string, or string). Any bad parameter is answered 400 with ``{"error": ...}``
naming the parameter, never with a 500. Error messages do not repeat the offending
value: it may be a resident's ID number, and error messages end up in logs.

Keyset pagination is exact when order_by is unique (property_id, the default). On a
non-unique field, ties are ordered by property_id but ``after`` skips all of them, as
the convention's single-value cursor implies.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from demo.schema import HOUSING_FIELDS

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "create_app", "main"]

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000
PRIMARY_KEY = "property_id"

Item = dict[str, Any]

_RESERVED = ("fields", "order_by", "after", "limit")
_OPERATORS = ("eq", "ne", "in", "lt", "lte", "gt", "gte", "prefix", "isnull")
# Which operators make sense for which kind: ordering a boolean or prefix-matching a
# number is almost certainly a client bug, so it is refused rather than guessed at.
_ALLOWED = {
    "str": frozenset(_OPERATORS),
    "date": frozenset(_OPERATORS),
    "float": frozenset(_OPERATORS) - {"prefix"},
    "bool": frozenset(("eq", "ne", "in", "isnull")),
}


class BadParameter(Exception):
    """A query parameter the service cannot honour; answered with 400."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"parameter {parameter!r}: {message}")


@dataclass(frozen=True, slots=True)
class Filter:
    """One parsed filter: `field op values` (values already coerced to the field's kind)."""

    field: str
    op: str
    values: tuple[Any, ...]

    def matches(self, item: Item) -> bool:
        value = item.get(self.field)
        if self.op == "isnull":
            return (value is None) == self.values[0]
        if value is None:
            return False  # as in SQL, NULL is neither equal, unequal nor ordered
        target = self.values[0]
        match self.op:
            case "eq":
                return bool(value == target)
            case "ne":
                return bool(value != target)
            case "in":
                return value in self.values
            case "lt":
                return bool(value < target)
            case "lte":
                return bool(value <= target)
            case "gt":
                return bool(value > target)
            case "gte":
                return bool(value >= target)
            case _:  # "prefix"
                return isinstance(value, str) and value.startswith(target)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed ``GET /properties`` request."""

    fields: tuple[str, ...] | None
    filters: tuple[Filter, ...]
    order_by: str
    after: Any | None
    limit: int


def _known_fields() -> str:
    return ", ".join(HOUSING_FIELDS)


def _coerce(kind: str, raw: str, parameter: str) -> Any:
    """A query-string value as the field's kind, or BadParameter."""
    if kind == "float":
        try:
            number = float(raw)
        except ValueError:
            raise BadParameter(parameter, "expected a number") from None
        if not math.isfinite(number):
            raise BadParameter(parameter, "expected a finite number")
        return number
    if kind == "bool":
        return _parse_bool(raw, parameter)
    if kind == "date":
        # Dates are stored and compared as ISO strings; insisting on the full form keeps
        # "2024-1-5" from silently comparing wrong as text.
        try:
            if len(raw) != 10:
                raise ValueError
            date.fromisoformat(raw)
        except ValueError:
            raise BadParameter(parameter, "expected a date as YYYY-MM-DD") from None
    return raw


def _parse_bool(raw: str, parameter: str) -> bool:
    lowered = raw.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise BadParameter(parameter, "expected true or false")


def _single(params: QueryParams, name: str) -> str | None:
    """The value of a parameter that may appear at most once."""
    values = params.getlist(name)
    if len(values) > 1:
        raise BadParameter(name, "given more than once")
    return values[0] if values else None


def parse_query(params: QueryParams) -> Query:
    """Validate and coerce the query string of ``GET /properties``."""
    fields: tuple[str, ...] | None = None
    raw_fields = _single(params, "fields")
    if raw_fields is not None:
        names = [name.strip() for name in raw_fields.split(",") if name.strip()]
        if not names:
            raise BadParameter("fields", f"expected a comma-separated list of fields: {_known_fields()}")
        for name in names:
            if name not in HOUSING_FIELDS:
                raise BadParameter("fields", f"unknown field {name!r}; known fields: {_known_fields()}")
        fields = tuple(dict.fromkeys(names))  # drop repeats, keep the caller's order

    order_by = _single(params, "order_by") or PRIMARY_KEY
    if order_by not in HOUSING_FIELDS:
        raise BadParameter("order_by", f"unknown field {order_by!r}; known fields: {_known_fields()}")

    raw_after = _single(params, "after")
    after = None if raw_after is None else _coerce(HOUSING_FIELDS[order_by], raw_after, "after")

    limit = DEFAULT_LIMIT
    raw_limit = _single(params, "limit")
    if raw_limit is not None:
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BadParameter("limit", f"expected an integer from 1 to {MAX_LIMIT}") from None
        if not 1 <= limit <= MAX_LIMIT:
            raise BadParameter("limit", f"expected an integer from 1 to {MAX_LIMIT}")

    filters: list[Filter] = []
    # Keys come in order of first appearance, so filters (and errors) follow the query string.
    for parameter in params:
        if parameter in _RESERVED:
            continue
        field_name, op = parameter, "eq"
        head, sep, tail = parameter.rpartition("__")
        if sep:
            field_name, op = head, tail
            if op not in _OPERATORS:
                raise BadParameter(
                    parameter, f"unknown operator {op!r}; known operators: {', '.join(_OPERATORS)}"
                )
        kind = HOUSING_FIELDS.get(field_name)
        if kind is None:
            raise BadParameter(parameter, f"unknown field {field_name!r}; known fields: {_known_fields()}")
        if op not in _ALLOWED[kind]:
            raise BadParameter(parameter, f"operator {op!r} does not apply to {kind} field {field_name!r}")
        raw_values = params.getlist(parameter)
        if op != "in" and len(raw_values) > 1:
            raise BadParameter(parameter, f"given more than once; use {field_name}__in for several values")
        if op == "isnull":
            values: tuple[Any, ...] = (_parse_bool(raw_values[0], parameter),)
        elif op == "prefix":
            values = (raw_values[0],)  # a prefix of a date is not a date, so it stays raw text
        else:
            values = tuple(_coerce(kind, raw, parameter) for raw in raw_values)
        filters.append(Filter(field_name, op, values))
    return Query(fields=fields, filters=tuple(filters), order_by=order_by, after=after, limit=limit)


_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "date": (str,),
    "float": (int, float),
    "bool": (bool,),
}


def _checked_record(record: dict[str, Any], number: int, path: Path) -> Item:
    """The record with every declared field (None when absent) and each value of its field's kind.

    Checking once at startup means no request can later trip over a value that does not
    compare with the query's (which would be a 500), and projection never meets a
    missing key.
    """
    item: Item = {}
    for name, kind in HOUSING_FIELDS.items():
        value = record.get(name)
        # bool is a subclass of int, so a stray true/false must not pass as a number.
        if value is not None and (
            not isinstance(value, _PYTHON_TYPES[kind]) or (kind == "float" and isinstance(value, bool))
        ):
            raise ValueError(f"{path}: properties[{number}].{name} should be of kind {kind}")
        item[name] = float(value) if kind == "float" and value is not None else value
    if item[PRIMARY_KEY] is None:
        raise ValueError(f"{path}: properties[{number}] has no {PRIMARY_KEY}")
    return item


class PropertyStore:
    """The property records, held in memory, with equality indexes.

    The gateway looks properties up by owner in batches (``owner_id_number__in``), so
    equality and ``__in`` filters are answered from an index instead of a full scan.
    """

    def __init__(self, items: list[Item]) -> None:
        self.items = sorted(items, key=lambda item: item[PRIMARY_KEY])
        # field -> value -> positions in self.items (ascending, so results keep key order)
        self.index: dict[str, dict[Any, list[int]]] = {name: {} for name in HOUSING_FIELDS}
        for position, item in enumerate(self.items):
            for name, by_value in self.index.items():
                value = item.get(name)
                if value is not None:
                    by_value.setdefault(value, []).append(position)

    @classmethod
    def load(cls, path: Path) -> PropertyStore:
        """Read ``{"properties": [...]}``; a malformed file fails here, at startup."""
        with path.open(encoding="utf-8") as handle:
            document = json.load(handle)
        records = document.get("properties") if isinstance(document, dict) else None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"{path}: expected a JSON object with a list of objects under 'properties'")
        items = [_checked_record(record, number, path) for number, record in enumerate(records)]
        keys = [item[PRIMARY_KEY] for item in items]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{path}: {PRIMARY_KEY} values are not unique")
        return cls(items)

    def candidates(self, filters: Sequence[Filter]) -> list[Item]:
        """Items that may match: the smallest equality-index hit list, else everything."""
        best: list[int] | None = None
        for flt in filters:
            if flt.op not in ("eq", "in"):
                continue
            by_value = self.index[flt.field]
            positions = sorted({p for value in flt.values for p in by_value.get(value, [])})
            if best is None or len(positions) < len(best):
                best = positions
        return self.items if best is None else [self.items[p] for p in best]

    def query(self, q: Query) -> list[Item]:
        selected = [item for item in self.candidates(q.filters) if all(f.matches(item) for f in q.filters)]
        key = q.order_by
        if q.after is not None:
            selected = [item for item in selected if item[key] is not None and item[key] > q.after]
        if key != PRIMARY_KEY:
            # Nulls last; ties broken by the primary key so pages are stable. (Python's sort
            # is stable, and the candidates are already in primary-key order.)
            selected.sort(key=lambda item: (item[key] is None, 0 if item[key] is None else item[key]))
        page = selected[: q.limit]
        if q.fields is None:
            return page
        return [{name: item[name] for name in q.fields} for item in page]


def _error(message: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(data_path: Path) -> Starlette:
    """The service over `data_path`, which is read once, now."""
    store = PropertyStore.load(data_path)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def properties(request: Request) -> JSONResponse:
        try:
            query = parse_query(request.query_params)
        except BadParameter as exc:
            return _error(str(exc))
        return JSONResponse({"items": store.query(query)})

    async def properties_query(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error("the body is not valid JSON: send {\"params\": [[name, value], ...]}")
        pairs = body.get("params") if isinstance(body, dict) else None
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in pairs
        ):
            return _error("params: expected a list of [name, value] string pairs")
        try:
            query = parse_query(QueryParams([tuple(p) for p in pairs]))
        except BadParameter as exc:
            return _error(str(exc))
        return JSONResponse({"items": store.query(query)})

    routes: list[Route] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/properties", properties, methods=["GET"]),
        Route("/properties/_query", properties_query, methods=["POST"]),
    ]
    app = Starlette(routes=routes)
    app.state.store = store  # for introspection in tests and debugging
    return app


def _exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Stop this service (gracefully, as on SIGTERM) once ``parent_pid`` is no longer its parent:
    the gateway that started it died without stopping it, and the port must not stay taken."""
    import os
    import signal
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m demo.housing_service",
        description="Serve the demo Housing department's property records.",
    )
    parser.add_argument(
        "--data", type=Path, default=Path("demo/data/housing.json"), help="housing.json to serve"
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8001, help="port (default 8001)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                        help="server log level (default info)")
    parser.add_argument("--parent-pid", type=int, default=None,
                        help="exit when this process (the gateway that started the service) is gone")
    args = parser.parse_args(argv)
    if not args.data.is_file():
        parser.error(f"--data: no such file: {args.data} (build it with: python -m demo.build)")
    import uvicorn  # imported here: only the command line needs a server, not create_app's users

    app = create_app(args.data)
    if args.parent_pid is not None:
        _exit_with_parent(args.parent_pid)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("info", "debug"))


if __name__ == "__main__":
    main()
