"""Opaque keyset cursors: the last record's ordering value, base64url-encoded JSON."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from catalog.model import DataType

__all__ = ["decode_cursor", "encode_cursor"]


def encode_cursor(value: Any) -> str:
    if isinstance(value, date | datetime):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    raw = json.dumps([value], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, data_type: DataType) -> Any:
    """The ordering value inside ``cursor``; ValueError if it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        (value,) = json.loads(raw)
        match data_type:
            case DataType.DATE:
                return date.fromisoformat(value)
            case DataType.DATETIME:
                return datetime.fromisoformat(value)
            case DataType.DECIMAL:
                return Decimal(value)
            case DataType.INTEGER if isinstance(value, int) and not isinstance(value, bool):
                return value
            case DataType.FLOAT if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            case DataType.STRING if isinstance(value, str):
                return value
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise ValueError("not a cursor returned by this gateway: pass pageInfo.endCursor unchanged")
