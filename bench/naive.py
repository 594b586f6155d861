"""The "naive" baseline: what hutong replaces, a hand-written graphene schema with a resolver per
field, whose list fields ask their source once per parent object (the N+1 pattern).

It is deliberately ordinary, not deliberately slow: resolvers are plain functions (async where
they query), they use the baseline's connections, each statement selects only the columns the
type exposes and carries the street office's row rules, and masked fields are masked in their
resolver with the gateway's own masks, so that its answer is byte for byte the gateway's. It
covers just the types and arguments the bulk and batch workloads use, with the gateway's field
names, so the very same query text runs on both. It has no authorisation and no audit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import graphene
import orjson
import sqlalchemy as sa
from graphql import ExecutionResult

from bench.direct import BULK_COLUMNS, DISTRICT, STREET_OFFICE
from bench.harness import Baseline, keyed
from policies.masks import Masker

__all__ = ["NaiveGraphQL"]

Row = dict[str, Any]

_PAGE = sa.text(f"SELECT {', '.join(BULK_COLUMNS)} FROM resident ORDER BY id_number LIMIT :limit")  # noqa: S608
# One statement per resolver and parent object: the gateway's SQL with one key, never batched.
_RESIDENT = keyed("SELECT id_number, name, district, household_id FROM resident "
                  "WHERE district = :district AND id_number IN :keys")
_CURRENT_JOBS = keyed("SELECT employer_name, position FROM employment WHERE end_date IS NULL AND id_number IN :keys "
                      "ORDER BY id")
_PENSIONS = keyed("SELECT status, contribution_years FROM pension WHERE id_number IN :keys ORDER BY id")
_CASES = keyed("SELECT case_id, status FROM subsistence_case WHERE street_office = :office "
               "AND applicant_id_number IN :keys ORDER BY case_id")


@dataclass
class Context:
    baseline: Baseline
    masker: Masker
    masks: dict[str, str]  # column -> mask, for the bulk reader's masked columns


def _ctx(info: graphene.ResolveInfo) -> Context:
    ctx: Context = info.context
    return ctx


def _column(name: str) -> Any:
    """A resolver for one column: masked when the bulk reader may only see it masked."""

    def resolve(parent: Row, info: graphene.ResolveInfo) -> Any:
        value = parent.get(name)
        mask = _ctx(info).masks.get(name)
        return value if mask is None or value is None else _ctx(info).masker.apply(mask, value)

    return resolve


class Resident(graphene.ObjectType):
    id_number = graphene.String(resolver=_column("id_number"))
    name = graphene.String(resolver=_column("name"))
    gender = graphene.String(resolver=_column("gender"))
    birth_date = graphene.String(resolver=_column("birth_date"))  # ISO text, as the gateway's Date scalar
    district = graphene.String(resolver=_column("district"))
    household_id = graphene.String(resolver=_column("household_id"))
    relation = graphene.String(resolver=_column("relation"))
    registered_on = graphene.String(resolver=_column("registered_on"))


class ResidentPage(graphene.ObjectType):
    nodes = graphene.List(graphene.NonNull(Resident), required=True)


class DateFilter(graphene.InputObjectType):
    is_null = graphene.Boolean()


class EmploymentFilter(graphene.InputObjectType):
    end_date = graphene.Field(DateFilter)


class Employment(graphene.ObjectType):
    employer_name = graphene.String()
    position = graphene.String()


class Pension(graphene.ObjectType):
    status = graphene.String()
    contribution_years = graphene.Int()


class SubsistenceCase(graphene.ObjectType):
    case_id = graphene.String()
    status = graphene.String()


class Person(graphene.ObjectType):
    """A person is just an ID number; every field below asks its department for that one number."""

    id_number = graphene.String(required=True)
    resident = graphene.Field(Resident)
    employments = graphene.List(graphene.NonNull(Employment), filter=EmploymentFilter())
    pensions = graphene.List(graphene.NonNull(Pension))
    subsistence_cases = graphene.List(graphene.NonNull(SubsistenceCase))

    @staticmethod
    async def resolve_resident(parent: Row, info: graphene.ResolveInfo) -> Row | None:
        rows = await _ctx(info).baseline.dicts("psb", _RESIDENT, {"keys": [parent["id_number"]], "district": DISTRICT})
        return rows[0] if rows else None

    @staticmethod
    async def resolve_employments(parent: Row, info: graphene.ResolveInfo,
                                  filter: dict[str, Any] | None = None) -> list[Row]:
        # Only the one condition the workload uses; a real schema would grow a filter compiler here.
        assert ((filter or {}).get("end_date") or {}).get("is_null"), "only current jobs are supported"
        return await _ctx(info).baseline.dicts("hrss", _CURRENT_JOBS, {"keys": [parent["id_number"]]})

    @staticmethod
    async def resolve_pensions(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).baseline.dicts("hrss", _PENSIONS, {"keys": [parent["id_number"]]})

    @staticmethod
    async def resolve_subsistence_cases(parent: Row, info: graphene.ResolveInfo) -> list[Row]:
        return await _ctx(info).baseline.dicts("civil", _CASES, {"keys": [parent["id_number"]],
                                                                 "office": STREET_OFFICE})


class Query(graphene.ObjectType):
    residents = graphene.Field(ResidentPage, limit=graphene.Int())
    persons = graphene.List(graphene.NonNull(Person), id_numbers=graphene.List(graphene.NonNull(graphene.String),
                                                                                 required=True))

    @staticmethod
    async def resolve_residents(_parent: None, info: graphene.ResolveInfo, limit: int = 100) -> Row:
        return {"nodes": await _ctx(info).baseline.dicts("psb", _PAGE, {"limit": limit})}

    @staticmethod
    def resolve_persons(_parent: None, _info: graphene.ResolveInfo, id_numbers: list[str]) -> list[Row]:
        return [{"id_number": i} for i in id_numbers]


class NaiveGraphQL:
    """The schema, executed by graphene over the baseline's connections, answering JSON bytes."""

    def __init__(self, baseline: Baseline, masker: Masker, masks: dict[str, str] | None = None) -> None:
        self.context = Context(baseline, masker, masks or {})
        self.schema = graphene.Schema(query=Query)

    async def run(self, query: str, variables: dict[str, Any] | None = None) -> bytes:
        result: ExecutionResult = await self.schema.execute_async(query, variable_values=variables,
                                                                  context_value=self.context)
        if result.errors or result.data is None:
            raise RuntimeError(f"the naive schema failed: {result.errors}")
        return orjson.dumps({"data": result.data})
