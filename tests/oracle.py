"""The naive answer: what a federated query must return, computed in Python from the city's rows.

Integration tests compare the gateway's answer, from every kind of source, with this.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from demo.build import City

Row = dict[str, Any]


def _iso(v: Any) -> Any:
    return v.isoformat() if isinstance(v, date) else v


def rows(city: City, dept: str, table: str) -> list[Row]:
    return city.tables[dept][table]


def showcase_answer(city: City, applicant: str) -> dict[str, Any]:
    """The expected ``data.person`` of gateway.cli.SHOWCASE_QUERY."""
    residents = rows(city, "psb", "resident")
    me = next(r for r in residents if r["id_number"] == applicant)
    members = sorted((r for r in residents if r["household_id"] == me["household_id"]), key=lambda r: r["id_number"])

    def person(idn: str) -> dict[str, Any]:
        return {
            "employments": [
                {"employerName": e["employer_name"], "position": e["position"], "startDate": _iso(e["start_date"])}
                for e in sorted(rows(city, "hrss", "employment"), key=lambda e: e["id"])
                if e["id_number"] == idn and e["end_date"] is None
            ],
            "pensions": [
                {"status": p["status"], "contributionYears": p["contribution_years"],
                 "monthlyAmount": p["monthly_amount"]}
                for p in sorted(rows(city, "hrss", "pension"), key=lambda p: p["id"]) if p["id_number"] == idn
            ],
            "properties": [
                {"propertyId": h["property_id"], "district": h["district"], "areaSqm": h["area_sqm"],
                 "usage": h["usage"]}
                for h in sorted(city.housing, key=lambda h: h["property_id"]) if h["owner_id_number"] == idn
            ],
            "businesses": [
                {"name": b["name"], "status": b["status"]}
                for b in sorted(rows(city, "mr", "business"), key=lambda b: b["credit_code"])
                if b["legal_rep_id_number"] == idn
            ],
        }

    return {
        "idNumber": applicant,
        "subsistenceCases": [
            {"caseId": c["case_id"], "status": c["status"], "appliedOn": _iso(c["applied_on"])}
            for c in sorted(rows(city, "civil", "subsistence_case"), key=lambda c: c["case_id"])
            if c["applicant_id_number"] == applicant
        ],
        "resident": {
            "name": me["name"],
            "district": me["district"],
            "householdMembers": [
                {"name": m["name"], "relation": m["relation"], "birthDate": _iso(m["birth_date"]),
                 "person": person(m["id_number"])}
                for m in members
            ],
        },
    }
