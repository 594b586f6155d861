"""The benchmark's world: a throwaway demo city, its Housing service, the city in PostgreSQL, and
one gateway configuration per source backend.

Nothing has to run beforehand and nothing outside a temporary folder (and a throwaway
PostgreSQL database) is touched. ``demo/data`` is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from demo.build import City, build_demo, write_department
from demo.server_thread import free_port
from gateway.audit.keys import generate_key_file
from gateway.config import REPO_ROOT, Settings, load_settings
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.decide import Subject

__all__ = [
    "BULK_MASKS",
    "BULK_READER",
    "BULK_READER_SECRET",
    "DEMO_CATALOG",
    "PG_SERVER",
    "PURPOSE",
    "SQL_DEPARTMENTS",
    "SQL_SOURCES",
    "STREET_OFFICE",
    "STREET_OFFICE_SECRET",
    "Backend",
    "World",
    "context",
    "pg_admin",
    "pg_available",
    "started_gateway",
    "world",
    "write_config",
]

DEMO_CATALOG = REPO_ROOT / "demo" / "catalog"
DEMO_POLICY = REPO_ROOT / "demo" / "policies" / "policy.csv"
MASK_KEY = "hutong-demo-mask-key-NOT-A-SECRET"
PG_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432"

# The SQL departments the workloads read (health, 440,000 vaccinations at 100,000 residents, is never
# asked, so it is not loaded into PostgreSQL); and the catalogue's sources for them.
SQL_DEPARTMENTS = ("psb", "hrss", "mr", "civil")
SQL_SOURCES = ("psb_registry", "hrss_db", "mr_register", "civil_db", "health_db")

PURPOSE = "subsistence-allowance-review"
# The demo's street office (demo/policies/policy.csv, demo client street-office-app): row rules keep
# it to its own district's residents and its own subsistence cases.
STREET_OFFICE = Subject.of("street-office-app", "civil", {"street-office"}, {"district": "北苑区"})  # as its token says
STREET_OFFICE_SECRET = "street-office-demo-secret"  # the published demo secret (gateway/auth/demo.py)
# The bulk reader: a registry analyst of Civil Affairs who may read every resident column the registry
# shares unconditionally, three of them only masked (ID number: region and last four; name: surname;
# household: keyed hash). Unlike the street office it has no row rule, so 100,000 rows are within reach.
BULK_READER = Subject("bench-registry-app", "civil", frozenset({"registry-analyst"}))
BULK_READER_SECRET = "bench-registry-secret-not-a-secret-0001"  # registered in the bench's own client store
BULK_MASKS = {"id_number": "id_number", "name": "name", "household_id": "hash"}  # the catalogue's masks
BULK_POLICY = """
# --- bench only (bench/city.py): the bulk reader ---
g, bench-registry-app, role:registry-analyst
p, role:registry-analyst, psb.resident.*, read, subsistence-allowance-review, allow, default
p, role:registry-analyst, psb.resident.address, *, subsistence-allowance-review, deny, default
p, role:registry-analyst, psb.resident.id_number, read, subsistence-allowance-review, deny, default
p, role:registry-analyst, psb.resident.id_number, read_masked, subsistence-allowance-review, allow, default
p, role:registry-analyst, psb.resident.name, read, subsistence-allowance-review, deny, default
p, role:registry-analyst, psb.resident.name, read_masked, subsistence-allowance-review, allow, default
p, role:registry-analyst, psb.resident.household_id, read, subsistence-allowance-review, deny, default
p, role:registry-analyst, psb.resident.household_id, read_masked, subsistence-allowance-review, allow, default
"""


async def pg_admin(sql: str, database: str = "postgres") -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database=database, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def pg_available() -> str | None:
    """None when PostgreSQL at 127.0.0.1:5432 answers, else why not."""
    try:
        await pg_admin("SELECT 1")
    except Exception as exc:  # asyncpg raises several kinds when the server is away
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass
class Backend:
    """One way of holding the SQL departments: the city's SQLite files, or a PostgreSQL database."""

    name: str  # sqlite | postgresql
    config: Path  # the gateway configuration for it (audit on, durable)
    sql_url: dict[str, str]  # department -> SQLAlchemy async URL the direct baselines open
    audit_url: str

    def settings(self) -> Settings:
        # environ={}: the benchmark's gateway must not pick up HUTONG_* settings of the shell.
        return load_settings(self.config, environ={})


def context(subject: Subject) -> RequestContext:
    """A data request's context, as the HTTP layer builds it from the token and headers."""
    return RequestContext(subject, PURPOSE, "official-007", "CASE-BENCH-1")


async def started_gateway(backend: Backend) -> Gateway:
    from catalog.loader import load_catalog

    settings = backend.settings()
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    return gw


@dataclass
class World:
    root: Path
    city: City
    residents: int
    housing_url: str
    housing_pid: int
    backends: list[Backend] = field(default_factory=list)

    @property
    def applicant(self) -> str:
        return self.city.showcase["applicant_id_number"]

    def backend(self, name: str) -> Backend:
        return next(b for b in self.backends if b.name == name)


def write_config(root: Path, name: str, housing_url: str, overrides: dict[str, str], audit_url: str,
                 policy: Path | None = None) -> Path:
    """A gateway configuration next to ``root/data`` (the catalogue's SQLite paths are relative to it).

    ``max_limit`` (and ``[limits] max_cost``) are raised so that a page may hold 100,000 rows (the memory
    measurement), and the rate limit is off (the HTTP load measures capacity); ``max_rows``
    stays at its default of 10,000, because every nested fetch asks its source for ``max_rows + 1``
    rows, and the Housing service refuses a limit above 100,000. Audit is on and durable (the
    default); its signing key, the client store and the consent store live under ``root/run``.
    JSON string quoting is valid TOML basic-string quoting.
    """
    lines = ["[gateway]", f"catalog = {json.dumps(str(DEMO_CATALOG))}", "demo = true", "debug = false",
             "max_limit = 100000", "max_rows = 10000", "max_keys = 1000", "max_nodes = 200000"]
    for code, url in {"housing_api": housing_url, **overrides}.items():
        lines += [f"[sources.{code}]", f"url = {json.dumps(url)}"]
    lines += ["[policies]", f"file = {json.dumps(str(policy or root / 'policy.csv'))}",
              f"mask_key = {json.dumps(MASK_KEY)}",
              "[audit]", f"url = {json.dumps(audit_url)}", "durable = true",
              f"signing_key = {json.dumps(str(root / 'run' / 'audit-signing-key.pem'))}",
              # The benchmark measures capacity: no rate limit, and room for the 100,000-row page.
              "[limits]", "rate = 0", "max_cost = 1000000"]
    path = root / f"hutong-{name}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class HousingProcess:
    """The Housing department's REST service in a process of its own (uvicorn, no access log), so that
    its CPU time is not the benchmark's and, under load, not the gateway workers' GIL either."""

    def __init__(self, data: Path, log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.url = f"http://127.0.0.1:{self.port}"
        code = ("import sys, uvicorn; from pathlib import Path; from demo.housing_service import create_app; "
                "uvicorn.run(create_app(Path(sys.argv[1])), host='127.0.0.1', port=int(sys.argv[2]), "
                "log_level='warning', access_log=False)")
        with log.open("wb") as out:  # a file, not a pipe: a pipe nobody reads would block the service when full
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(data), str(self.port)], cwd=REPO_ROOT,
                                         env=child_env(), stdout=out, stderr=subprocess.STDOUT)

    def wait(self, within: float = 30.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the Housing service exited: {self.log.read_text(errors='replace')[-800:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the Housing service did not answer on port {self.port} within {within:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def world(residents: int, backends: list[str], log: Any = print) -> AsyncIterator[World]:
    """Build the city in a temporary folder, serve Housing, load PostgreSQL if asked; clean up after."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="hutong-bench-") as tmp:
        root = Path(tmp)
        (root / "run").mkdir()
        generate_key_file(root / "run" / "audit-signing-key.pem")
        started = time.perf_counter()
        city = await build_demo(root / "data", residents=residents)
        log(f"built a city of {residents:,} residents in {time.perf_counter() - started:.1f} s")
        (root / "policy.csv").write_text(DEMO_POLICY.read_text(encoding="utf-8") + BULK_POLICY, encoding="utf-8")
        housing = HousingProcess(root / "data" / "housing.json", root / "housing.log")
        drops: list[str] = []
        try:
            await asyncio.to_thread(housing.wait)
            w = World(root, city, residents, housing.url, housing.proc.pid)
            if "sqlite" in backends:
                data = (root / "data").resolve()
                audit = f"sqlite+aiosqlite:///{root}/run/audit.sqlite"
                w.backends.append(Backend(
                    "sqlite", write_config(root, "sqlite", housing.url, {}, audit),
                    {d: f"sqlite+aiosqlite:///file:{data / f'{d}.sqlite'}?mode=ro&uri=true" for d in SQL_DEPARTMENTS},
                    audit))
            if "postgresql" in backends:
                tag = uuid.uuid4().hex[:10]
                db, audit_db = f"hutong_bench_{tag}", f"hutong_bench_audit_{tag}"
                for name in (db, audit_db):
                    await pg_admin(f'CREATE DATABASE "{name}"')
                    drops.append(name)
                url = f"{PG_SERVER}/{db}"
                started = time.perf_counter()
                for dept in SQL_DEPARTMENTS:
                    await write_department(city, dept, url)
                await pg_admin("ANALYZE", db)  # planner statistics now, not whenever autovacuum gets to it
                log(f"loaded {', '.join(SQL_DEPARTMENTS)} into PostgreSQL database {db} in "
                    f"{time.perf_counter() - started:.1f} s")
                w.backends.append(Backend(
                    "postgresql", write_config(root, "postgresql", housing.url, dict.fromkeys(SQL_SOURCES, url),
                                               f"{PG_SERVER}/{audit_db}"),
                    dict.fromkeys(SQL_DEPARTMENTS, url), f"{PG_SERVER}/{audit_db}"))
            yield w
        finally:
            housing.stop()
            for name in drops:
                with contextlib.suppress(Exception):
                    await pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def child_env() -> dict[str, str]:
    """The environment for the benchmark's child processes: the shell's HUTONG_* settings left out,
    so that only the benchmark's configuration counts."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HUTONG_")}
