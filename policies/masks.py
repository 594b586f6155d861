"""Masks: how a field is shown to a caller allowed only ``read_masked``.

The set follows Apache Ranger's mask types, plus what local government needs daily: ID
numbers (region and last four kept), phone numbers, Chinese names (surname kept), amounts
rounded to a band, and a keyed hash (HMAC) so that masked values still join across
departments without being reversible by anyone who lacks the gateway's key. Masks keep
the field's type, so a masked field still fits the schema. A masked value is computed in
the gateway, after fetching and before shaping: it never leaves the gateway in clear.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from catalog.model import DataType

__all__ = ["MASKS", "Mask", "Masker", "mask_for", "mask_rank"]

_TEXT = frozenset({DataType.STRING})
_NUMBERS = frozenset({DataType.INTEGER, DataType.FLOAT, DataType.DECIMAL})
_ANY = frozenset(DataType)


@dataclass(frozen=True, slots=True)
class Mask:
    name: str
    description: str
    types: frozenset[DataType]
    apply: Callable[[Any], Any]  # value (never None) -> masked value of the same type
    keyed: Callable[[bytes], Callable[[Any], Any]] | None = None  # or, for a keyed mask, key -> apply

    def accepts(self, data_type: DataType) -> bool:
        return data_type in self.types

    def bind(self, key: bytes) -> Callable[[Any], Any]:
        """The mask as a function of the value alone, the key bound where it needs one."""
        return self.keyed(key) if self.keyed is not None else self.apply


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


def hmac_hex(key: bytes) -> Callable[[bytes], str]:
    """HMAC-SHA256 (RFC 2104) with ``key``, hex: the keyed inner and outer SHA-256 states are
    computed once and copied per message, which costs half of ``hmac.new`` per value (the same
    digest; the tests compare them)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in key))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in key))

    def digest(message: bytes) -> str:
        i = inner.copy()
        i.update(message)
        o = outer.copy()
        o.update(i.digest())
        return o.hexdigest()

    return digest


def _hmac(key: bytes) -> Callable[[Any], str]:
    # Keyed: equal values give equal digests (they still join), but without the key nobody can
    # test a guess (an ID number has few enough possibilities to brute-force a plain hash).
    digest = hmac_hex(key)
    return lambda v: digest(str(v).encode())[:24]


def _needs_key(_: Any) -> Any:
    raise TypeError("a keyed mask needs the key: use Masker, or Mask.bind(key)")


def _year(v: Any) -> Any:
    if isinstance(v, datetime):
        return datetime(v.year, 1, 1, tzinfo=v.tzinfo)
    if isinstance(v, date):
        return date(v.year, 1, 1)
    return f"{str(v)[:4]}-01-01"


# The common two-character surnames (复姓): their bearers keep both characters.
_COMPOUND_SURNAMES = frozenset({
    "欧阳", "司马", "上官", "诸葛", "东方", "皇甫", "尉迟", "公孙", "慕容", "长孙", "宇文",
    "司徒", "令狐", "夏侯", "端木", "独孤", "南宫", "西门", "轩辕", "呼延", "万俟", "闻人",
    "澹台", "公冶", "宗政", "濮阳", "淳于", "单于", "太叔", "申屠", "钟离", "赫连", "拓跋",
})


def _name(v: Any) -> str:
    s = str(v)
    keep = 2 if s[:2] in _COMPOUND_SURNAMES and len(s) > 2 else 1
    return s[:keep] + "*" * (len(s) - keep) if len(s) > keep else "*" * len(s)


def _band(v: Any) -> Any:
    if isinstance(v, Decimal):
        return (v // 1000) * 1000
    return type(v)(math.floor(v / 1000) * 1000)


MASKS: dict[str, Mask] = {m.name: m for m in (
    Mask("none", "shown as stored (MASK_NONE)", _ANY, lambda v: v),
    Mask("null", "always null (MASK_NULL)", _ANY, lambda v: None),
    Mask("redact", "letters to x/X, digits to 0, other scripts to * (MASK)", _TEXT, _redact),
    Mask("show_last_4", "all but the last four characters hidden", _TEXT, _keep(0, 4)),
    Mask("show_first_4", "all but the first four characters hidden", _TEXT, _keep(4, 0)),
    Mask("hash", "keyed hash (HMAC-SHA256): equal values stay equal, so masked values still join", _TEXT,
         _needs_key, keyed=_hmac),
    Mask("date_year", "a date reduced to 1 January of its year", frozenset({DataType.DATE, DataType.DATETIME}),
         _year),
    Mask("id_number", "ID number: region code and last four kept", _TEXT, _keep(6, 4)),
    Mask("name", "personal name: surname kept", _TEXT, _name),
    Mask("phone", "phone number: first three and last four kept", _TEXT, _keep(3, 4)),
    Mask("round_1000", "amount rounded down to a band of 1,000", _NUMBERS, _band),
)}

_PARAMETRISED = re.compile(r"^show_(first|last)_([1-9][0-9]?)$")


def mask_for(name: str) -> Mask | None:
    """The mask called ``name``: one of MASKS, or show_first_N / show_last_N for any N from 1 to 99."""
    if name in MASKS:
        return MASKS[name]
    m = _PARAMETRISED.match(name)
    if m is None:
        return None
    n = int(m.group(2))
    keep = _keep(n, 0) if m.group(1) == "first" else _keep(0, n)
    return Mask(name, f"all but the {m.group(1)} {n} characters hidden", _TEXT, keep)


# From the strictest (shows nothing) to the loosest (shows everything). Masks that keep characters
# rank by how many they keep, so show_last_4 (4) is stricter than phone (3 + 4) and id_number (6 + 4),
# and a surname (about one character) is stricter than show_first_2.
_SHOWN = 4  # rank of a mask that keeps 0 characters; one more per character kept
_RANK = {"null": 0, "hash": 1, "redact": 2, "name": _SHOWN + 1, "date_year": _SHOWN + 1, "round_1000": _SHOWN + 1,
         "phone": _SHOWN + 7, "id_number": _SHOWN + 10, "none": 1000}


def mask_rank(name: str) -> int:
    m = _PARAMETRISED.match(name)
    return _SHOWN + int(m.group(2)) if m else _RANK.get(name, 500)


class Masker:
    """Applies masks with the gateway's HMAC key (from configuration, never from the catalogue)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the masking key must be at least 16 bytes")
        self._key = key
        # Each mask resolved once, its key bound: shaping masks every value of a column, and looking
        # the mask up (a regex for show_N) and keying a new HMAC per value cost more than masking.
        self._fns: dict[str, Callable[[Any], Any]] = {}

    def apply(self, name: str, value: Any) -> Any:
        if value is None:
            return None
        return self.function(name)(value)

    def function(self, name: str) -> Callable[[Any], Any]:
        """The mask ``name`` with the key bound: value (never None) -> masked value."""
        fn = self._fns.get(name)
        if fn is None:
            fn = self._fns[name] = self._resolve(name)
        return fn

    def _resolve(self, name: str) -> Callable[[Any], Any]:
        mask = mask_for(name)
        if mask is None:
            raise KeyError(name)
        return mask.bind(self._key)
