"""One SQL statement per *shape* of source query, built once and reused with new parameters.

A :class:`SourceQuery` has a shape (table, columns, which conditions on which columns, whether
keys, a cursor, limits are given) and values (the condition values, the keys, the cursor, the
limits). Requests of one kind repeat the same few shapes with different values, so the shape's
``SELECT`` is built once with named bind parameters and kept: SQLAlchemy then finds its compiled
form under the statement's memoised cache key, and each request only binds values. Building the
statement per fetch cost more than the database took to answer a keyed lookup (measured:
select() building and cache-key generation were a sixth of the gateway's CPU per request).

Keys of a batched join are one parameter whatever their number where the database can take a
list: a PostgreSQL array (``= ANY(:keys)``) or, on SQLite, a JSON array read by ``json_each``. One
statement then serves 1 or 5,000 keys (PostgreSQL prepares it once), instead of one expanded
``IN (?, ?, ...)`` per key count. MySQL/MariaDB, which has no array parameter, gets the expanding
``IN``. Values are always parameters: nothing but catalogue identifiers is ever part of the SQL.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from catalog.model import DataType
from resolvers.query import Condition, Op, SourceQuery

__all__ = ["StatementCache", "sa_type"]

_TYPES: dict[DataType, Any] = {
    DataType.STRING: sa.String(),
    DataType.INTEGER: sa.Integer(),
    DataType.FLOAT: sa.Float(),
    DataType.DECIMAL: sa.Numeric(asdecimal=True),
    DataType.BOOLEAN: sa.Boolean(),
    DataType.DATE: sa.Date(),
    DataType.DATETIME: sa.DateTime(),
}

# Text comparisons mean the same on every source: exact, case and trailing spaces included.
# MySQL/MariaDB tables usually carry a case-insensitive, space-padding collation (utf8mb4_general_ci):
# their text columns are compared under a binary one that does not pad.
_EXACT_COLLATION = {"mysql": "utf8mb4_nopad_bin", "mariadb": "utf8mb4_nopad_bin"}

# Key types a JSON array carries without loss into SQLite's json_each (text and integers); other
# key types use the expanding IN there.
_JSON_KEY_TYPES = frozenset({DataType.STRING, DataType.INTEGER})
# Shapes kept per source: a request kind has a handful; generated queries could make many.
_MAX_SHAPES = 512


def sa_type(data_type: DataType) -> Any:
    return _TYPES[data_type]


@dataclass(frozen=True, slots=True)
class _Shape:
    """Everything about a query that changes its SQL text, and nothing that does not."""

    location: str
    columns: tuple[str, ...]
    types: tuple[tuple[str, DataType], ...]
    conditions: tuple[tuple[str, Op, bool | None], ...]  # IS_NULL's value decides IS NULL / IS NOT NULL
    key_column: str | None
    keyed: bool
    order_by: str | None
    after: bool
    limit: bool
    limit_per_key: bool


def _shape(query: SourceQuery, keyed: bool) -> _Shape:
    return _Shape(query.location, query.columns, tuple(query.types.items()),
                  tuple((c.column, c.op, c.value if c.op is Op.IS_NULL else None) for c in query.conditions),
                  query.key_column, keyed, query.order_by, query.after is not None, query.limit is not None,
                  query.limit_per_key is not None)


class StatementCache:
    """The statements of one source, by shape (least recently used shapes dropped past a bound)."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._statements: OrderedDict[_Shape, sa.Select[Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._statements)

    def get(self, query: SourceQuery, keys: Sequence[Any] | None) -> tuple[sa.Select[Any], dict[str, Any]]:
        """The statement for ``query`` (one batch of ``keys``) and the values to bind to it."""
        keyed = keys is not None and query.key_column is not None
        shape = _shape(query, keyed)
        stmt = self._statements.get(shape)
        if stmt is None:
            stmt = self._statements[shape] = self._build(query, keyed)
            if len(self._statements) > _MAX_SHAPES:
                self._statements.popitem(last=False)
        else:
            self._statements.move_to_end(shape)
        return stmt, self._values(query, keys if keyed else None)

    # -- values -----------------------------------------------------------------------------------

    def _values(self, query: SourceQuery, keys: Sequence[Any] | None) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for i, c in enumerate(query.conditions):
            if c.op is Op.IS_NULL:
                continue
            if c.op is Op.IN:
                values[f"c{i}"] = list(c.value)
            elif c.op is Op.PREFIX:
                if self.dialect == "sqlite":
                    values[f"c{i}"], values[f"n{i}"] = c.value, len(c.value)
                else:  # LIKE with the value's own % and _ (and the escape character) escaped
                    values[f"c{i}"] = c.value.replace("/", "//").replace("%", "/%").replace("_", "/_") + "%"
            else:
                values[f"c{i}"] = c.value
        if keys is not None:
            assert query.key_column is not None
            values["keys"] = self._keys(list(keys), query.types[query.key_column])
        if query.after is not None:
            values["after"] = query.after
        if query.limit is not None:
            values["limit"] = query.limit
        if query.limit_per_key is not None:
            values["per_key"] = query.limit_per_key
        return values

    def _keys(self, keys: list[Any], data_type: DataType) -> Any:
        if self.dialect == "sqlite" and data_type in _JSON_KEY_TYPES:
            return json.dumps(keys, ensure_ascii=False)
        return keys

    # -- statements -------------------------------------------------------------------------------

    def _build(self, query: SourceQuery, keyed: bool) -> sa.Select[Any]:
        cols = {c: sa.column(c, sa_type(t)) for c, t in query.types.items()}
        schema, _, name = query.location.rpartition(".")
        table = sa.table(name, *cols.values(), schema=schema or None)
        where = [self._condition(cols[c.column], query.types[c.column], c, i) for i, c in enumerate(query.conditions)]
        if keyed:
            assert query.key_column is not None
            where.append(self._in_keys(cols[query.key_column], query.types[query.key_column]))
        if query.after is not None and query.order_by:
            where.append(cols[query.order_by] > sa.bindparam("after", type_=cols[query.order_by].type))
        order = [cols[query.order_by]] if query.order_by else []
        selected = [cols[c] for c in query.columns]

        if query.limit_per_key is not None and query.key_column:
            rank = sa.func.row_number().over(partition_by=cols[query.key_column], order_by=order or None)
            inner = sa.select(*selected, rank.label("_hutong_rank")).select_from(table).where(*where).subquery()
            stmt = sa.select(*(inner.c[c] for c in query.columns)).where(
                inner.c["_hutong_rank"] <= sa.bindparam("per_key", type_=sa.Integer()))
            if query.order_by:
                stmt = stmt.order_by(inner.c[query.order_by])
        else:
            stmt = sa.select(*selected).select_from(table).where(*where).order_by(*order)
        if query.limit is not None:
            stmt = stmt.limit(sa.bindparam("limit", type_=sa.Integer()))
        return stmt

    def _in_keys(self, col: sa.ColumnClause[Any], data_type: DataType) -> sa.ColumnElement[bool]:
        if self.dialect == "postgresql":
            return col == sa.any_(sa.bindparam("keys", type_=postgresql.ARRAY(sa_type(data_type))))
        if self.dialect == "sqlite" and data_type in _JSON_KEY_TYPES:
            each = sa.func.json_each(sa.bindparam("keys", type_=sa.String())).table_valued("value")
            return col.in_(sa.select(each.c.value))
        return col.in_(sa.bindparam("keys", expanding=True))

    def _condition(self, col: sa.ColumnClause[Any], data_type: DataType, cond: Condition,
                   i: int) -> sa.ColumnElement[bool]:
        exact = _exact(col, data_type, self.dialect)
        value = sa.bindparam(f"c{i}", type_=col.type)
        match cond.op:
            case Op.EQ:
                return exact == value
            case Op.NE:
                return exact != value
            case Op.IN:
                return exact.in_(sa.bindparam(f"c{i}", expanding=True, type_=col.type))
            case Op.LT:
                return exact < value
            case Op.LTE:
                return exact <= value
            case Op.GT:
                return exact > value
            case Op.GTE:
                return exact >= value
            case Op.PREFIX:
                if self.dialect == "sqlite":
                    # SQLite's LIKE ignores ASCII case: compare the leading characters instead (bound, exact).
                    return sa.func.substr(col, 1, sa.bindparam(f"n{i}", type_=sa.Integer())) == value
                return exact.like(value, escape="/")
            case Op.IS_NULL:
                return col.is_(None) if cond.value else col.is_not(None)
        raise ValueError(f"unsupported operator {cond.op}")


def _exact(col: sa.ColumnClause[Any], data_type: DataType, dialect: str) -> sa.ColumnElement[Any]:
    collation = _EXACT_COLLATION.get(dialect)
    return sa.collate(col, collation) if collation and data_type is DataType.STRING else col
