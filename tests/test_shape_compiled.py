"""Compiled shaping (gateway/shape_compiled.py) answers exactly what the generic shaper answers.

Each query runs twice on the same gateway: with every list shaped generically, and with every list
(even of one object) through the compiled functions. The answers must be the same bytes: values,
masks, key order, nulls, and every error with its path, including consent refusals, denied fields
and row rules, for callers with different policies.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import orjson
import pytest

import gateway.shape as shape_module
from catalog.model import DataType
from demo.build import City
from gateway.context import UNRESTRICTED, RequestContext
from gateway.pipeline import Gateway
from gateway.plan import Const, ObjShape, Scalar, Withheld
from gateway.shape_compiled import CompiledShapes
from policies.decide import Subject
from policies.masks import Masker
from tests.conftest import consent_admin, demo_subject
from tests.oracle import rows
from tests.test_consent import REVIEW, consent

STREET = demo_subject("street-office-app")
CLINIC = Subject("health-app", "health", frozenset({"clinician"}))
MARKET = Subject("market-app", "mr", frozenset({"market-inspector"}))


def ctx(subject: Subject, purpose: str) -> RequestContext:
    return RequestContext(subject, purpose, "official-1", "CASE-1")


async def both(gw: Gateway, query: str, variables: dict[str, Any] | None, context: Any,
               monkeypatch: pytest.MonkeyPatch) -> tuple[bytes, bytes]:
    monkeypatch.setattr(shape_module, "COMPILE_FROM", 10**9)
    generic = await gw.run(query, None, variables, context=context)
    monkeypatch.setattr(shape_module, "COMPILE_FROM", 1)
    compiled = await gw.run(query, None, variables, context=context)
    assert generic.status == compiled.status == 200, (generic.body, compiled.body)
    return (orjson.dumps(generic.body, option=orjson.OPT_NON_STR_KEYS),
            orjson.dumps(compiled.body, option=orjson.OPT_NON_STR_KEYS))


async def test_compiled_and_generic_shaping_give_the_same_bytes(own_gateway: Gateway, city: City,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    people = sorted({p["id_number"] for p in rows(city, "hrss", "pension")})[:90]
    admin = consent_admin(own_gateway)
    for who in people[::3]:  # a third of them consent: the rest get CONSENT_REQUIRED at their paths
        await admin.grant(consent(who))
    cases: list[tuple[str, dict[str, Any] | None, Any]] = [
        ("query($ids: [String!]!) { persons(idNumbers: $ids) { idNumber __typename "
         "resident { name district } pensions { monthlyAmount status } "
         "employments { employerName monthlyWage startDate } subsistenceCases { caseId status } } }",
         {"ids": people}, ctx(STREET, REVIEW)),
        ("{ residents(limit: 300) { pageInfo { hasNextPage } nodes { idNumber name gender birthDate "
         "district address householdMembers(limit: 3) { name relation } person { pensions { monthlyAmount } } } } }",
         None, ctx(STREET, REVIEW)),
        ("{ residents(limit: 200) { nodes { n: name idNumber address birthDate } } }", None,
         ctx(CLINIC, "public-health-followup")),
        ("{ businesses(limit: 300) { nodes { creditCode name legalRepIdNumber status registeredCapital } } }",
         None, ctx(MARKET, "market-supervision")),
        ("{ employments(limit: 300) { nodes { id idNumber monthlyWage employerName } } }", None,
         ctx(MARKET, "market-supervision")),
        ("{ residents(limit: 250) { nodes { idNumber name birthDate registeredOn } } "
         "properties(limit: 100) { nodes { propertyId areaSqm usage } } }", None, UNRESTRICTED),
    ]
    for query, variables, context in cases:
        generic, compiled = await both(own_gateway, query, variables, context, monkeypatch)
        assert generic == compiled, query
    # The cases did exercise refusals and withheld fields (or the comparison proves little).
    out = await own_gateway.run(cases[0][0], None, cases[0][1], context=cases[0][2])
    codes = {e["extensions"]["code"] for e in out.body.get("errors", [])}
    assert "CONSENT_REQUIRED" in codes
    out = await own_gateway.run(cases[2][0], None, None, context=cases[2][2])
    assert {e["extensions"]["code"] for e in out.body.get("errors", [])} == {"FORBIDDEN_FIELD"}
    assert len(own_gateway.compiled_shapes) >= 5


async def test_the_node_budget_holds_on_the_compiled_path(make_settings: Any, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    from catalog.loader import load_catalog

    settings = make_settings(max_nodes=150)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    try:
        monkeypatch.setattr(shape_module, "COMPILE_FROM", 1)
        out = await gw.run("{ residents(limit: 200) { nodes { idNumber } } }", context=UNRESTRICTED)
        assert out.status == 400 and out.body["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
    finally:
        await gw.close()


def test_one_function_per_structure_with_no_name_or_value_in_its_code() -> None:
    shapes = CompiledShapes(Masker(b"k" * 32))
    a = ObjShape([Scalar("n", "name", DataType.STRING, "name"), Scalar("d", "birth_date", DataType.DATE),
                  Const("__typename", "Resident")])
    b = ObjShape([Scalar("n", "name", DataType.STRING, "name"), Scalar("d", "birth_date", DataType.DATE),
                  Const("__typename", "Resident")])
    build = shapes.get(a)
    assert build is not None and shapes.get(b) is build and len(shapes) == 1
    # A different mask is a different function.
    assert shapes.get(ObjShape([Scalar("n", "name", DataType.STRING, None)])) is not build
    # Keys, columns and constants are variables of the namespace, never text of the code.
    assert not {"n", "name", "birth_date", "Resident", "__typename"} & set(map(str, build.__code__.co_consts))
    # A non-null withheld field nulls its object: left to the generic path.
    assert shapes.get(ObjShape([Withheld("x", "FORBIDDEN_FIELD", "no", non_null=True)])) is None

    row = {"name": "欧阳修文", "birth_date": date(1990, 5, 17)}
    assert build(row, None, None, a.entries) == {"n": "欧阳**", "d": "1990-05-17", "__typename": "Resident"}
    assert build({"name": None, "birth_date": None}, None, None, a.entries) == {"n": None, "d": None,
                                                                               "__typename": "Resident"}
