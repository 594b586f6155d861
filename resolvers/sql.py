"""SQL sources through SQLAlchemy's async engine (SQLite, PostgreSQL, MySQL/MariaDB).

One :class:`SourceQuery` becomes one ``SELECT`` of only the needed columns, with the
filters in ``WHERE``, ``LIMIT`` in the database, and batched joins as ``key IN (...)``
(chunked by ``max_batch`` keys). Per-parent limits on nested lists use
``ROW_NUMBER() OVER (PARTITION BY key ...)`` so that they too run in the source.
Every value is a bound parameter; identifiers come only from the validated catalogue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from catalog.model import DataType
from resolvers.base import Row
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import Condition, Op, SourceQuery

__all__ = ["SQLConnector", "sa_type"]

_TYPES: dict[DataType, Any] = {
    DataType.STRING: sa.String(),
    DataType.INTEGER: sa.Integer(),
    DataType.FLOAT: sa.Float(),
    DataType.DECIMAL: sa.Numeric(asdecimal=True),
    DataType.BOOLEAN: sa.Boolean(),
    DataType.DATE: sa.Date(),
    DataType.DATETIME: sa.DateTime(),
}


def sa_type(data_type: DataType) -> Any:
    return _TYPES[data_type]


class SQLConnector:
    kind = "sql"

    def __init__(self, code: str, url: str, *, pool_size: int = 5, timeout: float = 10.0,
                 max_batch: int = 5000) -> None:
        self.code = code
        self.timeout = timeout
        self.max_batch = max_batch
        self.statements = 0
        # AUTOCOMMIT: the gateway only reads, one statement at a time, so a BEGIN and a ROLLBACK around
        # every SELECT are round trips for nothing (measured: a fifth of a source query's cost).
        options: dict[str, Any] = {"hide_parameters": True, "pool_pre_ping": True, "isolation_level": "AUTOCOMMIT"}
        if not url.startswith("sqlite"):
            options.update(pool_size=pool_size, max_overflow=pool_size)
        # hide_parameters: SQLAlchemy puts bound values into exception text; ours may be personal data.
        self.engine: AsyncEngine = create_async_engine(url, **options)
        self.dialect = self.engine.dialect.name
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._count)

    def _count(self, *_: Any) -> None:
        self.statements += 1

    async def fetch(self, query: SourceQuery) -> list[Row]:
        if query.matches_nothing:
            return []
        if query.keys is not None:
            chunks = [query.keys[i:i + self.max_batch] for i in range(0, len(query.keys), self.max_batch)]
            parts = await asyncio.gather(*(self._run(self.select(query, chunk)) for chunk in chunks))
            return [row for part in parts for row in part]
        return await self._run(self.select(query, None))

    def select(self, query: SourceQuery, keys: Sequence[Any] | None) -> sa.Select[Any]:
        """The statement for one batch: public so that tests and `hutong plan` can show it."""
        cols = {c: sa.column(c, sa_type(query.types[c])) for c in query.types}
        schema, _, name = query.location.rpartition(".")
        table = sa.table(name, *cols.values(), schema=schema or None)
        dialect = self.engine.dialect.name
        where = [_condition(_exact(cols[c.column], query.types[c.column], dialect), c, dialect)
                 for c in query.conditions]
        if keys is not None and query.key_column:
            where.append(cols[query.key_column].in_(list(keys)))
        if query.after is not None and query.order_by:
            where.append(cols[query.order_by] > query.after)
        order = [cols[query.order_by]] if query.order_by else []
        selected = [cols[c] for c in query.columns]

        if query.limit_per_key is not None and query.key_column:
            rank = sa.func.row_number().over(partition_by=cols[query.key_column], order_by=order or None)
            inner = sa.select(*selected, rank.label("_hutong_rank")).select_from(table).where(*where).subquery()
            stmt = sa.select(*(inner.c[c] for c in query.columns)).where(
                inner.c["_hutong_rank"] <= query.limit_per_key
            )
            if query.order_by:
                stmt = stmt.order_by(inner.c[query.order_by])
        else:
            stmt = sa.select(*selected).select_from(table).where(*where).order_by(*order)
        if query.limit is not None:
            stmt = stmt.limit(query.limit)
        return stmt

    async def _run(self, stmt: sa.Select[Any]) -> list[Row]:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.engine.connect() as conn:
                    result = await conn.execute(stmt)
                    # zip over plain tuples: building a RowMapping per row costs more than the fetch.
                    keys = tuple(result.keys())
                    return [dict(zip(keys, r, strict=True)) for r in result.all()]
        except TimeoutError:
            raise SourceError(self.code, SourceFailure.TIMEOUT,
                              f"source {self.code!r} did not answer within {self.timeout:g} s") from None
        except (OperationalError, InterfaceError, OSError, ConnectionError) as exc:
            if _is_connect_failure(exc):
                raise SourceError(self.code, SourceFailure.UNAVAILABLE,
                                  f"source {self.code!r} is unavailable") from None
            raise SourceError(self.code, SourceFailure.ERROR,
                              f"source {self.code!r} failed: {_kind(exc)}") from None
        except (DBAPIError, SQLAlchemyError) as exc:
            raise SourceError(self.code, SourceFailure.ERROR,
                              f"source {self.code!r} failed: {_kind(exc)}") from None

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                async with self.engine.connect() as conn:
                    await conn.execute(sa.text("SELECT 1"))
        except TimeoutError:
            raise SourceError(self.code, SourceFailure.TIMEOUT, "no answer to SELECT 1") from None
        except Exception as exc:  # any failure means not ready; the kind is reported
            raise SourceError(self.code, SourceFailure.UNAVAILABLE, f"unavailable: {_kind(exc)}") from None

    async def close(self) -> None:
        await self.engine.dispose()


# Text comparisons mean the same on every source: exact, case and trailing spaces included.
# MySQL/MariaDB tables usually carry a case-insensitive, space-padding collation (utf8mb4_general_ci):
# their text columns are compared under a binary one that does not pad.
_EXACT_COLLATION = {"mysql": "utf8mb4_nopad_bin", "mariadb": "utf8mb4_nopad_bin"}


def _exact(col: sa.ColumnClause[Any], data_type: DataType, dialect: str) -> sa.ColumnElement[Any]:
    collation = _EXACT_COLLATION.get(dialect)
    return sa.collate(col, collation) if collation and data_type is DataType.STRING else col


def _condition(col: sa.ColumnElement[Any], cond: Condition, dialect: str = "") -> sa.ColumnElement[bool]:
    match cond.op:
        case Op.EQ:
            return col == cond.value
        case Op.NE:
            return col != cond.value
        case Op.IN:
            return col.in_(list(cond.value))
        case Op.LT:
            return col < cond.value
        case Op.LTE:
            return col <= cond.value
        case Op.GT:
            return col > cond.value
        case Op.GTE:
            return col >= cond.value
        case Op.PREFIX:
            if dialect == "sqlite":
                # SQLite's LIKE ignores ASCII case: compare the leading characters instead (bound, exact).
                return sa.func.substr(col, 1, len(cond.value)) == cond.value
            # startswith(autoescape) binds the value and escapes % and _ inside it.
            return col.startswith(cond.value, autoescape=True)
        case Op.IS_NULL:
            return col.is_(None) if cond.value else col.is_not(None)
    raise ValueError(f"unsupported operator {cond.op}")


def _is_connect_failure(exc: BaseException) -> bool:
    text = f"{type(getattr(exc, 'orig', None) or exc).__name__} {exc}".lower()
    needles = ("connect", "refused", "unable to open database", "no such host", "could not translate",
               "name or service not known", "connection", "server has gone away", "lost connection")
    return isinstance(exc, OSError | ConnectionError) or any(n in text for n in needles)


def _kind(exc: BaseException) -> str:
    """The class of the driver error: enough to diagnose, without SQL text or values."""
    orig = getattr(exc, "orig", None)
    return type(orig).__name__ if orig is not None else type(exc).__name__

