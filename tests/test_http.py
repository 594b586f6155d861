"""GraphQL over HTTP: media types, status codes, error codes, and sources that are down."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from catalog.loader import load_catalog
from demo.build import City
from demo.server_thread import free_port
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway
from tests.conftest import TEST_POLICY, served

GQL = "application/graphql-response+json"


@pytest.fixture
async def client(make_settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with served(make_settings(policy=TEST_POLICY)) as (c, _):
        yield c


def code_of(resp: httpx.Response) -> str:
    return resp.json()["errors"][0]["extensions"]["code"]


async def test_post_returns_graphql_response_json(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "{ residents(limit: 2) { nodes { idNumber } } }"},
                          headers={"accept": f"{GQL}, application/json;q=0.9"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(GQL)
    assert len(r.json()["data"]["residents"]["nodes"]) == 2
    assert r.headers["x-request-id"]


async def test_get_query_with_variables(client: httpx.AsyncClient, city: City) -> None:
    applicant = city.showcase["applicant_id_number"]
    r = await client.get("/graphql", params={"query": "query($id: String!) { person(idNumber: $id) { idNumber } }",
                                             "variables": json.dumps({"id": applicant})},
                         headers={"accept": "application/json"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    assert r.json() == {"data": {"person": {"idNumber": applicant}}}


@pytest.mark.parametrize(("accept", "status"), [(GQL, 400), ("application/json", 200)])
async def test_validation_errors_status_follows_the_media_type(client: httpx.AsyncClient, accept: str,
                                                               status: int) -> None:
    r = await client.post("/graphql", json={"query": "{ residents { nodes { shoeSize } } }"},
                          headers={"accept": accept})
    assert r.status_code == status
    body = r.json()
    assert "data" not in body
    assert body["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
    assert "shoeSize" in body["errors"][0]["message"] and body["errors"][0]["locations"]


async def test_parse_error(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "{ residents { "}, headers={"accept": GQL})
    assert r.status_code == 400 and code_of(r) == "GRAPHQL_PARSE_FAILED"


@pytest.mark.parametrize(("content", "ctype", "status", "code", "words"), [
    (b'{"query": ', "application/json", 400, "BAD_REQUEST", "not valid JSON"),
    (b"[]", "application/json", 400, "TOO_MANY_OPERATIONS", "max_operations = 1"),
    (b'"{ x }"', "application/json", 400, "BAD_REQUEST", "must be a JSON object"),
    (b"{}", "application/json", 400, "BAD_REQUEST", "has no query"),
    (b'{"query": 5}', "application/json", 400, "BAD_REQUEST", "query must be a string of GraphQL, not a number"),
    (b'{"query": "{ __typename }", "variables": [1]}', "application/json", 400, "BAD_REQUEST", "variables must be"),
    (b"query=%7B__typename%7D", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE",
     "Content-Type: application/json"),
])
async def test_malformed_requests(client: httpx.AsyncClient, content: bytes, ctype: str, status: int, code: str,
                                  words: str) -> None:
    # Malformed requests get 400 whatever the client accepts.
    r = await client.post("/graphql", content=content, headers={"content-type": ctype, "accept": "application/json"})
    assert r.status_code == status
    assert code_of(r) == code and words in r.json()["errors"][0]["message"]
    assert "Traceback" not in r.text


async def test_wrong_variable_types(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "query($n: Int) { residents(limit: $n) { nodes { name } } }",
                                            "variables": {"n": "ten"}}, headers={"accept": GQL})
    assert r.status_code == 400 and code_of(r) == "BAD_USER_INPUT"
    assert "$n" in r.json()["errors"][0]["message"]


@pytest.mark.parametrize(("query", "words"), [
    ('{ person(idNumber: "990111198009303430") { idNumber } }', "idNumber: invalid ID number: check digit"),
    ('{ organisation(creditCode: "91990106902457878I") { creditCode } }', "outside GB 32100's alphabet"),
    ('{ persons(idNumbers: ["11010519491231002X", "123"]) { idNumber } }', "idNumbers[1]: invalid ID number"),
    ('{ residents(filter: {idNumber: {in: ["x"]}}) { nodes { name } } }', "filter.idNumber.in[0]: invalid ID"),
    ("{ residents(limit: 100000) { nodes { name } } }", "limit must be between 1 and 1000"),
    ("{ residents(limit: -1) { nodes { name } } }", "limit must be between 1 and 1000"),
    ("{ residents(limit: 0) { nodes { name } } }", "limit must be between 1 and 1000"),
    ('{ residents(after: "bm9wZQ") { nodes { name } } }', "not a cursor this gateway returned"),
])
async def test_bad_argument_values_are_clear_errors(client: httpx.AsyncClient, query: str, words: str) -> None:
    r = await client.post("/graphql", json={"query": query}, headers={"accept": GQL})
    assert r.status_code == 400, r.text
    err = r.json()["errors"][0]
    assert err["extensions"]["code"] == "BAD_USER_INPUT"
    assert words in err["message"]
    assert err["path"]


async def test_not_acceptable_and_methods(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "{ __typename }"}, headers={"accept": "text/csv"})
    assert r.status_code == 406 and code_of(r) == "NOT_ACCEPTABLE"
    r = await client.put("/graphql", json={"query": "{ __typename }"})
    assert r.status_code == 405


async def test_browser_gets_the_explorer(client: httpx.AsyncClient) -> None:
    r = await client.get("/graphql", headers={"accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/static/explorer/graphiql.min.js" in r.text


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    sources = r.json()["sources"]
    assert set(sources) == {"psb_registry", "hrss_db", "mr_register", "health_db", "civil_db", "housing_api"}
    assert all(s["status"] == "ok" for s in sources.values())


async def test_sources_that_are_down_fail_only_their_part(make_settings: Any, city: City) -> None:
    closed = free_port()  # nothing listens there
    settings = make_settings({"housing_api": f"http://127.0.0.1:{closed}",
                              "hrss_db": f"postgresql+asyncpg://postgres@127.0.0.1:{closed}/none"}, policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    query = """query($id: String!) { person(idNumber: $id) {
        resident { name } properties { propertyId } pensions { status } businesses { name } } }"""
    async with served(settings) as (c, _):
        r = await c.post("/graphql", json={"query": query, "variables": {"id": applicant}}, headers={"accept": GQL})
        ready = await c.get("/readyz")
    assert r.status_code == 200
    body = r.json()
    person = body["data"]["person"]
    assert person["resident"]["name"] and person["businesses"]  # PSB and Market Regulation still answer
    assert person["properties"] is None and person["pensions"] is None
    errors = {tuple(e["path"]): e["extensions"] for e in body["errors"]}
    assert errors == {("person", "properties"): {"code": "SOURCE_UNAVAILABLE", "source": "housing_api"},
                      ("person", "pensions"): {"code": "SOURCE_UNAVAILABLE", "source": "hrss_db"}}
    assert ready.status_code == 503
    assert ready.json()["sources"]["housing_api"]["status"] == "SOURCE_UNAVAILABLE"
    assert ready.json()["sources"]["psb_registry"]["status"] == "ok"


async def test_nested_failure_is_reported_at_each_path(make_settings: Any, city: City) -> None:
    settings = make_settings({"housing_api": f"http://127.0.0.1:{free_port()}"}, policy=TEST_POLICY)
    query = """query($id: String!) { person(idNumber: $id) { resident { householdMembers {
        name person { properties { propertyId } } } } } }"""
    async with served(settings) as (c, _):
        r = await c.post("/graphql", json={"query": query, "variables": {"id": city.showcase["applicant_id_number"]}})
    body = r.json()
    members = body["data"]["person"]["resident"]["householdMembers"]
    assert all(m["name"] and m["person"]["properties"] is None for m in members)
    assert [e["path"] for e in body["errors"]] == [
        ["person", "resident", "householdMembers", i, "person", "properties"] for i in range(len(members))]


async def test_a_missing_sqlite_file_is_unavailable_and_not_created(make_settings: Any, city_dir: Any) -> None:
    missing = city_dir / "data" / "nothing-here.sqlite"
    settings = make_settings({"mr_register": f"sqlite+aiosqlite:///{missing}"})
    gw = Gateway(load_catalog(*settings.catalog), settings)
    out = await gw.run("{ businesses { nodes { name } } }", context=UNRESTRICTED)
    await gw.close()
    assert out.body["errors"][0]["extensions"]["code"] == "SOURCE_UNAVAILABLE"
    assert not missing.exists()  # the gateway opens department files read-only


@pytest.mark.parametrize(("query", "code", "words"), [
    ("{ residents { nodes { " + "householdMembers { " * 13 + "name" + " }" * 13 + " } } }", "QUERY_TOO_DEEP",
     "at most 12 are allowed (max_depth)"),
    ('{ residents(filter: {district: {eq: null}}) { nodes { name } } }', "BAD_USER_INPUT",
     "filter.district.eq is null: to test for an empty value use {isNull: true}"),
    ("mutation { residents { nodes { name } } }", "GRAPHQL_VALIDATION_FAILED",
     "Cannot query field 'residents' on type 'Mutation'"),
    ("subscription { residents { nodes { name } } }", "GRAPHQL_VALIDATION_FAILED", "no subscription operations"),
])
async def test_request_guards(client: httpx.AsyncClient, query: str, code: str, words: str) -> None:
    r = await client.post("/graphql", json={"query": query}, headers={"accept": GQL})
    assert r.status_code == 400, r.text
    assert code_of(r) == code and words in r.json()["errors"][0]["message"]


async def test_cursor_from_another_list_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "{ businesses(limit: 1) { pageInfo { endCursor } } }"})
    cursor = r.json()["data"]["businesses"]["pageInfo"]["endCursor"]
    r = await client.post("/graphql", json={"query": "query($c: String) { residents(after: $c) { nodes { name } } }",
                                            "variables": {"c": cursor}}, headers={"accept": GQL})
    assert r.status_code == 400 and code_of(r) == "BAD_USER_INPUT"
    assert "not a cursor this gateway returned for this list" in r.json()["errors"][0]["message"]


async def test_fan_out_is_capped_by_max_nodes(make_settings: Any) -> None:
    async with served(make_settings(max_nodes=500, policy=TEST_POLICY)) as (c, _):
        query = "{ residents(limit: 300) { nodes { householdMembers { name } } } }"
        r = await c.post("/graphql", json={"query": query}, headers={"accept": GQL})
    assert r.status_code == 400 and code_of(r) == "QUERY_TOO_COSTLY"
    assert "more than 500 objects (max_nodes)" in r.json()["errors"][0]["message"]
    assert "data" not in r.json()


async def test_a_nested_list_over_max_rows_is_an_error_not_a_cut(make_settings: Any) -> None:
    query = "{ residents(limit: 200) { nodes { name person { medicalInsurances { id } } } } }"
    async with served(make_settings(max_rows=50, policy=TEST_POLICY)) as (c, _):
        r = await c.post("/graphql", json={"query": query}, headers={"accept": GQL})
    body = r.json()
    assert r.status_code == 200 and len(body["data"]["residents"]["nodes"]) == 200
    assert {e["extensions"]["code"] for e in body["errors"]} == {"ROW_LIMIT_EXCEEDED"}
    assert "health.medical_insurance matched more than 50 records" in body["errors"][0]["message"]
    assert all(n["person"]["medicalInsurances"] is None for n in body["data"]["residents"]["nodes"])


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_get_a_graphql_405(client: httpx.AsyncClient, method: str) -> None:
    r = await client.request(method, "/graphql")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert code_of(r) == "METHOD_NOT_ALLOWED"


async def test_bad_content_length_and_oversize_bodies(client: httpx.AsyncClient) -> None:
    big = b'{"query": "{ __typename }", "pad": "' + b"x" * (1 << 20) + b'"}'
    r = await client.post("/graphql", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and code_of(r) == "REQUEST_TOO_LARGE" and "max_body" in r.text

    async def chunks() -> Any:  # no Content-Length: the cap is counted as the body streams in
        for _ in range(20):
            yield b"x" * 100_000

    r = await client.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


async def test_empty_in_lists_match_nothing_on_every_kind_of_source(client: httpx.AsyncClient) -> None:
    for root in ("residents", "properties"):
        r = await client.post("/graphql", json={"query": f"{{ {root}(filter: {{district: {{in: []}}}}) "
                                                         "{ nodes { district } } }"})
        assert r.json()["data"][root]["nodes"] == [], root


async def test_long_in_filters_on_rest_sources_travel_in_the_body(client: httpx.AsyncClient, city: City) -> None:
    ids = [h["property_id"] for h in city.housing][:40] + [f"P{n:013d}" for n in range(400)]
    r = await client.post("/graphql", json={"query": "query($ids: [String!]) { properties(limit: 1000, "
                                            "filter: {propertyId: {in: $ids}}) { nodes { propertyId } } }",
                                            "variables": {"ids": ids}})
    body = r.json()
    assert "errors" not in body, body
    assert [n["propertyId"] for n in body["data"]["properties"]["nodes"]] == sorted(ids[:40])


@pytest.mark.parametrize(("drop", "change", "status", "code", "words"), [
    ("x-purpose", {}, 400, "PURPOSE_REQUIRED", "X-Purpose header; accepted: benefit-fraud-investigation, citizen"),
    (None, {"x-purpose": "fishing"}, 400, "UNKNOWN_PURPOSE", "accepted: benefit-fraud-investigation, citizen-self"),
    ("x-acting-user", {}, 400, "ACTING_USER_REQUIRED", "X-Acting-User"),
    ("x-case-id", {}, 400, "CASE_ID_REQUIRED", "X-Case-Id"),
    (None, {"x-case-id": "x" * 200}, 400, "BAD_REQUEST", "at most 128 characters"),
    (None, {"authorization": "Bearer not.a.token"}, 401, "UNAUTHENTICATED", "not a well-formed"),
])
async def test_context_headers_are_required_for_data(client: httpx.AsyncClient, drop: str | None,
                                                     change: dict[str, str], status: int, code: str,
                                                     words: str) -> None:
    headers = {k: v for k, v in client.headers.items() if k.lower() != drop}
    headers.update(change)
    headers["accept"] = GQL
    # A client of its own: the fixture's default headers would fill the one this case leaves out.
    async with httpx.AsyncClient(transport=client._transport, base_url="http://gw", headers=headers) as bare:
        r = await bare.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"})
    assert r.status_code == status, r.text
    assert code_of(r) == code and words in r.json()["errors"][0]["message"]


async def test_metadata_needs_a_token_but_no_purpose(client: httpx.AsyncClient) -> None:
    token_only = {"authorization": client.headers["authorization"]}
    async with httpx.AsyncClient(transport=client._transport, base_url="http://gw", headers=token_only) as c:
        r = await c.post("/graphql", json={"query": "{ catalog { departments { code } } }"})
    assert r.status_code == 200 and len(r.json()["data"]["catalog"]["departments"]) == 7
    async with httpx.AsyncClient(transport=client._transport, base_url="http://gw") as bare:
        r = await bare.post("/graphql", json={"query": "{ catalog { departments { code } } }"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == 'Bearer realm="hutong"'
    assert code_of(r) == "UNAUTHENTICATED"


async def test_reject_header_fails_the_request_instead_of_nulling(client: httpx.AsyncClient) -> None:
    query = "{ residents(limit: 1) { nodes { name address } } }"
    r = await client.post("/graphql", json={"query": query}, headers={"accept": GQL})
    assert r.status_code == 200 and r.json()["errors"][0]["extensions"]["code"] == "CONSENT_REQUIRED"
    r = await client.post("/graphql", json={"query": "{ vaccinations(limit: 1) { nodes { site } } }"},
                          headers={"accept": GQL, "x-reject-unauthorized": "true"})
    assert r.status_code == 403 and code_of(r) == "FORBIDDEN_FIELD"
    assert "health.vaccination.site" in r.json()["errors"][0]["message"]


async def test_cursors_do_not_reveal_the_key_they_carry(client: httpx.AsyncClient) -> None:
    r = await client.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { idNumber } "
                                                     "pageInfo { endCursor } } }"})
    page = r.json()["data"]["residents"]
    import base64

    raw = base64.urlsafe_b64decode(page["pageInfo"]["endCursor"] + "==")
    assert page["nodes"][0]["idNumber"].encode() not in raw  # sealed (AES-GCM), not just encoded
    tampered = page["pageInfo"]["endCursor"][:-2] + ("A" if page["pageInfo"]["endCursor"][-2] != "A" else "B") + "A"
    r = await client.post("/graphql", json={"query": "query($c: String) { residents(after: $c) { nodes { name } } }",
                                            "variables": {"c": tampered}}, headers={"accept": GQL})
    assert r.status_code == 400 and code_of(r) == "BAD_USER_INPUT"
