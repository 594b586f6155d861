"""What auditing costs per append, the writer alone: durable group commit vs commit without waiting
for the disk vs no audit at all (a no-op writer), on SQLite and PostgreSQL, at concurrency 1 and 32.

``python -m bench.audit [--records N] [--pg-url URL | --no-pg]`` appends a typical request body
(the shape the pipeline writes) N times per configuration, ``concurrency`` appends in flight at
once, and prints records/s, the median and 99th-percentile latency of one append, and the ratio
of each configuration's time per record to the no-op's. What audit adds to a whole GraphQL request
(off / non-durable / durable, over HTTP through the real app) is measured by
``bench/audit_requests.py``, the suite's audit workload (``python -m bench.suite --only audit``).
It prints, never asserts: timings belong to the machine they ran on.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gateway.audit.keys import AuditKeys, generate_key_file
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter, NullAuditWriter


def typical_body(i: int) -> dict[str, Any]:
    return {"request_id": f"01J{i:023d}", "client_id": "street-office-app", "department": "civil",
            "acting_user": "official-007", "case_id": "DB990106000001", "purpose": "subsistence-allowance-review",
            "ip": "10.1.2.3", "query_hash": f"{i:064x}",
            "query": "query ($id: ID!) { person(idNumber: $id) { resident { name district } pensions { status "
                     "monthlyAmount } properties { address } } }",
            "fields": [{"dataset": d, "field": f, "disposition": p} for d, f, p in (
                ("psb.residents", "name", "clear"), ("psb.residents", "district", "clear"),
                ("hrss.pensions", "status", "clear"), ("hrss.pensions", "monthlyAmount", "masked"),
                ("housing.properties", "address", "consent_required"))],
            "subjects": [f"{i % 997:064x}"], "rows": {"psb_registry": 1, "hrss_db": 2, "housing_api": 1},
            "outcome": "partial", "codes": ["CONSENT_REQUIRED"], "latency_ms": 12.4, "consents": [],
            "legal_bases": ["social-assistance-regulation-art-12"]}


async def run(writer: Any, n: int, concurrency: int) -> tuple[float, list[float]]:
    await writer.start()
    latencies: list[float] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            t = time.perf_counter()
            await writer.append("request", typical_body(i))
            latencies.append(time.perf_counter() - t)

    for i in range(min(50, n)):  # warm up: connections, table creation
        await one(-1 - i)
    latencies.clear()
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    elapsed = time.perf_counter() - start
    await writer.close()
    return elapsed, latencies


async def pg_database(base: str) -> tuple[str, Any]:
    import asyncpg

    name = f"hutong_bench_audit_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres", timeout=5)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()

    async def drop() -> None:
        c = await asyncpg.connect(host="127.0.0.1", user="postgres", database="postgres")
        await c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await c.close()

    return f"{base.rstrip('/')}/{name}", drop


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    parser.add_argument("--pg-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432",
                        help="server URL without database: a throwaway database is made there")
    parser.add_argument("--no-pg", action="store_true")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="hutong-bench-audit-"))
    generate_key_file(folder / "key.pem")
    keys = AuditKeys.load(folder / "key.pem")
    backends = ["sqlite"] + ([] if args.no_pg else ["postgresql"])
    print(f"{'backend':<11}{'conc':>5} {'mode':<12}{'rec/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'per rec vs none':>17}")
    for backend in backends:
        for concurrency in (1, 32):
            base: float | None = None
            for mode in ("none", "non-durable", "durable"):
                drop = None
                if mode == "none":
                    writer: Any = NullAuditWriter()
                else:
                    if backend == "sqlite":
                        url = f"sqlite+aiosqlite:///{folder / f'{uuid.uuid4().hex}.sqlite'}"
                    else:
                        url, drop = await pg_database(args.pg_url)
                    writer = AuditWriter(AuditStore(url, durable=mode == "durable"), keys, own_store=True,
                                         timeout=60)
                try:
                    elapsed, lat = await run(writer, args.records, concurrency)
                finally:
                    if drop is not None:
                        await drop()
                per = elapsed / args.records
                base = per if base is None else base
                lat.sort()
                print(f"{backend:<11}{concurrency:>5} {mode:<12}{args.records / elapsed:>10,.0f}"
                      f"{statistics.median(lat) * 1e3:>9.3f}{lat[int(len(lat) * 0.99) - 1] * 1e3:>9.3f}"
                      f"{per / base:>16.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
