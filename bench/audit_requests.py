"""What auditing adds to a whole GraphQL request over HTTP, as a ratio to the same request with audit off.

``python -m bench.audit_requests [--residents N] [--requests N] [--concurrency 1,16]`` builds a
throwaway demo city, starts its Housing REST service on a free loopback port, and serves the
gateway's real ASGI app (``gateway.app.create_app``) in process through ``httpx.ASGITransport``,
with a real access token for the ``tester`` client. One Gateway and one AuthService are shared
by every variant; only the audit writer differs:

- **off**: ``NullAuditWriter``, which checks the record body and writes nothing (the baseline);
- **non-durable**: ``[audit] durable = false``, commit without waiting for the disk;
- **durable**: the default, every commit waits for fsync (SQLite ``synchronous = FULL``,
  PostgreSQL ``synchronous_commit``).

Audited variants run on SQLite (a file in the temporary folder) and, when 127.0.0.1:5432 answers,
on PostgreSQL (a throwaway database per variant, dropped afterwards). Every variant sends the same
request; rounds interleave the variants so that a slow spell of the machine hits all of them alike.
Afterwards each audit store must hold exactly one record per request sent through its app, and
``verify_store`` must find its chain intact. It prints ratios, never asserts on times: timings
belong to the machine they ran on. See bench/README.md, "Audit cost per request".
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.table import Table

from bench.harness import ServerThread
from catalog.loader import load_catalog
from demo.build import build_demo
from demo.housing_service import create_app as housing_app
from gateway.app import create_app
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_store
from gateway.audit.writer import AuditWriter, NullAuditWriter
from gateway.auth.service import AuthService
from gateway.config import REPO_ROOT, Settings, load_settings
from gateway.pipeline import Gateway

__all__ = ["QUERY", "main"]

QUERY = ("query($id: String!) { person(idNumber: $id) { resident { name householdMembers { name "
         "person { pensions { status } properties { propertyId } } } } } }")

DEFAULT_RESIDENTS = 2_000
DEFAULT_REQUESTS = 160  # timed requests per variant at each concurrency level
DEFAULT_WARMUP = 20  # untimed requests per variant at each concurrency level
DEFAULT_CONCURRENCY = (1, 16)
BLOCK = 10  # sequential requests per variant per turn at concurrency 1
WAVES = 1  # waves of `concurrency` requests per variant per turn at higher concurrency
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"

TESTER_SECRET = "tester-secret-for-bench-only-0001"
TEST_POLICY = REPO_ROOT / "tests" / "policy-tester.csv"
HEADERS = {"X-Purpose": "citizen-self-service", "X-Acting-User": "official-007", "X-Case-Id": "CASE-BENCH-1"}

console = Console(highlight=False)


class BenchError(Exception):
    """A variant answered wrongly, or its audit store does not hold what was sent: no numbers."""


@dataclass
class Variant:
    name: str  # off | non-durable | durable
    backend: str  # "-" for off, else sqlite | postgresql
    writer: Any
    settings: AuditSettings | None = None
    client: httpx.AsyncClient | None = None
    sent: int = 0  # requests sent through this variant's app, warm-up included
    records_before: int = 0

    @property
    def label(self) -> str:
        return self.name if self.backend == "-" else f"{self.name} ({self.backend})"


@dataclass
class Level:
    """One variant's measurements at one concurrency level."""

    latencies: list[float] = field(default_factory=list)  # seconds, one per timed request
    turns: list[float] = field(default_factory=list)  # seconds, one per timed turn
    per_turn: int = 0  # requests per turn

    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    def p95_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)] * 1000

    def per_second(self) -> float:
        """Requests per second of the median turn: a slow spell of the machine that hits a few
        turns moves it less than total requests / total time would."""
        return self.per_turn / statistics.median(self.turns)


def write_config(folder: Path, housing_url: str, audit: dict[str, Any] | None = None) -> Path:
    """A gateway configuration over the city in ``folder/data`` (like tests/conftest.py's), with the
    tester policy and, when given, an ``[audit]`` section. JSON string quoting is valid TOML."""
    lines = ["[gateway]", f"catalog = {json.dumps(str(REPO_ROOT / 'demo' / 'catalog'))}", "demo = true",
             "debug = false", "[sources.housing_api]", f"url = {json.dumps(housing_url)}",
             "[policies]", f"file = {json.dumps(str(TEST_POLICY))}",
             'mask_key = "hutong-demo-mask-key-NOT-A-SECRET"']
    if audit:
        lines.append("[audit]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in audit.items()]
    path = folder / f"hutong-{uuid.uuid4().hex[:8]}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_available() -> str | None:
    """None when PostgreSQL at 127.0.0.1:5432 takes a throwaway database, else why not."""
    try:
        await _pg_admin("SELECT 1")
    except Exception as exc:  # asyncpg raises several kinds when the server is away
        return f"{type(exc).__name__}: {exc}"
    return None


async def send(variant: Variant, body: dict[str, Any]) -> float:
    assert variant.client is not None
    started = time.perf_counter()
    r = await variant.client.post("/graphql", json=body)
    elapsed = time.perf_counter() - started
    variant.sent += 1
    if r.status_code != 200:
        raise BenchError(f"{variant.label}: HTTP {r.status_code}: {r.text[:300]}")
    return elapsed


async def sequential(variant: Variant, body: dict[str, Any], n: int, level: Level | None) -> None:
    for _ in range(n):
        latency = await send(variant, body)
        if level is not None:
            level.latencies.append(latency)


async def waves(variant: Variant, body: dict[str, Any], concurrency: int, n: int, level: Level | None) -> None:
    for _ in range(n):
        latencies = await asyncio.gather(*(send(variant, body) for _ in range(concurrency)))
        if level is not None:
            level.latencies += latencies


async def measure(variants: list[Variant], body: dict[str, Any], concurrency: int, requests: int,
                  warmup: int) -> dict[str, Level]:
    levels = {v.label: Level() for v in variants}
    if concurrency == 1:
        turns, per_turn = max(1, -(-requests // BLOCK)), BLOCK
        warm: Callable[[Variant], Awaitable[None]] = lambda v: sequential(v, body, warmup, None)  # noqa: E731
    else:
        turns, per_turn = max(1, -(-requests // (concurrency * WAVES))), WAVES
        warm = lambda v: waves(v, body, concurrency, max(1, -(-warmup // concurrency)), None)  # noqa: E731
    for v in variants:
        await warm(v)
    for turn in range(turns):
        # Rotate who goes first, so that no variant always follows the same one.
        for v in variants[turn % len(variants):] + variants[:turn % len(variants)]:
            gc.collect()  # collect the previous turn's garbage before this one is timed
            level = levels[v.label]
            started = time.perf_counter()
            if concurrency == 1:
                await sequential(v, body, per_turn, level)
                level.per_turn = per_turn
            else:
                await waves(v, body, concurrency, per_turn, level)
                level.per_turn = per_turn * concurrency
            level.turns.append(time.perf_counter() - started)
    return levels


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def report(variants: list[Variant], levels: dict[str, Level], concurrency: int) -> None:
    off = levels["off"]
    table = Table(title=f"[bold]concurrency {concurrency}[/]", title_justify="left", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("variant", "left"), ("backend", "left"), ("median ms", "right"), ("p95 ms", "right"),
                          ("req/s", "right"), ("+ms/req", "right"), ("vs off", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    if concurrency == 1:
        table.caption = ("vs off: median latency / off's median; +ms/req: the median's difference")
    else:
        table.caption = ("req/s: of the median turn; vs off: time per request (1 / req/s) / off's; "
                         "+ms/req: the difference in time per request")
    for v in variants:
        m = levels[v.label]
        if concurrency == 1:
            ratio, added = m.median_ms() / off.median_ms(), m.median_ms() - off.median_ms()
        else:
            ratio = off.per_second() / m.per_second()
            added = 1000 / m.per_second() - 1000 / off.per_second()
        table.add_row(v.name, v.backend, f"{m.median_ms():.2f}", f"{m.p95_ms():.2f}", f"{m.per_second():.0f}",
                      "" if v.name == "off" else f"{added:+.2f}", _ratio(ratio))
    console.print(table)


async def audited(folder: Path, housing_url: str, backend: str, durable: bool, keyfile: Path,
                  cleanup: list[Callable[[], Awaitable[None]]]) -> Variant:
    name = "durable" if durable else "non-durable"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{folder / f'audit-{name}.sqlite'}"
    else:
        db = f"hutong_bench_audit_{uuid.uuid4().hex[:10]}"
        await _pg_admin(f'CREATE DATABASE "{db}"')
        cleanup.append(lambda: _pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)'))
        url = f"{PG_SERVER}/{db}"
    settings = load_settings(write_config(folder, housing_url, {"url": url, "signing_key": str(keyfile),
                                                                "durable": durable}), environ={})
    audit = AuditSettings.from_settings(settings, environ={})
    # A generous timeout: a slow disk must show up as a slow request, not as AUDIT_UNAVAILABLE.
    return Variant(name, backend, AuditWriter.from_settings(audit, timeout=60), audit)


async def check_stores(variants: list[Variant]) -> list[str]:
    """Every audited store grew by exactly the requests sent through its app, and verifies."""
    lines = []
    for v in variants:
        if v.settings is None:
            continue
        store = AuditStore(v.settings.url)
        try:
            grown = await store.count() - v.records_before
            report = await verify_store(store, AuditKeys.load(v.settings.signing_key, generate=False))
        finally:
            await store.close()
        if grown != v.sent:
            raise BenchError(f"{v.label}: the audit store grew by {grown:,} records for {v.sent:,} requests")
        if not report.ok:
            raise BenchError(f"{v.label}: verify_store found {report.damage} at seq {report.first_bad_seq}: "
                             f"{report.detail}")
        lines.append(f"{v.label}: {grown:,} records for {v.sent:,} requests, {report.checkpoints} checkpoint(s), "
                     "verify ok")
    return lines


async def run(residents: int, requests: int, warmup: int, levels: Sequence[int], use_pg: bool
              ) -> tuple[list[Variant], dict[int, dict[str, Level]], list[str]]:
    results: dict[int, dict[str, Level]] = {}
    cleanup: list[Callable[[], Awaitable[None]]] = []
    with tempfile.TemporaryDirectory(prefix="hutong-bench-audit-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        city = await build_demo(root / "data", residents=residents)
        console.print(f"built a city of {residents:,} residents in {time.perf_counter() - started:.1f} s")
        body = {"query": QUERY, "variables": {"id": city.showcase["applicant_id_number"]}}
        backends = ["sqlite"]
        if use_pg:
            why = await pg_available()
            if why is None:
                backends.append("postgresql")
            else:
                console.print(f"[yellow]PostgreSQL at 127.0.0.1:5432 is unreachable ({why}): SQLite only[/]",
                              markup=True)
        with ServerThread(housing_app(root / "data" / "housing.json")) as server:
            settings: Settings = load_settings(write_config(root, server.url), environ={})
            gateway = Gateway(load_catalog(*settings.catalog), settings)
            auth = AuthService.from_settings(settings)
            variants = [Variant("off", "-", NullAuditWriter())]
            started_writers: list[Any] = []
            try:
                for backend in backends:
                    for durable in (False, True):
                        variants.append(await audited(root, server.url, backend, durable, root / "audit-key.pem",
                                                      cleanup))
                await gateway.start()
                await auth.start()
                for v in variants:
                    await v.writer.start()
                    started_writers.append(v.writer)
                    if v.settings is not None:
                        v.records_before = await v.writer.store.count()
                await auth.store.add("tester", "civil", ["tester"], secret=TESTER_SECRET)
                try:
                    results, lines = await _measure_all(variants, settings, gateway, auth, body, requests, warmup,
                                                        levels)
                finally:
                    for v in variants:
                        if v.client is not None:
                            await v.client.aclose()
                # Close the writers (committing whatever is queued) before counting their records.
                while started_writers:
                    await started_writers.pop().close()
                lines = [*lines, *await check_stores(variants)]
            finally:
                for writer in started_writers:
                    await writer.close()
                await auth.close()
                await gateway.close()
                for drop in cleanup:
                    await drop()
    return variants, results, lines


async def _measure_all(variants: list[Variant], settings: Settings, gateway: Gateway, auth: AuthService,
                       body: dict[str, Any], requests: int, warmup: int, levels: Sequence[int]
                       ) -> tuple[dict[int, dict[str, Level]], list[str]]:
    token: str | None = None
    reference: Any = None
    lines: list[str] = []
    for v in variants:
        app = create_app(settings, gateway, auth, v.writer)
        v.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=120)
        if token is None:
            r = await v.client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "tester",
                                                          "client_secret": TESTER_SECRET})
            if r.status_code != 200:
                raise BenchError(f"no access token: HTTP {r.status_code}: {r.text[:300]}")
            token = r.json()["access_token"]
        v.client.headers.update({"Authorization": f"Bearer {token}", **HEADERS})
        # Every variant must give the same complete answer before anything is timed.
        r = await v.client.post("/graphql", json=body)
        v.sent += 1
        answer = r.json()
        if r.status_code != 200 or "errors" in answer:
            raise BenchError(f"{v.label}: HTTP {r.status_code}: {r.text[:300]}")
        if reference is None:
            reference = answer
            members = answer["data"]["person"]["resident"]["householdMembers"]
            lines = [f"request: the showcase applicant's household, {len(members)} members with pensions and "
                     "properties (psb, hrss, housing)"]
        elif answer != reference:
            raise BenchError(f"{v.label} answered differently from audit off")
    results = {}
    for concurrency in levels:
        results[concurrency] = await measure(variants, body, concurrency, requests, warmup)
        report(variants, results[concurrency], concurrency)
    return results, lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_requests", description=__doc__.split("\n\n")[0])
    parser.add_argument("--residents", type=int, default=DEFAULT_RESIDENTS,
                        help=f"size of the generated city (default {DEFAULT_RESIDENTS:,})")
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                        help=f"timed requests per variant at each concurrency level (default {DEFAULT_REQUESTS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed requests per variant first, at each level (default {DEFAULT_WARMUP})")
    parser.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)),
                        help="comma-separated requests in flight at once, one table each (default 1,16)")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL even if 127.0.0.1:5432 answers")
    args = parser.parse_args(argv)
    try:
        levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    except ValueError:
        parser.error("--concurrency must be whole numbers separated by commas, e.g. 1,16")
    if not levels or any(c < 1 for c in levels):
        parser.error("--concurrency must list numbers of at least 1")
    if args.residents < 10 or args.requests < 1 or args.warmup < 0:
        parser.error("--residents must be at least 10, --requests at least 1, --warmup at least 0")

    console.print(f"hutong audit cost per request, {dt.date.today().isoformat()}, Python "
                  f"{platform.python_version()}, {os.cpu_count()} CPUs ({platform.machine()} {platform.system()})")
    console.print(f"{args.residents:,} residents; {args.requests} timed requests per variant and level after "
                  f"{args.warmup} warm-up; concurrency {', '.join(map(str, levels))}")
    started = time.perf_counter()
    try:
        _, _, lines = asyncio.run(run(args.residents, args.requests, args.warmup, levels, not args.no_pg))
    except BenchError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        sys.exit(1)
    console.print()
    for line in lines:
        console.print(line, markup=False)
    console.print(f"[dim]total {time.perf_counter() - started:.0f} s[/]")


if __name__ == "__main__":
    main()
