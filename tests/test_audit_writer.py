"""The writer: group commit, fail closed when the store refuses or vanishes mid-run (and recovers),
and several OS processes appending to one store at once keep one chain with no record lost."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.audit import AuditUnavailable, AuditWriter, verify_store
from gateway.audit.store import AuditStore
from gateway.config import REPO_ROOT
from tests.test_audit_support import body, new_keys, rows, sql, sqlite_url


async def test_group_commit_batches_concurrent_appends(url: str, tmp_path: Path) -> None:
    keys = new_keys(tmp_path)
    store = AuditStore(url)
    writer = AuditWriter(store, keys, checkpoint_every=100, batch_max=64, own_store=True)
    await writer.start()
    receipts = await asyncio.gather(*(writer.append("request", body(i)) for i in range(500)))
    await writer.close()
    assert sorted(r.seq for r in receipts) == list(range(1, 501))
    assert writer.batches < 100  # grouped, not one transaction per record
    store = AuditStore(url)
    try:
        report = await verify_store(store, keys)
        assert report.ok and report.records == 500, report
        assert report.last_seq == 500 and not report.warnings  # close() signed the head
    finally:
        await store.close()


async def test_bad_body_fails_alone(tmp_path: Path) -> None:
    writer = AuditWriter(AuditStore(sqlite_url(tmp_path)), new_keys(tmp_path), own_store=True)
    await writer.start()
    try:
        good = asyncio.ensure_future(writer.append("request", body(1)))
        with pytest.raises(ValueError, match="NaN"):
            await writer.append("request", {"latency_ms": float("nan")})
        with pytest.raises(ValueError, match="kind"):
            await writer.append("other", body(2))
        assert (await good).seq == 1
    finally:
        await writer.close()


async def test_not_running_is_unavailable(tmp_path: Path) -> None:
    writer = AuditWriter(AuditStore(sqlite_url(tmp_path)), new_keys(tmp_path), own_store=True)
    with pytest.raises(AuditUnavailable):
        await writer.append("request", body(1))
    await writer.start()
    await writer.close()
    with pytest.raises(AuditUnavailable) as info:
        await writer.append("request", body(1))
    assert info.value.code == "AUDIT_UNAVAILABLE" and info.value.status == 503


BLOCK = {
    "sqlite": ["CREATE TRIGGER audit_block BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'disk full'); END"],
    "postgresql": ["CREATE FUNCTION audit_block() RETURNS trigger LANGUAGE plpgsql AS "
                   "'BEGIN RAISE EXCEPTION ''disk full''; END'",
                   "CREATE TRIGGER audit_block BEFORE INSERT ON audit_record FOR EACH ROW EXECUTE FUNCTION "
                   "audit_block()"],
}
UNBLOCK = {"sqlite": ["DROP TRIGGER audit_block"], "postgresql": ["DROP TRIGGER audit_block ON audit_record"]}


async def load(writer: AuditWriter, stop: asyncio.Event, ok: list[Any], failed: list[int], workers: int = 8) -> None:
    async def one(w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                ok.append(await writer.append("request", body(w * 100_000 + i)))
            except AuditUnavailable:
                failed.append(w)
                await asyncio.sleep(0.005)

    await asyncio.gather(*(one(w) for w in range(workers)))


async def test_fail_closed_when_the_store_refuses_writes_mid_run(url: str, tmp_path: Path) -> None:
    """While inserts fail, every append raises; none is reported durable that is not stored; the
    writer recovers by itself once the store takes writes again."""
    backend = "postgresql" if url.startswith("postgresql") else "sqlite"
    keys = new_keys(tmp_path)
    writer = AuditWriter(AuditStore(url), keys, checkpoint_every=50, own_store=True)
    await writer.start()
    ok: list[Any] = []
    failed: list[int] = []
    stop = asyncio.Event()
    task = asyncio.create_task(load(writer, stop, ok, failed))
    await asyncio.sleep(0.3)
    before = len(ok)
    await sql(url, *BLOCK[backend])
    await asyncio.sleep(0.3)
    during_ok, during_failed = len(ok), len(failed)
    await sql(url, *UNBLOCK[backend])
    await asyncio.sleep(0.3)
    stop.set()
    await task
    await writer.close()
    assert before > 0 and during_failed > 0 and len(ok) > during_ok  # worked, refused, recovered
    stored = {r["seq"]: r["hash"] for r in await rows(url)}
    assert {r.seq: r.hash for r in ok} == stored  # exactly the acknowledged records, no more, no fewer
    store = AuditStore(url)
    try:
        report = await verify_store(store, keys)
        assert report.ok and report.records == len(ok), report
    finally:
        await store.close()


@pytest.mark.services
async def test_fail_closed_when_postgresql_refuses_connections(pg_audit_url: str, tmp_path: Path) -> None:
    name = pg_audit_url.rsplit("/", 1)[1]
    keys = new_keys(tmp_path)
    writer = AuditWriter(AuditStore(pg_audit_url), keys, own_store=True, timeout=5)
    await writer.start()

    async def admin(statement: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    try:
        first = await writer.append("request", body(1))
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        results = await asyncio.gather(*(writer.append("request", body(i)) for i in range(20)),
                                       return_exceptions=True)
        assert all(isinstance(r, AuditUnavailable) for r in results), results
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        after = await writer.append("request", body(2))
        assert after.seq == first.seq + 1  # nothing was written while refused
    finally:
        await admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await writer.close()


async def test_time_checkpoint_when_idle(tmp_path: Path) -> None:
    keys = new_keys(tmp_path)
    store = AuditStore(sqlite_url(tmp_path))
    writer = AuditWriter(store, keys, checkpoint_every=1000, checkpoint_seconds=0.1)
    await writer.start()
    try:
        await writer.append("request", body(1))
        await writer.append("request", body(2))
        deadline = time.monotonic() + 5
        while not await store.checkpoints() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert [c["seq"] for c in await store.checkpoints()][-1] == 2
    finally:
        await writer.close()
        await store.close()


APPENDER = textwrap.dedent("""
    import asyncio, sys
    from pathlib import Path
    from gateway.audit import AuditWriter, AuditStore
    from gateway.audit.keys import AuditKeys
    from tests.test_audit_support import body

    async def main(url, key, n, tag):
        writer = AuditWriter(AuditStore(url), AuditKeys.load(Path(key)), checkpoint_every=100, own_store=True)
        await writer.start()
        sem = asyncio.Semaphore(32)
        async def one(i):
            async with sem:
                return await writer.append("request", body(i, request_id=f"{tag}-{i}"))
        receipts = await asyncio.gather(*(one(i) for i in range(n)))
        await writer.close()
        print(" ".join(str(r.seq) for r in receipts))

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
""")


async def test_two_processes_keep_one_chain(url: str, tmp_path: Path) -> None:
    n = 1500
    keys = new_keys(tmp_path)  # both processes share the key file, like two workers of one gateway
    store = AuditStore(url)
    await store.init()  # created once, as the gateway's start does
    procs = [await asyncio.create_subprocess_exec(sys.executable, "-c", APPENDER, url, str(tmp_path / "audit-key.pem"),
                                                  str(n), tag, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE) for tag in ("a", "b")]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 300)
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err.decode()
    seqs = [int(s) for out, _ in outputs for s in out.split()]
    assert len(seqs) == 2 * n and sorted(seqs) == list(range(1, 2 * n + 1))  # every receipt a distinct seq
    try:
        assert await store.count() == 2 * n
        report = await verify_store(store, keys)
        assert report.ok and report.records == 2 * n, report
        order = [r["body"]["request_id"].split("-")[0] async for r in store.bodies({})]
        assert sorted(set(order)) == ["a", "b"] and order.count("a") == n
        switches = sum(x != y for x, y in itertools.pairwise(order))
        assert switches >= 1, "the two processes never interleaved"
    finally:
        await store.close()


@pytest.mark.parametrize("stalls", ["before the write", "during the write"])
async def test_a_record_the_caller_gave_up_on_never_says_it_was_answered(tmp_path: Path, stalls: str) -> None:
    """The caller answers 503 when the store does not confirm in time; the record written later
    says so (still queued), or an admin record corrects it (already being written)."""
    keys = new_keys(tmp_path)
    store = AuditStore(sqlite_url(tmp_path))
    writer = AuditWriter(store, keys, own_store=True, timeout=0.2)
    gate = asyncio.Event()
    if stalls == "before the write":
        write = writer._write

        async def stalled(batch: Any) -> Any:
            await gate.wait()
            return await write(batch)
        writer._write = stalled  # type: ignore[method-assign]
    else:
        write_in = writer.write_in

        async def stalled_in(conn: Any, items: Any) -> Any:
            await gate.wait()
            return await write_in(conn, items)
        writer.write_in = stalled_in  # type: ignore[method-assign]
    await writer.start()
    try:
        with pytest.raises(AuditUnavailable, match="did not confirm the record in time"):
            await writer.append("request", {**body(1), "status": 200, "outcome": "ok", "codes": []})
        gate.set()
        for _ in range(100):  # the stalled batch commits once the store answers again
            if await store.count() >= (1 if stalls == "before the write" else 2):
                break
            await asyncio.sleep(0.02)
    finally:
        await writer.close()
    records, _ = await store.search({}, limit=10)
    bodies = {r["kind"]: r["body"] for r in records}
    if stalls == "before the write":
        assert bodies["request"]["status"] == 503 and bodies["request"]["outcome"] == "failed"
        assert "AUDIT_UNAVAILABLE" in bodies["request"]["codes"] and bodies["request"]["answered"] is False
    else:
        assert bodies["request"]["outcome"] == "ok"  # written as it was when the caller gave up ...
        correction = bodies["admin"]  # ... and corrected right after
        assert correction["event"] == "audit.answer_withheld" and correction["status"] == 503
        assert correction["corrects_seq"] == next(r["seq"] for r in records if r["kind"] == "request")
    check = AuditStore(sqlite_url(tmp_path))
    try:
        report = await verify_store(check, keys)
    finally:
        await check.close()
    assert report.ok, report.detail


async def test_writers_with_different_intervals_leave_no_checkpoint_missing(url: str, tmp_path: Path) -> None:
    """A rolling configuration change: one writer every 10 records, another every 3, on one store.
    Each also signs the multiples of the interval the last checkpoint declares."""
    keys = new_keys(tmp_path)
    a = AuditWriter(AuditStore(url), keys, checkpoint_every=10, checkpoint_seconds=3600, own_store=True,
                    checkpoint_on_close=False)
    b = AuditWriter(AuditStore(url), keys, checkpoint_every=3, checkpoint_seconds=3600, own_store=True,
                    checkpoint_on_close=False)
    await a.start()
    await b.start()
    try:
        for writer, n in ((a, 10), (b, 2), (a, 4), (b, 3)):
            for i in range(n):
                await writer.append("request", body(i))
    finally:
        await a.close()
        await b.close()
    store = AuditStore(url)
    try:
        assert [c["seq"] for c in await store.checkpoints()] == [10, 12, 15, 18]
        for every in (None, 10, 3):
            report = await verify_store(store, keys, checkpoint_every=every)
            assert report.ok, (every, report.detail)
    finally:
        await store.close()
