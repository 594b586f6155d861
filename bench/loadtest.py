"""``make loadtest``: the gateway under sustained load for minutes, with nothing lost.

``hutong serve --workers 2`` over a throwaway city (audit on and durable), wrk keeping
``--connections`` connections busy with the federated lookup of the street office for
``--minutes``, in windows of ``--window`` seconds. Per window: requests per second, p50/p99,
failures, and the resident memory of each worker. At the end:

- **rate held**: the windows' lowest, median and highest rate;
- **errors**: every answer must be HTTP 200 without GraphQL errors (the run fails otherwise);
- **audit records vs requests**: the store must hold exactly one record per request the gateway
  served (its access log counts them), and at least one per request wrk counted as answered (wrk
  does not count the requests in flight when a window ends, which the gateway answers and records
  all the same: at most one per connection per window); the chain must verify;
- **memory**: the workers' RSS at the first and last window and its trend (least-squares slope
  after the first minute, while caches fill, MiB per minute; runs shorter than two minutes are not
  judged); growth beyond ``--max-growth`` MiB per minute fails.

The report goes to ``bench/results/loadtest.json``. wrk is required (``make bench-deps``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bench import wrk
from bench.city import world
from bench.common import BenchError, console, requests_recorded, table
from bench.lookup import HEADERS, LOOKUP_QUERY, Server, _token, applicants, prepare_stores
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_store

__all__ = ["main"]


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x."""
    if len(points) < 2:
        return 0.0
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if wrk.available() is None:
        raise BenchError("wrk is not installed: run `make bench-deps` (Debian: apt-get install wrk)")
    async with world(args.residents, [args.backend], log=console.print) as w:
        backend = w.backend(args.backend)
        bodies = [orjson.dumps({"query": LOOKUP_QUERY, "variables": {"id": i}}) for i in applicants(w.city)]
        await prepare_stores(backend)
        before = await requests_recorded(backend.audit_url)
        server = Server.hutong(backend, args.workers, w.root / "loadtest-serve.log")
        windows: list[dict[str, Any]] = []
        try:
            await server.wait()
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
                headers = {"Authorization": f"Bearer {await _token(c)}", **HEADERS}
            pids = server.worker_pids()
            started = time.monotonic()
            deadline = started + args.minutes * 60
            while time.monotonic() < deadline:
                res = await asyncio.to_thread(wrk.run, server.url, "/graphql", bodies, headers, args.connections,
                                              min(args.window, max(1.0, deadline - time.monotonic())))
                rss = {str(p): round(_rss_mib(p), 1) for p in pids}
                windows.append({"at_s": round(time.monotonic() - started, 1), "requests": res.requests,
                                "rps": round(res.rps, 1), "p50_ms": res.p50_ms, "p99_ms": res.p99_ms,
                                "failures": res.failures, "rss_mib": rss})
                console.print(f"{windows[-1]['at_s']:>6.0f} s  {res.rps:7.1f} req/s  p50 {res.p50_ms:7.1f} ms  "
                              f"p99 {res.p99_ms:7.1f} ms  failures {res.failures}  RSS "
                              + " / ".join(f"{v:.0f}" for v in rss.values()) + " MiB")
        finally:
            server.stop()
        recorded = await requests_recorded(backend.audit_url) - before
        # The gateway's own count: its access log has a line per answered request (wrk does not count
        # those still in flight when a window ends, which the gateway answers and records all the same).
        served = sum(1 for line in server.text().splitlines() if '"POST /graphql"' in line)
        audit = AuditSettings.from_settings(backend.settings())
        store = AuditStore(audit.url)
        try:
            report = await verify_store(store, AuditKeys.load(audit.signing_key, audit.previous_keys, generate=False))
        finally:
            await store.close()

    answered = sum(x["requests"] for x in windows)
    failures = sum(x["failures"] for x in windows)
    rates = [x["rps"] for x in windows]
    totals = [sum(x["rss_mib"].values()) for x in windows]
    # The trend after the first minute (caches fill during it); too short a run is not judged.
    settled = [(x["at_s"] / 60, t) for x, t in zip(windows, totals, strict=True) if x["at_s"] > 60]
    trend = slope(settled) if len(settled) >= 3 else None
    in_flight = recorded - answered
    result = {
        "backend": args.backend, "workers": args.workers, "connections": args.connections, "minutes": args.minutes,
        "windows": windows, "rate": {"min": min(rates), "median": statistics.median(rates), "max": max(rates)},
        "p50_ms_median": statistics.median(x["p50_ms"] for x in windows),
        "p99_ms_max": max(x["p99_ms"] for x in windows), "failures": failures, "answered": answered,
        "recorded": recorded, "recorded_in_flight": in_flight, "served": served, "chain_verified": report.ok,
        "rss_mib_first": totals[0], "rss_mib_last": totals[-1],
        "rss_trend_mib_per_min": round(trend, 2) if trend is not None else None}
    console.print(table(
        f"[bold]load test[/] ({args.backend}): {args.minutes:g} min, {args.connections} connections, "
        f"{args.workers} workers, audit on (durable)",
        [("measure", "left"), ("value", "right")],
        [["rate held (min / median / max req/s)", f"{min(rates):,.0f} / {statistics.median(rates):,.0f} / "
          f"{max(rates):,.0f}"],
         ["p50 (median of windows) / p99 (worst window)",
          f"{result['p50_ms_median']:.1f} / {result['p99_ms_max']:.1f} ms"],
         ["errors", f"{failures:,}"],
         ["requests answered (wrk) / served (access log) / audit records",
          f"{answered:,} / {served:,} / {recorded:,} ({in_flight} in flight at window ends)"],
         ["audit chain", "verified" if report.ok else f"DAMAGED: {report.detail}"],
         ["workers' RSS, first / last window", f"{totals[0]:.0f} / {totals[-1]:.0f} MiB"],
         ["RSS trend after the first minute",
          f"{trend:+.2f} MiB per minute" if trend is not None else "not judged: run at least 2 minutes"]]))
    problems = []
    if failures:
        problems.append(f"{failures} requests failed")
    if in_flight < 0:
        problems.append(f"{-in_flight} answered requests have no audit record")
    if served != recorded:
        problems.append(f"the gateway served {served:,} requests and recorded {recorded:,}")
    if in_flight > args.connections * len(windows):
        problems.append(f"{in_flight} more records than answered requests: more than the connections in flight")
    if not report.ok:
        problems.append(f"the audit chain does not verify: {report.detail}")
    if trend is not None and trend > args.max_growth:
        problems.append(f"memory grows {trend:.1f} MiB per minute (more than {args.max_growth:g})")
    result["problems"] = problems
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadtest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the load lasts (default 3)")
    parser.add_argument("--window", type=float, default=10.0, help="seconds per measured window (default 10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    parser.add_argument("--workers", type=int, default=2, help="gateway worker processes (default 2)")
    parser.add_argument("--residents", type=int, default=20_000, help="size of the city (default 20,000)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--max-growth", type=float, default=5.0,
                        help="largest acceptable RSS trend, MiB per minute, all workers (default 5)")
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "loadtest.json")
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run(args))
    except BenchError as exc:
        console.print(f"[red]error:[/] {exc}")
        sys.exit(2)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1), encoding="utf-8")
    console.print(f"report written to {args.json}")
    if result["problems"]:
        console.print("[red]FAILED:[/] " + "; ".join(result["problems"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
