"""Opaque keyset cursors: the dataset and its last record's ordering value, base64url JSON.

The dataset code is inside so that a cursor from one list is refused by another instead of
paging from a wrong place.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from catalog.model import DataType

__all__ = ["decode_cursor", "encode_cursor"]

_INT_RANGE = range(-(2**63), 2**63)  # what every SQL backend can bind


def encode_cursor(dataset: str, value: Any) -> str:
    if isinstance(value, date | datetime):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    raw = json.dumps([dataset, value], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, dataset: str, data_type: DataType) -> Any:
    """The ordering value inside ``cursor``; ValueError if it is not one of ours for ``dataset``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        owner, value = json.loads(raw)
        if owner != dataset:
            raise ValueError(f"this cursor belongs to another list ({owner}): use the endCursor of this one")
        match data_type:
            case DataType.DATE if isinstance(value, str):
                return date.fromisoformat(value)
            case DataType.DATETIME if isinstance(value, str):
                return datetime.fromisoformat(value)
            case DataType.DECIMAL if isinstance(value, str):
                return Decimal(value)
            case DataType.INTEGER if isinstance(value, int) and not isinstance(value, bool) and value in _INT_RANGE:
                return value
            case DataType.FLOAT if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            case DataType.STRING if isinstance(value, str):
                return value
    except ValueError as exc:
        if "another list" in str(exc):
            raise
    except (binascii.Error, TypeError, UnicodeDecodeError, InvalidOperation):
        pass
    raise ValueError("not a cursor returned by this gateway: pass pageInfo.endCursor unchanged")
