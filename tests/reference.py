"""The reference path: the gateway's own generated schema, executed field by field by graphql-core.

hutong never lets graphql-core resolve data fields: the planner compiles a query into pushed-down
fetches and the shaper builds the answer. This module answers the same queries the slow, obvious
way, as a check on all of that machinery (tests/test_equivalence.py compares the two):

- the schema is a fresh :func:`gateway.schema.build_schema` of the catalogue, so the types, argument
  coercion, fragments, ``@skip``/``@include``, aliases and ``__typename`` are graphql-core's own;
- every data field gets a resolver that computes its value from the city's in-memory rows, one
  lookup per field, following only the catalogue (no plan, no batching, no SQL): a list root filters
  the dataset's rows, orders them by primary key and cuts a page after the keyset cursor; a relation
  follows its join columns; a dataset's key field seen as an entity is that entity keyed by the
  value; an entity's link lists the records whose key column holds the entity's key;
- values go out through the GraphQL scalars of the catalogue's types (graphene's ``Date``,
  ``Float``...), never through the gateway's serialisers.

Filters follow SQL's three-valued logic: a null value satisfies no comparison, only ``isNull``.
``prefix`` means "starts with", case and all. Key fields (``key: id_number``) compare normalised
keys, as the catalogue declares. Authorisation, masks and consent do not exist here: compare with
the gateway's UNRESTRICTED answers only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from graphql import ExecutionResult, GraphQLError, GraphQLObjectType, execute, parse, validate

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog, Dataset, DataType, Entity, FieldSpec
from gateway.cursor import CursorCodec
from gateway.schema import build_schema
from resolvers.coerce import coerce

__all__ = ["CURSOR_MARK", "Reference", "typed"]

Row = dict[str, Any]
Resolver = Callable[..., Any]

# endCursor values are sealed with a random nonce, so two correct answers never hold the same
# cursor text. The reference answers this marker with the dataset and ordering value instead;
# the comparison opens the gateway's cursor with the same secret and compares what is inside.
CURSOR_MARK = "\x00reference-cursor\x00"


def typed(value: Any, data_type: DataType) -> Any:
    """A stored value (SQL row or JSON item) as the Python value of its catalogue type."""
    if value is None:
        return None
    match data_type:
        case DataType.STRING:
            return value if isinstance(value, str) else str(value)
        case DataType.INTEGER:
            return int(value)
        case DataType.FLOAT:
            return float(value)
        case DataType.DECIMAL:
            return Decimal(str(value))
        case DataType.BOOLEAN:
            return bool(value)
        case DataType.DATE:
            return date.fromisoformat(value) if isinstance(value, str) else value
        case DataType.DATETIME:
            return datetime.fromisoformat(value) if isinstance(value, str) else value
    raise ValueError(f"unknown data type {data_type}")


class _Table:
    """One dataset's rows, typed and in primary-key order, with an index per looked-up column."""

    def __init__(self, ds: Dataset, rows: Iterable[Row]) -> None:
        self.ds = ds
        self.types = {f.name: f.type for f in ds.fields}
        self.rows = sorted(({c: typed(r.get(c), t) for c, t in self.types.items()} for r in rows),
                           key=lambda r: r[ds.primary_key])
        self._index: dict[str, dict[Any, list[Row]]] = {}

    def where(self, column: str, value: Any) -> list[Row]:
        """Rows whose ``column`` equals ``value`` (never for null, as in SQL), in primary-key order."""
        if value is None:
            return []
        index = self._index.get(column)
        if index is None:
            index = self._index[column] = {}
            for r in self.rows:
                index.setdefault(r[column], []).append(r)
        return index.get(value, [])


_OP_NAMES = {"in_": "in", "is_null": "isNull"}  # graphene's Python names for the GraphQL ones


def _holds(value: Any, op: str, arg: Any) -> bool:
    if op == "isNull":
        return (value is None) == bool(arg)
    if value is None:
        return False
    match op:
        case "eq":
            return bool(value == arg)
        case "ne":
            return bool(value != arg)
        case "in":
            return value in arg
        case "lt":
            return bool(value < arg)
        case "lte":
            return bool(value <= arg)
        case "gt":
            return bool(value > arg)
        case "gte":
            return bool(value >= arg)
        case "prefix":
            return isinstance(value, str) and value.startswith(arg)
    raise GraphQLError(f"unknown operator {op}")


def _normalise_key(kind: str, value: Any, where: str) -> str:
    try:
        return KEY_KINDS[kind].normalise(value)
    except InvalidKey as exc:
        raise GraphQLError(f"{where}: {exc}") from None


class Reference:
    """graphql-core over the catalogue's schema, resolving every data field from in-memory rows."""

    def __init__(self, catalog: Catalog, rows: dict[str, Iterable[Row]], cursors: CursorCodec,
                 default_limit: int = 100) -> None:
        self.catalog = catalog
        self.cursors = cursors
        self.default_limit = default_limit
        self.tables = {code: _Table(ds, rows[code]) for code, ds in catalog.datasets.items()}
        self.schema = build_schema(catalog).graphql  # our own instance: its resolvers are replaced below
        self._install()

    # --- running --------------------------------------------------------------------------

    def run(self, query: str, variables: dict[str, Any] | None = None,
            operation_name: str | None = None) -> ExecutionResult:
        try:
            document = parse(query)
        except GraphQLError as err:
            return ExecutionResult(None, [err])
        errors = validate(self.schema, document)
        if errors:
            return ExecutionResult(None, errors)
        result = execute(self.schema, document, variable_values=variables, operation_name=operation_name)
        assert isinstance(result, ExecutionResult), "the reference's resolvers are synchronous"
        return result

    def cursor_value(self, marker: str) -> tuple[str, Any]:
        """(dataset, ordering value) of an endCursor marker this reference answered."""
        dataset, _, value = marker[len(CURSOR_MARK):].partition("\x00")
        ds = self.catalog.datasets[dataset]
        return dataset, typed(json.loads(value), ds.field(ds.primary_key).type)

    def open_cursor(self, cursor: str, dataset: str) -> Any:
        """The ordering value inside one of the gateway's cursors (ValueError if it is not one)."""
        ds = self.catalog.datasets[dataset]
        return self.cursors.decode(cursor, dataset, ds.field(ds.primary_key).type)

    # --- filters and limits ---------------------------------------------------------------

    def _conditions(self, ds: Dataset, flt: dict[str, Any] | None) -> list[tuple[str, str, Any]]:
        out: list[tuple[str, str, Any]] = []
        by_name = {f.graphql_name: f for f in ds.fields if f.filterable}
        for gql_name, ops in (flt or {}).items():
            if ops is None:
                continue  # {field: null}: no condition on the field
            spec: FieldSpec = by_name[gql_name]
            for raw_op, arg in ops.items():
                op = _OP_NAMES.get(raw_op, raw_op)
                if arg is None:
                    raise GraphQLError(f"filter.{gql_name}.{op} is null")
                if spec.key and op in ("eq", "ne"):
                    arg = _normalise_key(spec.key, arg, f"filter.{gql_name}.{op}")
                elif spec.key and op == "in":
                    arg = [_normalise_key(spec.key, v, f"filter.{gql_name}.in") for v in arg]
                out.append((spec.name, op, arg))
        return out

    @staticmethod
    def _keep(rows: Iterable[Row], conds: list[tuple[str, str, Any]], limit: int | None) -> list[Row]:
        if limit is not None and limit < 0:
            raise GraphQLError(f"limit must not be negative, got {limit}")
        kept = [r for r in rows if all(_holds(r[c], op, arg) for c, op, arg in conds)]
        return kept if limit is None else kept[:limit]

    # --- resolvers ------------------------------------------------------------------------

    def _install(self) -> None:
        resolvers: dict[tuple[str, str], Resolver] = {}
        for ds in self.catalog.datasets.values():
            self._dataset_resolvers(ds, resolvers)
        for ent in self.catalog.entities.values():
            self._entity_resolvers(ent, resolvers)
        resolvers[("PageInfo", "hasNextPage")] = lambda page, _info: page["hasNextPage"]
        resolvers[("PageInfo", "endCursor")] = lambda page, _info: page["endCursor"]
        resolvers[("Query", "verify")] = self._verify

        data_types = {t for t, _ in resolvers if t != "Query"}
        for (type_name, field_name), fn in resolvers.items():
            gtype = self.schema.get_type(type_name)
            assert isinstance(gtype, GraphQLObjectType), type_name
            gtype.fields[field_name].resolve = fn
        for type_name in data_types:  # a field the schema has and the reference does not answer is a gap
            gtype = self.schema.get_type(type_name)
            assert isinstance(gtype, GraphQLObjectType)
            missing = sorted(set(gtype.fields) - {f for t, f in resolvers if t == type_name})
            assert not missing, f"the reference does not resolve {type_name}.{missing}"

    def _dataset_resolvers(self, ds: Dataset, out: dict[tuple[str, str], Resolver]) -> None:
        t = ds.graphql.type
        table = self.tables[ds.code]
        for f in ds.fields:
            out[(t, f.graphql_name)] = (lambda c: lambda row, _info: row[c])(f.name)
        for rel in ds.relations:
            (mine, theirs), = rel.join.items()
            target = self.catalog.datasets[rel.target]
            out[(t, rel.name)] = self._follow(target, theirs, lambda row, c=mine: row[c], rel.many)
        for lk in self.catalog.links_of_dataset(ds.code):
            # The entity whose key is this record's key field (null when the field is).
            out[(t, lk.back_field)] = (lambda c: lambda row, _info: row[c])(lk.field)

        def page(_root: Any, _info: Any, filter: Any = None, limit: int | None = None,
                 after: str | None = None) -> Row:
            limit = self.default_limit if limit is None else limit
            rows: Iterable[Row] = table.rows
            if after is not None:
                try:
                    last = self.open_cursor(after, ds.code)
                except ValueError as exc:
                    raise GraphQLError(f"after: {exc}") from None
                rows = [r for r in rows if r[ds.primary_key] > last]
            matching = self._keep(rows, self._conditions(ds, filter), None)
            if limit < 0:
                raise GraphQLError(f"limit must not be negative, got {limit}")
            nodes = matching[:limit]
            end = None
            if nodes:
                value = nodes[-1][ds.primary_key]
                end = CURSOR_MARK + ds.code + "\x00" + json.dumps(
                    value.isoformat() if isinstance(value, date | datetime) else
                    str(value) if isinstance(value, Decimal) else value)
            return {"nodes": nodes, "pageInfo": {"hasNextPage": len(matching) > limit, "endCursor": end}}

        out[("Query", ds.graphql.list)] = page
        out[(f"{t}Page", "nodes")] = lambda p, _info: p["nodes"]
        out[(f"{t}Page", "pageInfo")] = lambda p, _info: p["pageInfo"]

    def _follow(self, target: Dataset, column: str, key_of: Callable[[Any], Any], many: bool) -> Resolver:
        """Records of ``target`` whose ``column`` equals the parent's key: a list (filter, limit) or one."""
        table = self.tables[target.code]
        if many:
            def records(parent: Any, _info: Any, filter: Any = None, limit: int | None = None) -> list[Row]:
                return self._keep(table.where(column, key_of(parent)), self._conditions(target, filter), limit)
            return records

        def record(parent: Any, _info: Any) -> Row | None:
            found = table.where(column, key_of(parent))
            return found[0] if found else None
        return record

    def _entity_resolvers(self, ent: Entity, out: dict[tuple[str, str], Resolver]) -> None:
        t = ent.graphql.type
        arg = ent.graphql.argument
        out[(t, arg)] = lambda key, _info: key  # an entity object is its key
        for lk in self.catalog.links_of_entity(ent.code):
            out[(t, lk.entity_field)] = self._follow(self.catalog.datasets[lk.dataset], lk.field, lambda key: key,
                                                     not lk.unique)

        def one(_root: Any, _info: Any, **args: Any) -> str:
            return _normalise_key(ent.key, args[arg], arg)

        def many(_root: Any, _info: Any, **args: Any) -> list[str]:
            return [_normalise_key(ent.key, v, f"{arg}s[{i}]") for i, v in enumerate(args[f"{arg}s"])]

        out[("Query", ent.graphql.one)] = one
        out[("Query", ent.graphql.many)] = many

    def _verify(self, _root: Any, _info: Any, claim: dict[str, Any], id_number: str | None = None,
                credit_code: str | None = None) -> bool:
        """True when the subject has a record in the claim's dataset satisfying the claim."""
        given = [(a, v) for a, v in (("idNumber", id_number), ("creditCode", credit_code)) if v is not None]
        if len(given) != 1:
            raise GraphQLError("verify: give exactly one of idNumber or creditCode")
        (arg, raw), = given
        ent = next(e for e in self.catalog.entities.values() if e.graphql.argument == arg)
        subject = _normalise_key(ent.key, raw, arg)
        type_name, _, field_name = str(claim["field"]).partition(".")
        ds = next((d for d in self.catalog.datasets.values() if d.graphql.type == type_name), None)
        spec = next((f for f in ds.fields if f.graphql_name == field_name), None) if ds else None
        if ds is None or spec is None:
            raise GraphQLError(f"verify: {claim['field']} is not a dataset field")
        links = [lk for lk in self.catalog.links_of_dataset(ds.code) if lk.entity == ent.code]
        if len(links) != 1:
            raise GraphQLError(f"verify: {type_name} is not linked exactly once to {ent.code}")
        ops = [(_OP_NAMES.get(k, k), v) for k, v in claim.items() if k != "field" and v is not None]
        if len(ops) != 1:
            raise GraphQLError("verify: give exactly one operator")
        (op, value), = ops
        try:
            if op == "in":
                value = [coerce(v, spec.type) for v in value]
            elif op != "isNull":
                value = coerce(value, spec.type)
        except (ValueError, ArithmeticError):
            raise GraphQLError(f"verify: the claim's value is not a {spec.type.value}") from None
        records = self.tables[ds.code].where(links[0].field, subject)
        return any(_holds(r[spec.name], op, value) for r in records)
