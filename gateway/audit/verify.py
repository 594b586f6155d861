"""Checking the chain and its checkpoints, in the live store or in export files.

Records are read in stored order (seq order in the store, line order in a file) and each is
checked against its own hash and its link to the one before; the first anomaly is classified
(see docs/audit.md, "Kinds of damage"). Then every checkpoint is checked: a valid signature by
a trusted key, and the hash of the record it names; then (a file) the signed end line; then that
no checkpoint is missing: one at every multiple of the interval each checkpoint signs, and one at
every multiple of the trusted interval (configuration, --checkpoint-every, or the export's signed
end line) up to the chain's last record. A store is also held to its head mark (mark.py): the
newest checkpoint this machine wrote must still be there. Verification stops at the first damage.
Several exports, and the live store after them, must each continue the one before.
"""

from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.audit.keys import AuditKeys, fingerprint, public_key_from_jwk
from gateway.audit.mark import read_head_mark
from gateway.audit.record import GENESIS_HASH, chain_hash, checkpoint_message, derive, end_message
from gateway.audit.store import AuditStore

__all__ = ["DAMAGE_KINDS", "ExportFormatError", "Report", "read_export", "read_objects", "verify_file",
           "verify_files", "verify_store"]

DAMAGE_KINDS = ("changed", "deleted", "inserted", "reordered", "truncated", "bad_checkpoint", "missing_checkpoint",
                "gap", "overlap")
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
    anchor_hash: str = GENESIS_HASH
    last_hash: str | None = None
    signed_seq: int = 0  # the last seq a valid checkpoint signs (the anchor's if none)
    checkpoint_every: int | None = None  # the interval the chain's end was held to
    key_ids: list[str] = field(default_factory=list)  # the keys that signed the checkpoints checked
    key_trusted: bool = True  # False: checked only against keys the file itself carries
    unverified_keys: list[dict[str, str]] = field(default_factory=list)  # those keys: kid and fingerprint
    source: str | None = None  # the file, or "live store"
    warnings: list[str] = field(default_factory=list)

    @property
    def end_seq(self) -> int:
        """The seq the next archive (or the live store) must continue from."""
        return self.last_seq if self.last_seq is not None else self.anchor_seq

    @property
    def end_hash(self) -> str:
        return self.last_hash if self.last_hash is not None else self.anchor_hash

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def fail(self, kind: str, seq: int | None, detail: str) -> None:
        self.ok, self.damage, self.first_bad_seq, self.detail = False, kind, seq, detail


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
                want: set[int], check_index: bool) -> tuple[int, int | None, int | None, dict[int, str], str | None]:
    """Check every record; returns (count, first seq, last seq, {seq: hash} for the seqs in ``want``,
    last hash)."""
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
    return count, first, (prev_seq if count else None), hashes, (prev_hash if count else None)


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


def _signature_ok(cp: dict[str, Any], keys: AuditKeys, what: str) -> None:
    seq = cp["seq"]
    if cp.get("key_id") not in keys.trusted:
        raise _Damage("bad_checkpoint", seq, f"{what} is signed by key {cp.get('key_id')}, which is not "
                                             "trusted: the chain may have been rewritten and re-signed")
    every = cp.get("every")
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise _Damage("bad_checkpoint", seq, f"{what}: its interval {every!r} is not a whole number")
    if not keys.verify(cp["key_id"], checkpoint_message(seq, cp["hash"], cp["time"], cp["key_id"], every),
                       cp["signature"]):
        raise _Damage("bad_checkpoint", seq, f"{what}: the signature is not valid")


def _check_checkpoints(checkpoints: list[dict[str, Any]], keys: AuditKeys, anchor: tuple[int, str],
                       first: int | None, last: int | None, hashes: dict[int, str],
                       report: Report) -> list[dict[str, Any]]:
    """Signatures, and the hash each signs; the valid checkpoints from the anchor on, in seq order."""
    used: set[str] = set()
    valid = []
    for cp in checkpoints:
        seq = cp["seq"]
        _signature_ok(cp, keys, f"checkpoint {seq}")
        used.add(cp["key_id"])
        if seq == anchor[0] and (first is None or seq < first):
            if cp["hash"] != anchor[1]:
                raise _Damage("bad_checkpoint", seq, f"the anchor checkpoint {seq} signs another hash than the "
                                                     "one the chain starts from")
            valid.append(cp)
            continue
        if seq < anchor[0] or (first is not None and seq < first):
            continue
        if last is None or seq > last:
            end = last if last is not None else anchor[0]
            raise _Damage("truncated", end + 1, f"checkpoint {seq} signs a record after the chain's end (seq "
                                                f"{end}): records {end + 1} to at least {seq} are gone")
        if hashes.get(seq) != cp["hash"]:
            raise _Damage("bad_checkpoint", seq, f"checkpoint {seq} signs another hash than record {seq} has: "
                                                 "the chain was rewritten")
        valid.append(cp)
    report.key_ids = sorted(used)
    if anchor[0] > 0 and not any(cp["seq"] == anchor[0] for cp in checkpoints):
        report.warnings.append(f"the chain starts after seq {anchor[0]} without a checkpoint there: its anchor "
                               "is not signed")
    valid.sort(key=lambda c: c["seq"])
    report.signed_seq = valid[-1]["seq"] if valid else anchor[0]
    return valid


def _check_mark(mark: dict[str, Any], where: str, keys: AuditKeys, anchor: tuple[int, str], last: int | None,
                hashes: dict[int, str]) -> None:
    """The head mark: the newest checkpoint this machine wrote must still be in the chain."""
    seq = mark["seq"]
    _signature_ok(mark, keys, f"the head mark {where} (checkpoint {seq})")
    if seq < anchor[0]:
        return  # pruned since, from an archive
    if seq == anchor[0]:
        if mark["hash"] != anchor[1]:
            raise _Damage("bad_checkpoint", seq, f"the head mark {where} signs another hash for seq {seq} than the "
                                                 "one the chain starts from: the chain was rewritten")
        return
    end = last if last is not None else anchor[0]
    if seq > end:
        raise _Damage("truncated", end + 1, f"the chain ends at seq {end}, but checkpoint {seq} (signed at "
                                            f"{mark['time']}) was written to it, as its head mark {where} shows: "
                                            "the chain was cut after its last checkpoint, with the checkpoints "
                                            "after it")
    if hashes.get(seq) != mark["hash"]:
        raise _Damage("bad_checkpoint", seq, f"the head mark {where} signs another hash for record {seq} than it "
                                             "has: the chain was rewritten")


def _check_coverage(valid: list[dict[str, Any]], anchor_seq: int, last: int | None, every: int | None) -> None:
    """No checkpoint missing: none of the interval each signs between it and the one before, and none
    of the trusted interval ``every`` between the last one and the chain's last record."""
    prev = anchor_seq
    for cp in valid:
        e = cp.get("every")
        if cp["seq"] > prev and e:
            due = (prev // e + 1) * e
            if due < cp["seq"]:
                raise _Damage("missing_checkpoint", due, f"checkpoints missing: none at seq {due}, though checkpoint "
                                                         f"{cp['seq']} signs that one is written every {e} records "
                                                         f"(the one before it is at seq {prev}): checkpoints were "
                                                         "deleted")
        prev = max(prev, cp["seq"])
    if last is not None and every:
        due = (prev // every + 1) * every
        if due <= last:
            raise _Damage("missing_checkpoint", due, f"checkpoints missing: none at seq {due} or after seq {prev}, "
                                                     f"though one is due every {every} records: records {prev + 1} "
                                                     f"to {last} are covered by no signature (their checkpoints were "
                                                     "deleted, or the chain after seq "
                                                     f"{prev} was replaced)")


async def _verify(records: AsyncIterator[dict[str, Any]], checkpoints: list[dict[str, Any]], keys: AuditKeys,
                  anchor: tuple[int, str], lookups: _Lookups, *, check_index: bool = False,
                  every: int | None = None, trailer: Callable[[Report], int | None] | None = None,
                  mark: tuple[dict[str, Any], str] | None = None) -> Report:
    report = Report(ok=False, records=0, checkpoints=len(checkpoints), anchor_seq=anchor[0], anchor_hash=anchor[1])
    want = {cp["seq"] for cp in checkpoints} | ({mark[0]["seq"]} if mark else set())
    try:
        count, first, last, hashes, last_hash = await _walk(records, anchor, lookups, want, check_index)
        report.records, report.first_seq, report.last_seq, report.last_hash = count, first, last, last_hash
        valid = _check_checkpoints(checkpoints, keys, anchor, first, last, hashes, report)
        signed_every = trailer(report) if trailer is not None else None
        every = every or signed_every or next((c["every"] for c in reversed(valid) if c.get("every")), None)
        report.checkpoint_every = every
        _check_coverage(valid, anchor[0], last, every)
        if mark is not None:
            _check_mark(mark[0], mark[1], keys, anchor, last, hashes)
    except _Damage as d:
        report.fail(d.kind, d.seq, d.detail)
        return report
    if every is None and count:
        report.warnings.append("no checkpoint interval is known (none given, none signed): whether checkpoints "
                               "are missing was not checked")
    if trailer is None and last is not None and last > report.signed_seq:
        report.warnings.append(f"records {report.signed_seq + 1} to {last} are after the last checkpoint: they are "
                               "chained but not yet signed")
    report.ok = True
    span = f"records {report.first_seq} to {report.last_seq}" if count else "no records"
    report.detail = f"{span}: chain intact, {len(checkpoints)} checkpoint(s) valid"
    return report


# --- the live store ----------------------------------------------------------------------------------


async def verify_store(store: AuditStore, public_keys: AuditKeys, *, checkpoint_every: int | None = None,
                       head_mark: Path | None = None) -> Report:
    """Verify the whole chain in ``store`` against the trusted keys of ``public_keys``.

    ``checkpoint_every``: the interval at whose every multiple a checkpoint must be (default: the
    store's configured one, else the one the last checkpoint signs). ``head_mark``: the file
    holding the newest checkpoint this machine wrote (default: the store's configured one)."""
    every = checkpoint_every if checkpoint_every is not None else store.checkpoint_every
    mark_path = head_mark if head_mark is not None else store.head_mark
    warnings = []
    mark = None
    if mark_path is not None:  # read before the records: all it names was committed before they are read
        try:
            found = read_head_mark(mark_path)
        except ValueError as exc:
            found = None
            warnings.append(f"{exc}: truncation back to a checkpoint cannot be checked")
        if found is not None:
            mark = (found, str(mark_path))
        elif not warnings:
            warnings.append(f"there is no head mark at {mark_path}: a chain cut back to one of its checkpoints "
                            "cannot be told from a younger one (see docs/audit.md)")
    bounds = await store.bounds()  # what verify walks: checkpoints committed later may name later records
    checkpoints = await store.checkpoints()
    last = bounds[1] if bounds is not None else None
    current = []
    for cp in checkpoints:
        if last is not None and cp["seq"] > last:
            now = await store.record(cp["seq"])
            if now is not None and now["hash"] == cp["hash"]:
                continue  # appended while verify ran: checked next time
        current.append(cp)
    anchor = (0, GENESIS_HASH)
    if bounds is not None and bounds[0] > 1:  # pruned: the chain starts from the checkpoint just before it
        cp = next((c for c in current if c["seq"] == bounds[0] - 1), None)
        if cp is not None:
            anchor = (cp["seq"], cp["hash"])

    async def rows() -> AsyncIterator[dict[str, Any]]:
        if last is None:
            return
        async for row in store.records(last=last, with_index=True):
            try:
                row["body"] = orjson.loads(row["body"])
            except orjson.JSONDecodeError:
                row["_bad_body"] = True
            yield row

    async def no_later(_lo: int, _hi: int, _pos: int) -> int | None:
        return None  # the store is read in seq order: a missing seq is nowhere later

    report = await _verify(rows(), current, public_keys, anchor,
                           _Lookups(store.seq_of_hash, store.seq_of_successor, no_later), check_index=True,
                           every=every, mark=mark)
    if report.ok and bounds is not None and bounds[0] > 1:
        await _check_pruned(store, bounds[0] - 1, report)
    report.warnings = warnings + report.warnings
    return report


async def _check_pruned(store: AuditStore, through: int, report: Report) -> None:
    """A chain that starts after seq 1 was pruned: by ``hutong audit archive``/``prune`` only if the
    chain holds their ``audit.prune`` record for exactly these records. Without one, records were
    deleted by hand (reported as such); with one not yet under a checkpoint, it is only a warning
    (anyone with write access can append a record; only a checkpoint proves the gateway wrote it)."""
    found = await store.newest_admin("audit.prune", lambda body: body.get("last_seq") == through)
    if found is None:
        report.ok, report.damage, report.first_bad_seq = False, "deleted", 1
        report.detail = (f"records 1 to {through} are gone and no audit.prune record says they were archived and "
                         "pruned: they were deleted outside `hutong audit archive`/`prune`")
    elif found["seq"] > report.signed_seq:
        report.warnings.append(f"the audit.prune record (seq {found['seq']}) for records 1 to {through} is not under "
                               "a checkpoint yet: run `hutong audit checkpoint` to sign it")


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
            extra = orjson.loads(row["body"]) if row.get("body") else {}  # {"every": N} (second format)
            if not isinstance(extra, dict):
                raise ValueError("not an object")
            return {"type": "checkpoint", "seq": int(row["seq"]), "hash": row["hash"], "time": row["time"],
                    "key_id": row["key_id"], "signature": row["signature"],
                    **({"every": extra["every"]} if "every" in extra else {})}
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


def file_keys(header: dict[str, Any], path: Path) -> tuple[AuditKeys, list[dict[str, str]]]:
    """The keys an export carries in its header, and their ids and fingerprints (to show)."""
    try:
        keys = [public_key_from_jwk(k) for k in header.get("keys", [])]
    except (ValueError, TypeError):
        raise ExportFormatError(f"{path}: the header's keys are not Ed25519 JWKs") from None
    found = AuditKeys.public_only(keys)
    return found, [{"kid": kid, "fingerprint": fingerprint(k)} for kid, k in found.trusted.items()]


async def verify_file(path: str | Path, public_keys: AuditKeys | None = None, *,
                      checkpoint_every: int | None = None) -> Report:
    """Verify an export offline. ``public_keys``: the keys to trust (the gateway's published audit
    key); without them the keys the file itself carries are used, and the report says loudly that
    this only proves the file consistent with itself (``key_trusted`` False). ``checkpoint_every``:
    the interval to hold the file to (default: the one its signed end line states)."""
    path = Path(path)
    header, checkpoints = read_export(path)
    warnings = []
    unverified: list[dict[str, str]] = []
    if public_keys is None:
        public_keys, unverified = file_keys(header, path)
        warnings.append("UNVERIFIED KEY: the signatures were checked with the key(s) the file itself carries ("
                        + ", ".join(f"kid {k['kid']}, SHA-256 fingerprint {k['fingerprint']}" for k in unverified)
                        + "); whoever rewrites a file can put their own key there, so this proves only that the "
                        "file agrees with itself. Compare the kid with the gateway's published audit key "
                        "(`hutong audit key`), or pass it with --key")
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

    keys = public_keys

    def trailer(report: Report) -> int | None:
        """The end line: present, counting what the file holds, from the header's anchor, signed. It
        is the export's last checkpoint: it signs the records after the last checkpoint too."""
        if not end:
            raise _Damage("truncated", (report.last_seq or anchor[0]) + 1,
                          "the file ends without its end line: it was cut short")
        if end.get("records") != report.records or end.get("last_seq") != report.last_seq:
            raise _Damage("truncated" if (end.get("records") or 0) > report.records else "inserted",
                          report.last_seq, f"the end line counts {end.get('records')} record(s) up to seq "
                                           f"{end.get('last_seq')}, the file holds {report.records}")
        after = report.signed_seq + 1
        if end.get("last_hash") != report.end_hash:
            raise _Damage("changed", report.end_seq, f"the end line names another last hash than record "
                                                     f"{report.end_seq} has")
        if end.get("anchor", anchor_obj) != anchor_obj:
            raise _Damage("changed", report.first_seq or after, "the header's anchor is not the one the end line "
                                                                "signs: the file's start was changed")
        if not end.get("signature"):
            raise _Damage("bad_checkpoint", after, "the end line is not signed, so nothing protects the records "
                                                   f"after seq {report.signed_seq} (the last checkpoint) from being "
                                                   "cut off or rewritten")
        if end.get("key_id") not in keys.trusted:
            raise _Damage("bad_checkpoint", after, f"the end line is signed by key {end.get('key_id')}, which is not "
                                                   "trusted: the file may have been rewritten and re-signed")
        every = end.get("every")
        if not keys.verify(end["key_id"], end_message(end), end["signature"]) or (
                every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1)):
            raise _Damage("bad_checkpoint", after, "the end line's signature does not match it: the file was changed "
                                                   f"after it was exported (records after seq {report.signed_seq}, "
                                                   "the last checkpoint, cut off or rewritten, or the line edited)")
        return every

    report = await _verify(records(), checkpoints, public_keys, anchor,
                           _Lookups(seq_of_hash, seq_of_successor, seq_later), every=checkpoint_every,
                           trailer=trailer)
    report.source = str(path)
    report.key_trusted = not unverified
    report.unverified_keys = unverified
    report.warnings = warnings + report.warnings
    return report


def _link(prev: Report, nxt: Report) -> None:
    """``nxt`` must start where ``prev`` ends: same seq, same hash."""
    e_seq, e_hash, a_seq = prev.end_seq, prev.end_hash, nxt.anchor_seq
    if a_seq > e_seq:
        nxt.fail("gap", e_seq + 1, f"{prev.source} ends at seq {e_seq} and {nxt.source} continues after seq {a_seq}: "
                                   f"records {e_seq + 1} to {a_seq} are in neither")
    elif a_seq < e_seq:
        nxt.fail("overlap", a_seq + 1, f"{prev.source} ends at seq {e_seq} but {nxt.source} starts again after seq "
                                       f"{a_seq}: records {a_seq + 1} to {e_seq} are in both (each must start where "
                                       "the one before ends)")
    elif nxt.anchor_hash != e_hash:
        nxt.fail("changed", e_seq, f"{nxt.source} continues from record {e_seq} with another hash than {prev.source} "
                                   "ends with: one of them was rewritten")


async def _link_live(prev: Report, live: Report, store: AuditStore) -> None:
    """The live store must continue the last archive: start right after it, or still hold its end."""
    e_seq, e_hash = prev.end_seq, prev.end_hash
    if live.records == 0 and live.anchor_seq == 0:
        if e_seq > 0:
            live.fail("truncated", 1, f"the live store holds no records, but {prev.source} reaches seq {e_seq}")
        return
    if live.anchor_seq >= e_seq:
        _link(prev, live)
        return
    rec = await store.record(e_seq)  # not pruned yet since the export: it must still be the same record
    if rec is None:
        live.fail("truncated", (live.last_seq or live.anchor_seq) + 1,
                  f"the live store ends at seq {live.last_seq}, before {prev.source} does (seq {e_seq})")
    elif rec["hash"] != e_hash:
        live.fail("changed", e_seq, f"record {e_seq} in the live store has another hash than in {prev.source}: one "
                                    "of them was rewritten")


async def verify_files(paths: Sequence[str | Path], public_keys: AuditKeys | None = None, *,
                       checkpoint_every: int | None = None, store: AuditStore | None = None,
                       store_keys: AuditKeys | None = None) -> list[Report]:
    """Verify several exports in order, each continuing the one before (a gap or an overlap is damage),
    then, given ``store``, the live store and that it continues the last. One report per source,
    up to the first damaged one."""
    reports: list[Report] = []
    for path in paths:
        report = await verify_file(path, public_keys, checkpoint_every=checkpoint_every)
        if report.ok and reports:
            _link(reports[-1], report)
        reports.append(report)
        if not report.ok:
            return reports
    if store is not None:
        live = await verify_store(store, store_keys or public_keys or AuditKeys.public_only([]),
                                  checkpoint_every=checkpoint_every)
        live.source = "the live store"
        if live.ok and reports:
            await _link_live(reports[-1], live, store)
        reports.append(live)
    return reports


def csv_text(row: dict[str, Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow([row.get(c, "") for c in CSV_COLUMNS])
    return out.getvalue()
