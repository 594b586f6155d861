"""Retention: records older than ``retention_days`` move to an archive, and only then leave the store.

``archive`` picks the newest checkpoint whose record is older than ``retention_days``, exports the
live chain from where it starts through that checkpoint (a file that verifies offline, see
export.py), and calls ``prune``. ``prune`` removes records only after an archive of them that
verifies against the trusted keys, that starts exactly where the live chain starts (so the
archives, in order, and then the live store form one chain: ``hutong audit verify A1 A2 --live``),
and that ends at a checkpoint of the store older than ``retention_days``. In one transaction it
appends an admin event (who, which seqs, the archive's name and SHA-256), signs the head, and
deletes through the cut; the checkpoint at the cut stays as the anchor the chain continues from.
Deleting needs the tables owner's role: the gateway's is insert-only.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.audit.admin import admin_event
from gateway.audit.export import export, export_file
from gateway.audit.record import check_body, format_time
from gateway.audit.verify import verify_file
from gateway.audit.writer import AuditWriter

__all__ = ["PruneRefused", "Pruned", "archive", "prune"]


class PruneRefused(ValueError):
    """Nothing was removed, and why."""


@dataclass(frozen=True)
class Pruned:
    first_seq: int
    last_seq: int
    removed: int
    archive: Path
    archive_sha256: str
    event_seq: int  # the admin record of this prune


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cutoff(retention_days: int, now: datetime | None) -> str:
    if retention_days <= 0:
        raise PruneRefused("[audit] retention_days is 0: every record is kept (set it to the number of days "
                           "records must stay in the live store before they may be archived and pruned)")
    return format_time((now or datetime.now(UTC)) - timedelta(days=retention_days))


async def prune(writer: AuditWriter, archive_path: Path, *, retention_days: int, by: str,
                now: datetime | None = None) -> Pruned:
    """Remove from the live store the records ``archive_path`` holds; see the module's docstring.
    ``writer``: on the owner's URL, with the configured keys (they verify the archive and sign)."""
    store, cutoff = writer.store, _cutoff(retention_days, now)
    async with store.engine.connect() as conn:
        await store.check_can_delete(conn)  # before anything else: a clear error for the gateway's role
    try:
        report = await verify_file(archive_path, writer.keys, checkpoint_every=writer.checkpoint_every)
    except OSError as exc:
        raise PruneRefused(f"cannot read the archive {archive_path}: {exc.strerror}") from None
    if not report.ok:
        raise PruneRefused(f"{archive_path} does not verify ({report.damage} at seq {report.first_bad_seq}: "
                           f"{report.detail}): nothing pruned")
    if not report.records or report.last_seq is None or report.first_seq is None:
        raise PruneRefused(f"{archive_path} holds no records: nothing to prune")
    sha = sha256_of(archive_path)
    async with store.write_transaction() as conn:
        start = await store.first_record(conn)
        if start is None or (report.anchor_seq, report.anchor_hash) != (start["seq"] - 1, start["prev_hash"]):
            where = f"after seq {start['seq'] - 1}" if start is not None else "nowhere (it is empty)"
            raise PruneRefused(f"{archive_path} starts after seq {report.anchor_seq}, but the live chain starts "
                               f"{where}: each archive must start where the live chain starts, so that the "
                               "archives and the store form one chain (`hutong audit archive` exports from there)")
        kept = await store.record_at(conn, report.last_seq)
        if kept is None or kept.hash != report.last_hash:
            raise PruneRefused(f"record {report.last_seq} of the live store is not the one {archive_path} ends with: "
                               "nothing pruned")
        anchor_cp = await store.checkpoint_at(conn, report.last_seq)
        if anchor_cp is None or anchor_cp["hash"] != report.last_hash:
            raise PruneRefused(f"{archive_path} ends at seq {report.last_seq}, where the store has no checkpoint: "
                               "the live chain must go on from a signed anchor; archive through a checkpoint "
                               "(`hutong audit archive` chooses one)")
        if kept.time > cutoff:
            raise PruneRefused(f"record {report.last_seq} is from {kept.time}, within retention_days "
                               f"({retention_days}): only records older than {cutoff} may be pruned")
        body = admin_event("audit.prune", "audit log", by=by, detail={
            "first_seq": report.first_seq, "last_seq": report.last_seq, "records": report.records,
            "archive": archive_path.name, "archive_sha256": sha, "archive_last_hash": report.last_hash,
            "retention_days": retention_days})
        receipts, checkpoints = await writer.write_in(conn, [("admin", body, check_body(body))],
                                                      force_checkpoint=True)
        removed = await store.delete_through(conn, report.last_seq)
    await writer.committed(checkpoints, receipts[-1].seq)
    return Pruned(report.first_seq, report.last_seq, removed, archive_path, sha, receipts[-1].seq)


async def archive(writer: AuditWriter, out: Path, fmt: str, *, retention_days: int, by: str,
                  now: datetime | None = None) -> Pruned:
    """Export the records older than ``retention_days`` (from where the live chain starts through the
    newest checkpoint old enough) to ``out``, then ``prune`` them."""
    store, cutoff = writer.store, _cutoff(retention_days, now)
    async with store.engine.connect() as conn:
        await store.check_can_delete(conn)
    bounds = await store.bounds()
    if bounds is None:
        raise PruneRefused("the live store holds no records")
    old = [c for c in await store.checkpoints(bounds[0], bounds[1]) if c["time"] <= cutoff]
    if not old:
        raise PruneRefused(f"no checkpoint of the live chain is older than {cutoff} (retention_days = "
                           f"{retention_days}): nothing to archive yet")
    with export_file(out) as f:
        await export(store, f, fmt, writer.keys, first=bounds[0], last=old[-1]["seq"],
                     checkpoint_every=writer.checkpoint_every)
    return await prune(writer, out, retention_days=retention_days, by=by, now=now)
