"""Archives and retention: several exports verified in order, each continuing the one before and the
live store continuing the last (a gap or an overlap is damage); `retention_days` applied by archive
and prune, which remove records only after a verified archive and record themselves as admin events;
on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.audit.keys import AuditKeys
from gateway.audit.retention import PruneRefused, archive, prune
from gateway.audit.store import AuditStore, StorePermissionError, insert_only_grants
from gateway.audit.verify import Report, verify_files, verify_store
from gateway.audit.writer import AuditWriter
from tests.test_audit_support import (
    BACKENDS,
    drop_role,
    export_objects,
    fill,
    new_keys,
    sql,
    sqlite_url,
    write_export,
)

N = 35  # checkpoints at 10, 20, 30
LATER = datetime.now(UTC) + timedelta(days=3)  # "now" for retention: every record is 3 days old


@pytest.fixture(params=BACKENDS)
async def chain(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[str, AuditStore, AuditKeys]]:
    url = request.getfixturevalue("pg_audit_url") if request.param == "postgresql" else sqlite_url(tmp_path)
    keys = new_keys(tmp_path)
    store = AuditStore(url, checkpoint_every=10)
    await store.init()
    await fill(store, keys, N)
    try:
        yield url, store, keys
    finally:
        await store.close()


async def exported(tmp_path: Path, store: AuditStore, keys: AuditKeys, name: str, **kwargs: Any) -> Path:
    return write_export(tmp_path / name, "jsonl", await export_objects(store, keys, "jsonl", **kwargs))


def outcome(reports: list[Report]) -> tuple[bool, str | None, int | None]:
    bad = next((r for r in reports if not r.ok), None)
    return (True, None, None) if bad is None else (False, bad.damage, bad.first_bad_seq)


def writer_on(store: AuditStore, keys: AuditKeys) -> AuditWriter:
    return AuditWriter(store, keys, checkpoint_every=10, checkpoint_seconds=3600)


# --- several files, and the live store after them ------------------------------------------------------


async def test_consecutive_exports_verify_as_one_chain(chain: tuple[str, AuditStore, AuditKeys],
                                                       tmp_path: Path) -> None:
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    b = await exported(tmp_path, store, keys, "b.jsonl", first=21, last=30)
    c = await exported(tmp_path, store, keys, "c.jsonl", first=31)
    assert outcome(await verify_files([a, b, c], keys)) == (True, None, None)
    assert outcome(await verify_files([a, b], keys, store=store)) == (True, None, None)  # not pruned: overlaps live
    reports = await verify_files([a, b, c], keys, store=store)
    assert outcome(reports) == (True, None, None) and [r.records for r in reports] == [20, 10, 5, N]


async def test_gap_between_exports(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    c = await exported(tmp_path, store, keys, "c.jsonl", first=26)
    reports = await verify_files([a, c], keys)
    assert outcome(reports) == (False, "gap", 21) and reports[-1].source == str(c)
    assert "records 21 to 25 are in neither" in reports[-1].detail


async def test_overlap_between_exports(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    b = await exported(tmp_path, store, keys, "b.jsonl", first=11, last=30)
    assert outcome(await verify_files([a, b], keys)) == (False, "overlap", 11)
    assert outcome(await verify_files([b, a], keys)) == (False, "overlap", 1)  # out of order


async def test_exports_of_different_chains(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    """The second file links to seq 20, but to another record 20 than the first file holds."""
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    other = AuditStore(sqlite_url(tmp_path / "other"))
    await other.init()
    try:
        await fill(other, keys, 30, start=100)
        b = await exported(tmp_path, other, keys, "b.jsonl", first=21, last=30)
    finally:
        await other.close()
    assert outcome(await verify_files([a, b], keys)) == (False, "changed", 20)


async def test_a_damaged_file_stops_the_run(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    b = await exported(tmp_path, store, keys, "b.jsonl", first=21)
    b.write_text(b.read_text().replace("official-", "nobody-", 1))
    reports = await verify_files([a, b], keys, store=store)
    assert len(reports) == 2 and outcome(reports)[:2] == (False, "changed")


# --- retention: archive, prune, and the chain across them ---------------------------------------------


async def test_archive_then_verify_archives_and_live_store(chain: tuple[str, AuditStore, AuditKeys],
                                                           tmp_path: Path) -> None:
    _, store, keys = chain
    first = await archive(writer_on(store, keys), tmp_path / "a1.jsonl", "jsonl", retention_days=2, by="os:ops",
                          now=LATER)
    assert (first.first_seq, first.last_seq, first.removed, first.event_seq) == (1, 30, 30, N + 1)
    assert first.archive_sha256 == hashlib.sha256((tmp_path / "a1.jsonl").read_bytes()).hexdigest()
    report = await verify_store(store, keys)
    assert report.ok and (report.anchor_seq, report.first_seq, report.last_seq) == (30, 31, N + 1), report
    event = await store.record(N + 1)
    assert event is not None and event["kind"] == "admin"
    body = orjson.loads(event["body"])
    assert body["event"] == "audit.prune" and body["actor"] == "os:ops"
    assert (body["first_seq"], body["last_seq"], body["records"]) == (1, 30, 30)
    assert body["archive"] == "a1.jsonl" and body["archive_sha256"] == first.archive_sha256
    assert [c["seq"] for c in await store.checkpoints()] == [30, N + 1]  # the anchor, and the prune signed
    assert outcome(await verify_files([tmp_path / "a1.jsonl"], keys, store=store)) == (True, None, None)

    await fill(store, keys, 20, start=100)  # the gateway writes on; a second archive continues the first
    second = await archive(writer_on(store, keys), tmp_path / "a2.jsonl", "jsonl", retention_days=2, by="os:ops",
                           now=LATER)
    assert (second.first_seq, second.last_seq) == (31, 50)
    archives = [tmp_path / "a1.jsonl", tmp_path / "a2.jsonl"]
    assert outcome(await verify_files(archives, keys, store=store)) == (True, None, None)
    assert outcome(await verify_files(archives[:1], keys, store=store)) == (False, "gap", 31)  # a2 missing


async def test_prune_with_an_archive(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path) -> None:
    _, store, keys = chain
    a = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    pruned = await prune(writer_on(store, keys), a, retention_days=2, by="os:ops", now=LATER)
    assert (pruned.first_seq, pruned.last_seq, pruned.removed) == (1, 20, 20)
    assert (await verify_store(store, keys)).ok
    assert outcome(await verify_files([a], keys, store=store)) == (True, None, None)


async def test_records_deleted_by_hand_at_a_checkpoint_are_damage(chain: tuple[str, AuditStore, AuditKeys]) -> None:
    """Deleting records 1..20 (and the checkpoints before 20) leaves a chain that starts cleanly at a
    checkpoint: only the missing audit.prune record tells it from a real prune."""
    import sqlalchemy as sa

    _, store, keys = chain
    async with store.engine.begin() as conn:
        for table in ("audit_record", "audit_subject", "audit_field"):
            await conn.execute(sa.text(f"DELETE FROM {table} WHERE seq <= 20"))
        await conn.execute(sa.text("DELETE FROM audit_checkpoint WHERE seq < 20"))
    report = await verify_store(store, keys)
    assert (report.ok, report.damage) == (False, "deleted")
    assert "no audit.prune record" in report.detail


@pytest.mark.parametrize(("case", "message"), [
    ("retention 0", "retention_days is 0"),
    ("too young", "within retention_days"),
    ("not a checkpoint", "no checkpoint"),
    ("not from the start", "each archive must start where the live chain starts"),
    ("does not verify", "does not verify"),
    ("another chain", "is not the one"),
    ("missing file", "cannot read the archive"),
])
async def test_prune_refused(chain: tuple[str, AuditStore, AuditKeys], tmp_path: Path, case: str,
                             message: str) -> None:
    _, store, keys = chain
    path = await exported(tmp_path, store, keys, "a.jsonl", last=20)
    days, now = 2, LATER
    if case == "retention 0":
        days = 0
    elif case == "too young":
        now = datetime.now(UTC)
    elif case == "not a checkpoint":
        path = await exported(tmp_path, store, keys, "a.jsonl", last=25)
    elif case == "not from the start":
        path = await exported(tmp_path, store, keys, "a.jsonl", first=11, last=20)
    elif case == "does not verify":
        path.write_text(path.read_text().replace("official-", "nobody-", 1))
    elif case == "another chain":
        other = AuditStore(sqlite_url(tmp_path / "other"))
        await other.init()
        await fill(other, keys, 20, start=100)
        path = await exported(tmp_path, other, keys, "a.jsonl", last=20)
        await other.close()
    elif case == "missing file":
        path = tmp_path / "nowhere.jsonl"
    with pytest.raises(PruneRefused, match=message):
        await prune(writer_on(store, keys), path, retention_days=days, by="os:ops", now=now)
    assert await store.count() == N  # nothing removed, nothing recorded


async def test_archive_refused_when_nothing_is_old_enough(chain: tuple[str, AuditStore, AuditKeys],
                                                          tmp_path: Path) -> None:
    _, store, keys = chain
    with pytest.raises(PruneRefused, match="nothing to archive yet"):
        await archive(writer_on(store, keys), tmp_path / "a.jsonl", "jsonl", retention_days=2, by="os:ops")
    assert not (tmp_path / "a.jsonl").exists() and await store.count() == N


@pytest.mark.services
async def test_prune_as_the_gateways_role_names_the_missing_privilege(pg_audit_url: str, tmp_path: Path) -> None:
    role = f"hutong_audit_gw_{uuid.uuid4().hex[:8]}"
    owner = AuditStore(pg_audit_url)
    await owner.init()
    keys = new_keys(tmp_path)
    await fill(owner, keys, N)
    await sql(pg_audit_url, f"CREATE ROLE {role} LOGIN", *insert_only_grants(role).strip().split(";\n")[:2])
    gw = AuditStore(pg_audit_url.replace("postgres@", f"{role}@"))
    try:
        a = await exported(tmp_path, owner, keys, "a.jsonl", last=20)
        with pytest.raises(StorePermissionError, match=rf"role '{role}' has no DELETE privilege on audit_record"):
            await prune(writer_on(gw, keys), a, retention_days=2, by="os:ops", now=LATER)
        assert await owner.count() == N
    finally:
        await gw.close()
        await owner.close()
        await drop_role(pg_audit_url, role)
