"""Consent in the pipeline: conditional values released per subject, each refusal with its code,
one consent query per request, bounds, legal bases, signatures, and no withheld value anywhere."""

from __future__ import annotations

import json
import logging
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event

from demo.build import City
from gateway.consent_admin import ConsentAdmin
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.consent.model import Kind
from policies.consent.terms import ConsentInputError, GrantRequest
from policies.decide import Subject
from tests.conftest import consent_admin, demo_subject
from tests.oracle import rows

STREET = demo_subject("street-office-app")
INVESTIGATOR = Subject("investigation-app", "civil", frozenset({"investigator"}))
REVIEW = "subsistence-allowance-review"
PENSIONS = "{ pensions(limit: 1000) { nodes { id idNumber monthlyAmount } } }"
WAGES = "{ employments(limit: 1000) { nodes { id idNumber startDate monthlyWage } } }"
NOW = datetime.now(UTC)


def ctx(subject: Subject = STREET, purpose: str = REVIEW, request_id: str = "req-consent") -> RequestContext:
    return RequestContext(subject, purpose, "official-007", "CASE-2026-0001", False, request_id)


def consent(subject: str | None, **kw: Any) -> GrantRequest:
    """A consent within the subsistence-allowance-review bounds, for pension amounts by default."""
    base: dict[str, Any] = {
        "kind": Kind.CONSENT, "subject": subject, "requester": "civil", "purpose": REVIEW,
        "fields": ["hrss.pension.monthly_amount"], "valid_until": NOW + timedelta(days=90), "max_uses": 20,
        "per_days": 30, "explicit_request": True, "method": "counter", "recorded_by": "counter-clerk-12",
        "recorded_via": "street-office-app"}
    base.update(kw)
    return GrantRequest(**base)


async def ask(gw: Gateway, query: str, context: RequestContext | None = None) -> Any:
    out = await gw.run(query, context=context or ctx())
    assert out.status == 200, out.body
    return out


def by_id(body: dict[str, Any], root: str) -> dict[int, tuple[int, dict[str, Any]]]:
    return {n["id"]: (i, n) for i, n in enumerate(body["data"][root]["nodes"])}


def codes(body: dict[str, Any]) -> dict[tuple[Any, ...], str]:
    return {tuple(e["path"]): e["extensions"]["code"] for e in body.get("errors", [])}


def round_1000(v: float) -> float:
    return (v // 1000) * 1000


@pytest.fixture
def admin(own_gateway: Gateway) -> ConsentAdmin:
    return consent_admin(own_gateway)


async def test_a_consent_releases_its_subjects_values_and_no_one_elses(own_gateway: Gateway, admin: ConsentAdmin,
                                                                      city: City) -> None:
    pensions = rows(city, "hrss", "pension")
    mine, other = pensions[0], pensions[1]
    grant = await admin.grant(consent(mine["id_number"]))
    out = await ask(own_gateway, PENSIONS)
    nodes, errs = by_id(out.body, "pensions"), codes(out.body)
    i, node = nodes[mine["id"]]
    # Released, and still masked as the street office's policy says (round_1000).
    assert node["monthlyAmount"] == round_1000(mine["monthly_amount"])
    assert ("pensions", "nodes", i, "monthlyAmount") not in errs
    j, node = nodes[other["id"]]
    assert node["monthlyAmount"] is None and errs[("pensions", "nodes", j, "monthlyAmount")] == "CONSENT_REQUIRED"
    released = [n for n in out.body["data"]["pensions"]["nodes"] if n["monthlyAmount"] is not None]
    assert {n["idNumber"] for n in released} == {mine["id_number"]}
    # The audit facts: the consent used, the refusals counted, both dispositions of the field.
    assert out.audit["consents"] == [grant.id]
    assert out.audit["consent_withheld"] == {"CONSENT_REQUIRED": len(pensions) - 1}
    dispositions = {f["disposition"] for f in out.audit["fields"] if f["field"] == "monthly_amount"}
    assert dispositions == {"masked", "consent_required"}
    # The use is counted once for the request, not per row.
    stored = await admin.store.get(grant.id)
    assert stored is not None and stored.use_count == 1 and stored.last_used_at is not None


@pytest.mark.parametrize(("setup", "code"), [
    ("revoke", "CONSENT_REVOKED"),
    ("pause", "CONSENT_PAUSED"),
    ("expire", "CONSENT_EXPIRED"),
    ("future", "CONSENT_REQUIRED"),
    ("other-purpose", "CONSENT_REQUIRED"),
    ("other-department", "CONSENT_REQUIRED"),
    ("other-field", "CONSENT_REQUIRED"),
])
async def test_each_refusal_has_its_code(own_gateway: Gateway, admin: ConsentAdmin, city: City, setup: str,
                                         code: str) -> None:
    mine = rows(city, "hrss", "pension")[2]
    subject = mine["id_number"]
    if setup == "expire":  # recorded two days ago, expired yesterday
        await admin.grant(consent(subject, valid_from=NOW - timedelta(days=2), valid_until=NOW - timedelta(days=1)),
                          now=NOW - timedelta(days=2))
    elif setup == "future":
        await admin.grant(consent(subject, valid_from=NOW + timedelta(days=1)))
    elif setup == "other-purpose":
        await admin.grant(consent(subject, purpose="benefit-fraud-investigation", max_uses=None, per_days=None))
    elif setup == "other-department":
        await admin.grant(consent(subject, requester="health"))
    elif setup == "other-field":
        await admin.grant(consent(subject, fields=["hrss.unemployment_insurance.benefit_amount"],
                                  data_from=date(2020, 1, 1), data_to=date(2026, 1, 1)))
    else:
        grant = await admin.grant(consent(subject))
        await admin.change(grant.id, setup, by="citizen", via="citizen-portal", reason="changed my mind")
    out = await ask(own_gateway, PENSIONS)
    i, node = by_id(out.body, "pensions")[mine["id"]]
    assert node["monthlyAmount"] is None
    assert codes(out.body)[("pensions", "nodes", i, "monthlyAmount")] == code
    message = next(e["message"] for e in out.body["errors"] if e["path"] == ["pensions", "nodes", i, "monthlyAmount"])
    assert "hrss.pension.monthly_amount" in message and str(mine["monthly_amount"]) not in message


async def test_a_usable_consent_wins_over_a_revoked_one(own_gateway: Gateway, admin: ConsentAdmin, city: City) -> None:
    mine = rows(city, "hrss", "pension")[3]
    old = await admin.grant(consent(mine["id_number"]))
    await admin.change(old.id, "revoke", by="citizen", via="cli", reason="replaced")
    await admin.grant(consent(mine["id_number"]))
    out = await ask(own_gateway, PENSIONS)
    assert by_id(out.body, "pensions")[mine["id"]][1]["monthlyAmount"] == round_1000(mine["monthly_amount"])


def jobs_of_one_subject(city: City, at_least: int = 2) -> tuple[str, list[dict[str, Any]]]:
    """A person with several jobs started within ten years of each other (the purpose's widest data range)."""
    by_subject: dict[str, list[dict[str, Any]]] = {}
    for e in rows(city, "hrss", "employment"):
        by_subject.setdefault(e["id_number"], []).append(e)
    for subject, jobs in sorted(by_subject.items()):
        starts = [j["start_date"] for j in jobs]
        if len(jobs) >= at_least and (max(starts) - min(starts)).days < 3000:
            return subject, jobs
    raise AssertionError("the demo city has no such person")


def wage_consent(subject: str, jobs: list[dict[str, Any]], **kw: Any) -> GrantRequest:
    first = min(j["start_date"] for j in jobs)
    return consent(subject, fields=["hrss.employment.monthly_wage"], data_from=first,
                   data_to=first + timedelta(days=3650), **kw)


async def test_frequency_limit_counts_requests_not_rows(own_gateway: Gateway, admin: ConsentAdmin, city: City) -> None:
    subject, mine = jobs_of_one_subject(city)
    grant = await admin.grant(wage_consent(subject, mine, max_uses=2, per_days=30))
    for n in (1, 2):  # two requests, each reading several of the subject's jobs: two uses
        out = await ask(own_gateway, WAGES, ctx(request_id=f"req-{n}"))
        for job in mine:
            assert by_id(out.body, "employments")[job["id"]][1]["monthlyWage"] == job["monthly_wage"]
    out = await ask(own_gateway, WAGES, ctx(request_id="req-3"))
    for job in mine:
        i, node = by_id(out.body, "employments")[job["id"]]
        assert node["monthlyWage"] is None
        assert codes(out.body)[("employments", "nodes", i, "monthlyWage")] == "CONSENT_FREQUENCY_EXCEEDED"
    assert sorted(r for _, r in await admin.store.uses(grant.id)) == ["req-1", "req-2"]
    stored = await admin.store.get(grant.id)
    assert stored is not None and stored.use_count == 2


async def test_a_data_range_releases_only_records_dated_within_it(own_gateway: Gateway, admin: ConsentAdmin,
                                                                 city: City) -> None:
    subject, mine = jobs_of_one_subject(city)
    mine = sorted(mine, key=lambda j: j["start_date"])
    cut = mine[-1]["start_date"] - timedelta(days=1)  # the latest job starts after the range ends
    start = cut - timedelta(days=3000)
    await admin.grant(consent(subject, fields=["hrss.employment.monthly_wage"], data_from=start, data_to=cut))
    out = await ask(own_gateway, WAGES)
    nodes, errs = by_id(out.body, "employments"), codes(out.body)
    for job in mine:
        i, node = nodes[job["id"]]
        if start <= job["start_date"] <= cut:
            assert node["monthlyWage"] == job["monthly_wage"]
        else:
            assert node["monthlyWage"] is None
            assert errs[("employments", "nodes", i, "monthlyWage")] == "OUTSIDE_CONSENT_RANGE"
    assert nodes[mine[-1]["id"]][1]["monthlyWage"] is None


async def test_one_consent_query_per_request_whatever_the_rows(own_gateway: Gateway, admin: ConsentAdmin,
                                                              city: City) -> None:
    pensions = rows(city, "hrss", "pension")
    for p in pensions[:30]:
        await admin.grant(consent(p["id_number"]))
    assert own_gateway.consents is not None
    engine = own_gateway.consents.engine.sync_engine
    statements: list[str] = []

    def capture(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(" ".join(statement.split()))

    ids = json.dumps([p["id_number"] for p in pensions[:200]])
    event.listen(engine, "before_cursor_execute", capture)
    try:
        for query in ("{ pensions(limit: 10) { nodes { monthlyAmount } } }", PENSIONS,
                      f"{{ persons(idNumbers: {ids}) {{ pensions {{ monthlyAmount }} unemploymentInsurances "
                      "{ benefitAmount } } }"):
            statements.clear()
            out = await ask(own_gateway, query)
            assert "data" in out.body
            # One lookup for every subject of every conditional field; then, in one transaction, a
            # re-count of the frequency-limited grants used, one INSERT of uses, one UPDATE of counts.
            lookups = [q for q in statements if q.startswith("SELECT") and "FROM consent_grant" in q]
            assert len(lookups) == 1, statements
            verbs = [q.split()[0] for q in statements]
            assert verbs == ["BEGIN", "SELECT", "BEGIN", "SELECT", "INSERT", "UPDATE"], verbs
    finally:
        event.remove(engine, "before_cursor_execute", capture)


async def test_nothing_conditional_means_no_consent_query(own_gateway: Gateway) -> None:
    assert own_gateway.consents is not None
    engine = own_gateway.consents.engine.sync_engine
    statements: list[str] = []

    def capture(_c: Any, _cur: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        await ask(own_gateway, "{ pensions(limit: 50) { nodes { status } } }")
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert statements == []


@pytest.mark.parametrize(("change", "words"), [
    ({"fields": ["hrss.pension.monthly_salary"]}, "unknown field 'hrss.pension.monthly_salary'"),
    ({"fields": ["hrss.pension.status"]}, "hrss.pension.status is shared unconditionally: it needs no consent"),
    ({"fields": ["health.vaccination.site"], "purpose": "public-health-followup", "requester": "health",
      "max_uses": 1, "per_days": 365}, "is not shared (share type none)"),
    ({"fields": ["health.vaccination.vaccine"]}, "purpose subsistence-allowance-review does not cover dataset "
                                                 "health.vaccination"),
    ({"valid_from": NOW + timedelta(days=10), "valid_until": NOW + timedelta(days=5)}, "is not after the start"),
    ({"valid_from": NOW, "valid_until": NOW + timedelta(days=400)}, "over-broad: valid for 400 days, but purpose "
                                                 "subsistence-allowance-review allows at most 365"),
    ({"max_uses": None, "per_days": None}, "allows at most 20 uses per 30 days; give max_uses and per_days"),
    ({"max_uses": 25, "per_days": 30}, "25 uses per 30 days exceeds what purpose subsistence-allowance-review "
                                       "allows (20 per 30 days)"),
    ({"max_uses": 20, "per_days": 10}, "20 uses per 10 days exceeds"),
    ({"fields": ["hrss.employment.monthly_wage"]}, "allows a data range of at most 3660 days; give data_from"),
    ({"fields": ["hrss.employment.monthly_wage"], "data_from": date(2000, 1, 1), "data_to": date(2020, 1, 1)},
     "the data range spans 7305 days"),
    ({"data_from": date(2020, 1, 1), "data_to": date(2021, 1, 1)}, "a data range cannot apply to hrss.pension"),
    ({"requester": "tax"}, "unknown requesting department 'tax'"),
    ({"purpose": "curiosity"}, "unknown purpose 'curiosity'"),
    ({"method": "telepathy"}, "method must be one of counter, app, paper"),
    ({"subject": "990111198009303438"}, "subject: invalid ID number: check digit does not match"),
    ({"subject": None}, "name the data subject"),
])
async def test_bad_or_over_broad_consents_are_refused_with_the_reason(admin: ConsentAdmin, city: City,
                                                                     change: dict[str, Any], words: str) -> None:
    req = consent(city.showcase["applicant_id_number"])
    for k, v in change.items():
        setattr(req, k, v)
    with pytest.raises(ConsentInputError) as info:
        await admin.grant(req)
    assert any(words in p for p in info.value.problems), info.value.problems
    assert await admin.store.search() == []  # nothing stored


async def test_a_legal_basis_for_everyone_stands_in_for_consent(own_gateway: Gateway, admin: ConsentAdmin,
                                                               city: City) -> None:
    lb = await admin.grant(GrantRequest(
        kind=Kind.LEGAL_BASIS, subject=None, every_subject=True,
        requester="civil", purpose=REVIEW, fields=["hrss.pension"],
        valid_until=NOW + timedelta(days=3000), basis_type="statutory_duty",
        reference="社会救助暂行办法 art. 11", recorded_by="legal-office"))
    out = await ask(own_gateway, PENSIONS)
    assert "errors" not in out.body
    amounts = {p["id"]: p["monthly_amount"] for p in rows(city, "hrss", "pension")}
    assert all(n["monthlyAmount"] == round_1000(amounts[n["id"]]) for n in out.body["data"]["pensions"]["nodes"])
    assert out.audit["consents"] == [] and [g["id"] for g in out.audit["legal_basis_grants"]] == [lb.id]
    assert out.audit["disclose_after"] == {}
    # A consent, where there is one, is used before the legal basis (the citizen's own terms first).
    mine = rows(city, "hrss", "pension")[0]
    grant = await admin.grant(consent(mine["id_number"]))
    out = await ask(own_gateway, PENSIONS)
    assert out.audit["consents"] == [grant.id] and [g["id"] for g in out.audit["legal_basis_grants"]] == [lb.id]


async def test_a_covert_legal_basis_records_when_to_disclose(own_gateway: Gateway, admin: ConsentAdmin,
                                                            city: City) -> None:
    suspect = rows(city, "hrss", "pension")[5]
    disclose = (NOW + timedelta(days=180)).date()
    lb = await admin.grant(GrantRequest(
        kind=Kind.LEGAL_BASIS, subject=suspect["id_number"], requester="civil", purpose="benefit-fraud-investigation",
        fields=["hrss.pension.monthly_amount"], valid_until=NOW + timedelta(days=60), basis_type="investigation",
        reference="云民调字〔2026〕17号", covert=True, disclose_after=disclose, recorded_by="investigator-3"))
    out = await ask(own_gateway, PENSIONS, ctx(INVESTIGATOR, "benefit-fraud-investigation"))
    nodes, errs = by_id(out.body, "pensions"), codes(out.body)
    assert nodes[suspect["id"]][1]["monthlyAmount"] == suspect["monthly_amount"]
    assert sum(1 for c in errs.values() if c == "CONSENT_REQUIRED") == len(nodes) - 1  # no one else
    assert out.audit["legal_basis_grants"] == [{"id": lb.id, "type": "investigation",
                                                "reference": "云民调字〔2026〕17号", "covert": True,
                                                "subject": own_gateway.subjects(suspect["id_number"])}]
    assert out.audit["disclose_after"] == {own_gateway.subjects(suspect["id_number"]): disclose.isoformat()}
    with pytest.raises(ConsentInputError, match="disclose_after"):  # covert needs a disclosure date
        await admin.grant(GrantRequest(
            kind=Kind.LEGAL_BASIS, subject=suspect["id_number"], requester="civil",
            purpose="benefit-fraud-investigation", fields=["hrss.pension.monthly_amount"],
            valid_until=NOW + timedelta(days=60), basis_type="investigation", reference="x", covert=True,
            recorded_by="investigator-3"))


async def test_a_row_edited_behind_the_gateway_is_not_honoured(own_gateway: Gateway, admin: ConsentAdmin,
                                                              city: City, caplog: pytest.LogCaptureFixture) -> None:
    mine, other = rows(city, "hrss", "pension")[6], rows(city, "hrss", "pension")[7]
    grant = await admin.grant(consent(mine["id_number"], fields=["hrss.unemployment_insurance.benefit_amount"],
                                      data_from=date(2020, 1, 1), data_to=date(2026, 1, 1)))
    revoked = await admin.grant(consent(other["id_number"]))
    await admin.change(revoked.id, "revoke", by="citizen", via="cli", reason="no")
    assert own_gateway.consents is not None
    async with own_gateway.consents.engine.begin() as conn:
        # Widen a consent to another field, and un-revoke another, directly in the database.
        await conn.execute(sa.text("UPDATE consent_grant SET fields = :f WHERE id = :i"),
                           {"f": '["hrss.pension.monthly_amount"]', "i": grant.id})
        await conn.execute(sa.text("UPDATE consent_grant SET status = 'ACTIVE' WHERE id = :i"), {"i": revoked.id})
    with caplog.at_level(logging.ERROR, logger="hutong.consent"):
        out = await ask(own_gateway, PENSIONS)
    nodes = by_id(out.body, "pensions")
    assert nodes[mine["id"]][1]["monthlyAmount"] is None and nodes[other["id"]][1]["monthlyAmount"] is None
    assert f"consent {grant.id} fails its signature check" in caplog.text
    assert f"consent {revoked.id} fails its signature check" in caplog.text


async def test_consent_store_down_withholds_conditional_values_only(make_settings: Any, tmp_path: Any) -> None:
    from catalog.loader import load_catalog

    settings = make_settings(debug=False, stores=tmp_path / "stores")
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    try:
        assert gw.consents is not None
        await gw.consents.engine.dispose()
        (tmp_path / "stores" / "consent.sqlite").unlink()  # the store is gone ...
        (tmp_path / "stores").chmod(0o500)  # ... and cannot be created again
        out = await ask(gw, "{ pensions(limit: 5) { nodes { status monthlyAmount } } }")
        assert all(n["status"] is not None for n in out.body["data"]["pensions"]["nodes"])  # the rest stands
        assert set(codes(out.body).values()) == {"CONSENT_UNAVAILABLE"}
        assert out.audit["consent_withheld"] == {"CONSENT_UNAVAILABLE": 5}
    finally:
        (tmp_path / "stores").chmod(0o700)
        await gw.close()


async def test_no_withheld_value_reaches_the_response_the_log_or_the_record(
        own_gateway: Gateway, admin: ConsentAdmin, city: City, caplog: pytest.LogCaptureFixture) -> None:
    subject, mine = jobs_of_one_subject(city)
    await admin.grant(wage_consent(subject, mine))
    with caplog.at_level(logging.DEBUG):
        out = await ask(own_gateway, WAGES)
    assert any(n["monthlyWage"] is not None for n in out.body["data"]["employments"]["nodes"])
    text = json.dumps(out.body, ensure_ascii=False)
    record = json.dumps(out.audit, ensure_ascii=False)
    released = {j["monthly_wage"] for j in mine}
    checked = 0
    for job in rows(city, "hrss", "employment")[:1000]:
        wage = job["monthly_wage"]
        if wage is None or wage in released:
            continue  # the same amount released legitimately for the consenting subject
        checked += 1
        for form in (f": {wage}", f":{wage}", f" {wage},", f"{wage}}}"):
            assert form not in text and form not in record and form not in caplog.text, (job["id"], wage)
    assert checked > 100


# --- the property: a conditional value goes to exactly those its subject allowed --------------------

@pytest.fixture
async def consented(own_gateway: Gateway, admin: ConsentAdmin, city: City) -> dict[str, set[str]]:
    """Consents for a fixed, irregular part of the city: pension amounts for some, wages for others."""
    people = sorted({p["id_number"] for p in rows(city, "hrss", "pension")})[:60]
    pension = {p for i, p in enumerate(people) if i % 3 != 1}
    for subject in sorted(pension):
        await admin.grant(consent(subject))
    jobs: dict[str, list[dict[str, Any]]] = {}
    for e in rows(city, "hrss", "employment"):
        jobs.setdefault(e["id_number"], []).append(e)
    wage = set()
    for subject in sorted(jobs)[:40:2]:
        first = min(j["start_date"] for j in jobs[subject])
        if max(j["start_date"] for j in jobs[subject]) <= first + timedelta(days=3650):
            await admin.grant(wage_consent(subject, jobs[subject]))
            wage.add(subject)
    return {"pension": pension, "wage": wage, "people": set(people) | set(sorted(jobs)[:40])}


# Fewer examples than a consent's 20 uses per 30 days: every example is one use of each grant it reads.
@settings(max_examples=18, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_conditional_values_go_exactly_to_the_consented(own_gateway: Gateway, consented: dict[str, set[str]],
                                                             city: City, data: Any) -> None:
    people = sorted(consented["people"])
    ids = data.draw(st.lists(st.sampled_from(people), min_size=1, max_size=25, unique=True))
    parts = data.draw(st.lists(st.sampled_from(["pensions { monthlyAmount status }",
                                                "employments { monthlyWage id }",
                                                "p2: pensions { amount: monthlyAmount }"]),
                               min_size=1, max_size=3, unique=True))
    query = f"query($ids: [String!]!) {{ persons(idNumbers: $ids) {{ {' '.join(parts)} }} }}"
    out = await own_gateway.run(query, None, {"ids": ids}, context=ctx())
    assert out.status == 200, out.body
    errs = codes(out.body)
    pension = {p["id_number"]: p["monthly_amount"] for p in rows(city, "hrss", "pension")}
    wages = {e["id"]: e["monthly_wage"] for e in rows(city, "hrss", "employment")}
    for i, person in enumerate(out.body["data"]["persons"]):
        who = ids[i]
        for key, field in (("pensions", "monthlyAmount"), ("p2", "amount")):
            for j, p in enumerate(person.get(key) or []):
                if who in consented["pension"]:
                    assert p[field] == round_1000(pension[who])
                else:
                    assert p[field] is None and errs[("persons", i, key, j, field)] == "CONSENT_REQUIRED"
        for j, e in enumerate(person.get("employments") or []):
            if who in consented["wage"]:
                assert e["monthlyWage"] == wages[e["id"]]
            else:
                assert e["monthlyWage"] is None and errs[("persons", i, "employments", j, "monthlyWage")] == \
                    "CONSENT_REQUIRED"


async def test_reject_mode_refuses_the_request_instead_of_withholding(own_gateway: Gateway, admin: ConsentAdmin,
                                                                     city: City) -> None:
    mine = rows(city, "hrss", "pension")[0]
    grant = await admin.grant(consent(mine["id_number"]))
    strict = RequestContext(STREET, REVIEW, "official-007", "CASE-1", True, "req-strict")
    out = await own_gateway.run(PENSIONS, context=strict)
    assert out.status == 403 and "data" not in out.body
    assert out.body["errors"][0]["extensions"]["code"] == "CONSENT_REQUIRED"
    assert "hrss.pension.monthly_amount (CONSENT_REQUIRED)" in out.body["errors"][0]["message"]
    stored = await admin.store.get(grant.id)
    assert stored is not None and stored.use_count == 0  # no answer, no use
    ids = json.dumps([mine["id_number"]])
    ok = await own_gateway.run(f"{{ persons(idNumbers: {ids}) {{ pensions {{ monthlyAmount }} }} }}", context=strict)
    assert ok.status == 200 and "errors" not in ok.body


async def test_a_limit_reached_meanwhile_falls_back_to_another_grant(own_gateway: Gateway, admin: ConsentAdmin,
                                                                    city: City) -> None:
    mine = rows(city, "hrss", "pension")[0]
    limited = await admin.grant(consent(mine["id_number"], max_uses=1, per_days=30))
    basis = await admin.grant(GrantRequest(
        kind=Kind.LEGAL_BASIS, subject=mine["id_number"], requester="civil", purpose=REVIEW,
        fields=["hrss.pension.monthly_amount"], valid_until=NOW + timedelta(days=30), basis_type="court_order",
        reference="(2026)云0106执1号", recorded_by="legal-office"))
    store = own_gateway.consents
    assert store is not None
    real = store.candidates

    async def stale(*args: Any) -> Any:
        # Another gateway uses the consent right after this request read the store.
        found = await real(*args)
        await store.record_uses([limited], "req-elsewhere", NOW)
        return found

    store.candidates = stale  # type: ignore[method-assign]
    try:
        out = await ask(own_gateway, PENSIONS)
    finally:
        store.candidates = real  # type: ignore[method-assign]
    _, node = by_id(out.body, "pensions")[mine["id"]]
    assert node["monthlyAmount"] == round_1000(mine["monthly_amount"])  # released under the court order
    assert out.audit["consents"] == [] and [g["id"] for g in out.audit["legal_basis_grants"]] == [basis.id]
    assert [r for _, r in await admin.store.uses(limited.id)] == ["req-elsewhere"]
