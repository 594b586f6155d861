"""The "direct" baseline: the physical limit for each workload.

Hand-written code that fetches exactly what the GraphQL request needs with the fewest
round trips: the same batched ``SELECT ... WHERE key IN (...)`` statements the gateway
plans (one per dataset per level, independent ones concurrently) and the same Housing
request, then assembles the nested answer in plain Python. It has no parsing, planning,
type conversion or generic shaping, which is precisely the gateway's overhead.

Dates come back from SQLite as the ISO text they are stored as, and the JSON answers
already hold floats and text, so the values need no conversion to equal the gateway's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

from bench.harness import Baseline, keyed

__all__ = ["BULK_LIMIT", "PAGE_LIMIT", "bulk", "page", "showcase"]

Obj = dict[str, Any]

BULK_LIMIT = 1000
PAGE_LIMIT = 1000

# Each statement mirrors the gateway's fetch for the same field: its columns, its IN
# batch, its primary-key ordering (which fixes the order of nested lists).
_CASES = keyed("SELECT applicant_id_number, case_id, status, applied_on FROM subsistence_case "
               "WHERE applicant_id_number IN :keys ORDER BY case_id")
_RESIDENT = keyed("SELECT id_number, name, district, household_id FROM resident WHERE id_number IN :keys "
                  "ORDER BY id_number")
_MEMBERS = keyed("SELECT household_id, id_number, name, relation, birth_date FROM resident "
                 "WHERE household_id IN :keys ORDER BY id_number")
_CURRENT_JOBS = keyed("SELECT id_number, employer_name, position, start_date FROM employment "
                      "WHERE end_date IS NULL AND id_number IN :keys ORDER BY id")
_PENSIONS = keyed("SELECT id_number, status, contribution_years, monthly_amount FROM pension WHERE id_number IN :keys "
                  "ORDER BY id")
_BUSINESSES = keyed("SELECT legal_rep_id_number, name, status FROM business WHERE legal_rep_id_number IN :keys "
                    "ORDER BY credit_code")

_BULK_RESIDENTS = sa.text("SELECT id_number, name, birth_date FROM resident ORDER BY id_number LIMIT :limit")
_BULK_JOBS = keyed("SELECT id_number, employer_name, monthly_wage FROM employment WHERE id_number IN :keys "
                   "ORDER BY id")
_BULK_PENSIONS = keyed("SELECT id_number, status FROM pension WHERE id_number IN :keys ORDER BY id")

_PAGE = sa.text("SELECT id_number, name, gender, birth_date, district, household_id, relation FROM resident "
                "ORDER BY id_number LIMIT :limit")


def _group(rows: Iterable[Any], make: Callable[[Any], Obj]) -> dict[Any, list[Obj]]:
    """Rows by their first column (the join key), each made into its response object."""
    out: dict[Any, list[Obj]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(make(r))
    return out


def _property_params(fields: str, owners: Iterable[str]) -> list[tuple[str, str]]:
    # The gateway's request_params for a key batch: projection, keys, primary-key order.
    return [("fields", fields), *(("owner_id_number__in", k) for k in owners), ("order_by", "property_id")]


async def showcase(b: Baseline, applicant: str) -> Obj:
    """SHOWCASE_QUERY for one applicant: 7 source queries in 3 rounds, as the gateway plans it."""
    cases, resident = await asyncio.gather(
        b.rows("civil", _CASES, {"keys": [applicant]}),
        b.rows("psb", _RESIDENT, {"keys": [applicant]}),
    )
    person: Obj = {
        "idNumber": applicant,
        "subsistenceCases": [{"caseId": c[1], "status": c[2], "appliedOn": c[3]} for c in cases],
        "resident": None,
    }
    if not resident:
        return {"person": person}
    _, name, district, household = resident[0]
    members = await b.rows("psb", _MEMBERS, {"keys": [household]})
    ids = [m[1] for m in members]
    jobs, pensions, props, firms = await asyncio.gather(
        b.rows("hrss", _CURRENT_JOBS, {"keys": ids}),
        b.rows("hrss", _PENSIONS, {"keys": ids}),
        b.properties(_property_params("owner_id_number,property_id,district,area_sqm,usage", ids), batched=True),
        b.rows("mr", _BUSINESSES, {"keys": ids}),
    )
    by_job = _group(jobs, lambda r: {"employerName": r[1], "position": r[2], "startDate": r[3]})
    by_pension = _group(pensions, lambda r: {"status": r[1], "contributionYears": r[2], "monthlyAmount": r[3]})
    by_firm = _group(firms, lambda r: {"name": r[1], "status": r[2]})
    by_owner: dict[str, list[Obj]] = {}
    for p in props:
        by_owner.setdefault(p["owner_id_number"], []).append(
            {"propertyId": p["property_id"], "district": p["district"], "areaSqm": p["area_sqm"],
             "usage": p["usage"]})
    person["resident"] = {
        "name": name,
        "district": district,
        "householdMembers": [
            {"name": m[2], "relation": m[3], "birthDate": m[4],
             "person": {"employments": by_job.get(m[1], []), "pensions": by_pension.get(m[1], []),
                        "properties": by_owner.get(m[1], []), "businesses": by_firm.get(m[1], [])}}
            for m in members
        ],
    }
    return {"person": person}


async def bulk(b: Baseline) -> Obj:
    """1,000 residents with their jobs, pensions and properties: 4 source queries in 2 rounds."""
    residents = await b.rows("psb", _BULK_RESIDENTS, {"limit": BULK_LIMIT})
    ids = [r[0] for r in residents]
    jobs, pensions, props = await asyncio.gather(
        b.rows("hrss", _BULK_JOBS, {"keys": ids}),
        b.rows("hrss", _BULK_PENSIONS, {"keys": ids}),
        b.properties(_property_params("owner_id_number,property_id,area_sqm", ids), batched=True),
    )
    by_job = _group(jobs, lambda r: {"employerName": r[1], "monthlyWage": r[2]})
    by_pension = _group(pensions, lambda r: {"status": r[1]})
    by_owner: dict[str, list[Obj]] = {}
    for p in props:
        by_owner.setdefault(p["owner_id_number"], []).append({"propertyId": p["property_id"],
                                                              "areaSqm": p["area_sqm"]})
    return {"residents": {"nodes": [
        {"idNumber": i, "name": n, "birthDate": d,
         "person": {"employments": by_job.get(i, []), "pensions": by_pension.get(i, []),
                    "properties": by_owner.get(i, [])}}
        for i, n, d in residents
    ]}}


async def page(b: Baseline) -> Obj:
    """One page of 1,000 residents, 7 columns: a single source query."""
    rows = await b.rows("psb", _PAGE, {"limit": PAGE_LIMIT})
    return {"residents": {"nodes": [
        {"idNumber": i, "name": n, "gender": g, "birthDate": d, "district": dist, "householdId": h,
         "relation": rel}
        for i, n, g, d, dist, h, rel in rows
    ]}}
