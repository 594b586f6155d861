"""Batching: the number of source queries depends on the shape of the request, never on the
number of rows: one query per dataset occurrence per level of the plan (a department source
holding two of the datasets asked for gets two statements at that level, sent together)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway

QUERY = """query($n: Int!) { residents(limit: $n) { nodes { idNumber name
    person {
        employments { employerName }
        pensions { status }
        properties { propertyId }
    }
    householdMembers { idNumber }
} } }"""


async def count(gw: Gateway, n: int) -> tuple[dict[str, int], int]:
    before = gw.sources.statements()
    out = await gw.run(QUERY, None, {"n": n}, context=UNRESTRICTED)
    assert out.status == 200 and "errors" not in out.body, out.body
    after = gw.sources.statements()
    used = {code: after[code] - before.get(code, 0) for code in after}
    return used, len(out.body["data"]["residents"]["nodes"])


async def test_source_queries_are_constant_in_the_row_count(any_gateway: Gateway, city: Any) -> None:
    """On SQLite, PostgreSQL and MariaDB alike."""
    small, rows_small = await count(any_gateway, 10)
    large, rows_large = await count(any_gateway, 1000)
    assert (rows_small, rows_large) == (10, 1000)
    # residents + householdMembers from PSB, employments + pensions from HRSS, properties from Housing.
    assert small == large == {"psb_registry": 2, "hrss_db": 2, "housing_api": 1}


async def test_plan_levels_match_the_query_shape(gateway: Gateway) -> None:
    plan = gateway.plan(QUERY, None, {"n": 1000})
    levels = [[(f.dataset, f.source) for f in level] for level in plan.levels]
    assert levels == [
        [("psb.resident", "psb_registry")],
        [("hrss.employment", "hrss_db"), ("hrss.pension", "hrss_db"), ("housing.property", "housing_api"),
         ("psb.resident", "psb_registry")],
    ]


async def test_the_fetches_of_one_level_run_concurrently(gateway: Gateway) -> None:
    """Level 2 of QUERY holds four fetches (employments, pensions, properties, household members):
    they are in flight together, not one after another (sequential fetches would never overlap)."""
    inflight, peak = 0, 0
    fetch = gateway.sources.fetch

    async def counted(code: str, query: Any) -> Any:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        try:
            await asyncio.sleep(0.02)  # yield, so that fetches started together are seen together
            return await fetch(code, query)
        finally:
            inflight -= 1

    gateway.sources.fetch = counted  # type: ignore[method-assign]
    try:
        out = await gateway.run(QUERY, None, {"n": 20}, context=UNRESTRICTED)
    finally:
        del gateway.sources.fetch  # type: ignore[method-assign]
    assert out.status == 200 and "errors" not in out.body
    assert peak == 4
