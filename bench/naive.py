"""The "naive" baseline: what hutong replaces, a hand-written graphene schema with a resolver
per field that asks its source once per parent object (the N+1 pattern).

It is deliberately ordinary, not deliberately slow: resolvers are async (graphql-core runs
the siblings of a list concurrently), they use the baseline's connections, each SQL
statement selects only the columns the type exposes, dates stay as the ISO text SQLite
stores (no parsing), and Housing is asked with ``GET /properties?owner_id_number=...``.
It covers just the types and arguments the "showcase" and "bulk" workloads use, with the
same field names as hutong's schema, so the very same query text runs on both.
"""

from __future__ import annotations

from typing import Any

import graphene
import sqlalchemy as sa
from graphql import ExecutionResult

from bench.harness import Baseline, keyed

__all__ = ["NaiveGraphQL"]

Row = dict[str, Any]

# One statement per resolver and parent object; IN (:keys) with one key, so the SQL is the
# gateway's, only never batched.
_CASES = keyed("SELECT case_id, status, applied_on FROM subsistence_case WHERE applicant_id_number IN :keys "
               "ORDER BY case_id")
_RESIDENT = keyed("SELECT id_number, name, gender, birth_date, district, household_id, relation FROM resident "
                  "WHERE id_number IN :keys")
_MEMBERS = keyed("SELECT id_number, name, gender, birth_date, district, household_id, relation FROM resident "
                 "WHERE household_id IN :keys ORDER BY id_number")
_RESIDENT_PAGE = sa.text("SELECT id_number, name, gender, birth_date, district, household_id, relation "
                         "FROM resident ORDER BY id_number LIMIT :limit")
_JOBS = keyed("SELECT employer_name, position, start_date, end_date, monthly_wage FROM employment "
              "WHERE id_number IN :keys ORDER BY id")
_CURRENT_JOBS = keyed("SELECT employer_name, position, start_date, end_date, monthly_wage FROM employment "
                      "WHERE id_number IN :keys AND end_date IS NULL ORDER BY id")
_PENSIONS = keyed("SELECT status, contribution_years, monthly_amount FROM pension WHERE id_number IN :keys ORDER BY id")
_BUSINESSES = keyed("SELECT name, status FROM business WHERE legal_rep_id_number IN :keys ORDER BY credit_code")
_PROPERTY_FIELDS = "property_id,district,area_sqm,usage"


def _ctx(info: graphene.ResolveInfo) -> Baseline:
    baseline: Baseline = info.context
    return baseline


class DateFilter(graphene.InputObjectType):
    is_null = graphene.Boolean()


class EmploymentFilter(graphene.InputObjectType):
    end_date = graphene.Field(DateFilter)


class Employment(graphene.ObjectType):
    employer_name = graphene.String()
    position = graphene.String()
    start_date = graphene.String()
    end_date = graphene.String()
    monthly_wage = graphene.Float()


class Pension(graphene.ObjectType):
    status = graphene.String()
    contribution_years = graphene.Int()
    monthly_amount = graphene.Float()


class Property(graphene.ObjectType):
    property_id = graphene.String()
    district = graphene.String()
    area_sqm = graphene.Float()
    usage = graphene.String()


class Business(graphene.ObjectType):
    name = graphene.String()
    status = graphene.String()


class SubsistenceCase(graphene.ObjectType):
    case_id = graphene.String()
    status = graphene.String()
    applied_on = graphene.String()


class Person(graphene.ObjectType):
    """A person is just an ID number; every field below asks its department for that one number."""

    id_number = graphene.String()
    subsistence_cases = graphene.List(graphene.NonNull(SubsistenceCase))
    resident = graphene.Field(lambda: Resident)
    employments = graphene.List(graphene.NonNull(Employment), filter=EmploymentFilter())
    pensions = graphene.List(graphene.NonNull(Pension))
    properties = graphene.List(graphene.NonNull(Property))
    businesses = graphene.List(graphene.NonNull(Business))

    @staticmethod
    async def resolve_subsistence_cases(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).dicts("civil", _CASES, {"keys": [parent["id_number"]]})

    @staticmethod
    async def resolve_resident(parent: Row, info: graphene.ResolveInfo) -> Row | None:
        rows = await _ctx(info).dicts("psb", _RESIDENT, {"keys": [parent["id_number"]]})
        return rows[0] if rows else None

    @staticmethod
    async def resolve_employments(parent: Row, info: graphene.ResolveInfo,
                                  filter: dict[str, Any] | None = None) -> list[Row]:
        # Only the one condition the showcase uses; a real schema would grow a filter compiler here.
        current = bool(((filter or {}).get("end_date") or {}).get("is_null"))
        return await _ctx(info).dicts("hrss", _CURRENT_JOBS if current else _JOBS, {"keys": [parent["id_number"]]})

    @staticmethod
    async def resolve_pensions(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).dicts("hrss", _PENSIONS, {"keys": [parent["id_number"]]})

    @staticmethod
    async def resolve_properties(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        params = [("fields", _PROPERTY_FIELDS), ("owner_id_number", parent["id_number"]), ("order_by", "property_id")]
        return await _ctx(info).properties(params, batched=False)

    @staticmethod
    async def resolve_businesses(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).dicts("mr", _BUSINESSES, {"keys": [parent["id_number"]]})


class Resident(graphene.ObjectType):
    id_number = graphene.String()
    name = graphene.String()
    gender = graphene.String()
    birth_date = graphene.String()
    district = graphene.String()
    household_id = graphene.String()
    relation = graphene.String()
    person = graphene.Field(Person)
    household_members = graphene.List(graphene.NonNull(lambda: Resident))

    @staticmethod
    def resolve_person(parent: Row, _info: graphene.ResolveInfo) -> Row:
        return {"id_number": parent["id_number"]}

    @staticmethod
    async def resolve_household_members(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).dicts("psb", _MEMBERS, {"keys": [parent["household_id"]]})


class ResidentPage(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(Resident), required=True)


class Query(graphene.ObjectType):
    person = graphene.Field(Person, id_number=graphene.String(required=True))
    residents = graphene.Field(ResidentPage, limit=graphene.Int())

    @staticmethod
    def resolve_person(_parent: None, _info: graphene.ResolveInfo, id_number: str) -> Row:
        return {"id_number": id_number}

    @staticmethod
    async def resolve_residents(_parent: None, info: graphene.ResolveInfo, limit: int = 100) -> Row:
        return {"nodes": await _ctx(info).dicts("psb", _RESIDENT_PAGE, {"limit": limit})}


class NaiveGraphQL:
    """The schema, executed by graphene over the baseline's connections."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        self.schema = graphene.Schema(query=Query)

    async def run(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        result: ExecutionResult = await self.schema.execute_async(query, variable_values=variables,
                                                                  context_value=self.baseline)
        if result.errors or result.data is None:
            raise RuntimeError(f"the naive schema failed: {result.errors}")
        return result.data
