"""Text to catalogue types: for values written as strings (policy row rules, verify claims)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from catalog.model import DataType

__all__ = ["coerce"]


def _bool(text: str) -> bool:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    raise ValueError("expected true or false")


_FROM_TEXT: dict[DataType, Any] = {
    DataType.STRING: str,
    DataType.INTEGER: int,
    DataType.FLOAT: float,
    DataType.DECIMAL: Decimal,
    DataType.BOOLEAN: _bool,
    DataType.DATE: date.fromisoformat,
    DataType.DATETIME: datetime.fromisoformat,
}


def coerce(text: str, data_type: DataType) -> Any:
    """``text`` read as ``data_type``; ValueError (or decimal's ArithmeticError) when it is not one."""
    return _FROM_TEXT[data_type](text)
