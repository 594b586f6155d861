"""Authorisation at plan time, over the demo policy: allowed, masked, forbidden, row-limited,
predicate-only, consent-withheld, reject mode, and that no denied value leaks."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from catalog.loader import load_catalog
from demo.build import City
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.consent.model import Kind
from policies.consent.terms import GrantRequest
from policies.decide import Access, Subject
from policies.masks import Masker
from tests.conftest import consent_admin, demo_subject
from tests.oracle import rows

STREET = demo_subject("street-office-app")
HEALTH = Subject("health-app", "health", frozenset({"clinician"}))
MARKET = Subject("market-app", "mr", frozenset({"market-inspector"}))
NOBODY = Subject("citizen-portal", "civil", frozenset({"citizen-portal"}))
REVIEW = "subsistence-allowance-review"


def ctx(subject: Subject, purpose: str, reject: bool = False) -> RequestContext:
    return RequestContext(subject, purpose, "official-007", "CASE-2026-0001", reject, "req-test")


async def ask(gw: Gateway, query: str, context: RequestContext, variables: dict[str, Any] | None = None
              ) -> dict[str, Any]:
    out = await gw.run(query, None, variables, context=context)
    assert out.status == 200, out.body
    return out.body


def errors_by_path(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e["path"]): e["extensions"]["code"] for e in body.get("errors", [])}


async def test_street_office_sees_its_district_only_and_pension_amounts_masked(own_gateway: Gateway,
                                                                               city: City) -> None:
    # Pension amounts are conditional: a statutory duty stands in for consent here, for every subject.
    await consent_admin(own_gateway).grant(GrantRequest(
        kind=Kind.LEGAL_BASIS, subject=None, every_subject=True,
        requester="civil", purpose="subsistence-allowance-review",
        fields=["hrss.pension"], valid_until=datetime.now(UTC) + timedelta(days=30), basis_type="statutory_duty",
        reference="社会救助暂行办法 art. 11", recorded_by="legal-office"))
    gateway = own_gateway
    body = await ask(gateway, """{ residents(limit: 1000) { nodes { idNumber district } }
        pensions(limit: 1000) { nodes { idNumber monthlyAmount } } }""", ctx(STREET, "subsistence-allowance-review"))
    assert "errors" not in body, body["errors"][:3]
    districts = {n["district"] for n in body["data"]["residents"]["nodes"]}
    assert districts == {"北苑区"}
    assert len(body["data"]["residents"]["nodes"]) == sum(
        1 for r in rows(city, "psb", "resident") if r["district"] == "北苑区")
    amounts = {p["id_number"]: p["monthly_amount"] for p in rows(city, "hrss", "pension")}
    for n in body["data"]["pensions"]["nodes"]:
        assert n["monthlyAmount"] == (amounts[n["idNumber"]] // 1000) * 1000  # round_1000


async def test_row_rules_are_pushed_into_the_source_query(gateway: Gateway) -> None:
    from sqlalchemy import event

    from resolvers.sql import SQLConnector

    conn = gateway.sources.get("psb_registry")
    assert isinstance(conn, SQLConnector)
    sent: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        sent.append((statement, parameters))

    event.listen(conn.engine.sync_engine, "before_cursor_execute", capture)
    try:
        await ask(gateway, "{ residents(limit: 5) { nodes { name householdMembers { name } } } }",
                  ctx(STREET, "subsistence-allowance-review"))
    finally:
        event.remove(conn.engine.sync_engine, "before_cursor_execute", capture)
    selects = [(s, p) for s, p in sent if s.lstrip().upper().startswith("SELECT") and "resident" in s]
    # Both fetches of the dataset (the page and the batched household lookup) carry the rule, as a
    # bound parameter in the statement the database received.
    assert len(selects) == 2
    for statement, params in selects:
        assert "resident.district = ?" in statement
        assert "北苑区" in params and "北苑区" not in statement


async def test_health_app_masked_names_forbidden_address_and_consent(gateway: Gateway, city: City) -> None:
    vaccinated = {v["id_number"] for v in rows(city, "health", "vaccination")}
    someone = next(r for r in rows(city, "psb", "resident") if r["id_number"] in vaccinated)
    body = await ask(gateway, """query($id: String!) { person(idNumber: $id) {
        resident { name address birthDate }
        medicalInsurances { scheme status }
        vaccinations { vaccine }
        pensions { status } } }""", ctx(HEALTH, "public-health-followup"), {"id": someone["id_number"]})
    person = body["data"]["person"]
    assert person["resident"]["name"] == someone["name"][0] + "*" * (len(someone["name"]) - 1)
    assert person["resident"]["address"] is None
    assert person["resident"]["birthDate"] == someone["birth_date"].isoformat()
    insured = [m for m in rows(city, "health", "medical_insurance") if m["id_number"] == someone["id_number"]]
    assert [m["scheme"] for m in person["medicalInsurances"]] == [m["scheme"] for m in insured]
    assert person["pensions"] is None  # hrss.pension is outside the purpose: not even queried
    # Vaccination records are listed, but the vaccine (conditional) of each needs the person's consent.
    doses = [v for v in rows(city, "health", "vaccination") if v["id_number"] == someone["id_number"]]
    assert person["vaccinations"] == [{"vaccine": None}] * len(doses)
    codes = errors_by_path(body)
    assert codes[("person", "resident", "address")] == "FORBIDDEN_FIELD"
    assert codes[("person", "pensions")] == "FORBIDDEN_FIELD"
    assert all(codes[("person", "vaccinations", i, "vaccine")] == "CONSENT_REQUIRED" for i in range(len(doses)))
    assert all(codes[("person", "medicalInsurances", i, "status")] == "CONSENT_REQUIRED" for i in range(len(insured)))
    fetched = {f.dataset for f in gateway.plan("""{ person(idNumber: "11010519491231002X") {
        pensions { status } vaccinations { vaccine } } }""").fetches}
    assert fetched == {"hrss.pension", "health.vaccination"}
    plan = gateway.plan("""{ person(idNumber: "11010519491231002X") { pensions { status } } }""")
    from gateway.authorize import authorize
    authorize(plan, ctx(HEALTH, "public-health-followup"), gateway.decider, gateway.catalog)
    assert plan.fetches == []  # hrss.pension is outside the purpose: authorisation removes the fetch


async def test_a_none_field_opened_by_the_purposes_legal_basis(gateway: Gateway, city: City) -> None:
    body = await ask(gateway, "{ vaccinations(limit: 5) { nodes { id site } } }", ctx(HEALTH, "public-health-followup"))
    by_id = {v["id"]: v["site"] for v in rows(city, "health", "vaccination")}
    assert all(n["site"] == by_id[n["id"]] for n in body["data"]["vaccinations"]["nodes"])
    body = await ask(gateway, "{ vaccinations(limit: 5) { nodes { id site } } }", ctx(HEALTH, "citizen-self-service"))
    assert body["data"]["vaccinations"] is None  # another purpose: health-app has no grant, and no legal basis


async def test_forbidden_fields_are_not_fetched(gateway: Gateway) -> None:
    from gateway.authorize import authorize

    plan = gateway.plan("{ residents { nodes { name address householdId } } }")
    authorize(plan, ctx(HEALTH, "public-health-followup"), gateway.decider, gateway.catalog)
    (f,) = plan.fetches
    assert "address" not in f.query.columns and "household_id" not in f.query.columns
    assert f.selected == ["name"]


async def test_market_app_may_only_verify_birth_dates(gateway: Gateway, city: City) -> None:
    rep = next(r for r in rows(city, "psb", "resident")
               if any(b["legal_rep_id_number"] == r["id_number"] for b in rows(city, "mr", "business")))
    body = await ask(gateway, """query($id: String!) { person(idNumber: $id) { resident { name birthDate idNumber } }
        before: verify(idNumber: $id, claim: {field: "Resident.birthDate", lt: "1970-01-01"})
        after: verify(idNumber: $id, claim: {field: "Resident.birthDate", gte: "1970-01-01"}) }""",
                     ctx(MARKET, "market-supervision"), {"id": rep["id_number"]})
    data = body["data"]
    born_before = rep["birth_date"].isoformat() < "1970-01-01"
    assert (data["before"], data["after"]) == (born_before, not born_before)
    assert data["person"]["resident"]["birthDate"] is None
    assert data["person"]["resident"]["name"] == rep["name"]
    assert data["person"]["resident"]["idNumber"] == rep["id_number"][:6] + "********" + rep["id_number"][-4:]
    assert errors_by_path(body) == {("person", "resident", "birthDate"): "FORBIDDEN_FIELD"}
    assert "may only verify psb.resident.birth_date" in body["errors"][0]["message"]


async def test_verify_needs_at_least_verify(gateway: Gateway, city: City) -> None:
    someone = rows(city, "psb", "resident")[0]["id_number"]
    out = await gateway.run('query($id: String!) { verify(idNumber: $id, claim: {field: "Resident.address", '
                            'eq: "x"}) }', None, {"id": someone}, context=ctx(MARKET, "market-supervision"))
    assert out.status == 403 and out.body["errors"][0]["extensions"]["code"] == "FORBIDDEN_FIELD"
    assert "psb.resident.address" in out.body["errors"][0]["message"]


def _claims(n: int, op: str = "eq") -> str:
    return " ".join(f'v{i}: verify(idNumber: $id, claim: {{field: "Resident.birthDate", {op}: "19{50 + i}-01-01"}})'
                    for i in range(n))


async def test_many_verify_claims_cannot_rebuild_the_value(gateway: Gateway, city: City) -> None:
    someone = rows(city, "psb", "resident")[3]["id_number"]
    market = ctx(MARKET, "market-supervision")
    # Forty guesses at once found a birth date before the limit: refused before any source is asked.
    out = await gateway.run(f"query($id: String!) {{ {_claims(40)} }}", None, {"id": someone}, context=market)
    assert out.status == 400 and "data" not in out.body
    assert out.body["errors"][0]["extensions"]["code"] == "VERIFY_LIMIT"
    assert "40 verify claims" in out.body["errors"][0]["message"] and "verify_claims (5)" in out.body["errors"][0][
        "message"]
    # A claim.in of six dates is six guesses.
    dates = ", ".join(f'"19{60 + i}-01-01"' for i in range(6))
    out = await gateway.run(f'query($id: String!) {{ verify(idNumber: $id, claim: {{field: "Resident.birthDate", '
                            f'in: [{dates}]}}) }}', None, {"id": someone}, context=market)
    assert out.status == 400 and out.body["errors"][0]["extensions"]["code"] == "VERIFY_LIMIT"


async def test_a_subjects_field_answers_a_client_a_budget_of_claims(gateway: Gateway, city: City) -> None:
    from dataclasses import replace

    from gateway.rate_limit import MemoryRateLimiter

    residents = rows(city, "psb", "resident")
    one, other = residents[5]["id_number"], residents[6]["id_number"]
    limits = replace(gateway.limits.defaults, verify_budget=3, verify_window=24)
    market = ctx(MARKET, "market-supervision")
    gateway.claim_budgets = MemoryRateLimiter()
    query = f"query($id: String!) {{ {_claims(2, 'lt')} }}"
    first = await gateway.run(query, None, {"id": one}, context=market, limits=limits)
    assert first.status == 200 and set(first.body["data"]) == {"v0", "v1"}
    # The third claim fits the budget of three, the fourth does not: the whole request is refused.
    refused = await gateway.run(query, None, {"id": one}, context=market, limits=limits)
    assert refused.status == 429 and refused.body["errors"][0]["extensions"]["code"] == "VERIFY_LIMIT"
    assert int(refused.headers["Retry-After"]) > 3600  # a token every 8 hours
    assert "psb.resident.birth_date" in refused.body["errors"][0]["message"]
    assert one not in str(refused.body)
    # Another subject has a budget of its own.
    assert (await gateway.run(query, None, {"id": other}, context=market, limits=limits)).status == 200


async def test_a_false_answer_still_records_whom_it_was_about(gateway: Gateway, city: City) -> None:
    person = rows(city, "psb", "resident")[7]
    born = person["birth_date"].isoformat()
    out = await gateway.run('query($id: String!) { verify(idNumber: $id, claim: {field: "Resident.birthDate", '
                            'lt: "1900-01-01"}) }', None, {"id": person["id_number"]},
                            context=ctx(MARKET, "market-supervision"))
    assert out.body == {"data": {"verify": False}} and born >= "1900-01-01"
    assert out.audit["subjects"] == [gateway.subjects(person["id_number"])]
    # Refused claims were still asked about someone: looked_up says whom.
    refused = await gateway.run(f"query($id: String!) {{ {_claims(6)} }}", None, {"id": person["id_number"]},
                                context=ctx(MARKET, "market-supervision"))
    assert refused.status == 400 and refused.audit["looked_up"] == [gateway.subjects(person["id_number"])]


async def test_filters_on_forbidden_fields_fail_the_request(gateway: Gateway) -> None:
    out = await gateway.run('{ employments(filter: {monthlyWage: {gte: 20000}}) { nodes { position } } }',
                            context=ctx(MARKET, "market-supervision"))
    assert out.status == 403
    message = out.body["errors"][0]["message"]
    assert "this filter cannot be answered" in message and "hrss.employment.monthly_wage" in message


async def test_reject_mode_fails_the_whole_request(gateway: Gateway) -> None:
    out = await gateway.run("{ residents { nodes { name address } } }",
                            context=ctx(HEALTH, "public-health-followup", reject=True))
    assert out.status == 403 and "data" not in out.body
    assert "psb.resident.address" in out.body["errors"][0]["message"]


async def test_a_client_without_grants_gets_nothing(gateway: Gateway) -> None:
    body = await ask(gateway, "{ residents(limit: 5) { nodes { name idNumber } } }",
                     ctx(NOBODY, "citizen-self-service"))
    # Not even the number of residents: a dataset the client may not use is not queried at all.
    assert body["data"]["residents"] is None
    assert errors_by_path(body) == {("residents",): "FORBIDDEN_FIELD"}


async def test_my_access_lists_what_the_client_may_use(gateway: Gateway) -> None:
    body = await ask(gateway, '{ myAccess(purpose: "market-supervision") { dataset field access mask } }',
                     ctx(MARKET, "market-supervision"))
    grants = {(g["dataset"], g["field"]): (g["access"], g["mask"]) for g in body["data"]["myAccess"]}
    assert grants[("psb.resident", "birth_date")] == ("VERIFY", None)
    assert grants[("psb.resident", "id_number")] == ("MASKED", "id_number")
    assert grants[("mr.business", "name")] == ("CLEAR", None)
    assert ("hrss.employment", "monthly_wage") not in grants and ("psb.resident", "address") not in grants


# --- no denied value ever appears in a response -------------------------------------------------

CLIENTS = [(STREET, "subsistence-allowance-review"), (HEALTH, "public-health-followup"),
           (MARKET, "market-supervision"), (NOBODY, "citizen-self-service")]
# (dataset, GraphQL field on Person that reaches it, its selectable fields)
REACH = [
    ("psb.resident", "resident", ["idNumber", "name", "gender", "birthDate", "address", "district", "householdId"]),
    ("hrss.employment", "employments", ["idNumber", "employerName", "position", "monthlyWage"]),
    ("hrss.pension", "pensions", ["idNumber", "status", "monthlyAmount", "contributionYears"]),
    ("housing.property", "properties", ["propertyId", "address", "areaSqm", "mortgaged"]),
    ("health.vaccination", "vaccinations", ["idNumber", "vaccine", "site"]),
    ("health.medical_insurance", "medicalInsurances", ["idNumber", "scheme", "status"]),
    ("civil.subsistence_case", "subsistenceCases", ["caseId", "monthlyAllowance", "householdId"]),
]
TABLES = {"psb.resident": ("psb", "resident"), "hrss.employment": ("hrss", "employment"),
          "hrss.pension": ("hrss", "pension"), "health.vaccination": ("health", "vaccination"),
          "health.medical_insurance": ("health", "medical_insurance"),
          "civil.subsistence_case": ("civil", "subsistence_case")}


def _text(v: Any) -> str:
    return v.isoformat() if hasattr(v, "isoformat") else str(v)


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(who=st.sampled_from(CLIENTS), picks=st.lists(st.sampled_from(range(len(REACH))), min_size=1, max_size=4,
                                                    unique=True), data=st.data(), via_household=st.booleans())
async def test_no_forbidden_value_leaks(gateway: Gateway, city: City, who: tuple[Subject, str], picks: list[int],
                                        data: Any, via_household: bool) -> None:
    subject, purpose = who
    chosen = []
    for i in picks:
        code, link, fields = REACH[i]
        sel = data.draw(st.lists(st.sampled_from(fields), min_size=1, unique=True))
        chosen.append((code, link, sel))
    inner = " ".join(f"{link} {{ {' '.join(sel)} }}" for _, link, sel in chosen)
    person = f"person {{ {inner} }}"
    body_q = f"resident {{ householdMembers {{ {person} }} }}" if via_household else inner
    ids = [r["id_number"] for r in rows(city, "psb", "resident")[:40]] + [city.showcase["applicant_id_number"]]
    query = f"query($ids: [String!]!) {{ persons(idNumbers: $ids) {{ {body_q} }} }}"
    out = await gateway.run(query, None, {"ids": ids}, context=ctx(subject, purpose))
    body = json.dumps(out.body, ensure_ascii=False)
    masker = Masker(gateway.policy.mask_key)

    def source(code: str) -> list[dict[str, Any]]:
        return city.housing if code == "housing.property" else rows(city, *TABLES[code])

    def free(code: str, name: str) -> bool:
        """Readable in clear without consent: unconditional, or not shared but opened by the purpose's
        legal basis (none_fields). No consent exists in this gateway's store: conditional values never are."""
        d = gateway.decider.decide(subject, purpose, f"{code}.{name}")
        share = gateway.catalog.datasets[code].field(name).share.value
        opened = f"{code}.{name}" in gateway.catalog.purposes[purpose].none_fields
        return d.access is Access.CLEAR and (share == "unconditional" or (share == "none" and opened))

    # A value the caller may see through another field (an ID number it may read in the registry)
    # or that it sent itself cannot be told apart in the text: only the others are checked.
    allowed = set(ids) | {_text(r[f.name]) for code, _, sel in chosen for f in gateway.catalog.datasets[code].fields
                          if f.graphql_name in sel and free(code, f.name) for r in source(code)}
    # ... and so can the masked forms it receives (a round_1000 amount may equal another field's value).
    for code, _, sel in chosen:
        for f in gateway.catalog.datasets[code].fields:
            d = gateway.decider.decide(subject, purpose, f"{code}.{f.name}")
            if f.graphql_name in sel and d.access is Access.MASKED and f.share.value == "unconditional":
                allowed |= {_text(masker.apply(d.mask or f.mask, r[f.name])) for r in source(code)
                            if r[f.name] is not None}
    # Numbers the caller may see (free fields, masked forms), compared as numbers: 7240 is 7240.0.
    allowed_numbers = {float(v) for v in allowed if _number(v)}
    # 1. Where each field's values belong: a field not free to this caller is null there, or (masked
    # and unconditional) one of its masked forms: never anything else, whatever its length or type.
    persons = [p for p in (out.body.get("data") or {}).get("persons") or [] if p]
    if via_household:
        persons = [m["person"] for p in persons for m in ((p.get("resident") or {}).get("householdMembers") or [])
                   if m and m.get("person")]
    for code, link, sel in chosen:
        records = [r for p in persons for r in (p[link] if isinstance(p.get(link), list) else [p.get(link)]) if r]
        for f in gateway.catalog.datasets[code].fields:
            if f.graphql_name not in sel or free(code, f.name):
                continue
            d = gateway.decider.decide(subject, purpose, f"{code}.{f.name}")
            masked = set()
            if d.access is Access.MASKED and f.share.value == "unconditional":
                masked = {json.dumps(masker.apply(d.mask or f.mask, r[f.name]), default=_text, ensure_ascii=False)
                          for r in source(code) if r[f.name] is not None}
            for r in records:
                value = r.get(f.graphql_name)
                assert value is None or json.dumps(value, ensure_ascii=False) in masked, (
                    subject.client_id, code, f.name, value)
    # 2. Anywhere else in the body (another field, an error message): no leaf, string or number, is a
    # value the caller may not read. Short strings and code words recur legitimately and are skipped.
    leaves: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, float | int) and not isinstance(node, bool):
            leaves.add(repr(float(node)))
        elif isinstance(node, str):
            leaves.add(node)
    walk(out.body)
    for code, _, sel in chosen:
        for f in gateway.catalog.datasets[code].fields:
            if f.graphql_name not in sel or free(code, f.name):
                continue
            d = gateway.decider.decide(subject, purpose, f"{code}.{f.name}")
            for r in source(code):
                raw = r[f.name]
                if raw is None or isinstance(raw, bool) or _text(raw) in allowed:
                    continue
                if isinstance(raw, int | float | Decimal):
                    if float(raw) in allowed_numbers or abs(float(raw)) < 1000:
                        continue  # small numbers (years, counts) recur legitimately; checked in place above
                    kept = d.access is Access.MASKED and float(masker.apply(d.mask or f.mask, raw)) == float(raw)
                    assert kept or repr(float(raw)) not in leaves, (subject.client_id, code, f.name)
                    continue
                text = _text(raw)
                if len(text) < 6 or (text.isascii() and text.isalpha()) or (
                        d.access is Access.MASKED and _text(masker.apply(d.mask or f.mask, raw)) == text):
                    continue  # short codes and code words recur legitimately; a mask may leave a value as is
                assert text not in leaves and text not in body, (subject.client_id, code, f.name)


@pytest.mark.parametrize(("who", "query", "code", "words"), [
    # A filter on a conditional field would answer what consent protects.
    (STREET, "{ employments(filter: {monthlyWage: {gte: 20000}}) { nodes { idNumber } } }", "CONSENT_REQUIRED",
     "hrss.employment.monthly_wage"),
    # Masked and verify-only fields cannot be filtered on: a prefix undoes a mask, an equality lists people.
    (HEALTH, '{ residents(filter: {name: {prefix: "梁"}}) { nodes { idNumber } } }', "FORBIDDEN_FIELD",
     "may only read masked psb.resident.name"),
    (MARKET, '{ residents(filter: {birthDate: {eq: "1980-09-30"}}) { nodes { name } } }', "FORBIDDEN_FIELD",
     "may only verify psb.resident.birth_date"),
    (MARKET, '{ residents(filter: {idNumber: {prefix: "990111"}}) { nodes { name } } }', "FORBIDDEN_FIELD",
     "may only read masked psb.resident.id_number"),
])
async def test_tests_on_protected_fields_fail_the_request(gateway: Gateway, who: Subject, query: str, code: str,
                                                          words: str) -> None:
    purpose = {STREET: "subsistence-allowance-review", HEALTH: "public-health-followup",
               MARKET: "market-supervision"}[who]
    out = await gateway.run(query, context=ctx(who, purpose))
    assert out.status == 403, out.body
    assert out.body["errors"][0]["extensions"]["code"] == code and words in out.body["errors"][0]["message"]
    assert "data" not in out.body


async def test_no_existence_leak_for_a_client_without_grants(gateway: Gateway, city: City) -> None:
    applicant = city.showcase["applicant_id_number"]
    body = await ask(gateway, 'query($id: String!) { person(idNumber: $id) { idNumber subsistenceCases { '
                              '__typename } pensions { __typename } } }', ctx(NOBODY, "citizen-self-service"),
                     {"id": applicant})
    assert body["data"]["person"] == {"idNumber": applicant, "subsistenceCases": None, "pensions": None}
    assert set(errors_by_path(body).values()) == {"FORBIDDEN_FIELD"}


async def test_relations_on_withheld_join_columns_are_not_followed(gateway: Gateway) -> None:
    # The health app may not use household_id: the household grouping itself is withheld.
    body = await ask(gateway, "{ residents(limit: 3) { nodes { name householdMembers { name } } } }",
                     ctx(HEALTH, "public-health-followup"))
    assert all(n["householdMembers"] is None for n in body["data"]["residents"]["nodes"])
    assert "psb.resident.household_id" in body["errors"][0]["message"]


async def test_a_denied_non_null_field_nulls_its_nearest_nullable_parent(make_settings: Any, city: City,
                                                                         tmp_path: Path) -> None:
    """Person.idNumber is non-null. Reached from an employment record, its value is that record's
    id_number; verify-only on it cannot be answered as null in place, so the person is null, with the
    error at the field's own path (GraphQL's null bubbling), and the rest is answered."""
    policy = tmp_path / "policy.csv"
    # The clear read reaches down to verify; the deny on read_masked reaches up to read: verify only.
    policy.write_text(f"p, tester, hrss.employment.*, read, {REVIEW}, allow, default\n"
                      f"p, tester, psb.resident.*, read, {REVIEW}, allow, default\n"
                      f"p, tester, hrss.employment.id_number, read_masked, {REVIEW}, deny, default\n")
    settings = make_settings(policy=policy)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    try:
        out = await gw.run("{ employments(limit: 1) { nodes { position person { idNumber resident { name } } } } }",
                           context=ctx(Subject("tester", "civil"), REVIEW))
    finally:
        await gw.close()
    assert out.status == 200, out.body
    node = out.body["data"]["employments"]["nodes"][0]
    assert node["person"] is None and node["position"]  # the nearest nullable parent, and the rest answered
    assert errors_by_path(out.body) == {("employments", "nodes", 0, "person", "idNumber"): "FORBIDDEN_FIELD"}
    employed = {r["id_number"] for r in rows(city, "hrss", "employment")}
    assert not any(i in json.dumps(out.body) for i in employed)


async def test_row_rules_bind_the_clients_own_attributes(gateway: Gateway, city: City) -> None:
    """`district eq ${claim.district}`: each street office sees its own district's residents; one
    without the attribute is refused, never given every district."""
    query = "{ residents(limit: 1000) { nodes { district } } }"
    own = await ask(gateway, query, ctx(STREET, REVIEW))
    assert {n["district"] for n in own["data"]["residents"]["nodes"]} == {"北苑区"}
    other = Subject.of("street-office-app", "civil", {"street-office"}, {"district": "东湖区"})
    theirs = await ask(gateway, query, ctx(other, REVIEW))
    assert {n["district"] for n in theirs["data"]["residents"]["nodes"]} == {"东湖区"}
    (plan_sql,) = [f.query for f in gateway.plan(query).fetches]
    assert plan_sql.conditions == ()  # the rule is added per caller at authorisation, as a bound parameter
    bare = Subject("street-office-app", "civil", frozenset({"street-office"}))
    out = await gateway.run(query, context=ctx(bare, REVIEW))
    assert out.status == 403 and out.body["errors"][0]["extensions"]["code"] == "FORBIDDEN_FIELD"
    assert "row rule on psb.resident cannot be applied to this client" in out.body["errors"][0]["message"]
