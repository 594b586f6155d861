"""Reading the audit log through GraphQL: ``auditLog`` for auditors, ``dataTracker`` for citizens.

Auditors (role ``auditor``) search the whole log but read no department data (the policy
grants them none). A citizen-facing app (role ``citizen-portal``) asks, for one ID number,
who accessed that person's records, when, from which department, for what purpose: like
Estonia's Data Tracker. Data subjects are matched by the keyed HMAC the gateway computes
from the ID number given; the raw number is never stored or searched.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import graphene

from catalog.keys import InvalidKey
from gateway.context import require_role

__all__ = ["AuditQuery"]

AUDITOR_ROLE = "auditor"
TRACKER_ROLE = "citizen-portal"
MAX_PAGE = 500


def _require(info: Any, role: str) -> Any:
    require_role(info.context, role)
    store = info.context.get("audit")
    if store is None:
        raise ValueError("the audit log is not available in this process")
    return store


def _page(limit: int | None, after: str | None) -> tuple[int, int | None]:
    limit = 50 if limit is None else limit
    if not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be from 1 to {MAX_PAGE}")
    if after is not None and not after.isdigit():
        raise ValueError("after must be the endCursor of the previous page")
    return limit, int(after) if after is not None else None


class AuditFieldUse(graphene.ObjectType):
    path = graphene.String()
    dataset = graphene.String(required=True)
    field = graphene.String(required=True)
    disposition = graphene.String(required=True, description="clear, masked, verify, denied or consent_required")


class AuditRecord(graphene.ObjectType):
    seq = graphene.Int(required=True)
    time = graphene.String(required=True)
    kind = graphene.String(required=True)
    hash = graphene.String(required=True)
    request_id = graphene.String()
    client_id = graphene.String()
    department = graphene.String()
    acting_user = graphene.String()
    case_id = graphene.String()
    purpose = graphene.String()
    ip = graphene.String()
    query = graphene.String(description="The query with its literal values replaced by ?")
    query_hash = graphene.String()
    datasets = graphene.List(graphene.NonNull(graphene.String))
    fields = graphene.List(graphene.NonNull(AuditFieldUse))
    subjects = graphene.List(graphene.NonNull(graphene.String), description="Keyed HMACs of the data subjects")
    rows = graphene.JSONString(description="Rows returned per source")
    legal_bases = graphene.List(graphene.NonNull(graphene.String))
    consents = graphene.List(graphene.NonNull(graphene.String), description="Ids of the consents that released data")
    consent_withheld = graphene.JSONString(description="Conditional values withheld, per refusal code")
    disclose_after = graphene.JSONString(description="Subjects (HMACs) a covert legal basis hides this access from, "
                                                     "each until a date")
    status = graphene.Int()
    outcome = graphene.String()
    codes = graphene.List(graphene.NonNull(graphene.String))
    latency_ms = graphene.Float()
    event = graphene.JSONString(description="For administrative records: what changed, by whom, before/after")

    @classmethod
    def of(cls, rec: dict[str, Any]) -> dict[str, Any]:
        body = rec["body"]
        flat = {k: body.get(k) for k in ("request_id", "client_id", "department", "acting_user", "case_id", "purpose",
                                         "ip", "query", "query_hash", "datasets", "fields", "subjects", "rows",
                                         "legal_bases", "consents", "consent_withheld", "disclose_after",
                                         "status", "outcome", "codes", "latency_ms")}
        event = body if rec["kind"] != "request" else None
        return {"seq": rec["seq"], "time": rec["time"], "kind": rec["kind"], "hash": rec["hash"], **flat,
                "event": event}


class AuditPage(graphene.ObjectType):
    total = graphene.Int(required=True)
    records = graphene.List(graphene.NonNull(AuditRecord), required=True)
    end_cursor = graphene.String(description="Pass as `after` for the next (older) page.")


class AuditFilter(graphene.InputObjectType):
    time_from = graphene.String(description="ISO 8601, inclusive")
    time_to = graphene.String(description="ISO 8601, exclusive")
    department = graphene.String()
    client_id = graphene.String()
    acting_user = graphene.String()
    purpose = graphene.String()
    dataset = graphene.String()
    field = graphene.String()
    disposition = graphene.String()
    outcome = graphene.String()
    id_number = graphene.String(description="A data subject's ID number: matched by its keyed HMAC")
    credit_code = graphene.String(description="An organisation's credit code: matched by its keyed HMAC")


class TrackedAccess(graphene.ObjectType):
    """One access to a person's records, as the citizen sees it."""

    time = graphene.String(required=True)
    department = graphene.String()
    client_id = graphene.String()
    acting_user = graphene.String()
    case_id = graphene.String()
    purpose = graphene.String()
    purpose_description = graphene.String()
    legal_basis = graphene.String()
    legal_bases = graphene.List(graphene.NonNull(graphene.String),
                                description="The purpose's legal basis, and any recorded legal basis used")
    consents = graphene.List(graphene.NonNull(graphene.String), description="The person's consents that were used")
    datasets = graphene.List(graphene.NonNull(graphene.String))


class TrackerPage(graphene.ObjectType):
    total = graphene.Int(description="How many accesses in all, when this page holds them all (else null).")
    accesses = graphene.List(graphene.NonNull(TrackedAccess), required=True)
    end_cursor = graphene.String()


def _covert_until(catalog: Any, record: dict[str, Any], subject: str) -> datetime:
    """When an access may be shown to the person: after a covert purpose's days, and not before the
    disclosure date of a covert legal basis it used (the epoch for ordinary accesses)."""
    until = datetime.min.replace(tzinfo=UTC)
    body = record["body"]
    purpose = catalog.purposes.get(body.get("purpose") or "")
    if purpose is not None and purpose.covert_days is not None:
        until = datetime.fromisoformat(record["time"].replace("Z", "+00:00")) + timedelta(days=purpose.covert_days)
    hidden = (body.get("disclose_after") or {}).get(subject)
    if hidden:
        until = max(until, datetime.fromisoformat(hidden).replace(tzinfo=UTC))
    return until


def _hmac(info: Any, kind: str, value: str) -> str:
    try:
        pseudonym: str = info.context["subjects"].of_input(kind, value)
    except InvalidKey as exc:
        raise ValueError(str(exc)) from None
    info.context.get("looked_up", set()).add(pseudonym)  # this request's record says whom it looked up
    return pseudonym


class AuditQuery(graphene.ObjectType):
    audit_log = graphene.Field(AuditPage, required=True, name="auditLog", filter=graphene.Argument(AuditFilter),
                               limit=graphene.Int(), after=graphene.String(),
                               description="Search the audit log, newest first (role auditor).")
    data_tracker = graphene.Field(TrackerPage, required=True, name="dataTracker",
                                  id_number=graphene.String(required=True, name="idNumber"),
                                  limit=graphene.Int(), after=graphene.String(),
                                  description="Who accessed this person's records, when and why "
                                              "(role citizen-portal).")

    @staticmethod
    async def resolve_audit_log(_: Any, info: Any, filter: dict[str, Any] | None = None, limit: int | None = None,
                                after: str | None = None) -> dict[str, Any]:
        store = _require(info, AUDITOR_ROLE)
        size, after_seq = _page(limit, after)
        given = {k: v for k, v in dict(filter or {}).items() if v is not None}
        if "id_number" in given and "credit_code" in given:
            raise ValueError("filter: give idNumber or creditCode, not both")
        filters = {k: v for k, v in given.items() if k not in ("id_number", "credit_code")}
        if "id_number" in given:
            filters["subject_hmac"] = _hmac(info, "id_number", given["id_number"])
        if "credit_code" in given:
            filters["subject_hmac"] = _hmac(info, "credit_code", given["credit_code"])
        records, total = await store.search(filters, size, after_seq)
        return {"total": total, "records": [AuditRecord.of(r) for r in records],
                "end_cursor": str(records[-1]["seq"]) if len(records) == size else None}

    @staticmethod
    async def resolve_data_tracker(_: Any, info: Any, id_number: str, limit: int | None = None,
                                   after: str | None = None) -> dict[str, Any]:
        store = _require(info, TRACKER_ROLE)
        size, after_seq = _page(limit, after)
        catalog = info.context["catalog"]
        hmac_ = _hmac(info, "id_number", id_number)
        now = datetime.now(UTC)
        scanned: list[dict[str, Any]] = []
        for outcome in ("ok", "partial"):  # only accesses that returned data about the person
            records, _ = await store.search({"subject_hmac": hmac_, "outcome": outcome}, MAX_PAGE, after_seq)
            scanned.extend(records)
        scanned.sort(key=lambda r: r["seq"], reverse=True)
        scanned = scanned[:MAX_PAGE]
        # Covert accesses are skipped until their disclosure date; the cursor follows what was scanned,
        # so older, disclosed accesses stay reachable behind a run of covert ones.
        out = [r for r in scanned if _covert_until(catalog, r, hmac_) <= now][:size]
        last = out[-1]["seq"] if len(out) == size else (scanned[-1]["seq"] if len(scanned) == MAX_PAGE else None)
        total = len(out) if after_seq is None and last is None else None
        accesses = []
        for r in out:
            b = r["body"]
            purpose = catalog.purposes.get(b.get("purpose") or "")
            accesses.append({
                "time": r["time"], "department": b.get("department"), "client_id": b.get("client_id"),
                "acting_user": b.get("acting_user"), "case_id": b.get("case_id"), "purpose": b.get("purpose"),
                "purpose_description": purpose.description if purpose else None,
                "legal_basis": purpose.legal_basis if purpose else None,
                # The purpose's basis, and the recorded bases that cover this person (not those naming others).
                "legal_bases": ([purpose.legal_basis] if purpose else []) + [
                    f"{g['id']}: {g['reference']}" for g in b.get("legal_basis_grants") or []
                    if g.get("subject") in (None, hmac_)],
                "consents": [i for i in b.get("consents") or [] if (b.get("consent_subjects") or {}).get(i) == hmac_],
                "datasets": b.get("datasets"),
            })
        return {"total": total, "accesses": accesses, "end_cursor": str(last) if last is not None else None}
