"""What the audit record of a request says, and what it must never hold."""

from __future__ import annotations

import json
import re

from demo.build import City
from gateway.audit.entry import normalise_query
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.decide import Subject
from tests.conftest import demo_subject

STREET = demo_subject("street-office-app")
HEALTH = Subject("health-app", "health", frozenset({"clinician"}))
ID = re.compile(r"\b99\d{15}[\dX]\b")


def ctx(subject: Subject, purpose: str) -> RequestContext:
    return RequestContext(subject, purpose, "official-007", "CASE-1", False, "req-1")


def test_normalised_queries_keep_no_literal_values(gateway: Gateway) -> None:
    doc = gateway.prepare('{ person(idNumber: "990111198009303439") { resident { name } } '
                          'residents(limit: 5, filter: {district: {eq: "北苑区"}}) { nodes { name } } }').document
    text = normalise_query(doc)
    assert "990111198009303439" not in text and "北苑区" not in text and "5" not in text
    assert text.startswith('{ person(idNumber: "?")')


async def test_the_record_lists_fields_dispositions_subjects_and_rows(gateway: Gateway, city: City) -> None:
    applicant = city.showcase["applicant_id_number"]
    query = ('query($id: String!) { person(idNumber: $id) { resident { name address householdMembers { idNumber } } '
             "vaccinations { vaccine } pensions { status } } }")
    out = await gateway.run(query, None, {"id": applicant}, context=ctx(HEALTH, "public-health-followup"))
    audit = out.audit
    fields = {(f["dataset"], f["field"]): f["disposition"] for f in audit["fields"]}
    assert fields[("psb.resident", "name")] == "masked"
    assert fields[("psb.resident", "address")] == "denied"
    # Conditional: withheld per record without consent. With no record at all, nothing was withheld
    # and the record keeps the policy's decision.
    doses = [v for v in city.tables["health"]["vaccination"] if v["id_number"] == applicant]
    assert fields[("health.vaccination", "vaccine")] == ("consent_required" if doses else "clear")
    assert fields[("hrss.pension", "status")] == "denied"  # the purpose does not cover the dataset
    assert audit["rows"]["psb_registry"] >= 1 and "hrss_db" not in audit["rows"]  # pensions never queried
    # The household is withheld from the health app (it may not use household_id): only the applicant's
    # own records left the sources, and that is whom the record names.
    assert audit["subjects"] == [gateway.subjects(applicant)]
    assert {f["disposition"] for f in audit["fields"] if f["path"] == "person.resident.householdMembers"} == {"denied"}
    text = json.dumps(audit, ensure_ascii=False)
    assert not ID.search(text), ID.search(text)  # no raw ID number anywhere in the record
    assert audit["query_hash"] == __import__("hashlib").sha256(audit["query"].encode()).hexdigest()


async def test_refused_requests_still_describe_what_was_asked(gateway: Gateway) -> None:
    out = await gateway.run('{ employments(filter: {monthlyWage: {gte: 20000}}) { nodes { idNumber } } }',
                            context=ctx(STREET, "subsistence-allowance-review"))
    assert out.status == 403
    assert {(f["field"], f["disposition"]) for f in out.audit["fields"]} >= {("monthly_wage", "consent_required")}
    assert "20000" not in out.audit["query"]
