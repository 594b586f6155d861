"""Shared helpers for the audit tests (tests/test_audit_*.py): no tests of its own.

A store on SQLite or on a throwaway PostgreSQL database, a writer with a fresh key, direct
(privileged) SQL to tamper with the tables, and exports read and rewritten object by object.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.audit.export import export, write_object, write_preamble
from gateway.audit.keys import AuditKeys, generate_key_file
from gateway.audit.record import canonical, chain_hash
from gateway.audit.store import AuditStore
from gateway.audit.verify import read_objects
from gateway.audit.writer import AuditWriter
from tests.conftest import throwaway_pg_database

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)]


def pg_database() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_audit")


def sqlite_url(folder: Path) -> str:
    return f"sqlite+aiosqlite:///{folder / 'run' / 'audit.sqlite'}"


def new_keys(folder: Path, name: str = "audit-key.pem") -> AuditKeys:
    path = folder / name
    if not path.exists():
        generate_key_file(path)
    return AuditKeys.load(path)


def body(i: int, **extra: Any) -> dict[str, Any]:
    """A request record body as the pipeline writes it."""
    return {"request_id": f"req-{i}", "client_id": ["street-office-app", "health-app"][i % 2],
            "department": ["civil", "health"][i % 2], "acting_user": f"official-{i % 3:03d}", "case_id": f"C{i}",
            "purpose": ["subsistence-allowance-review", "public-health-followup"][i % 2], "ip": "10.0.0.1",
            "query_hash": f"{i:064x}", "query": "{ residents { nodes { name } } }",
            "fields": [{"dataset": "psb.residents", "field": "name", "disposition": "clear"},
                       {"dataset": "psb.residents", "field": "address",
                        "disposition": "consent_required" if i % 5 == 0 else "masked"}],
            "subjects": [f"hmac-{i % 7}"], "rows": {"psb_registry": i}, "outcome": "denied" if i % 4 == 0 else "ok",
            "codes": [], "latency_ms": 1.5 + i, "consents": [], "legal_bases": [], **extra}


async def fill(store: AuditStore, keys: AuditKeys, n: int, *, checkpoint_every: int = 10, start: int = 0,
               head_mark: Path | None = None, batch: int = 1) -> None:
    """Append n records, ``batch`` at a time (checkpoints fall at every multiple of ``checkpoint_every``)."""
    writer = AuditWriter(store, keys, checkpoint_every=checkpoint_every, checkpoint_seconds=3600,
                         checkpoint_on_close=False, head_mark=head_mark)
    await writer.start()
    try:
        for lo in range(start, start + n, batch):
            await asyncio.gather(*(writer.append("request", body(i)) for i in range(lo, min(lo + batch, start + n))))
    finally:
        await writer.close()


async def drop_role(url: str, role: str) -> None:
    """Remove a test's database role and what it owns in the audit database ``url``."""
    import asyncpg

    await sql(url, f"DROP OWNED BY {role}")
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
    try:
        await conn.execute(f"DROP ROLE IF EXISTS {role}")
    finally:
        await conn.close()


async def sql(url: str, *statements: str, params: dict[str, Any] | None = None) -> list[Any]:
    """Run statements with the owner's rights (the tampering an attacker with database access does)."""
    engine = create_async_engine(url)
    results = []
    try:
        async with engine.begin() as conn:
            for s in statements:
                result = await conn.execute(sa.text(s), params or {})
                results.append(result.fetchall() if result.returns_rows else result.rowcount)
    finally:
        await engine.dispose()
    return results


async def renumber(url: str, where: str, delta: int) -> None:
    """seq = seq + delta for the records matching ``where`` (in two steps: seq is a primary key)."""
    await sql(url, f"UPDATE audit_record SET seq = -(seq + {delta}) WHERE {where}",
              "UPDATE audit_record SET seq = -seq WHERE seq < 0")


async def rows(url: str) -> list[dict[str, Any]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(sa.text(
                "SELECT seq, time, kind, body, prev_hash, hash FROM audit_record ORDER BY seq"))).mappings()]
    finally:
        await engine.dispose()


def forge(seq: int, time: str, body_: dict[str, Any], prev_hash: str, kind: str = "request") -> dict[str, Any]:
    """A record an attacker made: self-consistent (its hash recomputed)."""
    return {"seq": seq, "time": time, "kind": kind, "body": canonical(body_).decode(), "prev_hash": prev_hash,
            "hash": chain_hash(seq, time, kind, body_, prev_hash)}


async def export_objects(store: AuditStore, keys: AuditKeys, fmt: str = "jsonl", **kwargs: Any) -> list[dict]:
    """An export as objects (header, checkpoints, records, end), to edit and write back."""
    buf = io.StringIO()
    await export(store, buf, fmt, keys, **kwargs)
    return parse_export(buf.getvalue(), fmt)


def parse_export(text: str, fmt: str) -> list[dict[str, Any]]:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=f".{fmt}", delete=False, encoding="utf-8", newline="") as f:
        f.write(text)
    try:
        return list(read_objects(Path(f.name)))
    finally:
        Path(f.name).unlink()


def write_export(path: Path, fmt: str, objects: list[dict[str, Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        write_preamble(f, fmt)
        for obj in objects:
            write_object(f, fmt, obj)
    return path


async def open_store(url: str) -> AsyncIterator[AuditStore]:
    store = AuditStore(url)
    await store.init()
    try:
        yield store
    finally:
        await store.close()


def test_the_console_describes_every_kind_of_damage_verify_reports() -> None:
    from gateway.audit.verify import DAMAGE_KINDS
    from gateway.console.pages.audit import DAMAGE

    assert set(DAMAGE) == set(DAMAGE_KINDS)
