"""hutong's benchmark suite (issue 8): every workload, side by side with its baselines, in one run.

``python -m bench.suite [--residents N] [--rounds R] [--only NAME,...] [--sources sqlite,postgresql]
[--json PATH] [--quick]`` builds a throwaway demo city (100,000 residents by default), serves its
Housing department in a process of its own, loads the SQL departments into a throwaway PostgreSQL
database too, and runs on each source backend:

1. **bulk**: 10,000 rows × 8 fields from one source: hutong (authorisation and masking on) vs the
   direct fetch-and-encode vs a naive graphene schema; and **memory**: peak RSS at 1k/10k/100k rows;
2. **lookup**: one person across five departments, single client in process vs the direct
   concurrent queries, and over HTTP (``hutong serve --workers 2``, audit on) with 32 clients;
3. **batch**: 1,000 applicants across three departments (source queries and time vs direct);

and once: 4. **policy**: decision cost per request at 1,000/10,000/100,000 policy lines; 5. **audit**:
cost per request of the durable audit trail. Every contestant's answer is checked before anything
is timed. Each workload has warm-up runs and several rounds; medians and ratios come from the same
run. The results, and each target of issue 8 with its measured value and whether it was met, go
to a JSON report (bench/results/latest.json by default). See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import audit_requests, batch, bulk, lookup, policy
from bench.city import pg_available, started_gateway, world
from bench.common import BenchError, Target, console, table
from bench.harness import Baseline
from gateway.config import REPO_ROOT

__all__ = ["WORKLOADS", "main"]

WORKLOADS = ("bulk", "memory", "lookup", "batch", "policy", "audit")
DEFAULT_JSON = REPO_ROOT / "bench" / "results" / "latest.json"


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        mem_gib = 0.0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                           capture_output=True, text=True, check=False).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gib": round(mem_gib, 1),
            "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "commit": commit or None, "uncommitted_changes": bool(dirty)}


def _list(text: str, allowed: Sequence[str], what: str) -> list[str]:
    items = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"{what}: expected some of {', '.join(allowed)}, got {text!r}")
    return items


def _sizes(text: str) -> list[int]:
    try:
        return [int(s.replace("_", "")) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {name: {} for name in args.only}
    targets: list[Target] = []
    backends = list(args.sources)
    if "postgresql" in backends and (why := await pg_available()) is not None:
        console.print(f"[yellow]PostgreSQL at 127.0.0.1:5432 is unreachable ({why}): SQLite only[/]")
        backends.remove("postgresql")
    if not backends:
        raise BenchError("no source backend to run on: PostgreSQL is unreachable and --sources names only it")
    rounds, warmup = args.rounds, args.warmup
    slow_rounds = max(1, rounds // 5)  # the naive contestants take seconds per run
    async with world(args.residents, backends, log=console.print) as w:
        for backend in w.backends:
            console.rule(f"[bold]{backend.name}[/] sources")
            if {"bulk", "lookup", "batch"} & set(args.only):
                gw = await started_gateway(backend)
                baseline = Baseline(backend.sql_url, w.housing_url)
                try:
                    if "bulk" in args.only:
                        results["bulk"][backend.name], t = await bulk.run(
                            backend, gw, baseline, min(args.bulk_rows, w.residents), rounds, warmup, slow_rounds)
                        targets += t
                    if "lookup" in args.only:
                        results["lookup"][backend.name] = {}
                        results["lookup"][backend.name]["in_process"], t = await lookup.in_process(
                            w, backend, gw, baseline, rounds * 20, warmup * 10)
                        targets += t
                    if "batch" in args.only:
                        results["batch"][backend.name] = await batch.run(
                            w, backend, gw, baseline, args.applicants, rounds, warmup, slow_rounds)
                finally:
                    await gw.close()
                    await baseline.close()
            if "memory" in args.only:
                results["memory"][backend.name], t = await bulk.memory(w, backend, args.memory_rows)
                targets += t
            if "lookup" in args.only:
                results["lookup"][backend.name]["http"], t = await lookup.http(
                    w, backend, args.workers, args.clients, args.http_seconds, args.http_warmup, rounds * 20)
                targets += t
        if "policy" in args.only:
            console.rule("[bold]policy[/]")
            results["policy"], t = await policy.run(w, args.policy_lines, rounds * 10, args.pycasbin_budget)
            targets += t
        if "audit" in args.only:
            console.rule("[bold]audit[/]")
            gw = await started_gateway(w.backends[0])
            try:
                results["audit"], t = await audit_requests.run(w, gw, [1, args.clients], args.audit_requests,
                                                               warmup * 10, args.bulk_rows, args.audit_requests // 10)
            finally:
                await gw.close()
            targets += t
    return {"results": results, "targets": [t.json() for t in targets], "backends": backends}


def report_targets(targets: list[dict[str, Any]]) -> None:
    def value(t: dict[str, Any]) -> str:
        m = t["measured"]
        if m is None:
            return "n/a"
        return f"{m:,.2f} {t['unit']}" if t["unit"] != "req/s" else f"{m:,.0f} {t['unit']}"

    console.print(table(
        "[bold]targets[/] (issue 8)", [("target", "left"), ("backend", "left"), ("measured", "right"),
                                       ("limit", "right"), ("met", "left")],
        [[t["description"], t["backend"], value(t), f"{t['limit']:g}", "[green]met[/]" if t["met"]
          else "[red]NOT met[/]"] for t in targets]))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10,000 residents, 5 rounds, 5 s of load, policy budget 1 s: under 2 minutes")
    parser.add_argument("--residents", type=int, help="size of the generated city (default 100,000; quick 10,000)")
    parser.add_argument("--rounds", type=int, help="timed rounds per contestant (default 15; quick 5); lookups "
                        "time 20 requests per round, the naive contestants a fifth of the rounds")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--only", type=lambda s: _list(s, WORKLOADS, "--only"), default=list(WORKLOADS),
                        help=f"workloads to run, comma-separated (default all: {','.join(WORKLOADS)})")
    parser.add_argument("--sources", type=lambda s: _list(s, ("sqlite", "postgresql"), "--sources"),
                        default=["sqlite", "postgresql"], help="source backends (default sqlite,postgresql)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the report "
                        "(default bench/results/latest.json)")
    parser.add_argument("--bulk-rows", type=int, default=10_000, help="rows of the bulk query (default 10,000)")
    parser.add_argument("--memory-rows", type=_sizes, default=[1_000, 10_000, 100_000],
                        help="row counts of the memory measurement (default 1000,10000,100000)")
    parser.add_argument("--applicants", type=int, default=1_000, help="applicants of the batch check (default 1,000)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes over HTTP (default 2)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent HTTP clients (default 32)")
    parser.add_argument("--http-seconds", type=float, help="measured load time per backend (default 15; quick 5)")
    parser.add_argument("--policy-lines", type=_sizes, default=[1_000, 10_000, 100_000],
                        help="policy sizes (default 1000,10000,100000)")
    parser.add_argument("--pycasbin-budget", type=float, help="seconds of pycasbin enforce calls per policy size "
                        "(default 3; quick 1)")
    parser.add_argument("--audit-requests", type=int, help="timed requests per audit variant and concurrency level "
                        "(default 100; quick 30)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.residents = args.residents or (10_000 if quick else 100_000)
    args.rounds = args.rounds or (5 if quick else 15)
    args.http_seconds = args.http_seconds or (5.0 if quick else 15.0)
    args.http_warmup = 1.0 if quick else 3.0
    args.pycasbin_budget = args.pycasbin_budget if args.pycasbin_budget is not None else (1.0 if quick else 3.0)
    args.audit_requests = args.audit_requests or (30 if quick else 100)
    if args.residents < 1_000 or args.rounds < 1 or args.warmup < 0:
        parser.error("--residents must be at least 1000, --rounds at least 1, --warmup at least 0")

    started = time.perf_counter()
    meta = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "command": " ".join(["python -m bench.suite", *sys.argv[1:]]),
            "residents": args.residents, "rounds": args.rounds, "warmup": args.warmup, "quick": quick,
            "machine": machine()}
    m = meta["machine"]
    console.print(f"hutong benchmark suite, {meta['date']}, Python {m['python']}, {m['cpus']} CPUs ({m['cpu_model']}), "
                  f"load average {m['load_average'][0]:.2f}")
    console.print(f"{args.residents:,} residents; {args.rounds} rounds after {args.warmup} warm-up; "
                  f"workloads {', '.join(args.only)}; sources {', '.join(args.sources)}")
    try:
        report = asyncio.run(run(args))
    except BenchError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        sys.exit(1)
    meta["seconds"] = round(time.perf_counter() - started, 1)
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["sources"] = report.pop("backends")
    report = {"meta": meta, **report}
    console.rule()
    if report["targets"]:
        report_targets(report["targets"])
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    console.print(f"report written to {args.json}; total {meta['seconds']:.0f} s")


if __name__ == "__main__":
    main()
