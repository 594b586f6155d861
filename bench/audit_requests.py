"""Workload 5, audit cost per request: a whole GraphQL request over HTTP with the audit trail on,
durable and non-durable, against the same request with it off.

The gateway's real ASGI app (``gateway.app.create_app``) is served in process through
``httpx.ASGITransport``, with real access tokens: the demo client ``street-office-app`` sends the
lookup query (bench/lookup.py), and the bulk reader (registered in the client store for the run)
the bulk query (bench/bulk.py, 10,000 rows: its audit record names 10,000 data subjects). One
Gateway and one AuthService are shared by every variant; only the audit writer differs:

- **off**: ``NullAuditWriter``, which checks the record body and writes nothing (the baseline);
- **non-durable**: ``AuditWriter`` with ``durable = false``: the same group commit, chain and
  checkpoints, but a commit does not wait for the disk (SQLite ``synchronous = OFF``; PostgreSQL
  ``synchronous_commit = off``), so the difference to durable is the cost of the flush;
- **durable**: ``AuditWriter`` as configured by default, every commit waits for the disk (SQLite
  ``synchronous = FULL``; PostgreSQL ``synchronous_commit = on``, set by the writer).

Each audited variant has a store of its own (a SQLite file in the temporary folder, a throwaway
PostgreSQL database), all in this one process, behind one event loop.

At concurrency 1 requests go one after another (latency); above that, waves of ``concurrency``
requests go at once (``asyncio.gather``), and time per request is a wave's time over its size.
Turns rotate through the variants, so a slow spell of the machine hits all of them alike. At the
end, each store must have grown by exactly the requests sent through its app, and
``verify_store`` must find the chain and its checkpoints intact. (``bench/audit.py`` measures the
writer's appends alone.)
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench.city import BULK_READER, BULK_READER_SECRET, PG_SERVER, STREET_OFFICE, STREET_OFFICE_SECRET, World, pg_admin
from bench.common import BenchError, Target, console, percentile, requests_recorded, table
from bench.lookup import HEADERS, LOOKUP_QUERY
from gateway.app import create_app
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_store
from gateway.audit.writer import AuditWriter, NullAuditWriter
from gateway.auth.service import AuthService
from gateway.pipeline import Gateway

__all__ = ["run"]

BLOCK = 10  # sequential requests per variant per turn at concurrency 1
BULK_BLOCK = 2  # the same for the bulk request


@dataclass
class Variant:
    name: str  # off | non-durable | durable
    backend: str  # "-" for off, else sqlite | postgresql
    writer: Any
    settings: AuditSettings | None = None
    clients: dict[str, httpx.AsyncClient] = field(default_factory=dict)  # lookup | bulk -> client with its token
    sent: int = 0  # requests sent through this variant's app, warm-up included
    records_before: int = 0

    @property
    def label(self) -> str:
        return self.name if self.backend == "-" else f"{self.name} ({self.backend})"


@dataclass
class Level:
    latencies: list[float] = field(default_factory=list)  # seconds, one per timed request
    per_request: list[float] = field(default_factory=list)  # seconds per request, one per timed turn

    def json(self) -> dict[str, Any]:
        return {"requests": len(self.latencies), "median_ms": round(statistics.median(self.latencies) * 1000, 3),
                "p99_ms": round(percentile(self.latencies, 99) * 1000, 3),
                "ms_per_request": round(statistics.median(self.per_request) * 1000, 3)}


async def _send(v: Variant, kind: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    r = await v.clients[kind].post("/graphql", json=body)
    elapsed = time.perf_counter() - started
    v.sent += 1
    if r.status_code != 200 or b'"errors"' in r.content:
        raise BenchError(f"audit {v.label}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


async def _turn(v: Variant, kind: str, bodies: list[dict[str, Any]], concurrency: int, level: Level | None,
                k: int) -> None:
    started = time.perf_counter()
    if concurrency == 1:
        block = BULK_BLOCK if kind == "bulk" else BLOCK
        lat = [await _send(v, kind, bodies[(k + i) % len(bodies)]) for i in range(block)]
    else:
        lat = list(await asyncio.gather(*(_send(v, kind, bodies[(k + i) % len(bodies)])
                                          for i in range(concurrency))))
    if level is not None:
        level.per_request.append((time.perf_counter() - started) / len(lat))
        level.latencies += lat


async def _measure(variants: list[Variant], kind: str, bodies: list[dict[str, Any]], concurrency: int,
                   requests: int, warmup: int) -> dict[str, Level]:
    levels = {v.label: Level() for v in variants}
    per_turn = (BULK_BLOCK if kind == "bulk" else BLOCK) if concurrency == 1 else concurrency
    for v in variants:
        for k in range(max(1, warmup // per_turn)):
            await _turn(v, kind, bodies, concurrency, None, k)
    for turn in range(max(1, -(-requests // per_turn))):
        for v in variants[turn % len(variants):] + variants[:turn % len(variants)]:
            gc.collect()
            await _turn(v, kind, bodies, concurrency, levels[v.label], turn * per_turn)
    return levels


async def _check_stores(variants: list[Variant]) -> list[str]:
    lines = []
    for v in variants:
        if v.settings is None:
            continue
        store = AuditStore(v.settings.url)
        try:
            grown = await requests_recorded(v.settings.url) - v.records_before
            report = await verify_store(store, AuditKeys.load(v.settings.signing_key, generate=False),
                                        checkpoint_every=v.settings.checkpoint_every, head_mark=v.settings.head_mark)
        finally:
            await store.close()
        if grown != v.sent:
            raise BenchError(f"audit {v.label}: the store grew by {grown:,} records for {v.sent:,} requests")
        if not report.ok:
            raise BenchError(f"audit {v.label}: verify_store found {report.damage} at seq {report.first_bad_seq}")
        lines.append(f"{v.label}: {grown:,} records for {v.sent:,} requests, {report.checkpoints} checkpoint(s), "
                     "chain verified")
    return lines


async def _token(client: httpx.AsyncClient, client_id: str, secret: str) -> str:
    r = await client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                "client_secret": secret})
    if r.status_code != 200:
        raise BenchError(f"audit: no access token for {client_id}: HTTP {r.status_code}: {r.text[:300]}")
    token: str = r.json()["access_token"]
    return token


async def run(world: World, gw: Gateway, levels: list[int], requests: int, warmup: int, bulk_rows: int,
              bulk_requests: int) -> tuple[dict[str, Any], list[Target]]:
    from bench.bulk import BULK_QUERY
    from bench.lookup import applicants

    backend = world.backends[0]
    settings = backend.settings()
    kinds = {"lookup": [{"query": LOOKUP_QUERY, "variables": {"id": i}} for i in applicants(world.city)],
             "bulk": [{"query": BULK_QUERY, "variables": {"n": min(bulk_rows, world.residents)}}]}
    key = world.root / "run" / "audit-signing-key.pem"
    variants = [Variant("off", "-", NullAuditWriter())]
    drops: list[str] = []
    tag = uuid.uuid4().hex[:8]
    for name in ["sqlite"] + (["postgresql"] if any(b.name == "postgresql" for b in world.backends) else []):
        for mode in ("non-durable", "durable"):
            if name == "sqlite":
                url = f"sqlite+aiosqlite:///{world.root}/run/audit-bench-{tag}-{mode}.sqlite"
            else:
                db = f"hutong_bench_audit_{uuid.uuid4().hex[:10]}"
                await pg_admin(f'CREATE DATABASE "{db}"')
                drops.append(db)
                url = f"{PG_SERVER}/{db}"
            audit = AuditSettings(url=url, signing_key=key, durable=mode == "durable")
            # A generous timeout: a slow disk must show up as a slow request, not as AUDIT_UNAVAILABLE.
            variants.append(Variant(mode, name, AuditWriter.from_settings(audit, timeout=60), audit))
    auth = AuthService.from_settings(settings)
    started: list[Any] = []
    results: dict[str, dict[str, Level]] = {}
    try:
        await auth.start()
        if await auth.store.get(BULK_READER.client_id) is None:
            await auth.store.add(BULK_READER.client_id, BULK_READER.department, sorted(BULK_READER.roles),
                                 secret=BULK_READER_SECRET)
        for v in variants:
            await v.writer.start()
            started.append(v.writer)
            if v.settings is not None:
                v.records_before = await requests_recorded(v.writer.store.url)
        tokens: dict[str, str] = {}
        reference: dict[str, Any] = {}
        for v in variants:
            app = create_app(settings, gw, auth, v.writer)
            for kind, (client_id, secret) in {"lookup": (STREET_OFFICE.client_id, STREET_OFFICE_SECRET),
                                              "bulk": (BULK_READER.client_id, BULK_READER_SECRET)}.items():
                client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=120)
                v.clients[kind] = client
                if kind not in tokens:
                    tokens[kind] = await _token(client, client_id, secret)
                client.headers.update({"Authorization": f"Bearer {tokens[kind]}", **HEADERS})
                r = await client.post("/graphql", json=kinds[kind][0])
                v.sent += 1
                if kind not in reference:
                    reference[kind] = r.json()
                elif r.json() != reference[kind]:
                    raise BenchError(f"audit {v.label} answered {kind} differently from audit off")
        for c in levels:
            results[f"lookup, concurrency {c}"] = await _measure(variants, "lookup", kinds["lookup"], c, requests,
                                                                 warmup)
        results["bulk, concurrency 1"] = await _measure(variants, "bulk", kinds["bulk"], 1, bulk_requests, 2)
        for v in variants:
            for client in v.clients.values():
                await client.aclose()
        while started:
            await started.pop().close()  # commit whatever is queued before counting
        checks = await _check_stores(variants)
    finally:
        for w in started:
            await w.close()
        await auth.close()
        for db in drops:
            await pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')

    rows_n = kinds["bulk"][0]["variables"]["n"]
    out: dict[str, Any] = {"requests": {"lookup": "the lookup query (bench/lookup.py), street office",
                                        "bulk": f"the bulk query (bench/bulk.py), {rows_n:,} rows, bulk reader"},
                           "transport": "HTTP through the real ASGI app in process (httpx.ASGITransport)",
                           "levels": {}, "checks": checks}
    for level, by in results.items():
        off = by["off"]
        concurrency = int(level.rsplit(" ", 1)[1])
        rows = []
        out["levels"][level] = {}
        for v in variants:
            m = by[v.label]
            base = statistics.median(off.latencies) if concurrency == 1 else statistics.median(off.per_request)
            value = statistics.median(m.latencies) if concurrency == 1 else statistics.median(m.per_request)
            entry = {**m.json(), "vs_off": round(value / base, 3), "added_ms": round((value - base) * 1000, 3)}
            out["levels"][level][v.label] = entry
            rows.append([v.label, f"{entry['median_ms']:.2f}", f"{entry['p99_ms']:.2f}",
                         f"{1 / statistics.median(m.per_request):,.0f}",
                         "" if v.name == "off" else f"{entry['added_ms']:+.2f}", f"{entry['vs_off']:.2f}x"])
        what = f"the bulk query ({rows_n:,} rows)" if level.startswith("bulk") else "the lookup"
        console.print(table(
            f"[bold]audit cost per request[/], {what} over HTTP (in-process ASGI), concurrency {concurrency}: "
            "audit off vs non-durable vs durable",
            [("variant", "left"), ("median ms", "right"), ("p99 ms", "right"), ("req/s", "right"),
             ("+ms/req", "right"), ("vs off", "right")], rows,
            caption=("vs off: median latency over off's" if concurrency == 1 else
                     "vs off: time per request (a wave's time / its size) over off's")))
    for line in checks:
        console.print(f"[dim]{line}[/]", markup=True)
    return out, []
