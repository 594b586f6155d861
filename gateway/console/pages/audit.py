"""The console's audit pages, for the auditor: search the trail, read one record, verify the chain.

``GET /console/audit`` searches the store (newest first, 50 a page, "older" by ``after``); a
subject is searched by the HMAC of the ID number typed, never by the number itself, and an
invalid number is refused with a message that does not repeat it. ``GET /console/audit/{seq}``
shows one record in full with its place in the chain; ``GET /console/audit/verify`` checks the
whole chain and its checkpoints (:func:`gateway.audit.verify.verify_store`).

Reading the trail is itself recorded (admin events ``console.audit_search``,
``console.audit_record``, ``console.audit_verify``); the search event names the filters used but
only says *whether* a subject was searched for. If that record cannot be written, nothing is shown.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlencode

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from catalog.keys import InvalidKey
from gateway.audit.errors import AuditUnavailable
from gateway.audit.record import GENESIS_HASH, KINDS, chain_hash, parse_time
from gateway.audit.verify import verify_store
from gateway.console.app import render
from gateway.console.security import User, check_csrf, require

__all__ = ["PAGE_SIZE", "routes"]

log = logging.getLogger("hutong.console")

ROLE = "auditor"
PAGE_SIZE = 50
MAX_INPUT = 200  # the store's search columns keep 200 characters: a longer value matches nothing
# The form's text filters: (query parameter = store filter, label).
TEXT_FILTERS = (("client_id", "Client"), ("acting_user", "Official"), ("purpose", "Purpose"))
CHOICE_FILTERS = ("department", "dataset", "outcome", "kind")
TIME_FILTERS = ("time_from", "time_to")
OUTCOMES = ("ok", "partial", "rejected", "denied", "unauthenticated", "failed")
DISPOSITIONS = ("clear", "masked", "verify", "denied", "consent_required")
DAMAGE = {  # docs/audit.md, "Kinds of damage"
    "changed": "a record was edited: its hash no longer matches its content, or its search index disagrees "
               "with its body, or it was rewritten with a recomputed hash so that the next record no longer "
               "links to it",
    "deleted": "a record is missing: the chain jumps over a sequence number, or links to a record that is gone",
    "inserted": "a record was added: two records claim one sequence number, or a forged record links to "
                "another record than its predecessor",
    "reordered": "records were moved: a record sits under another sequence number than the one it was written with",
    "truncated": "the end of the chain was cut off: a signed checkpoint (or the head mark) names a record after "
                 "the last one",
    "bad_checkpoint": "a checkpoint is not valid: its signature is wrong or by an untrusted key, or it signs another "
                      "hash than the record's (the chain was rewritten consistently)",
    "missing_checkpoint": "a checkpoint is missing where one is due (every checkpoint_every records): checkpoints "
                          "were deleted, perhaps to rewrite the records they signed",
    "gap": "archives do not join: records between two files are in neither",
    "overlap": "archives overlap: a file starts before the previous one ends",
}


def routes() -> list[BaseRoute]:
    return [
        Route("/audit", search_page, methods=["GET"], name="audit"),
        Route("/audit", search_post, methods=["POST"], name="audit_search"),
        Route("/audit/verify", verify_page, methods=["GET"], name="audit_verify"),
        Route("/audit/{seq:int}", record_page, methods=["GET"], name="audit_record"),
    ]


async def _record(request: Request, user: User, body: dict[str, Any]) -> None:
    """Record that the auditor read the trail; if that cannot be done, show nothing (fail closed)."""
    try:
        await request.app.state.record({**body, "actor": user.username, "roles": list(user.roles), "outcome": "ok"})
    except AuditUnavailable:
        log.warning("console: %s not shown: the audit store cannot record it", body.get("event"))
        raise HTTPException(503, "the audit log cannot record this reading of it right now, so nothing is "
                                 "shown: try again in a moment") from None


def _choices(request: Request) -> dict[str, list[tuple[str, str]]]:
    catalog = request.app.state.gateway.catalog
    return {
        "department": [(code, d.name) for code, d in sorted(catalog.departments.items())],
        "dataset": [(code, d.name) for code, d in sorted(catalog.datasets.items())],
        "outcome": [(o, o) for o in OUTCOMES],
        "kind": [(k, k) for k in KINDS],
        "purpose": [(code, "") for code in sorted(catalog.purposes)],
    }


def _summary(rec: dict[str, Any]) -> dict[str, Any]:
    body = rec["body"] if isinstance(rec["body"], dict) else {}
    datasets = body.get("datasets")
    return {
        "seq": rec["seq"], "time": rec["time"], "when": _when(rec["time"]), "kind": rec["kind"],
        "event": body.get("event") if rec["kind"] == "admin" else None, "actor": body.get("actor"),
        "client_id": body.get("client_id"), "department": body.get("department"),
        "acting_user": body.get("acting_user"), "purpose": body.get("purpose"), "outcome": body.get("outcome"),
        "outcome_class": body.get("outcome") if body.get("outcome") in OUTCOMES else "",
        "datasets": [str(d) for d in datasets] if isinstance(datasets, list) else [],
    }


def _when(time: str) -> str:
    """``2025-03-01T08:15:02.123456Z`` -> ``2025-03-01 08:15:02``: the table's time (UTC)."""
    return time[:19].replace("T", " ")


FORM_KEYS = (*TIME_FILTERS, *CHOICE_FILTERS, "client_id", "acting_user", "purpose")


async def search_post(request: Request) -> Response:
    """The search form is POSTed (with its CSRF token) so that an ID number never travels in a URL:
    it is turned into its pseudonym here, and the results page is addressed by that."""
    form = await check_csrf(request)
    require(request, ROLE)
    kept = {k: str(form.get(k, "")).strip()[:MAX_INPUT] for k in FORM_KEYS}
    kept = {k: v for k, v in kept.items() if v}
    subject = str(form.get("subject", "")).strip()
    if subject:
        try:
            kept["subject_hmac"] = request.app.state.gateway.subjects.of_input("id_number", subject)
        except InvalidKey as exc:  # the message names the fault, never the number
            return await search_page(request, subject_error=f"Subject ID number: {exc}. Check the number and try "
                                                            "again.", form_override=kept)
    base = str(request.url_for("console:audit"))
    return RedirectResponse(f"{base}?{urlencode(kept)}" if kept else base, 303)


async def search_page(request: Request, subject_error: str | None = None,
                      form_override: dict[str, str] | None = None) -> Response:
    user = require(request, ROLE)
    q = form_override if form_override is not None else request.query_params
    form = {k: str(q.get(k, "")).strip()[:MAX_INPUT] for k in FORM_KEYS}
    subject_hmac = str(q.get("subject_hmac", "")).strip().lower()
    subject = ""
    errors: dict[str, str] = {}
    if subject_error:
        errors["subject"] = subject_error
    if subject_hmac and not (len(subject_hmac) == 64 and all(c in "0123456789abcdef" for c in subject_hmac)):
        errors["subject"] = "The subject filter is not valid: search again by ID number."
        subject_hmac = ""
    filters = {k: v for k, v in form.items() if v}
    times = {"time_from": "", "time_to": ""}  # as a datetime-local input shows them
    for key, label in (("time_from", "Time from"), ("time_to", "Time to")):
        if key in filters:
            try:
                times[key] = parse_time(filters[key])[:19]
            except (ValueError, OverflowError):
                errors[key] = f"{label}: not a date or time (use a date such as 2025-03-01, or a date and time)"
    if subject_hmac:
        filters["subject_hmac"] = subject_hmac
    after: int | None = None
    if q.get("after", "").strip():
        try:
            after = int(q["after"])
        except ValueError:
            after = 0
        if not 1 <= after < 2**62:
            errors["after"] = "The page asked for is not valid: start again from the newest records."
            after = None

    rows: list[dict[str, Any]] = []
    total = 0
    older_url = newest_url = None
    if not errors:
        store = request.app.state.gateway.audit_store
        found, total = await store.search(filters, limit=PAGE_SIZE + 1, after_seq=after)
        rows = [_summary(r) for r in found[:PAGE_SIZE]]
        kept = {k: v for k, v in form.items() if v}
        if subject_hmac:
            kept["subject_hmac"] = subject_hmac  # the pseudonym, never the number
        base = str(request.url_for("console:audit"))
        if len(found) > PAGE_SIZE:
            older_url = f"{base}?{urlencode({**kept, 'after': rows[-1]['seq']})}"
        if after is not None:
            newest_url = f"{base}?{urlencode(kept)}" if kept else base
        used = {k: v for k, v in filters.items() if k != "subject_hmac"}
        await _record(request, user, {"event": "console.audit_search", "target": "audit log", "filters": used,
                                      "subject_filter": bool(subject_hmac),
                                      # whom the search was about, by pseudonym: reading about someone is traced
                                      **({"looked_up": [subject_hmac]} if subject_hmac else {}),
                                      "after_seq": after, "matched": total,
                                      "shown": len(rows)})
    return render(request, "audit.html", status=400 if errors else 200, form=form, times=times, subject=subject,
                  subject_hmac=subject_hmac,
                  errors=errors, rows=rows, total=total, after=after, older_url=older_url, newest_url=newest_url,
                  choices=_choices(request), text_filters=TEXT_FILTERS, page_size=PAGE_SIZE,
                  searched=not errors)


def _display(value: Any) -> dict[str, Any]:
    """How one body value is shown: ``text``, ``list`` (of short values), ``json`` (indented) or ``empty``."""
    if value is None:
        return {"as": "empty", "text": "—"}
    if isinstance(value, (list, dict)) and not value:
        return {"as": "empty", "text": "none"}
    if isinstance(value, list) and all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in value):
        return {"as": "list", "members": [str(v) for v in value]}
    if isinstance(value, (list, dict)):
        return {"as": "json", "text": orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()}
    if isinstance(value, bool):
        return {"as": "text", "text": "yes" if value else "no"}
    return {"as": "text", "text": str(value)}


async def record_page(request: Request) -> Response:
    user = require(request, ROLE)
    seq = int(request.path_params["seq"])
    if not 1 <= seq < 2**62:
        raise HTTPException(404, f"there is no audit record {seq}")
    store = request.app.state.gateway.audit_store
    near = {r["seq"]: r async for r in store.records(max(seq - 1, 1), seq + 1, chunk=3)}
    rec = near.get(seq)
    if rec is None:
        raise HTTPException(404, f"there is no audit record {seq} (it may have been pruned after archiving)")
    try:
        body = orjson.loads(rec["body"])
    except orjson.JSONDecodeError:
        body = None
    content_ok = body is not None and chain_hash(seq, rec["time"], rec["kind"], body, rec["prev_hash"]) == rec["hash"]
    before = near.get(seq - 1)
    if seq == 1:
        link = "genesis" if rec["prev_hash"] == GENESIS_HASH else "broken"
    elif before is None:
        link = "unknown"  # pruned before it: verify checks the link against the anchor checkpoint
    else:
        link = "ok" if before["hash"] == rec["prev_hash"] else "broken"
    fields = body.get("fields") if isinstance(body, dict) else None
    fields = [f for f in fields if isinstance(f, dict)] if isinstance(fields, list) else []
    entries = [(k, _display(v)) for k, v in body.items() if k != "fields"] if isinstance(body, dict) else []
    raw = orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() if body is not None \
        else rec["body"]
    await _record(request, user, {"event": "console.audit_record", "target": f"audit record {seq}"})
    return render(request, "audit_record.html", rec=rec, when=_when(rec["time"]), body=body, entries=entries,
                  fields=fields, raw=raw, content_ok=content_ok, link=link, seq=seq,
                  has_before=before is not None, has_after=(seq + 1) in near, dispositions=DISPOSITIONS,
                  title_event=body.get("event") if isinstance(body, dict) and rec["kind"] == "admin" else None)


async def verify_page(request: Request) -> Response:
    user = require(request, ROLE)
    writer = request.app.state.audit
    report = await verify_store(writer.store, writer.keys)
    await _record(request, user, {"event": "console.audit_verify", "target": "audit log",
                                  "result": "intact" if report.ok else "damaged",
                                  "damage": report.damage, "first_bad_seq": report.first_bad_seq})
    return render(request, "audit_verify.html", report=report,
                  damage_about=DAMAGE.get(report.damage or "", ""))
