"""Resource attacks: each is refused early, with its own code, and never reaches the sources as a
flood (issue 9). Counted in source statements, not in seconds."""

from __future__ import annotations

from typing import Any

import pytest

from demo.build import City
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway


def statements(gw: Gateway) -> int:
    return sum(gw.sources.statements().values())


async def refused(gw: Gateway, query: str, variables: dict[str, Any] | None = None) -> tuple[int, str, str]:
    before = statements(gw)
    out = await gw.run(query, None, variables, context=UNRESTRICTED)
    assert statements(gw) == before, "a refused request reached a source"
    err = out.body["errors"][0]
    return out.status, err["extensions"]["code"], err["message"]


async def test_alias_flooding_is_refused_before_any_source_query(gateway: Gateway) -> None:
    roots = " ".join(f"a{i}: residents(limit: 1) {{ nodes {{ name }} }}" for i in range(200))
    status, code, message = await refused(gateway, "{ " + roots + " }")
    assert (status, code) == (400, "QUERY_TOO_COSTLY")
    assert "200 source queries" in message and "max_fetches (50)" in message
    # Many aliases of one cheap field are one fetch: answered.
    fields = " ".join(f"n{i}: name" for i in range(500))
    out = await gateway.run("{ residents(limit: 2) { nodes { " + fields + " } } }", context=UNRESTRICTED)
    assert out.status == 200 and len(out.body["data"]["residents"]["nodes"][0]) == 500


async def test_a_huge_document_is_refused_at_parse(gateway: Gateway) -> None:
    fields = " ".join(f"n{i}: name" for i in range(6000))  # 18,000 tokens
    status, code, message = await refused(gateway, "{ residents(limit: 1) { nodes { " + fields + " } } }")
    assert (status, code) == (400, "GRAPHQL_PARSE_FAILED") and "10000 tokens" in message


async def test_deeply_nested_fragments_are_refused_by_depth(gateway: Gateway) -> None:
    # Each fragment goes one level down (a resident's household members), 30 levels in all.
    fragments = [f"fragment L{i} on Resident {{ name householdMembers(limit: 1) {{ ...L{i + 1} }} }}"
                 for i in range(29)] + ["fragment L29 on Resident { name }"]
    status, code, message = await refused(gateway, "{ residents(limit: 1) { nodes { ...L0 } } } " + " ".join(fragments))
    assert (status, code) == (400, "QUERY_TOO_DEEP") and "at most 12" in message


async def test_fragment_cycles_and_fan_out(gateway: Gateway) -> None:
    cycle = ("{ residents(limit: 1) { nodes { ...A } } } fragment A on Resident { name ...B } "
             "fragment B on Resident { idNumber ...A }")
    status, code, message = await refused(gateway, cycle)
    assert (status, code) == (400, "GRAPHQL_VALIDATION_FAILED") and "cannot spread fragment" in message.lower()
    # Each fragment spreads the one before twice: 2^24 paths, one field each. Merged, not expanded.
    fan = ["fragment F0 on Resident { name idNumber }"] + [f"fragment F{i} on Resident {{ ...F{i - 1} ...F{i - 1} }}"
                                                           for i in range(1, 25)]
    before = statements(gateway)
    out = await gateway.run("{ residents(limit: 3) { nodes { ...F24 } } } " + " ".join(fan), context=UNRESTRICTED)
    assert out.status == 200 and out.body["data"]["residents"]["nodes"][0].keys() == {"name", "idNumber"}
    assert statements(gateway) == before + 1


async def test_huge_key_lists_and_long_strings(gateway: Gateway, city: City) -> None:
    ids = [r["id_number"] for r in city.tables["psb"]["resident"]][:1001]
    status, code, message = await refused(gateway, "query($i: [String!]!) { persons(idNumbers: $i) { idNumber } }",
                                          {"i": ids})
    assert (status, code) == (400, "BAD_USER_INPUT") and "at most 1000" in message
    status, code, message = await refused(gateway, "query($v: [String!]) { residents(filter: {district: {in: $v}}) "
                                                   "{ nodes { name } } }", {"v": ["x"] * 1001})
    assert (status, code) == (400, "BAD_USER_INPUT") and "at most 1000" in message
    # A long string reaches the source as one bound value, and matches nothing.
    out = await gateway.run("query($v: String!) { residents(filter: {name: {eq: $v}}) { nodes { name } } }", None,
                            {"v": "名" * 200_000}, context=UNRESTRICTED)
    assert out.status == 200 and out.body["data"]["residents"]["nodes"] == []
    status, code, _ = await refused(gateway, "query($v: String!) { person(idNumber: $v) { idNumber } }",
                                    {"v": "9" * 100_000})
    assert (status, code) == (400, "BAD_USER_INPUT")


@pytest.mark.parametrize("limit", [-1, 1001, 2**63])
async def test_limits_out_of_range_name_the_limit(gateway: Gateway, limit: int) -> None:
    status, code, message = await refused(gateway, "query($n: Int) { residents(limit: $n) { nodes { name } } }",
                                          {"n": limit})
    assert status == 400 and code == "BAD_USER_INPUT" and ("1 and 1000" in message or "Int" in message)
