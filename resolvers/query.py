"""What a fetch asks of a source: the pushed-down query, independent of the source's kind.

The planner builds a :class:`SourceQuery` per fetch; a connector translates it into one
parameterised SQL statement or one REST request (per batch of keys). Nothing here holds
data values as SQL text: values travel as parameters only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from catalog.model import DataType

__all__ = ["Condition", "Op", "SourceQuery"]


class Op(StrEnum):
    EQ = "eq"
    NE = "ne"
    IN = "in"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    PREFIX = "prefix"
    IS_NULL = "isNull"


@dataclass(frozen=True, slots=True)
class Condition:
    column: str
    op: Op
    value: Any  # a list for IN, a bool for IS_NULL

    def describe(self) -> str:
        """Shape of the condition for plans and logs: never the value (it may be personal data)."""
        return f"{self.column} {self.op.value} ?"


@dataclass(frozen=True, slots=True)
class SourceQuery:
    dataset: str
    location: str  # table, or endpoint path below the REST base URL
    columns: tuple[str, ...]  # only what the request needs (plus join and ordering columns)
    types: dict[str, DataType]  # catalogue types of the columns, for binding and decoding
    conditions: tuple[Condition, ...] = ()
    key_column: str | None = None  # batched join: key_column IN keys
    keys: tuple[Any, ...] | None = None
    order_by: str | None = None  # ascending; also the keyset pagination column
    after: Any = None  # keyset cursor: order_by > after
    limit: int | None = None  # rows in all
    limit_per_key: int | None = None  # rows per key value (nested lists)

    @property
    def matches_nothing(self) -> bool:
        """An empty key list or ``in: []`` can match no row: connectors answer without asking the source."""
        return (self.keys is not None and not self.keys) or any(
            c.op is Op.IN and not c.value for c in self.conditions)
