"""Workload 3, batch check: 1,000 applicants across three departments in one request.

``BATCH_QUERY`` asks, for 1,000 ID numbers of the street office's district, their registration
(psb), current jobs and pensions (hrss) and subsistence cases (civil), with the street office's
RequestContext: its row rules are pushed into the sources. Contestants: **hutong**
(``Gateway.run`` plus orjson), **direct** (the four ``IN`` statements concurrently, answer by hand,
orjson) and **naive** (graphene, four statements per applicant). Source queries are counted on
the engines (SQLAlchemy ``before_cursor_execute``), as tests/test_query_count.py does.
"""

from __future__ import annotations

from typing import Any

import orjson

from bench import direct
from bench.city import STREET_OFFICE, Backend, World, context
from bench.common import BenchError, console, fmt_ms, fmt_ratio, interleave, table
from bench.harness import Baseline
from bench.naive import NaiveGraphQL
from gateway.pipeline import Gateway

__all__ = ["BATCH_QUERY", "run"]

BATCH_QUERY = """query SubsistenceBatch($ids: [String!]!) {
  persons(idNumbers: $ids) {
    idNumber
    resident { name district householdId }
    employments(filter: {endDate: {isNull: true}}) { employerName position }
    pensions { status contributionYears }
    subsistenceCases { caseId status }
  }
}"""


def batch_ids(world: World, n: int) -> list[str]:
    """``n`` residents of the street office's district (fewer if the district is smaller)."""
    return [r["id_number"] for r in world.city.tables["psb"]["resident"] if r["district"] == direct.DISTRICT][:n]


async def run(world: World, backend: Backend, gw: Gateway, baseline: Baseline, applicants: int, rounds: int,
              warmup: int, naive_rounds: int) -> dict[str, Any]:
    ids = batch_ids(world, applicants)
    ctx = context(STREET_OFFICE)
    naive = NaiveGraphQL(baseline, gw.masker)

    async def hutong() -> bytes:
        out = await gw.run(BATCH_QUERY, None, {"ids": ids}, context=ctx)
        if out.status != 200 or "errors" in out.body:
            raise BenchError(f"batch: hutong answered {out.status}: {str(out.body.get('errors'))[:300]}")
        return orjson.dumps(out.body, option=orjson.OPT_NON_STR_KEYS)

    contestants = {"hutong": hutong, "direct": lambda: direct.batch(baseline, ids),
                   "naive": lambda: naive.run(BATCH_QUERY, {"ids": ids})}
    counters = {"hutong": lambda: sum(gw.sources.statements().values()),
                "direct": lambda: baseline.statements, "naive": lambda: baseline.statements}
    queries: dict[str, int] = {}
    answers: dict[str, Any] = {}
    for name, one in contestants.items():
        before = counters[name]()
        answers[name] = orjson.loads(await one())
        queries[name] = counters[name]() - before
    if len(answers["hutong"]["data"]["persons"]) != len(ids):
        raise BenchError("batch: hutong did not answer every applicant")
    for name in ("direct", "naive"):
        if answers[name] != answers["hutong"]:
            raise BenchError(f"batch: {name} answered differently from hutong")
    series = await interleave(contestants, {"hutong": rounds, "direct": rounds, "naive": naive_rounds}, warmup)
    d = series["direct"].median_ms
    for name, s in series.items():
        s.queries = queries[name]
    found = sum(p["resident"] is not None for p in answers["hutong"]["data"]["persons"])
    console.print(table(
        f"[bold]batch check[/] ({backend.name}): {len(ids):,} applicants × psb, hrss, civil in one request",
        [("contestant", "left"), ("median ms", "right"), ("range ms", "right"), ("rounds", "right"),
         ("vs direct", "right"), ("source queries", "right")],
        [[name, fmt_ms(s.median_ms), f"{fmt_ms(min(s.times) * 1000)}–{fmt_ms(max(s.times) * 1000)}",
          str(len(s.times)), fmt_ratio(s.median_ms / d), f"{s.queries:,}"] for name, s in series.items()],
        caption=f"{found:,} applicants registered in the district (row rule); naive / hutong = "
                f"{fmt_ratio(series['naive'].median_ms / series['hutong'].median_ms)}"))
    return {"query": BATCH_QUERY, "applicants": len(ids),
            "contestants": {name: {**s.json(), "vs_direct": round(s.median_ms / d, 3)} for name, s in series.items()},
            "naive_over_hutong": round(series["naive"].median_ms / series["hutong"].median_ms, 2)}
