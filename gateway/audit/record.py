"""The record and its place in the chain.

A record is ``{seq, time, kind, body, prev_hash}`` plus ``hash``, where

    hash = SHA-256(bytes.fromhex(prev_hash) || canonical({seq, time, kind, body, prev_hash}))

and ``canonical`` is JSON with sorted keys, no insignificant whitespace, UTF-8 (orjson). The
first record's ``prev_hash`` is 64 zeros (``GENESIS_HASH``). A checkpoint signs
``canonical({seq, hash, time, key_id, every})`` prefixed with a domain tag, ``every`` being the
checkpoint interval its writer keeps (checkpoints of the first format, without it, still verify);
an export's end line signs its own fields (anchor, count, head, interval, time) likewise.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

__all__ = ["DERIVED_MAX", "GENESIS_HASH", "KINDS", "Derived", "Receipt", "canonical", "chain_hash",
           "check_body", "checkpoint_message", "derive", "end_message", "format_time", "parse_time"]

GENESIS_HASH = "0" * 64
# request-part: a later part of a streamed answer (gateway/stream.py), recorded before it is sent.
KINDS = ("request", "admin", "request-part")
CHECKPOINT_TAG = b"hutong-audit-checkpoint/1\x00"  # {seq, hash, time, key_id}: the first format
CHECKPOINT_TAG_2 = b"hutong-audit-checkpoint/2\x00"  # ... and every: the interval is signed too
END_TAG = b"hutong-audit-export-end/1\x00"
DERIVED_MAX = 200  # characters kept in a search column: the body keeps the whole value


@dataclass(frozen=True)
class Receipt:
    """What ``AuditWriter.append`` returns once the record is committed."""

    seq: int
    hash: str
    time: str


def canonical(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def check_body(body: Any) -> bytes:
    """The body's canonical JSON, or ValueError: a body must survive a JSON round trip exactly
    (no NaN or infinities, which orjson would write as null; string keys; integers within 64 bits)."""
    if not isinstance(body, dict):
        raise ValueError("an audit record body is a JSON object (dict)")
    _no_special_floats(body)
    try:
        return canonical(body)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise ValueError(f"an audit record body must be plain JSON: {exc}") from None


def _no_special_floats(value: Any) -> None:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError("an audit record body cannot hold NaN or infinity")
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)


def chain_hash(seq: int, time: str, kind: str, body: Any, prev_hash: str) -> str:
    content = canonical({"seq": seq, "time": time, "kind": kind, "body": body, "prev_hash": prev_hash})
    return hashlib.sha256(bytes.fromhex(prev_hash) + content).hexdigest()


def checkpoint_message(seq: int, hash_: str, time: str, key_id: str, every: int | None = None) -> bytes:
    """What a checkpoint's signature covers; with ``every`` (the writer's checkpoint interval) the
    second format, so that the interval verify holds the chain to cannot be changed either."""
    if every is None:
        return CHECKPOINT_TAG + canonical({"seq": seq, "hash": hash_, "time": time, "key_id": key_id})
    return CHECKPOINT_TAG_2 + canonical({"seq": seq, "hash": hash_, "time": time, "key_id": key_id, "every": every})


def end_message(end: dict[str, Any]) -> bytes:
    """What an export's end line's signature covers: every field of the line but its type and signature."""
    return END_TAG + canonical({k: v for k, v in end.items() if k not in ("type", "signature")})


def format_time(moment: datetime) -> str:
    """UTC, microseconds, 'Z': fixed width, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(value: str | datetime) -> str:
    """A user's time bound (ISO 8601 date or date-time; naive means UTC) in the stored format."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not an ISO 8601 date or time: {value!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_time(value)


@dataclass(frozen=True)
class Derived:
    """The search columns of a record, always recomputed from its body (verify compares them)."""

    columns: dict[str, str | None]
    subjects: frozenset[str]
    fields: frozenset[tuple[str, str, str]]


SEARCH_COLUMNS = ("client_id", "department", "acting_user", "purpose", "outcome")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else canonical(value).decode()
    return text[:DERIVED_MAX]


def derive(body: dict[str, Any]) -> Derived:
    columns = {c: _text(body.get(c)) for c in SEARCH_COLUMNS}
    subjects = body.get("subjects")
    subj = frozenset(t for t in (_text(s) for s in subjects) if t) if isinstance(subjects, list) else frozenset()
    fields: set[tuple[str, str, str]] = set()
    raw_fields = body.get("fields")
    if isinstance(raw_fields, list):
        for f in raw_fields:
            if isinstance(f, dict):
                fields.add((_text(f.get("dataset")) or "", _text(f.get("field")) or "",
                            _text(f.get("disposition")) or ""))
    return Derived(columns, subj, frozenset(fields))
