"""The "direct" baseline: the physical limit for each workload.

Hand-written code that fetches exactly what the GraphQL request returns with the fewest round
trips, through the same drivers as the gateway: the same ``SELECT`` statements the gateway plans
(the same columns at most, the same row rules in ``WHERE``, the same ``IN (...)`` batches and
order), independent ones concurrently, the same Housing request; then it builds the JSON answer
in plain Python and encodes it with orjson. It has no parsing, planning, authorisation, masking,
type conversion or generic shaping: precisely the gateway's overhead.

Rows stay as the driver returns them: ISO text for SQLite dates, ``date`` objects from asyncpg,
which orjson writes as the same ISO text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

import orjson
import sqlalchemy as sa

from bench.harness import Baseline, keyed

__all__ = ["BULK_COLUMNS", "BULK_KEYS", "DISTRICT", "STREET_OFFICE", "batch", "bulk", "lookup"]

Obj = dict[str, Any]

# The street office's row rules (demo/policies/policy.csv), which the gateway pushes into WHERE.
DISTRICT = "北苑区"
STREET_OFFICE = "北苑街道"

# --- bulk: one page of residents, one source ---------------------------------------------------

BULK_COLUMNS = ("id_number", "name", "gender", "birth_date", "district", "household_id", "relation", "registered_on")
BULK_KEYS = ("idNumber", "name", "gender", "birthDate", "district", "householdId", "relation", "registeredOn")
_BULK = sa.text(f"SELECT {', '.join(BULK_COLUMNS)} FROM resident ORDER BY id_number LIMIT :n")  # noqa: S608


async def bulk_rows(b: Baseline, n: int) -> list[Obj]:
    rows = await b.rows("psb", _BULK, {"n": n})
    return [dict(zip(BULK_KEYS, r, strict=True)) for r in rows]


async def bulk(b: Baseline, n: int) -> bytes:
    """``n`` residents, 8 columns: one statement, rows to dicts, orjson."""
    return orjson.dumps({"data": {"residents": {"nodes": await bulk_rows(b, n)}}})


# --- lookup: one person across five departments, every source at once ---------------------------

_RESIDENT = keyed("SELECT id_number, name, gender, birth_date, district, household_id, relation FROM resident "
                  "WHERE district = :district AND id_number IN :keys ORDER BY id_number")
_CASES = keyed("SELECT applicant_id_number, case_id, status, applied_on FROM subsistence_case "
               "WHERE street_office = :office AND applicant_id_number IN :keys ORDER BY case_id")
_CURRENT_JOBS = keyed("SELECT id_number, employer_name, position, start_date FROM employment "
                      "WHERE end_date IS NULL AND id_number IN :keys ORDER BY id")
_PENSIONS = keyed("SELECT id_number, status, contribution_years FROM pension WHERE id_number IN :keys ORDER BY id")
_BUSINESSES = keyed("SELECT legal_rep_id_number, name, status FROM business WHERE legal_rep_id_number IN :keys "
                    "ORDER BY credit_code")


def _group(rows: Iterable[Any], make: Callable[[Any], Obj]) -> dict[Any, list[Obj]]:
    """Rows by their first column (the join key), each made into its response object."""
    out: dict[Any, list[Obj]] = {}
    for r in rows:
        out.setdefault(r[0], []).append(make(r))
    return out


def _property_params(owners: Iterable[str]) -> list[tuple[str, str]]:
    # The gateway's request_params for a key batch: projection, keys, primary-key order, row cap.
    return [("fields", "owner_id_number,property_id,district,area_sqm,usage"),
            *(("owner_id_number__in", k) for k in owners), ("order_by", "property_id"), ("limit", "10001")]


async def lookup(b: Baseline, id_number: str) -> bytes:
    """LOOKUP_QUERY for one person: six source queries (five departments), all at once."""
    keys = {"keys": [id_number]}
    resident, cases, jobs, pensions, props, firms = await asyncio.gather(
        b.rows("psb", _RESIDENT, {**keys, "district": DISTRICT}),
        b.rows("civil", _CASES, {**keys, "office": STREET_OFFICE}),
        b.rows("hrss", _CURRENT_JOBS, keys),
        b.rows("hrss", _PENSIONS, keys),
        b.properties(_property_params([id_number])),
        b.rows("mr", _BUSINESSES, keys),
    )
    r = resident[0] if resident else None
    person = {
        "idNumber": id_number,
        "resident": None if r is None else {"name": r[1], "gender": r[2], "birthDate": r[3], "district": r[4],
                                            "householdId": r[5], "relation": r[6]},
        "subsistenceCases": [{"caseId": c[1], "status": c[2], "appliedOn": c[3]} for c in cases],
        "employments": [{"employerName": j[1], "position": j[2], "startDate": j[3]} for j in jobs],
        "pensions": [{"status": p[1], "contributionYears": p[2]} for p in pensions],
        "properties": [{"propertyId": p["property_id"], "district": p["district"], "areaSqm": p["area_sqm"],
                        "usage": p["usage"]} for p in props],
        "businesses": [{"name": f[1], "status": f[2]} for f in firms],
    }
    return orjson.dumps({"data": {"person": person}})


# --- batch: many applicants, three departments ----------------------------------------------------

_BATCH_RESIDENT = keyed("SELECT id_number, name, district, household_id FROM resident "
                        "WHERE district = :district AND id_number IN :keys ORDER BY id_number")
_BATCH_JOBS = keyed("SELECT id_number, employer_name, position FROM employment "
                    "WHERE end_date IS NULL AND id_number IN :keys ORDER BY id")
_BATCH_CASES = keyed("SELECT applicant_id_number, case_id, status FROM subsistence_case "
                     "WHERE street_office = :office AND applicant_id_number IN :keys ORDER BY case_id")


async def batch(b: Baseline, ids: list[str]) -> bytes:
    """BATCH_QUERY: four statements (psb, hrss twice, civil), each one ``IN`` batch of every key."""
    keys = {"keys": ids}
    residents, jobs, pensions, cases = await asyncio.gather(
        b.rows("psb", _BATCH_RESIDENT, {**keys, "district": DISTRICT}),
        b.rows("hrss", _BATCH_JOBS, keys),
        b.rows("hrss", _PENSIONS, keys),
        b.rows("civil", _BATCH_CASES, {**keys, "office": STREET_OFFICE}),
    )
    by_resident = {r[0]: {"name": r[1], "district": r[2], "householdId": r[3]} for r in residents}
    by_job = _group(jobs, lambda r: {"employerName": r[1], "position": r[2]})
    by_pension = _group(pensions, lambda r: {"status": r[1], "contributionYears": r[2]})
    by_case = _group(cases, lambda r: {"caseId": r[1], "status": r[2]})
    persons = [{"idNumber": i, "resident": by_resident.get(i), "employments": by_job.get(i, []),
                "pensions": by_pension.get(i, []), "subsistenceCases": by_case.get(i, [])} for i in ids]
    return orjson.dumps({"data": {"persons": persons}})
