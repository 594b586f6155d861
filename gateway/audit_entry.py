"""What an audit record says about one request: who, for what, which fields and how, whose data.

The record never holds a data value, a raw ID number or credit code, a token or a secret:
the query is kept with its literal values replaced by ``?`` (values passed as variables are
not kept at all), and the data subjects whose records were returned are kept as keyed
HMACs, which an auditor can match for a given ID number but nobody can reverse.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from graphql import DocumentNode, StringValueNode, Visitor, print_ast, visit

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog
from gateway.authorize import Authorisation
from gateway.executor import FetchResult
from policies.decide import Access

__all__ = ["CLEAR", "CONSENT", "DENIED", "MASKED", "VERIFY", "SubjectHasher", "field_dispositions",
           "normalise_query", "returned"]

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
    """Keyed HMACs of entity keys (ID numbers, credit codes): the audit's pseudonyms for people."""

    def __init__(self, secret: bytes) -> None:
        # A key of its own, derived from the gateway's secret (never the mask key itself).
        self._key = hashlib.sha256(b"hutong audit subject v1\0" + secret).digest()

    def __call__(self, key: str) -> str:
        return hmac.new(self._key, key.encode(), hashlib.sha256).hexdigest()

    def of_input(self, kind: str, value: str) -> str:
        """The HMAC of a key typed by an auditor or citizen, normalised first (InvalidKey if bad)."""
        return self(KEY_KINDS[kind].normalise(value))


def field_dispositions(requested: list[tuple[str, str, str]], auth: Authorisation) -> list[dict[str, str]]:
    """Each requested field (with the response path of its records) and its disposition: clear |
    masked | verify | denied | consent_required. A part withheld as a whole gives all its fields
    that part's disposition."""
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
        out.append({"path": path, "dataset": ds, "field": f, "disposition": disposition})
    return out


def returned(results: dict[int, FetchResult], catalog: Catalog, hasher: SubjectHasher) -> dict[str, Any]:
    """What left the sources: rows per source, and the data subjects (as HMACs) of the records."""
    subjects: set[str] = set()
    rows: dict[str, int] = {}
    for r in results.values():
        if r.error is not None:
            continue
        rows[r.fetch.source] = rows.get(r.fetch.source, 0) + len(r.rows)
        for link in catalog.links_of_dataset(r.fetch.dataset):
            if link.field not in r.fetch.query.columns:
                continue
            kind = catalog.entities[link.entity].key
            for row in r.rows:
                value = row.get(link.field)
                if isinstance(value, str):
                    try:
                        subjects.add(hasher(KEY_KINDS[kind].normalise(value)))
                    except InvalidKey:
                        subjects.add(hasher(value))  # a malformed stored key is still a pseudonym, never raw
    return {"subjects": sorted(subjects), "rows": rows}
