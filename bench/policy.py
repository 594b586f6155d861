"""Workload 4, policy scale: what deciding costs per request under 1,000, 10,000 and 100,000 policy lines.

For each size, bench/decisions.py's generator writes a random (seeded) policy over the demo
catalogue that also holds the few dozen lines about its subject under test (``app-bench``, Civil
Affairs, role ``street-office``). A gateway loads it, and the authorisation stage
(``gateway.authorize.authorize``: a decision per field the plan reads, tests or joins on, plus the
row rules pushed into the sources) runs on a fresh plan of the lookup query for every request:

- **hutong**: the steady state, decisions answered from the Decider's cache (every request after
  the first of a subject and purpose under a policy version);
- **hutong cold**: a fresh Decider per request, so each one compiles the subject's lines first, as
  the first request after a policy change does;
- **pycasbin**: plain ``Enforcer.enforce`` for the same fields (read, then read_masked, then verify,
  stopping at the first allow, hutong's order), as many calls as fit in a time budget; the time per
  request is the median call times the calls the request needs (measured, not assumed, when all of
  them fit).

Only the authorisation stage is timed, not planning. The gateway's start, which reads the file, builds
the role links and validates the policy, is reported on its own.
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any

from bench.city import DEMO_CATALOG, Backend, World, started_gateway, write_config
from bench.common import Series, Target, console, fmt_ratio, table
from bench.decisions import ACTIONS, PURPOSE, SUBJECT, pycasbin_enforcer, write_policy
from bench.lookup import LOOKUP_QUERY
from catalog.loader import load_catalog
from gateway.authorize import Authorisation, authorize
from gateway.context import RequestContext
from policies.decide import Access, Decider

__all__ = ["run"]

MAX_WARM_MS = 1.0
SEED = 2026
CALLS = {Access.CLEAR: 1, Access.MASKED: 2, Access.VERIFY: 3, Access.DENIED: 3}  # enforce calls per field


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


async def one_size(world: World, lines: int, rounds: int, budget_s: float) -> dict[str, Any]:
    path = world.root / f"policy-{lines}.csv"
    policy = write_policy(path, load_catalog(DEMO_CATALOG), lines, SEED)
    config = write_config(world.root, f"policy-{lines}", world.housing_url, {},
                          f"sqlite+aiosqlite:///{world.root}/run/audit.sqlite", policy=path)
    started = time.perf_counter()
    gw = await started_gateway(Backend(f"policy-{lines}", config, {}, ""))
    load_s = time.perf_counter() - started
    try:
        ctx = RequestContext(SUBJECT, PURPOSE, "official-007", "CASE-BENCH-1")
        prep = gw.prepare(LOOKUP_QUERY, None, {"id": world.applicant})

        def warm() -> Authorisation:
            return authorize(gw.planner.plan(prep), ctx, gw.decider, gw.catalog)

        first = warm()
        fields = sorted(first.decisions)
        calls = sum(CALLS[d.access] for d in first.decisions.values())
        warm_s, cold_s = Series("hutong"), Series("hutong cold")
        for _ in range(rounds):
            gc.collect()
            plan = gw.planner.plan(prep)
            warm_s.times.append(_timed(lambda p=plan: authorize(p, ctx, gw.decider, gw.catalog)))
            plan = gw.planner.plan(prep)
            fresh = Decider(gw.store, gw.catalog)
            cold_s.times.append(_timed(lambda p=plan, d=fresh: authorize(p, ctx, d, gw.catalog)))

        # pycasbin: the same fields, as many enforce calls as fit in the budget.
        started = time.perf_counter()
        enforcer = pycasbin_enforcer(policy.path)
        pycasbin_load_s = time.perf_counter() - started
        per_call: list[float] = []
        done = 0
        deadline = time.perf_counter() + budget_s
        complete = True
        for f in fields:
            for act in ACTIONS:
                if time.perf_counter() > deadline and per_call:
                    complete = False
                    break
                t = time.perf_counter()
                allowed = enforcer.enforce(SUBJECT.client_id, f, act, PURPOSE)
                per_call.append(time.perf_counter() - t)
                done += 1
                if allowed:
                    break
            if not complete:
                break
        pycasbin_ms = sum(per_call) * 1000 if complete else statistics.median(per_call) * 1000 * calls
        access = {a.name.lower(): sum(d.access is a for d in first.decisions.values()) for a in Access}
        return {"lines": lines, "kinds": dict(policy.lines), "load_s": round(load_s, 3),
                "pycasbin_load_s": round(pycasbin_load_s, 3), "decisions_per_request": len(fields),
                "access": access, "row_rules": first.row_rules, "enforce_calls_per_request": calls,
                "hutong": warm_s.json(), "hutong_cold": cold_s.json(),
                "pycasbin": {"ms_per_request": round(pycasbin_ms, 3), "calls_timed": done,
                             "median_ms_per_call": round(statistics.median(per_call) * 1000, 3),
                             "extrapolated": not complete}}
    finally:
        await gw.close()


async def run(world: World, sizes: list[int], rounds: int, budget_s: float) -> tuple[dict[str, Any], list[Target]]:
    results = [await one_size(world, n, rounds, budget_s) for n in sizes]
    rows = []
    for r in results:
        warm, cold, pyc = r["hutong"]["median_ms"], r["hutong_cold"]["median_ms"], r["pycasbin"]["ms_per_request"]
        rows.append([f"{r['lines']:,}", f"{r['load_s'] * 1000:,.0f}", f"{warm:.3f}", f"{r['hutong']['p99_ms']:.3f}",
                     f"{cold:.2f}", f"{pyc:,.1f}{'*' if r['pycasbin']['extrapolated'] else ''}",
                     fmt_ratio(pyc / warm), fmt_ratio(pyc / cold)])
    first = results[0]
    console.print(table(
        f"[bold]policy scale[/]: the authorisation stage of one lookup request ({first['decisions_per_request']} "
        f"decisions, {len(first['row_rules'])} row rules), ms",
        [("policy lines", "right"), ("load ms", "right"), ("hutong p50", "right"), ("p99", "right"),
         ("cold p50", "right"), ("pycasbin", "right"), ("÷ hutong", "right"), ("÷ cold", "right")], rows,
        caption="hutong: decisions cached per policy version; cold: a fresh Decider per request (compiles the "
                "subject's lines); load: the gateway's start, which reads and validates the policy (once per version); "
                "* pycasbin extrapolated: median enforce call × " + str(first["enforce_calls_per_request"])
                + " calls"))
    top = results[-1]
    warm = top["hutong"]["median_ms"]
    target = Target("policy_decision_ms", f"policy: decision cost per request < {MAX_WARM_MS:g} ms at "
                    f"{top['lines']:,} policy lines", "-", warm, "ms", MAX_WARM_MS, warm < MAX_WARM_MS,
                    f"p50 of the authorisation stage with decisions cached; cold (first request after a policy "
                    f"change) {top['hutong_cold']['median_ms']:.2f} ms")
    return {"sizes": results}, [target]

