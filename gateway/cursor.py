"""Opaque keyset cursors: the last record's ordering value, encrypted.

A cursor carries the primary key of the last record of a page, which may be a field the
caller may not read (an ID number). So it is sealed with AES-GCM under a key derived from
the gateway's secret, with the dataset code as associated data: the client can pass it
back, but cannot read it, forge it, or use one list's cursor on another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from catalog.model import DataType

__all__ = ["CursorCodec"]

_INT_RANGE = range(-(2**63), 2**63)  # what every SQL backend can bind
_FOREIGN = "not a cursor this gateway returned for this list: pass pageInfo.endCursor of the same list unchanged"


class CursorCodec:
    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the gateway's secret, so cursors and masks never share one.
        self._aead = AESGCM(hashlib.sha256(b"hutong cursor v1\0" + secret).digest())

    def encode(self, dataset: str, value: Any) -> str:
        if isinstance(value, date | datetime):
            value = value.isoformat()
        elif isinstance(value, Decimal):
            value = str(value)
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, json.dumps([value], separators=(",", ":")).encode(), dataset.encode())
        return base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")

    def decode(self, cursor: str, dataset: str, data_type: DataType) -> Any:
        """The ordering value inside ``cursor``; ValueError if it is not one of ours for ``dataset``."""
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            (value,) = json.loads(self._aead.decrypt(raw[:12], raw[12:], dataset.encode()))
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
        except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, InvalidOperation, InvalidTag):
            pass
        raise ValueError(_FOREIGN)
