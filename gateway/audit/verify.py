"""Checking the chain and its checkpoints, in the live store or in an export file.

Records are read in stored order (seq order in the store, line order in a file) and each is
checked against its own hash and its link to the one before; the first anomaly is classified
(see docs/audit.md, "Kinds of damage"). Then every checkpoint is checked: a valid signature by
a trusted key, and the hash of the record it names. Verification stops at the first damage.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.keys import AuditKeys, public_key_from_jwk
from gateway.audit.record import GENESIS_HASH, chain_hash, checkpoint_message, derive
from gateway.audit.store import AuditStore

__all__ = ["DAMAGE_KINDS", "ExportFormatError", "Report", "read_export", "read_objects", "verify_file", "verify_store"]

DAMAGE_KINDS = ("changed", "deleted", "inserted", "reordered", "truncated", "bad_checkpoint")
EXPORT_FORMAT = "hutong-audit-export/1"
CSV_COLUMNS = ("type", "seq", "time", "kind", "body", "prev_hash", "hash", "key_id", "signature")


class ExportFormatError(ValueError):
    pass


@dataclass
class Report:
    ok: bool
    records: int
    checkpoints: int
    first_bad_seq: int | None = None
    damage: str | None = None
    detail: str = ""
    first_seq: int | None = None
    last_seq: int | None = None
    anchor_seq: int = 0
    key_ids: list[str] = field(default_factory=list)  # the keys that signed the checkpoints checked
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Damage(Exception):
    def __init__(self, kind: str, seq: int | None, detail: str) -> None:
        super().__init__(detail)
        self.kind, self.seq, self.detail = kind, seq, detail


@dataclass
class _Lookups:
    """Where a hash or a seq is found elsewhere in the chain: asked only once damage is seen."""

    seq_of_hash: Callable[[str], Awaitable[int | None]]
    seq_of_successor: Callable[[str], Awaitable[int | None]]
    seq_later: Callable[[int, int, int], Awaitable[int | None]]  # (lo, hi, after_position) -> a seq in [lo, hi]


def _self_ok(rec: dict[str, Any], seq: int | None = None) -> bool:
    try:
        return chain_hash(rec["seq"] if seq is None else seq, rec["time"], rec["kind"], rec["body"],
                          rec["prev_hash"]) == rec["hash"]
    except (TypeError, ValueError, KeyError):
        return False


async def _walk(records: AsyncIterator[dict[str, Any]], anchor: tuple[int, str], lookups: _Lookups,
                want: set[int], check_index: bool) -> tuple[int, int | None, int | None, dict[int, str]]:
    """Check every record; returns (count, first seq, last seq, {seq: hash} for the seqs in ``want``)."""
    anchor_seq, anchor_hash = anchor
    prev_seq, prev_hash = anchor
    count, first, position = 0, None, 0
    hashes: dict[int, str] = {}
    async for rec in records:
        position += 1
        seq = rec.get("seq")
        if not isinstance(seq, int) or not all(isinstance(rec.get(k), str) for k in ("time", "kind", "prev_hash",
                                                                                     "hash")):
            raise _Damage("changed", seq if isinstance(seq, int) else prev_seq + 1,
                          f"record after seq {prev_seq} is malformed")
        if "_bad_body" in rec:
            raise _Damage("changed", seq, f"record {seq}: its body is not JSON")
        if seq == prev_seq and count:
            raise _Damage("inserted", seq, f"two records claim seq {seq}: one was inserted")
        if seq <= prev_seq:
            raise _Damage("reordered", seq, f"record {seq} comes after record {prev_seq}")
        if not _self_ok(rec):
            await _renumbered_or_changed(rec, anchor, lookups)
        if seq > prev_seq + 1:
            later = await lookups.seq_later(prev_seq + 1, seq - 1, position)
            if later is not None:
                raise _Damage("reordered", prev_seq + 1,
                              f"record {later} comes after record {seq}: records are out of order")
            gone = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1} to {seq - 1}"
            raise _Damage("deleted", prev_seq + 1, f"record(s) {gone} are missing (the chain jumps from "
                                                   f"{prev_seq} to {seq})")
        if rec["prev_hash"] != prev_hash:
            target = await lookups.seq_of_hash(rec["prev_hash"])
            if target is not None and target != prev_seq:
                raise _Damage("inserted", seq, f"record {seq} is self-consistent but links to record {target}, "
                                               f"not to {prev_seq}: it was inserted (forged)")
            if count == 0:
                raise _Damage("changed", seq, f"record {seq} does not link to the anchor (seq {anchor_seq}, "
                                              f"{anchor_hash[:12]}…)")
            raise _Damage("changed", prev_seq, f"record {seq} links to a hash no record has: record {prev_seq} "
                                               "was rewritten with a recomputed hash (or record "
                                               f"{seq} was forged)")
        if check_index:
            d = derive(rec["body"])
            if ({k: rec.get(k) for k in d.columns} != d.columns or rec.get("_subjects") != set(d.subjects)
                    or rec.get("_fields") != set(d.fields)):
                raise _Damage("changed", seq, f"record {seq}: its search columns or subject/field index "
                                              "disagree with its body")
        if seq in want:
            hashes[seq] = rec["hash"]
        first = seq if first is None else first
        prev_seq, prev_hash = seq, rec["hash"]
        count += 1
    return count, first, (prev_seq if count else None), hashes


async def _renumbered_or_changed(rec: dict[str, Any], anchor: tuple[int, str], lookups: _Lookups) -> None:
    """A record whose hash does not match: is its content intact under another seq number?"""
    seq = rec["seq"]
    target = None if rec["prev_hash"] == anchor[1] else await lookups.seq_of_hash(rec["prev_hash"])
    candidates = [seq + 1, seq - 1]
    if rec["prev_hash"] == anchor[1]:
        candidates.append(anchor[0] + 1)
    if target is not None:
        candidates.append(target + 1)
    successor = await lookups.seq_of_successor(rec["hash"])
    if successor is not None:
        candidates.append(successor - 1)
    for c in dict.fromkeys(candidates):
        if c >= 1 and c != seq and _self_ok(rec, c):
            if target is None and rec["prev_hash"] != anchor[1]:
                raise _Damage("deleted", seq, f"the record now numbered {seq} was written as {c} and links to a "
                                              "record that is gone: records were deleted and the rest renumbered")
            if c < seq:
                raise _Damage("inserted", (target + 1) if target is not None else seq - 1,
                              f"the record now numbered {seq} was written as {c}: records were inserted before "
                              "it and the rest renumbered")
            raise _Damage("reordered", seq, f"the record now numbered {seq} was written as {c}: "
                                            "records were swapped or moved")
    raise _Damage("changed", seq, f"record {seq} does not match its hash: its content was changed")


def _check_checkpoints(checkpoints: list[dict[str, Any]], keys: AuditKeys, anchor: tuple[int, str],
                       first: int | None, last: int | None, hashes: dict[int, str], report: Report) -> None:
    used: set[str] = set()
    for cp in checkpoints:
        seq = cp["seq"]
        if cp["key_id"] not in keys.trusted:
            raise _Damage("bad_checkpoint", seq, f"checkpoint {seq} is signed by key {cp['key_id']}, which is not "
                                                 "trusted: the chain may have been rewritten and re-signed")
        if not keys.verify(cp["key_id"], checkpoint_message(seq, cp["hash"], cp["time"], cp["key_id"]),
                           cp["signature"]):
            raise _Damage("bad_checkpoint", seq, f"checkpoint {seq}: the signature is not valid")
        used.add(cp["key_id"])
        if seq == anchor[0] and (first is None or seq < first):
            if cp["hash"] != anchor[1]:
                raise _Damage("bad_checkpoint", seq, f"the anchor checkpoint {seq} signs another hash than the "
                                                     "one the chain starts from")
            continue
        if first is not None and seq < first:
            continue
        if last is None or seq > last:
            end = last if last is not None else anchor[0]
            raise _Damage("truncated", end + 1, f"checkpoint {seq} signs a record after the chain's end (seq "
                                                f"{end}): records {end + 1} to at least {seq} are gone")
        if hashes.get(seq) != cp["hash"]:
            raise _Damage("bad_checkpoint", seq, f"checkpoint {seq} signs another hash than record {seq} has: "
                                                 "the chain was rewritten")
    report.key_ids = sorted(used)
    if anchor[0] > 0 and not any(cp["seq"] == anchor[0] for cp in checkpoints):
        report.warnings.append(f"the chain starts after seq {anchor[0]} without a checkpoint there: its anchor "
                               "is not signed")
    signed = max((cp["seq"] for cp in checkpoints), default=anchor[0] if anchor[0] else 0)
    if last is not None and last > signed:
        report.warnings.append(f"records {signed + 1} to {last} are after the last checkpoint: they are chained "
                               "but not yet signed")


async def _verify(records: AsyncIterator[dict[str, Any]], checkpoints: list[dict[str, Any]], keys: AuditKeys,
                  anchor: tuple[int, str], lookups: _Lookups, *, check_index: bool = False,
                  trailer: Callable[[Report], None] | None = None) -> Report:
    report = Report(ok=False, records=0, checkpoints=len(checkpoints), anchor_seq=anchor[0])
    want = {cp["seq"] for cp in checkpoints}
    try:
        count, first, last, hashes = await _walk(records, anchor, lookups, want, check_index)
        report.records, report.first_seq, report.last_seq = count, first, last
        _check_checkpoints(checkpoints, keys, anchor, first, last, hashes, report)
        if trailer is not None:
            trailer(report)
    except _Damage as d:
        report.damage, report.first_bad_seq, report.detail = d.kind, d.seq, d.detail
        return report
    report.ok = True
    span = f"records {report.first_seq} to {report.last_seq}" if count else "no records"
    report.detail = f"{span}: chain intact, {len(checkpoints)} checkpoint(s) valid"
    return report


# --- the live store ----------------------------------------------------------------------------------


async def verify_store(store: AuditStore, public_keys: AuditKeys) -> Report:
    """Verify the whole chain in ``store`` against the trusted keys of ``public_keys``."""
    checkpoints = await store.checkpoints()
    first = None
    async for rec in store.records(chunk=1):
        first = rec["seq"]
        break
    anchor = (0, GENESIS_HASH)
    if first is not None and first > 1:  # pruned: the chain starts from the checkpoint just before it
        cp = next((c for c in checkpoints if c["seq"] == first - 1), None)
        if cp is not None:
            anchor = (cp["seq"], cp["hash"])

    async def rows() -> AsyncIterator[dict[str, Any]]:
        async for row in store.records(with_index=True):
            try:
                row["body"] = orjson.loads(row["body"])
            except orjson.JSONDecodeError:
                row["_bad_body"] = True
            yield row

    async def no_later(_lo: int, _hi: int, _pos: int) -> int | None:
        return None  # the store is read in seq order: a missing seq is nowhere later

    return await _verify(rows(), checkpoints, public_keys, anchor,
                         _Lookups(store.seq_of_hash, store.seq_of_successor, no_later), check_index=True)


# --- export files ------------------------------------------------------------------------------------


def read_objects(path: Path) -> Iterator[dict[str, Any]]:
    """The objects of an export file, JSON Lines or CSV (told apart by the first character)."""
    with path.open("r", encoding="utf-8", newline="") as f:
        head = f.read(1)
        f.seek(0)
        if head == "{":
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    raise ExportFormatError(f"{path}:{number}: not a JSON object") from None
                if not isinstance(obj, dict):
                    raise ExportFormatError(f"{path}:{number}: not a JSON object")
                yield obj
            return
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != CSV_COLUMNS:
            raise ExportFormatError(f"{path}: not a hutong audit export (JSON Lines, or CSV with columns "
                                    f"{', '.join(CSV_COLUMNS)})")
        for row in reader:
            yield _from_csv(row, path, reader.line_num)


def _from_csv(row: dict[str, str], path: Path, number: int) -> dict[str, Any]:
    kind = row.get("type")
    try:
        if kind == "record":
            try:
                body = orjson.loads(row["body"])
            except orjson.JSONDecodeError:
                return {"type": "record", "seq": int(row["seq"]), "_bad_body": True, **{
                    k: row[k] for k in ("time", "kind", "prev_hash", "hash")}}
            return {"type": "record", "seq": int(row["seq"]), "time": row["time"], "kind": row["kind"],
                    "body": body, "prev_hash": row["prev_hash"], "hash": row["hash"]}
        if kind == "checkpoint":
            return {"type": "checkpoint", "seq": int(row["seq"]), "hash": row["hash"], "time": row["time"],
                    "key_id": row["key_id"], "signature": row["signature"]}
        if kind in ("header", "end"):
            return {**orjson.loads(row["body"]), "type": kind}
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ExportFormatError(f"{path}:{number}: malformed {kind} row") from None
    raise ExportFormatError(f"{path}:{number}: unknown row type {kind!r}")


def read_export(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the checkpoints of an export (records are streamed by verify)."""
    header: dict[str, Any] | None = None
    checkpoints = []
    for obj in read_objects(path):
        if obj.get("type") == "header" and header is None:
            header = obj
        elif obj.get("type") == "checkpoint":
            checkpoints.append(obj)
    if header is None or header.get("format") != EXPORT_FORMAT:
        raise ExportFormatError(f"{path}: no {EXPORT_FORMAT} header line: not a hutong audit export")
    return header, checkpoints


async def verify_file(path: str | Path, public_keys: AuditKeys | None = None) -> Report:
    """Verify an export offline. ``public_keys``: the keys to trust (the gateway's published audit
    key); without them the keys the file itself carries are used, and the report warns that this
    only proves the file consistent with itself."""
    path = Path(path)
    header, checkpoints = read_export(path)
    warnings = []
    if public_keys is None:
        try:
            public_keys = AuditKeys.public_only([public_key_from_jwk(k) for k in header.get("keys", [])])
        except (ValueError, TypeError):
            raise ExportFormatError(f"{path}: the header's keys are not Ed25519 JWKs") from None
        warnings.append("checkpoints were checked with the keys the file itself carries ("
                        + ", ".join(public_keys.trusted) + "): compare them with the gateway's audit key "
                        "(`hutong audit key`), or pass --key")
    anchor_obj = header.get("anchor") or {}
    anchor = (int(anchor_obj.get("seq", 0)), str(anchor_obj.get("hash", GENESIS_HASH)))
    checkpoints.sort(key=lambda c: c["seq"])
    end: dict[str, Any] = {}
    index: dict[str, Any] = {}

    def build_index() -> dict[str, Any]:
        if not index:
            by_hash: dict[str, int] = {}
            by_prev: dict[str, int] = {}
            positions: dict[int, list[int]] = {}
            pos = 0
            for obj in read_objects(path):
                if obj.get("type") != "record":
                    continue
                pos += 1
                if isinstance(obj.get("hash"), str):
                    by_hash.setdefault(obj["hash"], obj.get("seq"))
                if isinstance(obj.get("prev_hash"), str):
                    by_prev.setdefault(obj["prev_hash"], obj.get("seq"))
                if isinstance(obj.get("seq"), int):
                    positions.setdefault(obj["seq"], []).append(pos)
            index.update(by_hash=by_hash, by_prev=by_prev, positions=positions)
        return index

    async def seq_of_hash(h: str) -> int | None:
        return build_index()["by_hash"].get(h)

    async def seq_of_successor(h: str) -> int | None:
        return build_index()["by_prev"].get(h)

    async def seq_later(lo: int, hi: int, position: int) -> int | None:
        positions = build_index()["positions"]
        for s in range(lo, min(hi, lo + 10_000) + 1):
            if any(p > position for p in positions.get(s, [])):
                return s
        return None

    async def records() -> AsyncIterator[dict[str, Any]]:
        for obj in read_objects(path):
            if obj.get("type") == "record":
                yield obj
            elif obj.get("type") == "end":
                end.update(obj)

    def trailer(report: Report) -> None:
        if not end:
            raise _Damage("truncated", (report.last_seq or anchor[0]) + 1,
                          "the file ends without its end line: it was cut short")
        if end.get("records") != report.records or end.get("last_seq") != report.last_seq:
            raise _Damage("truncated" if (end.get("records") or 0) > report.records else "inserted",
                          report.last_seq, f"the end line counts {end.get('records')} record(s) up to seq "
                                           f"{end.get('last_seq')}, the file holds {report.records}")

    report = await _verify(records(), checkpoints, public_keys, anchor,
                           _Lookups(seq_of_hash, seq_of_successor, seq_later), trailer=trailer)
    report.warnings = warnings + report.warnings
    return report


def csv_text(row: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([row.get(c, "") for c in CSV_COLUMNS])
    return out.getvalue()
