"""The audit store's other duties: insert-only grants on PostgreSQL, search with totals and pages,
canonical records that survive store -> export -> verify unchanged, the [audit] settings, and
the `hutong audit` commands."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from gateway.audit import AuditSettings, AuditWriter, insert_only_grants, verify_file, verify_store
from gateway.audit.record import canonical, chain_hash, check_body
from gateway.audit.store import AuditStore, StorePermissionError
from gateway.audit.writer import record_hash_raw
from gateway.config import ConfigError, load_settings
from tests.test_audit_support import (
    body,
    drop_role,
    export_objects,
    fill,
    new_keys,
    rows,
    sql,
    sqlite_url,
    write_export,
)

# --- PostgreSQL: the gateway's role may only read and append --------------------------------------


@pytest.mark.services
async def test_insert_only_role(pg_audit_url: str, tmp_path: Path) -> None:
    role = f"hutong_audit_gw_{uuid.uuid4().hex[:8]}"
    owner = AuditStore(pg_audit_url)
    await owner.init()  # the tables belong to the owner (here: postgres)
    await sql(pg_audit_url, f"CREATE ROLE {role} LOGIN", *insert_only_grants(role).strip().split(";\n")[:2])
    gw_url = pg_audit_url.replace("postgres@", f"{role}@")
    keys = new_keys(tmp_path)
    try:
        store = AuditStore(gw_url)
        writer = AuditWriter(store, keys, checkpoint_every=5, own_store=True)
        await writer.start()  # init() finds the tables: no CREATE needed
        await asyncio.gather(*(writer.append("request", body(i)) for i in range(12)))
        await writer.close()
        for statement in ("UPDATE audit_record SET body = '{}' WHERE seq = 1", "DELETE FROM audit_record",
                          "TRUNCATE audit_record", "DELETE FROM audit_checkpoint", "UPDATE audit_subject SET seq = 2",
                          "DELETE FROM audit_field", "DROP TABLE audit_record"):
            with pytest.raises(DBAPIError, match=r"permission denied|must be owner"):
                await sql(gw_url, statement)
        assert (await verify_store(owner, keys)).ok
    finally:
        await owner.close()
        await drop_role(pg_audit_url, role)


def test_grants_text() -> None:
    text = insert_only_grants("hutong_gw")
    assert "GRANT SELECT, INSERT ON audit_record, audit_subject, audit_field, audit_checkpoint TO hutong_gw" in text
    assert "UPDATE" not in text and "DELETE" not in text
    with pytest.raises(ValueError):
        insert_only_grants("x; DROP TABLE audit_record")


# --- search ----------------------------------------------------------------------------------------


async def test_search(url: str, tmp_path: Path) -> None:
    store = AuditStore(url)
    await store.init()
    try:
        await fill(store, new_keys(tmp_path), 40)
        everything, total = await store.search({}, limit=15)
        assert total == 40 and [r["seq"] for r in everything] == list(range(40, 25, -1))
        page2, total2 = await store.search({}, limit=15, after_seq=everything[-1]["seq"])
        assert total2 == 40 and [r["seq"] for r in page2] == list(range(25, 10, -1))

        async def seqs(**filters: Any) -> tuple[set[int], int]:
            found, n = await store.search(filters, limit=100)
            assert n == len(found)
            return {r["seq"] - 1 for r in found}, n  # seq - 1 = the i that body(i) was made with

        assert (await seqs(department="civil"))[0] == set(range(0, 40, 2))
        assert (await seqs(client_id="health-app", outcome="denied"))[0] == {i for i in range(1, 40, 2) if i % 4 == 0}
        assert (await seqs(acting_user="official-001"))[0] == set(range(1, 40, 3))
        assert (await seqs(purpose="public-health-followup"))[0] == set(range(1, 40, 2))
        assert (await seqs(subject_hmac="hmac-3"))[0] == set(range(3, 40, 7))
        assert (await seqs(dataset="psb.residents", field="address", disposition="consent_required"))[0] == set(
            range(0, 40, 5))
        assert (await seqs(dataset="psb.residents", field="nope"))[1] == 0
        times = [r["time"] for r in sorted(everything + page2, key=lambda r: r["seq"])]
        assert (await seqs(time_from=times[5]))[1] >= 40 - 15  # times are non-decreasing along the chain
        assert (await seqs(time_to="2000-01-01"))[1] == 0
        with pytest.raises(ValueError, match="unknown search filter"):
            await store.search({"colour": "red"})
    finally:
        await store.close()


async def test_the_newest_admin_record_of_an_event_is_found_page_by_page(url: str, tmp_path: Path) -> None:
    from gateway.audit.writer import AuditWriter

    store = AuditStore(url)
    await store.init()
    writer = AuditWriter(store, new_keys(tmp_path), checkpoint_every=10, checkpoint_seconds=3600)
    await writer.start()
    try:
        for i in range(3):
            await writer.append("admin", {"event": "gateway.start", "n": i, "outcome": "ok"})
        for i in range(7):  # other admin events and requests since, pages of 2 to read back through
            await writer.append("admin", {"event": "consent.grant", "n": i, "outcome": "ok"})
            await writer.append("request", body(i))
        newest = await store.newest_admin("gateway.start", page=2)
        assert newest is not None and newest["body"]["n"] == 2
        first = await store.newest_admin("gateway.start", lambda b: b["n"] == 0, page=2)
        assert first is not None and first["seq"] == 1
        assert await store.newest_admin("audit.prune", page=2) is None
    finally:
        await writer.close()
        await store.close()


# --- canonical records survive every round trip ---------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20)
bodies = st.dictionaries(st.text(max_size=10), json_values, max_size=6)


@given(st.lists(bodies, min_size=1, max_size=4))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_round_trip_keeps_content(records: list[dict[str, Any]]) -> None:
    async def go() -> None:
        folder = Path(tempfile.mkdtemp())
        store = AuditStore(sqlite_url(folder))
        keys = new_keys(folder)
        writer = AuditWriter(store, keys)
        await writer.start()
        receipts = [await writer.append("request", b) for b in records]
        await writer.close()
        try:
            assert (await verify_store(store, keys)).ok
            for r, b in zip(receipts, records, strict=True):
                assert r.hash == chain_hash(r.seq, r.time, "request", b, (await store.search({}, 100))[0][
                    len(records) - r.seq]["prev_hash"])
            for fmt in ("jsonl", "csv"):
                objs = await export_objects(store, keys, fmt)
                assert [o["body"] for o in objs if o["type"] == "record"] == records
                report = await verify_file(write_export(folder / f"x.{fmt}", fmt, objs), keys)
                assert report.ok, report
        finally:
            await store.close()

    asyncio.run(go())


@given(bodies, st.integers(1, 2**40), st.sampled_from(["request", "admin"]))
def test_raw_hash_equals_canonical_hash(b: dict[str, Any], seq: int, kind: str) -> None:
    prev = "ab" * 32
    assert record_hash_raw(seq, "2025-01-01T00:00:00.000000Z", kind, check_body(b), prev) == chain_hash(
        seq, "2025-01-01T00:00:00.000000Z", kind, b, prev)
    assert orjson.loads(canonical(b)) == b


def test_bodies_that_would_not_survive_are_refused() -> None:
    for bad in ({"x": float("inf")}, {"x": [float("nan")]}, {1: "x"}, {"x": 2**64}, {"x": object()}, ["list"]):
        with pytest.raises(ValueError):
            check_body(bad)


# --- settings ------------------------------------------------------------------------------------


def config(tmp_path: Path, audit: str) -> Path:
    path = tmp_path / "hutong.toml"
    path.write_text(f'[gateway]\ncatalog = "catalog"\n[audit]\n{audit}\n', encoding="utf-8")
    return path


def test_settings_defaults_and_paths(tmp_path: Path) -> None:
    a = AuditSettings.from_settings(load_settings(config(tmp_path, ""), environ={}))
    assert a.url == f"sqlite+aiosqlite:///{tmp_path / 'run' / 'audit.sqlite'}"
    assert a.signing_key == tmp_path / "run" / "audit-signing-key.pem"
    assert (a.checkpoint_every, a.checkpoint_seconds, a.durable, a.batch_max, a.retention_days) == (1000, 60, True,
                                                                                                    256, 0)
    a = AuditSettings.from_settings(load_settings(config(tmp_path, 'url = "postgresql+asyncpg://gw:${PW}@db/a"\n'
                                                                   "durable = false\ncheckpoint_every = 10"),
                                                  environ={}), environ={"PW": "s"})
    assert a.url == "postgresql+asyncpg://gw:s@db/a" and not a.durable and a.checkpoint_every == 10


@pytest.mark.parametrize(("text", "message"), [
    ("colour = 1", "unknown key.*colour"), ("durable = 1", "durable"), ("checkpoint_every = 0", "checkpoint_every"),
    ('url = "mysql+aiomysql://x/y"', "audit store"), ('url = "sqlite+aiosqlite:///:memory:"', "forgets every record"),
    ("batch_max = true", "batch_max"), ("checkpoint_seconds = 0", "checkpoint_seconds"),
])
def test_settings_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AuditSettings.from_settings(load_settings(config(tmp_path, text), environ={}))


# --- the commands ---------------------------------------------------------------------------------


def test_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.audit.cli import audit_app

    cfg = config(tmp_path, "checkpoint_every = 10")
    monkeypatch.setenv("HUTONG_CONFIG", str(cfg))
    audit = AuditSettings.from_settings(load_settings(cfg, environ={}))

    async def seed() -> None:
        from gateway.audit.keys import AuditKeys

        store = AuditStore(audit.url)
        await store.init()
        await fill(store, AuditKeys.load(audit.signing_key), 25)
        await store.close()

    asyncio.run(seed())
    run = CliRunner().invoke
    r = run(audit_app, ["verify"])
    assert r.exit_code == 0 and "OK records 1 to 25" in r.output, r.output
    for fmt in ("jsonl", "csv"):
        out = tmp_path / f"all.{fmt}"
        r = run(audit_app, ["export", "--format", fmt, "-o", str(out)])
        assert r.exit_code == 0, r.output
        assert run(audit_app, ["verify", str(out)]).exit_code == 0
        lines = out.read_text().splitlines()
        out.write_text("\n".join(line.replace("official-001", "official-999") for line in lines) + "\n")
        r = run(audit_app, ["verify", str(out), "--json"])
        assert r.exit_code == 1 and orjson.loads(r.output)["damage"] == "changed", r.output
    r = run(audit_app, ["search", "--department", "civil", "--limit", "5", "--json"])
    found = orjson.loads(r.output)
    assert found["total"] == 13 and len(found["records"]) == 5 and found["next_after"] == found["records"][-1]["seq"]
    r = run(audit_app, ["report", "--json"])
    summary = orjson.loads(r.output)
    assert summary["department"]["civil"]["requests"] == 13 and summary["purpose"]["public-health-followup"][
        "requests"] == 12
    assert run(audit_app, ["checkpoint"]).output.startswith("checkpoint at seq 25")
    key = orjson.loads(run(audit_app, ["key"]).output)
    assert key["crv"] == "Ed25519" and key["kid"]
    assert "GRANT SELECT, INSERT" in run(audit_app, ["grants", "hutong_gw"]).output
    asyncio.run(sql(audit.url, "DELETE FROM audit_record WHERE seq = 3"))
    r = run(audit_app, ["verify"])
    assert r.exit_code == 1 and "deleted at seq 3" in r.output, r.output


# --- durable commits on PostgreSQL, and tables of an earlier version -------------------------------


@pytest.mark.services
async def test_durable_forces_synchronous_commit_on_postgresql(pg_audit_url: str) -> None:
    """Durable must not rest on the server's default: with synchronous_commit off for the database,
    the audit writer's transactions still wait for the WAL flush (and only non-durable ones do not)."""
    import sqlalchemy as sa

    name = pg_audit_url.rsplit("/", 1)[1]
    await sql(pg_audit_url, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    for durable, expected in ((True, "on"), (False, "off")):
        store = AuditStore(pg_audit_url, durable=durable)
        await store.init()
        try:
            async with store.write_transaction() as conn:
                assert (await conn.execute(sa.text("SHOW synchronous_commit"))).scalar() == expected
            async with store.engine.connect() as conn:
                assert (await conn.execute(sa.text("SHOW synchronous_commit"))).scalar() == "off"
        finally:
            await store.close()


async def test_tables_of_the_first_version_gain_the_interval_column(url: str, tmp_path: Path) -> None:
    from gateway.audit.record import checkpoint_message

    store = AuditStore(url)
    await store.init()
    keys = new_keys(tmp_path)
    try:
        await fill(store, keys, 12)
        ten = next(r for r in await rows(url) if r["seq"] == 10)
        await sql(url, "ALTER TABLE audit_checkpoint DROP COLUMN every",
                  "UPDATE audit_checkpoint SET signature = :s WHERE seq = 10",
                  params={"s": keys.sign(checkpoint_message(10, ten["hash"], ten["time"], keys.signing_id))})
    finally:
        await store.close()
    store = AuditStore(url)
    await store.init()  # adds the column; the checkpoint of the first format keeps verifying
    try:
        await fill(store, keys, 10, start=12)
        assert [(c["seq"], c["every"]) for c in await store.checkpoints()] == [(10, None), (20, 10)]
        assert (await verify_store(store, keys, checkpoint_every=10)).ok
    finally:
        await store.close()


@pytest.mark.services
async def test_gateway_role_cannot_upgrade_the_tables(pg_audit_url: str) -> None:
    role = f"hutong_audit_gw_{uuid.uuid4().hex[:8]}"
    owner = AuditStore(pg_audit_url)
    await owner.init()
    await sql(pg_audit_url, "ALTER TABLE audit_checkpoint DROP COLUMN every", f"CREATE ROLE {role} LOGIN",
              *insert_only_grants(role).strip().split(";\n")[:2])
    gw = AuditStore(pg_audit_url.replace("postgres@", f"{role}@"))
    try:
        with pytest.raises(StorePermissionError, match=r"`hutong audit init --owner-url URL`"):
            await gw.init()
    finally:
        await gw.close()
        await owner.close()
        await drop_role(pg_audit_url, role)
