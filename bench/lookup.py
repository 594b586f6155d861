"""Workload 2, federated lookup: one person across five departments, the street office's
subsistence-allowance check.

``LOOKUP_QUERY`` asks, for one ID number, the registry (psb), subsistence cases (civil), current
jobs and pensions (hrss), properties (housing, REST) and businesses (mr): six source queries that
depend on nothing but the ID number, so the gateway plans them as one round, all at once. The
street office's row rules (its district's residents, its own cases) are pushed into the sources.
Requests rotate over the district's residents with records in the most departments.

- **single client, in process**: ``Gateway.run`` with the street office's RequestContext plus
  orjson encoding, against **direct**: the same six queries run concurrently with
  ``asyncio.gather``, answer built by hand, orjson. The gap between the medians is the
  gateway's overhead per request.
- **over HTTP**: the real server, ``hutong serve --workers 2`` (uvicorn, audit on and durable),
  with a token from ``/oauth/token`` for the demo client ``street-office-app``. First one client
  sends requests one after another; then wrk (bench/wrk.py; httpx clients where wrk is missing)
  keeps 32 connections busy for a fixed time: requests per second, p50/p99 latency, and where
  the machine's CPU time went. Then the same load against **the direct server**
  (bench/direct_server.py: the direct lookup behind the same uvicorn with the same workers), the
  rate this machine allows with no gateway at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import cycle
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import direct, direct_server, wrk
from bench.city import PURPOSE, STREET_OFFICE, STREET_OFFICE_SECRET, Backend, World, child_env, context
from bench.common import BenchError, Series, Target, console, interleave, requests_recorded, table
from bench.harness import Baseline
from demo.build import City
from demo.server_thread import free_port
from gateway.config import REPO_ROOT
from gateway.pipeline import Gateway

__all__ = ["LOOKUP_QUERY", "applicants", "http", "in_process"]

LOOKUP_QUERY = """query SubsistenceLookup($id: String!) {
  person(idNumber: $id) {
    idNumber
    resident { name gender birthDate district householdId relation }
    subsistenceCases { caseId status appliedOn }
    employments(filter: {endDate: {isNull: true}}) { employerName position startDate }
    pensions { status contributionYears }
    properties { propertyId district areaSqm usage }
    businesses { name status }
  }
}"""
APPLICANTS = 64
MAX_OVERHEAD_MS = 3.0
MIN_RPS = 1000.0
HEADERS = {"X-Purpose": PURPOSE, "X-Acting-User": "official-007", "X-Case-Id": "CASE-BENCH-1",
           "Content-Type": "application/json", "Accept": "application/json"}


def applicants(city: City, n: int = APPLICANTS) -> list[str]:
    """The street office's district residents with records in the most departments (ties: a seeded
    shuffle), the showcase applicant first."""
    cases = {r["applicant_id_number"] for r in city.tables["civil"]["subsistence_case"]
             if r["street_office"] == direct.STREET_OFFICE}
    jobs = {r["id_number"] for r in city.tables["hrss"]["employment"] if r["end_date"] is None}
    pensions = {r["id_number"] for r in city.tables["hrss"]["pension"]}
    firms = {r["legal_rep_id_number"] for r in city.tables["mr"]["business"]}
    props = {r["owner_id_number"] for r in city.housing}
    ids = [r["id_number"] for r in city.tables["psb"]["resident"] if r["district"] == direct.DISTRICT]
    random.Random(2026).shuffle(ids)
    ids.sort(key=lambda i: -sum(i in s for s in (cases, jobs, pensions, firms, props)))
    first = city.showcase["applicant_id_number"]
    return [first, *[i for i in ids if i != first][:n - 1]]


def departments_with_data(answer: dict[str, Any]) -> int:
    p = answer["data"]["person"]
    return sum(bool(p[k]) for k in ("resident", "subsistenceCases", "properties", "businesses")) + bool(
        p["employments"] or p["pensions"])


# --- in process -------------------------------------------------------------------------------


async def in_process(world: World, backend: Backend, gw: Gateway, baseline: Baseline, rounds: int,
                     warmup: int) -> tuple[dict[str, Any], list[Target]]:
    ids = applicants(world.city)
    ctx = context(STREET_OFFICE)

    async def hutong(i: str) -> bytes:
        out = await gw.run(LOOKUP_QUERY, None, {"id": i}, context=ctx)
        if out.status != 200 or "errors" in out.body:
            raise BenchError(f"lookup: hutong answered {out.status}: {str(out.body.get('errors'))[:300]}")
        return orjson.dumps(out.body, option=orjson.OPT_NON_STR_KEYS)

    # Check every applicant first: the same answer from both, and the source queries per request.
    before_gw, before_direct = sum(gw.sources.statements().values()), baseline.statements
    coverage = []
    for i in ids:
        ours, theirs = orjson.loads(await hutong(i)), orjson.loads(await direct.lookup(baseline, i))
        if ours != theirs:
            raise BenchError(f"lookup: hutong and direct differ for applicant {i}")
        coverage.append(departments_with_data(ours))
    q_gw = (sum(gw.sources.statements().values()) - before_gw) // len(ids)
    q_direct = (baseline.statements - before_direct) // len(ids)

    seq_h, seq_d = cycle(ids), cycle(ids)
    series = await interleave({"hutong": lambda: hutong(next(seq_h)),
                               "direct": lambda: direct.lookup(baseline, next(seq_d))},
                              {"hutong": rounds, "direct": rounds}, warmup, block=20, collect=False)
    series["hutong"].queries, series["direct"].queries = q_gw, q_direct
    h, d = series["hutong"], series["direct"]
    overhead = h.median_ms - d.median_ms
    console.print(table(
        f"[bold]lookup, single client in process[/] ({backend.name}): one person across five departments, "
        f"{len(ids)} applicants in turn",
        [("contestant", "left"), ("p50 ms", "right"), ("p99 ms", "right"), ("requests", "right"),
         ("vs direct", "right"), ("queries", "right")],
        [[s.name, f"{s.median_ms:.2f}", f"{s.p99_ms:.2f}", str(len(s.times)), f"{s.median_ms / d.median_ms:.2f}x",
          str(s.queries)] for s in (h, d)],
        caption=f"gateway overhead at p50: {overhead:+.2f} ms per request (hutong p50 − direct p50); "
                f"applicants have data in {statistics.mean(coverage):.1f} of 5 departments on average"))
    result = {"query": LOOKUP_QUERY, "applicants": len(ids), "departments_with_data_mean": statistics.mean(coverage),
              "contestants": {s.name: {**s.json(), "vs_direct": round(s.median_ms / d.median_ms, 3)} for s in (h, d)},
              "overhead_p50_ms": round(overhead, 3)}
    return result, [Target("lookup_overhead_p50", "federated lookup: gateway overhead over the direct concurrent "
                           f"source queries, single client, p50 (< {MAX_OVERHEAD_MS:g} ms)", backend.name, overhead,
                           "ms", MAX_OVERHEAD_MS, overhead < MAX_OVERHEAD_MS,
                           f"hutong p50 {h.median_ms:.2f} ms, direct p50 {d.median_ms:.2f} ms")]


# --- over HTTP --------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds used) of a process, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def _processes() -> Iterator[tuple[int, str]]:
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/comm", encoding="utf-8", errors="replace") as f:
                    yield int(entry.name), f.read().strip()
            except OSError:
                continue


def _tree(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for pid, _ in _processes():
        st = _stat(pid)
        if st is not None:
            parents[pid] = st[0]
    out, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parents.items() if pp in frontier]
        out += frontier
    return out


def _is_worker(pid: int) -> bool:
    """A uvicorn worker (spawned by multiprocessing), not multiprocessing's resource tracker."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"spawn_main" in cmdline and b"resource_tracker" not in cmdline


def cpu_seconds(groups: dict[str, list[int]]) -> dict[str, float]:
    return {name: sum(st[1] for p in pids if (st := _stat(p)) is not None) for name, pids in groups.items()}


class Server:
    """A uvicorn server in a process group of its own: ``hutong serve --workers N`` over a backend's
    configuration, or any other command line (the direct server)."""

    def __init__(self, cmd: list[str], workers: int, log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.workers = workers
        self.out = log.open("wb")
        self.proc = subprocess.Popen([*cmd, str(self.port)], cwd=REPO_ROOT,
                                     env={**child_env(), **(env or {})}, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @classmethod
    def hutong(cls, backend: Backend, workers: int, log: Path) -> Server:
        return cls([sys.executable, "-m", "gateway.cli", "serve", "--config", str(backend.config), "--host",
                    "127.0.0.1", "--workers", str(workers), "--port"], workers, log)

    @classmethod
    def direct(cls, world: World, backend: Backend, workers: int, log: Path) -> Server:
        """bench/direct_server.py under the same uvicorn settings as ``hutong serve``."""
        config = json.dumps({"sql_urls": backend.sql_url, "housing_url": world.housing_url})
        # gateway.serve, as `hutong serve` runs: the same uvicorn settings and SO_REUSEPORT balancing.
        code = ("import sys; from gateway.serve import serve; serve('bench.direct_server:create_app', "
                f"host='127.0.0.1', port=int(sys.argv[1]), workers={workers}, access_log=False, log_level='info')")
        return cls([sys.executable, "-c", code], workers, log, {direct_server.ENV: config})

    def text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    async def wait(self, within: float = 90.0) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"the server exited ({self.proc.returncode}):\n{self.text()[-2000:]}")
            # Every worker says so once its lifespan (policy, audit writer, identity) has started.
            if self.text().count("Application startup complete") >= self.workers:
                return
            await asyncio.sleep(0.2)
        raise BenchError(f"the server did not start within {within:.0f} s:\n{self.text()[-2000:]}")

    def worker_pids(self) -> list[int]:
        return [p for p in _tree(self.proc.pid) if p != self.proc.pid and _is_worker(p)] or [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # uvicorn's manager stops its workers gracefully
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.out.close()


async def _token(client: httpx.AsyncClient) -> str:
    form = {"grant_type": "client_credentials", "client_id": STREET_OFFICE.client_id,
            "client_secret": STREET_OFFICE_SECRET}
    r = await client.post("/oauth/token", data=form)
    if r.status_code != 200:
        raise BenchError(f"no access token: HTTP {r.status_code}: {r.text[:300]}")
    token: str = r.json()["access_token"]
    return token


async def _send(client: httpx.AsyncClient, body: bytes, path: str = "/graphql") -> tuple[float, bool]:
    started = time.perf_counter()
    r = await client.post(path, content=body)
    elapsed = time.perf_counter() - started
    return elapsed, r.status_code == 200 and b'"errors"' not in r.content


async def _load(client: httpx.AsyncClient, bodies: list[bytes], concurrency: int, seconds: float,
                path: str = "/graphql") -> tuple[list[float], int, float]:
    """The fallback load generator without wrk: ``concurrency`` httpx clients posting back to back for
    ``seconds``: latencies, failures, elapsed time."""
    latencies: list[float] = []
    failures = 0
    deadline = time.perf_counter() + seconds

    async def one_client(start: int) -> None:
        nonlocal failures
        i = start
        while time.perf_counter() < deadline:
            latency, ok = await _send(client, bodies[i % len(bodies)], path)
            latencies.append(latency)
            failures += not ok
            i += 1

    started = time.perf_counter()
    await asyncio.gather(*(one_client(k * 7) for k in range(concurrency)))
    return latencies, failures, time.perf_counter() - started


async def prepare_stores(backend: Backend) -> None:
    """Start and stop the app once in process, so that its stores (audit, clients, consent, console
    accounts) exist before the workers start: workers that find them missing create them at the same
    moment, and one of them can fail with "table console_account already exists"."""
    from gateway.app import create_app

    app = create_app(backend.settings())
    async with app.router.lifespan_context(app):
        pass


@dataclass
class Load:
    """One measured load phase against one server."""

    generator: str  # "wrk" or "httpx"
    warmup_requests: int
    requests: int
    failures: int
    seconds: float
    p50_ms: float
    p99_ms: float
    cpu_ms: dict[str, float]  # CPU ms per request, per process group
    busy: dict[str, float]  # cores busy, per process group

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def json(self) -> dict[str, Any]:
        return {"generator": self.generator, "warmup_requests": self.warmup_requests, "requests": self.requests,
                "failures": self.failures,
                "seconds": round(self.seconds, 2), "rps": round(self.rps, 1), "p50_ms": round(self.p50_ms, 3),
                "p99_ms": round(self.p99_ms, 3), "cpu_ms_per_request": self.cpu_ms, "cpu_cores_busy": self.busy}


async def _load_phase(url: str, path: str, bodies: list[bytes], headers: dict[str, str], concurrency: int,
                      seconds: float, warmup_s: float, pid_groups: dict[str, list[int] | Callable[[], list[int]]]
                      ) -> Load:
    """A warm-up, then ``concurrency`` connections for ``seconds`` with the CPU time of every process
    group (and of the load generator) taken around the measured window. A group given as a function
    is listed after the warm-up (PostgreSQL forks a process per new connection)."""
    if wrk.available():
        warm = (await asyncio.to_thread(wrk.run, url, path, bodies, headers, concurrency, warmup_s)).requests
        groups = {k: v() if callable(v) else v for k, v in pid_groups.items()}
        cpu_before, gen_before = cpu_seconds(groups), _children_cpu()
        res = await asyncio.to_thread(wrk.run, url, path, bodies, headers, concurrency, seconds)
        cpu_after, gen_after = cpu_seconds(groups), _children_cpu()
        requests, failures, elapsed, p50, p99 = res.requests, res.failures, res.seconds, res.p50_ms, res.p99_ms
        generator = "wrk"
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers) as client:
            warm = len((await _load(client, bodies, concurrency, warmup_s, path))[0])
            groups = {k: v() if callable(v) else v for k, v in pid_groups.items()}
            cpu_before, gen_before = cpu_seconds(groups), time.process_time()
            lat, failures, elapsed = await _load(client, bodies, concurrency, seconds, path)
            cpu_after, gen_after = cpu_seconds(groups), time.process_time()
        series = Series("load", lat)
        requests, p50, p99, generator = len(lat), series.median_ms, series.p99_ms, "httpx"
    cpu = {name: cpu_after[name] - cpu_before[name] for name in groups}
    cpu["load generator"] = gen_after - gen_before
    per_req = {name: round(v * 1000 / max(requests, 1), 3) for name, v in cpu.items()}
    busy = {name: round(v / elapsed, 2) for name, v in cpu.items()}
    return Load(generator, warm, requests, failures, elapsed, p50, p99, per_req, busy)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def http(world: World, backend: Backend, workers: int, concurrency: int, seconds: float, warmup_s: float,
               sequential: int) -> tuple[dict[str, Any], list[Target]]:
    """hutong over HTTP, then the direct server under the same load: what the machine allows."""
    ids = applicants(world.city)
    bodies = [orjson.dumps({"query": LOOKUP_QUERY, "variables": {"id": i}}) for i in ids]
    await prepare_stores(backend)
    records_before = await requests_recorded(backend.audit_url)
    server = Server.hutong(backend, workers, world.root / f"serve-{backend.name}.log")
    sent = 0

    def postgres() -> list[int]:
        return [p for p, c in _processes() if c.startswith("postgres")]

    try:
        await server.wait()
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            client.headers.update({"Authorization": f"Bearer {await _token(client)}", **HEADERS})
            for body in bodies:  # every applicant answers completely before anything is timed
                _, ok = await _send(client, body)
                sent += 1
                if not ok:
                    r = await client.post("/graphql", content=body)
                    raise BenchError(f"lookup over HTTP: HTTP {r.status_code}: {r.text[:400]}")
            # One client, one request at a time.
            single = Series("single client")
            for k in range(sequential):
                latency, ok = await _send(client, bodies[k % len(bodies)])
                single.times.append(latency)
                sent += 1
                if not ok:
                    raise BenchError("lookup over HTTP: a sequential request failed")
            headers = {k: v for k, v in client.headers.items() if k.lower() in
                       {"authorization", *(h.lower() for h in HEADERS)}}
        pids = server.worker_pids()
        groups = {"gateway workers": pids, "housing": [world.housing_pid], "postgresql": postgres,
                  **{f"worker {k + 1}": [p] for k, p in enumerate(pids)}}
        load = await _load_phase(server.url, "/graphql", bodies, headers, concurrency, seconds, warmup_s, groups)
    finally:
        server.stop()
    records = await requests_recorded(backend.audit_url) - records_before
    # Every request answered has its record (requests still in flight when wrk stops are answered and
    # recorded but not counted: records may exceed this, never fall short of it).
    answered = sent + load.warmup_requests + load.requests
    if records < answered:
        raise BenchError(f"lookup over HTTP: {answered:,} requests answered but only {records:,} audit records "
                         "written")
    if load.failures:
        raise BenchError(f"lookup over HTTP: {load.failures:,} of {load.requests:,} requests under load failed; "
                         f"see {server.log}")

    # The limit: the direct lookup behind the same web server, same workers, same load.
    limit_server = Server.direct(world, backend, workers, world.root / f"direct-{backend.name}.log")
    try:
        await limit_server.wait()
        pids = limit_server.worker_pids()
        limit = await _load_phase(limit_server.url, "/lookup", bodies, {"Content-Type": "application/json"},
                                  concurrency, seconds, warmup_s,
                                  {"direct workers": pids, "housing": [world.housing_pid], "postgresql": postgres})
    finally:
        limit_server.stop()
    if limit.failures:
        raise BenchError(f"direct server: {limit.failures:,} of {limit.requests:,} requests failed; see "
                         f"{limit_server.log}")

    cores = os.cpu_count() or 1
    share = load.rps / limit.rps
    console.print(table(
        f"[bold]lookup over HTTP[/] ({backend.name}): {workers} workers, {concurrency} connections for "
        f"{load.seconds:.0f} s ({load.generator}); hutong with audit on (durable)",
        [("server", "left"), ("requests", "right"), ("req/s", "right"), ("p50 ms", "right"), ("p99 ms", "right"),
         ("CPU ms/request: workers", "right")],
        [["hutong, 1 client, one at a time", f"{len(single.times):,}", f"{1000 / single.median_ms:,.0f}",
          f"{single.median_ms:.2f}", f"{single.p99_ms:.2f}", ""],
         ["hutong", f"{load.requests:,}", f"{load.rps:,.0f}", f"{load.p50_ms:.2f}", f"{load.p99_ms:.2f}",
          f"{load.cpu_ms['gateway workers']:.2f}"],
         ["direct server (the limit)", f"{limit.requests:,}", f"{limit.rps:,.0f}", f"{limit.p50_ms:.2f}",
          f"{limit.p99_ms:.2f}", f"{limit.cpu_ms['direct workers']:.2f}"]],
        caption=f"hutong holds {share:.0%} of the direct server's rate. CPU ms per request under load (hutong): "
                + ", ".join(f"{k} {v:.2f}" for k, v in load.cpu_ms.items() if not k.startswith("worker "))
                + f" (of {cores * 1000 / load.rps:.2f} available on {cores} cores); cores busy per worker: "
                + ", ".join(f"{load.busy[f'worker {k + 1}']:.2f}" for k in range(workers))
                + f"; audit records written: {records:,} for {answered:,} requests"))
    result = {"workers": workers, "concurrency": concurrency, "generator": load.generator,
              "hutong": load.json(), "direct": limit.json(), "share_of_direct": round(share, 3),
              "single_client": single.json(), "audit_records": records, "requests_answered": answered,
              # the keys earlier reports had
              "rps": round(load.rps, 1), "p50_ms": round(load.p50_ms, 3), "p99_ms": round(load.p99_ms, 3)}
    return result, [Target("lookup_rps", f"federated lookup over HTTP: ≥ {MIN_RPS:,.0f} requests/s, "
                           f"{workers} workers, {concurrency} clients, audit on (durable)", backend.name, load.rps,
                           "req/s", MIN_RPS, load.rps >= MIN_RPS,
                           f"p50 {load.p50_ms:.1f} ms, p99 {load.p99_ms:.1f} ms; gateway workers "
                           f"{load.cpu_ms['gateway workers']:.2f} CPU ms per request; the direct server on the same "
                           f"machine: {limit.rps:,.0f} req/s ({limit.cpu_ms['direct workers']:.2f} CPU ms per "
                           f"request), hutong = {share:.0%} of it")]
