"""Federated queries over the demo city, answered from SQLite, PostgreSQL and MariaDB sources
(plus the Housing REST service), compared with the naive Python answer."""

from __future__ import annotations

from typing import Any

from demo.build import City
from gateway.cli import SHOWCASE_QUERY
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway
from tests.oracle import rows, showcase_answer


async def run(gw: Gateway, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    out = await gw.run(query, None, variables, context=UNRESTRICTED)
    assert out.status == 200, out.body
    assert "errors" not in out.body, out.body["errors"]
    return out.body["data"]


async def test_showcase_query_matches_the_naive_join(any_gateway: Gateway, city: City) -> None:
    applicant = city.showcase["applicant_id_number"]
    data = await run(any_gateway, SHOWCASE_QUERY, {"applicant": applicant})
    expected = showcase_answer(city, applicant)
    assert data["person"] == expected
    members = expected["resident"]["householdMembers"]
    # The showcase is only a good demo if every department contributes something.
    assert len(members) >= 3
    assert any(m["person"]["employments"] for m in members)
    assert any(m["person"]["pensions"] for m in members)
    assert any(m["person"]["properties"] for m in members)
    assert any(m["person"]["businesses"] for m in members)


async def test_pages_cover_every_resident_once(any_gateway: Gateway, city: City) -> None:
    query = """query($after: String) { residents(limit: 400, after: $after) {
        nodes { idNumber } pageInfo { hasNextPage endCursor } } }"""
    seen: list[str] = []
    after = None
    for _ in range(20):
        page = (await run(any_gateway, query, {"after": after}))["residents"]
        seen += [n["idNumber"] for n in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == sorted(r["id_number"] for r in rows(city, "psb", "resident"))


async def test_filters_are_applied_in_the_source(any_gateway: Gateway, city: City) -> None:
    district = city.showcase["district"]
    query = """query($d: String!) { residents(limit: 1000, filter: {district: {eq: $d}, birthDate: {gte: "1990-01-01"},
               relation: {in: ["head", "spouse"]}}) { nodes { idNumber } } }"""
    got = [n["idNumber"] for n in (await run(any_gateway, query, {"d": district}))["residents"]["nodes"]]
    want = sorted(r["id_number"] for r in rows(city, "psb", "resident")
                  if r["district"] == district and r["birth_date"].isoformat() >= "1990-01-01"
                  and r["relation"] in ("head", "spouse"))
    assert got == want and got


async def test_prefix_filter_escapes_wildcards(any_gateway: Gateway, city: City) -> None:
    # '%' and '_' are data, not LIKE wildcards: a prefix of '%' matches nothing.
    data = await run(any_gateway, '{ residents(filter: {name: {prefix: "%"}}) { nodes { idNumber } } }')
    assert data["residents"]["nodes"] == []
    first = rows(city, "psb", "resident")[0]["name"][:1]
    query = '{ residents(limit: 1000, filter: {name: {prefix: "FIRST"}}) { nodes { name } } }'
    data = await run(any_gateway, query.replace("FIRST", first))
    names = [n["name"] for n in data["residents"]["nodes"]]
    assert names and all(n.startswith(first) for n in names)


async def test_nested_limit_and_filter_per_parent(any_gateway: Gateway, city: City) -> None:
    query = """{ residents(limit: 200) { nodes { idNumber householdId
        householdMembers(limit: 2, filter: {gender: {eq: "F"}}) { idNumber gender } } } }"""
    data = await run(any_gateway, query)
    residents = rows(city, "psb", "resident")
    for node in data["residents"]["nodes"]:
        want = sorted(r["id_number"] for r in residents
                      if r["household_id"] == node["householdId"] and r["gender"] == "F")[:2]
        assert [m["idNumber"] for m in node["householdMembers"]] == want


async def test_organisation_entity_and_back_links(any_gateway: Gateway, city: City) -> None:
    code = city.showcase["credit_code"]
    query = """query($c: String!) { organisation(creditCode: $c) { creditCode
        business { name legalRepresentative { idNumber resident { name } } }
        employments { idNumber employer { creditCode } } } }"""
    org = (await run(any_gateway, query, {"c": code.lower()}))["organisation"]
    biz = next(b for b in rows(city, "mr", "business") if b["credit_code"] == code)
    rep = next(r for r in rows(city, "psb", "resident") if r["id_number"] == biz["legal_rep_id_number"])
    assert org["creditCode"] == code  # normalised to upper case
    assert org["business"] == {"name": biz["name"],
                               "legalRepresentative": {"idNumber": rep["id_number"], "resident": {"name": rep["name"]}}}
    staff = sorted((e for e in rows(city, "hrss", "employment") if e["employer_credit_code"] == code),
                   key=lambda e: e["id"])
    assert org["employments"] == [{"idNumber": e["id_number"], "employer": {"creditCode": code}} for e in staff]


async def test_persons_keeps_request_order_and_types(any_gateway: Gateway, city: City) -> None:
    residents = rows(city, "psb", "resident")
    ids = [residents[5]["id_number"], residents[1]["id_number"], residents[5]["id_number"]]
    query = """query($ids: [String!]!) { persons(idNumbers: $ids) { idNumber __typename
        resident { birthDate registeredOn } } }"""
    got = (await run(any_gateway, query, {"ids": ids}))["persons"]
    assert [p["idNumber"] for p in got] == ids
    assert got[0]["__typename"] == "Person"
    assert got[0]["resident"]["birthDate"] == residents[5]["birth_date"].isoformat()


async def test_fragments_aliases_and_directives(gateway: Gateway, city: City) -> None:
    applicant = city.showcase["applicant_id_number"]
    query = """query($id: String!, $withPension: Boolean!) {
        me: person(idNumber: $id) {
            ...Who jobs: employments { position } pensions @include(if: $withPension) { status } }
        again: person(idNumber: $id) { resident { name } }
    }
    fragment Who on Person { idNumber resident { n: name } }"""
    data = await run(gateway, query, {"id": applicant, "withPension": False})
    me = next(r for r in rows(city, "psb", "resident") if r["id_number"] == applicant)
    assert list(data) == ["me", "again"]
    assert list(data["me"]) == ["idNumber", "resident", "jobs"]  # pensions skipped by @include(if: false)
    assert data["me"]["resident"] == {"n": me["name"]}
    assert data["again"] == {"resident": {"name": me["name"]}}


async def test_rest_source_pushdown_matches(gateway: Gateway, city: City) -> None:
    query = """{ properties(limit: 1000, filter: {usage: {eq: "commercial"}, areaSqm: {gte: 50}}) {
        nodes { propertyId mortgaged acquiredOn owner { idNumber } } } }"""
    got = (await run(gateway, query))["properties"]["nodes"]
    want = sorted((h for h in city.housing if h["usage"] == "commercial" and h["area_sqm"] >= 50),
                  key=lambda h: h["property_id"])
    assert got == [{"propertyId": h["property_id"], "mortgaged": h["mortgaged"], "acquiredOn": h["acquired_on"],
                    "owner": {"idNumber": h["owner_id_number"]}} for h in want]


async def test_catalog_is_queryable(gateway: Gateway) -> None:
    query = """{ catalog {
        departments { code name contact { email } datasets { code } }
        datasets(search: "户籍") { code provider { code } sourceKind fields { name shareType sensitivity } }
        conditional: fields(shareType: CONDITIONAL) { dataset name graphqlPath }
        entities { code key heldIn } } }"""
    data = await run(gateway, query)
    cat = data["catalog"]
    assert {d["code"] for d in cat["departments"]} == {"psb", "hrss", "housing", "mr", "health", "civil", "service"}
    assert [d["code"] for d in cat["datasets"]] == ["psb.resident"]
    fields = {f["name"]: f for f in cat["datasets"][0]["fields"]}
    assert fields["address"] == {"name": "address", "shareType": "CONDITIONAL", "sensitivity": "L3"}
    assert {"dataset": "hrss.employment", "name": "monthly_wage", "graphqlPath": "Employment.monthlyWage"} in \
        cat["conditional"]
    person = next(e for e in cat["entities"] if e["code"] == "person")
    assert "psb.resident.id_number" in person["heldIn"] and "mr.business.legal_rep_id_number" in person["heldIn"]


async def test_introspection_and_data_in_one_request(gateway: Gateway) -> None:
    data = await run(gateway, '{ __typename __type(name: "Person") { fields { name } } residents(limit: 1) '
                              "{ nodes { idNumber } } }")
    assert data["__typename"] == "Query"
    names = {f["name"] for f in data["__type"]["fields"]}
    assert {"idNumber", "resident", "employments", "properties", "businesses", "subsistenceCases"} <= names
    assert len(data["residents"]["nodes"]) == 1
