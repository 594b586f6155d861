"""What an audit record says about one request: who, for what, which fields and how, whose data.

The record never holds a data value, a raw ID number or credit code, a token or a secret:
the query is kept with its literal values replaced by ``?`` (values passed as variables are
not kept at all), and the data subjects whose records were returned are kept as keyed
HMACs, which an auditor can match for a given ID number but nobody can reverse.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from graphql import DocumentNode, StringValueNode, Visitor, print_ast, visit

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog
from gateway.authorize import Authorisation
from gateway.executor import FetchResult
from policies.decide import Access
from policies.masks import hmac_hex
from resolvers.base import Row

if TYPE_CHECKING:  # the consent stage itself uses this module's pseudonyms
    from gateway.consent import ConsentOutcome

__all__ = ["CLEAR", "CONSENT", "DENIED", "MASKED", "VERIFY", "SubjectHasher", "field_dispositions",
           "normalise_query", "outcome_of", "part_record", "request_record", "returned", "subjects_of"]

# How each decision shows in the record (the "disposition" of a field).
CLEAR, MASKED, VERIFY, DENIED, CONSENT = "clear", "masked", "verify", "denied", "consent_required"


class _Literals(Visitor):
    """Replaces every literal scalar with "?" so that no value typed into a query is kept."""

    def _mask(self, node: Any, *_: Any) -> StringValueNode:
        return StringValueNode(value="?")

    enter_string_value = _mask
    enter_int_value = _mask
    enter_float_value = _mask
    enter_boolean_value = _mask


def normalise_query(document: DocumentNode) -> str:
    """The query's text with literals replaced and whitespace canonical (same query, same text)."""
    return " ".join(print_ast(visit(document, _Literals())).split())


class SubjectHasher:
    """Keyed HMACs of entity keys (ID numbers, credit codes): the audit's pseudonyms for people,
    also the consent store's."""

    def __init__(self, secret: bytes, cache_size: int = 65_536) -> None:
        # A key of its own, derived from the gateway's secret (never the mask key itself).
        self._hmac = hmac_hex(hashlib.sha256(b"hutong audit subject v1\0" + secret).digest())
        # Pseudonyms of values as stored in the sources: the same people recur request after
        # request, and normalising plus HMAC costs ~7 µs a key (most of the consent stage's time).
        self._stored: OrderedDict[tuple[str, str], str] = OrderedDict()
        self._size = cache_size

    def __call__(self, key: str) -> str:
        return self._hmac(key.encode())

    def of_stored(self, kind: str, value: str) -> str:
        """The pseudonym of a key as a source holds it: normalised first; a malformed one is
        hashed as it is (it matches no one, and is never kept raw)."""
        memo = (kind, value)
        hit = self._stored.get(memo)
        if hit is not None:
            return hit
        try:
            hit = self(KEY_KINDS[kind].normalise(value))
        except InvalidKey:
            hit = self(value)
        self._stored[memo] = hit
        if len(self._stored) > self._size:
            self._stored.popitem(last=False)
        return hit

    def of_input(self, kind: str, value: str) -> str:
        """The HMAC of a key typed by an auditor or citizen, normalised first (InvalidKey if bad)."""
        return self(KEY_KINDS[kind].normalise(value))


def field_dispositions(requested: list[tuple[str, str, str]], auth: Authorisation,
                       consent: ConsentOutcome | None = None) -> list[dict[str, str]]:
    """Each requested field (with the response path of its records) and its disposition: clear |
    masked | verify | denied | consent_required. A part withheld as a whole gives all its fields
    that part's disposition. A conditional field returned for some records and withheld for
    others has two entries: its decision, and consent_required."""
    out = []
    for path, ds, f in requested:
        obj = f"{ds}.{f}"
        code = auth.parts.get(path) or auth.withheld.get(ds) or auth.withheld.get(obj)
        d = auth.decisions.get(obj)
        if code is not None:
            disposition = CONSENT if code == "CONSENT_REQUIRED" else DENIED
        elif d is None:
            disposition = CLEAR  # an in-process call, or a field no stage restricted
        else:
            disposition = {Access.CLEAR: CLEAR, Access.MASKED: MASKED, Access.VERIFY: VERIFY}.get(d.access, DENIED)
        key = (path, ds, f)
        if consent is not None and key in consent.withheld:
            if consent.released.get(key):
                out.append({"path": path, "dataset": ds, "field": f, "disposition": disposition})
            out.append({"path": path, "dataset": ds, "field": f, "disposition": CONSENT})
            continue
        out.append({"path": path, "dataset": ds, "field": f, "disposition": disposition})
    return out


def subjects_of(rows: list[Row], dataset: str, columns: tuple[str, ...], catalog: Catalog,
                hasher: SubjectHasher) -> set[str]:
    """The data subjects (pseudonyms) of records of ``dataset``: every entity key among ``columns``."""
    subjects: set[str] = set()
    for link in catalog.links_of_dataset(dataset):
        if link.field not in columns:
            continue
        kind = catalog.entities[link.entity].key
        column = link.field
        # Each person once (a person's rows recur across a page and across links).
        values = {v for row in rows if (v := row.get(column)).__class__ is str}
        subjects.update(hasher.of_stored(kind, v) for v in values)
    return subjects


def part_record(first: dict[str, Any], *, part: int, subjects: set[str], rows: dict[str, int], final: bool,
                status: int = 200, codes: list[str] | None = None, latency_ms: float = 0.0) -> dict[str, Any]:
    """A later part of a streamed answer (kind ``request-part``): who, why and what as in the request's
    own record ``first``, with the data subjects and rows of this part, written before the part is
    sent. The final part (no rows of its own) closes the request: its outcome and latency."""
    keep = ("request_id", "ip", "client_id", "department", "acting_user", "case_id", "purpose", "query_hash",
            "datasets", "fields", "row_rules", "legal_bases")
    return {**{k: first.get(k) for k in keep}, "part": part, "final": final, "subjects": sorted(subjects),
            "rows": rows, "status": status, "outcome": "ok" if status == 200 and not codes else "failed",
            "codes": codes or [], "latency_ms": round(latency_ms, 2)}


def returned(results: dict[int, FetchResult], catalog: Catalog, hasher: SubjectHasher) -> dict[str, Any]:
    """What left the sources: rows per source, and the data subjects (as HMACs) of the records;
    and per source whose query ran, its time (ms, all its fetches), fetches and failure codes."""
    subjects: set[str] = set()
    rows: dict[str, int] = {}
    sources: dict[str, dict[str, Any]] = {}
    for r in results.values():
        if r.ms is not None:  # the query ran (a fetch whose parent failed never did)
            s = sources.setdefault(r.fetch.source, {"ms": 0.0, "fetches": 0, "errors": []})
            s["ms"] += r.ms
            s["fetches"] += 1
            if r.error is not None:
                s["errors"].append(r.error.failure.value)  # the code only: messages may name values
        if r.error is not None:
            continue
        rows[r.fetch.source] = rows.get(r.fetch.source, 0) + len(r.rows)
        subjects |= subjects_of(r.rows, r.fetch.dataset, r.fetch.query.columns, catalog, hasher)
    for s in sources.values():
        s["ms"] = round(s["ms"], 3)
    return {"subjects": sorted(subjects), "rows": rows, "sources": sources}


def outcome_of(status: int, body: dict[str, Any]) -> str:
    """ok | partial (data with errors) | rejected (bad request) | denied (403) | unauthenticated (401)
    | failed (the gateway or the audit could not serve it)."""
    if status == 401:
        return "unauthenticated"
    if status == 403:
        return "denied"
    if status >= 500:
        return "failed"
    if "data" not in body:
        return "rejected"
    return "partial" if body.get("errors") else "ok"


def request_record(*, request_id: str, ip: str | None, client_id: str | None, department: str | None,
                   acting_user: str | None, case_id: str | None, purpose: str | None, legal_basis: str | None,
                   status: int, body: dict[str, Any], audit: dict[str, Any], latency_ms: float,
                   token_id: str | None = None) -> dict[str, Any]:
    """The body of the audit record of one request (the store adds time, sequence and chain hashes)."""
    codes = sorted({e.get("extensions", {}).get("code", "") for e in body.get("errors", [])} - {""})
    returned_data = bool(audit.get("rows"))
    return {
        "request_id": request_id,
        "ip": ip,
        "client_id": client_id,
        **({"token_id": token_id} if token_id else {}),  # the access token's jti
        "department": department,
        "acting_user": acting_user,
        "case_id": case_id,
        "purpose": purpose,
        "query": audit.get("query"),
        "query_hash": audit.get("query_hash"),
        "operation": audit.get("operation"),
        "datasets": audit.get("datasets", []),
        "fields": audit.get("fields", []),
        "row_rules": audit.get("row_rules", {}),  # the shapes of the rules applied, never their values
        "subjects": audit.get("subjects", []),
        "rows": audit.get("rows", {}),
        "sources": audit.get("sources", {}),  # source -> {ms, fetches, errors}: time and failures, no messages
        "consents": audit.get("consents", []),  # ids of the consents that released a value
        "consent_subjects": audit.get("consent_subjects", {}),  # consent id -> its subject's pseudonym
        "legal_bases": ([legal_basis] if legal_basis and returned_data else [])
        + [f"{g['id']}: {g['reference']}" for g in audit.get("legal_basis_grants", [])],
        "legal_basis_grants": audit.get("legal_basis_grants", []),  # recorded legal bases used instead of consent
        "consent_withheld": audit.get("consent_withheld", {}),  # refusal code -> values withheld
        "disclose_after": audit.get("disclose_after"),  # covert legal basis: hidden from the data tracker until then
        "status": status,
        "outcome": outcome_of(status, body),
        "codes": codes,
        "latency_ms": round(latency_ms, 2),
        "cost": audit.get("cost"),  # the plan's estimated rows (gateway/cost.py), refused or not
        # A streamed answer (gateway/stream.py): this record is its part 1; request-part records follow.
        **({"part": 1, "final": False} if audit.get("stream") else {}),
        # Requests refused from a cut-off address (gateway/cutoffs.py): this record stands for that many.
        **({"refused": audit["refused"]} if audit.get("refused") else {}),
        # People an audit or consent query looked up by key (pseudonyms): reading about someone is traced.
        **({"looked_up": audit["looked_up"]} if audit.get("looked_up") else {}),
    }


def answer_withheld(request_id: str | None, corrects_seq: int | None = None) -> dict[str, Any]:
    """The admin record saying a request recorded as answered was not (its caller answered 503
    AUDIT_UNAVAILABLE): ``corrects_seq`` is that record's seq when known."""
    return {"event": "audit.answer_withheld", "target": request_id, "actor": "gateway", "before": None,
            "after": None, "outcome": "ok", "status": 503, "codes": ["AUDIT_UNAVAILABLE"],
            **({"corrects_seq": corrects_seq} if corrects_seq is not None else {})}
