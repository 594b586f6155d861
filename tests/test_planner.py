"""Planning: a query's plan has the expected fetches, columns, joins and levels."""

from __future__ import annotations

import json

import pytest

from catalog.loader import load_catalog
from gateway.cli import SHOWCASE_QUERY
from gateway.config import DEMO_CONFIG, load_settings
from gateway.errors import RequestError
from gateway.pipeline import Gateway
from gateway.plan import Plan
from resolvers.query import Condition, Op

APPLICANT = "990111198009303439"


@pytest.fixture(scope="module")
def gw() -> Gateway:
    settings = load_settings(DEMO_CONFIG, environ={})
    return Gateway(load_catalog(*settings.catalog), settings)  # planning never touches a source


def fetches(plan: Plan) -> list[tuple[int, str, tuple[str, ...], str | None]]:
    return [(f.level, f.dataset, f.query.columns, f.query.key_column) for f in plan.fetches]


def test_showcase_plan(gw: Gateway) -> None:
    plan = gw.plan(SHOWCASE_QUERY, None, {"applicant": APPLICANT})
    assert plan.operation == "SubsistenceCheck"
    assert plan.sources == ["civil_db", "housing_api", "hrss_db", "mr_register", "psb_registry"]
    assert fetches(plan) == [
        (0, "civil.subsistence_case", ("applicant_id_number", "case_id", "status", "applied_on"),
         "applicant_id_number"),
        (0, "psb.resident", ("id_number", "name", "district", "household_id"), "id_number"),
        (1, "psb.resident", ("household_id", "id_number", "name", "relation", "birth_date"), "household_id"),
        (2, "hrss.employment", ("id_number", "id", "employer_name", "position", "start_date"), "id_number"),
        (2, "hrss.pension", ("id_number", "id", "status", "contribution_years", "monthly_amount"), "id_number"),
        (2, "housing.property", ("owner_id_number", "property_id", "district", "area_sqm", "usage"),
         "owner_id_number"),
        (2, "mr.business", ("legal_rep_id_number", "credit_code", "name", "status"), "legal_rep_id_number"),
    ]
    # Root entity fetches take the request's key; nested ones the parent's column.
    assert plan.fetches[0].literal_keys == (APPLICANT,)
    assert (plan.fetches[2].parent, plan.fetches[2].parent_column) == (1, "household_id")
    assert (plan.fetches[3].parent, plan.fetches[3].parent_column) == (2, "id_number")
    assert plan.fetches[3].query.conditions == (Condition("end_date", Op.IS_NULL, True),)
    # Authorisation decides on what the client selected, not on join columns it did not ask for.
    assert "psb.resident.household_id" not in plan.fields()
    assert "hrss.employment.employer_name" in plan.fields()


def test_plan_description_never_holds_values(gw: Gateway) -> None:
    plan = gw.plan(f'{{ residents(filter: {{idNumber: {{eq: "{APPLICANT}"}}}}) {{ nodes {{ name }} }} }}')
    text = json.dumps(plan.describe())
    assert APPLICANT not in text
    assert "id_number eq ?" in text


def test_skip_and_include_remove_fetches(gw: Gateway) -> None:
    q = """query($p: Boolean!) { person(idNumber: "ID") { pensions @include(if: $p) { status }
           properties @skip(if: $p) { propertyId } } }""".replace("ID", APPLICANT)
    assert [f.dataset for f in gw.plan(q, None, {"p": True}).fetches] == ["hrss.pension"]
    assert [f.dataset for f in gw.plan(q, None, {"p": False}).fetches] == ["housing.property"]


def test_fragments_merge_into_one_fetch(gw: Gateway) -> None:
    q = """{ person(idNumber: "ID") { ...A ...B } }
           fragment A on Person { resident { name } }
           fragment B on Person { resident { gender } }""".replace("ID", APPLICANT)
    plan = gw.plan(q)
    assert fetches(plan) == [(0, "psb.resident", ("id_number", "name", "gender"), "id_number")]


def test_metadata_only_queries_fetch_nothing(gw: Gateway) -> None:
    assert gw.plan("{ catalog { departments { code } } __schema { queryType { name } } }").fetches == []


def test_root_pages_fetch_one_extra_row(gw: Gateway) -> None:
    plan = gw.plan("{ businesses(limit: 5) { nodes { name } } }")
    (f,) = plan.fetches
    assert (f.query.limit, f.query.order_by, f.page) == (6, "credit_code", True)


def test_planning_errors_fail_before_any_fetch(gw: Gateway) -> None:
    with pytest.raises(RequestError) as exc:
        gw.plan('{ person(idNumber: "bad") { idNumber } }')
    assert exc.value.status == 400 and exc.value.errors[0].path == ["person"]


def test_fields_count_what_filters_test_and_keys_that_are_returned(gw: Gateway) -> None:
    plan = gw.plan("{ employments(filter: {monthlyWage: {gte: 20000}}) { nodes { person { idNumber } } } }")
    # Nothing is selected directly, yet the answer reveals who earns at least 20,000.
    assert plan.fields() == ["hrss.employment.id_number", "hrss.employment.monthly_wage"]
    assert plan.filtered() == ["hrss.employment.monthly_wage"]
    # Following the link without reading the key exposes no key value.
    plan = gw.plan("{ employments { nodes { position person { resident { name } } } } }")
    assert plan.fields() == ["hrss.employment.position", "psb.resident.name"]
