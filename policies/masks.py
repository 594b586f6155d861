"""Masks: how a field is shown to a caller allowed only ``read_masked``.

The set follows Apache Ranger's mask types, plus two that local government needs
daily: ID numbers (keep region and last four) and Chinese names (keep the surname).
Each mask is a pure function of the value, applied after fetching and before the
response is shaped, so a masked value never leaves the gateway in clear.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from catalog.model import DataType

__all__ = ["MASKS", "Mask"]

_TEXT = frozenset({DataType.STRING})
_ANY = frozenset(DataType)


@dataclass(frozen=True, slots=True)
class Mask:
    name: str
    description: str
    types: frozenset[DataType]
    apply: Callable[[Any], Any]

    def accepts(self, data_type: DataType) -> bool:
        return data_type in self.types

    def __call__(self, value: Any) -> Any:
        return None if value is None else self.apply(value)


def _redact(v: Any) -> str:
    return "".join("X" if c.isupper() else "x" if c.islower() else "0" if c.isdigit() else
                   ("*" if not c.isascii() and c.isalpha() else c) for c in str(v))


def _keep(first: int, last: int) -> Callable[[Any], str]:
    def mask(v: Any) -> str:
        s = str(v)
        if len(s) <= first + last:
            return "*" * len(s)
        return s[:first] + "*" * (len(s) - first - last) + s[len(s) - last:]
    return mask


def _hash(v: Any) -> str:
    return hashlib.sha256(str(v).encode()).hexdigest()[:16]


def _year(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return date(v.year, 1, 1)
    return f"{str(v)[:4]}-01-01"


def _name(v: Any) -> str:
    s = str(v)
    return s[:1] + "*" * (len(s) - 1) if len(s) > 1 else "*"


MASKS: dict[str, Mask] = {m.name: m for m in (
    Mask("none", "shown as stored (MASK_NONE)", _ANY, lambda v: v),
    Mask("null", "always null (MASK_NULL)", _ANY, lambda v: None),
    Mask("redact", "letters to x/X, digits to 0, other scripts to * (MASK)", _TEXT, _redact),
    Mask("show_last_4", "all but the last four characters hidden", _TEXT, _keep(0, 4)),
    Mask("show_first_4", "all but the first four characters hidden", _TEXT, _keep(4, 0)),
    Mask("hash", "a SHA-256 digest prefix: equal values stay comparable", _TEXT, _hash),
    Mask("date_year", "a date reduced to 1 January of its year", frozenset({DataType.DATE, DataType.DATETIME}),
         _year),
    Mask("id_number", "ID number: region code and last four kept", _TEXT, _keep(6, 4)),
    Mask("name", "personal name: surname kept", _TEXT, _name),
    Mask("phone", "phone number: first three and last four kept", _TEXT, _keep(3, 4)),
)}
