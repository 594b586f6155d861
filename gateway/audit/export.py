"""Exports that verify offline: a header (format, anchor, public keys), the checkpoints of the
range, the records in seq order, and a signed end line.

JSON Lines: one object per line, ``type`` = header | checkpoint | record | end. CSV: columns
``type, seq, time, kind, body, prev_hash, hash, key_id, signature``; the header and end rows carry
their JSON in ``body``, a checkpoint row its signed interval (``{"every": N}``). Checkpoints come
before the records, so that a file cut short still holds the checkpoints that reveal it. A range
that starts after seq 1 carries its anchor: the seq and hash its first record links to (and the
checkpoint there, if any, which signs it). The end line counts the records and names the last
one's hash, the anchor, the checkpoint interval and the time, signed with the gateway's audit key:
the export's own last checkpoint, so that a file cut after its last checkpoint (and its end line
rewritten) is detected too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import orjson

from gateway.audit.keys import AuditKeys
from gateway.audit.record import GENESIS_HASH, canonical, end_message, format_time
from gateway.audit.store import AuditStore
from gateway.audit.verify import CSV_COLUMNS, EXPORT_FORMAT, csv_text

__all__ = ["FORMATS", "export", "export_csv", "export_file", "export_jsonl", "write_object", "write_preamble"]

FORMATS = ("jsonl", "csv")


async def export(store: AuditStore, out: TextIO, fmt: str, keys: AuditKeys, *, since: str | None = None,
                 until: str | None = None, first: int | None = None, last: int | None = None,
                 checkpoint_every: int | None = None) -> int:
    """Write the records with ``since <= time < until`` (and ``first <= seq <= last``) to ``out``;
    returns how many. Times: ISO 8601, naive = UTC. ``keys`` must hold the signing key (it signs
    the end line); ``checkpoint_every``, the configured interval the end line states (default: the
    store's configured one, else the one the last checkpoint exported signs)."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    kid = keys.signing_id  # ValueError without the signing key: an export's end line is signed
    span = await store.seq_range(since, until)
    if span is not None:
        lo, hi = max(span[0], first or span[0]), min(span[1], last if last is not None else span[1])
        span = (lo, hi) if lo <= hi else None
    anchor = {"seq": 0, "hash": GENESIS_HASH}
    checkpoints: list[dict[str, Any]] = []
    if span is not None:
        async for rec in store.records(span[0], span[0], chunk=1):
            anchor = {"seq": rec["seq"] - 1, "hash": rec["prev_hash"]}
        checkpoints = await store.checkpoints(anchor["seq"], span[1])
    exported_at = format_time(datetime.now(UTC))
    header = {"type": "header", "format": EXPORT_FORMAT, "exported_at": exported_at,
              "range": {"since": since, "until": until, "first_seq": span[0] if span else None,
                        "last_seq": span[1] if span else None},
              "anchor": anchor, "keys": keys.jwks()}

    def emit(obj: dict[str, Any]) -> None:
        write_object(out, fmt, obj)

    write_preamble(out, fmt)
    emit(header)
    for cp in checkpoints:
        emit({"type": "checkpoint", **{k: cp[k] for k in ("seq", "hash", "time", "key_id", "signature")},
              **({"every": cp["every"]} if cp.get("every") is not None else {})})
    count, last_seq, last_hash = 0, anchor["seq"], anchor["hash"]
    if span is not None:
        async for rec in store.records(span[0], span[1]):
            emit({"type": "record", "seq": rec["seq"], "time": rec["time"], "kind": rec["kind"],
                  "body": orjson.loads(rec["body"]), "prev_hash": rec["prev_hash"], "hash": rec["hash"]})
            count, last_seq, last_hash = count + 1, rec["seq"], rec["hash"]
    every = checkpoint_every or store.checkpoint_every or next(
        (cp["every"] for cp in reversed(checkpoints) if cp.get("every")), None)
    end = {"type": "end", "records": count, "last_seq": last_seq if count else None, "last_hash": last_hash,
           "anchor": anchor, "every": every, "time": exported_at, "key_id": kid}
    emit({**end, "signature": keys.sign(end_message(end))})
    return count


@contextlib.contextmanager
def export_file(path: Path) -> Iterator[TextIO]:
    """A file written whole or not at all: written beside it as ``.NAME.partial`` (owner-only),
    flushed to disk and renamed into place; on any failure the partial file is removed."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
        with open(fd, "w", encoding="utf-8", newline="") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_preamble(out: TextIO, fmt: str) -> None:
    """What a file starts with before its first object: the CSV column names."""
    if fmt == "csv":
        out.write(",".join(CSV_COLUMNS) + "\n")


def write_object(out: TextIO, fmt: str, obj: dict[str, Any]) -> None:
    """One header, checkpoint, record or end object as a line of ``fmt``."""
    if fmt == "jsonl":
        out.write(orjson.dumps(obj).decode() + "\n")
    elif obj["type"] in ("header", "end"):
        out.write(csv_text({"type": obj["type"], "body": canonical({k: v for k, v in obj.items()
                                                                    if k != "type"}).decode()}))
    elif obj["type"] == "record":
        out.write(csv_text({**obj, "body": canonical(obj["body"]).decode()}))
    elif "every" in obj:  # a checkpoint of the second format: its interval in the body column
        out.write(csv_text({**obj, "body": canonical({"every": obj["every"]}).decode()}))
    else:
        out.write(csv_text(obj))


async def export_jsonl(store: AuditStore, out: TextIO, keys: AuditKeys, since: str | None = None,
                       until: str | None = None) -> int:
    return await export(store, out, "jsonl", keys, since=since, until=until)


async def export_csv(store: AuditStore, out: TextIO, keys: AuditKeys, since: str | None = None,
                     until: str | None = None) -> int:
    return await export(store, out, "csv", keys, since=since, until=until)
