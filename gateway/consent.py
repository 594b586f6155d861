"""Stage 5: consent. Conditional values (有条件共享) go only to those their subjects allowed.

Authorisation (stage 3) let through, as :class:`~gateway.plan.Conditional` entries, the
conditional fields whose policy allows the caller to read them; each such fetch also brings
its subject's key (and the record's date, when the dataset has one). Once the rows are in:

1. the subjects of every gated row, across all fetches, are turned into pseudonyms and looked
   up in **one** query (:meth:`~policies.consent.store.ConsentStore.candidates`);
2. each gated value is judged (:func:`policies.consent.check.judge`) against that subject's
   grants: an active, in-force, in-range, in-frequency consent or legal basis covering this
   department, purpose and field;
3. the grants used are counted, once per request, in one transaction
   (:meth:`~policies.consent.store.ConsentStore.record_uses`);
4. every value that may not go is replaced **in the fetched row** by a :class:`Refused`
   marker, before shaping: no later stage can return, log or record it. The shaper turns a
   marker into ``null`` with the marker's code at the value's path.

If the consent store cannot be read or the uses cannot be recorded, nothing conditional goes
(``CONSENT_UNAVAILABLE``), while the rest of the answer stands.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog
from gateway.context import RequestContext
from gateway.executor import FetchResult
from gateway.logs import where
from gateway.plan import Plan
from policies.consent.check import Candidate, judge
from policies.consent.model import Grant, Kind, Refusal
from policies.consent.signing import ConsentSigner
from policies.consent.store import ConsentStore

__all__ = ["ConsentOutcome", "Refused", "apply_consent"]

log = logging.getLogger("hutong.consent")


class Refused:
    """Stands in a fetched row for a conditional value that may not go, with the reason."""

    __slots__ = ("code", "message")

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message

    def __repr__(self) -> str:  # never the value it replaced
        return f"Refused({self.code})"


@dataclass
class ConsentOutcome:
    """What the stage did, for the audit record."""

    used: dict[str, Grant] = field(default_factory=dict)  # grant id -> grant, released something
    released: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (path, dataset, field) -> values
    withheld: dict[tuple[str, str, str], Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    lookups: int = 0  # queries to the consent store (one per request at most)

    def record(self) -> dict[str, Any]:
        consents = sorted(i for i, g in self.used.items() if g.terms.kind is Kind.CONSENT)
        bases = sorted((g for g in self.used.values() if g.terms.kind is Kind.LEGAL_BASIS), key=lambda g: g.id)
        withheld: Counter[str] = Counter()
        for codes in self.withheld.values():
            withheld.update(codes)
        disclose = [g.terms.disclose_after.isoformat() for g in bases if g.terms.covert and g.terms.disclose_after]
        return {
            "consents": consents,
            # Whose each consent is (pseudonyms), so a person's data tracker shows only their own.
            "consent_subjects": {i: self.used[i].terms.subject_hash for i in consents},
            "legal_basis_grants": [{"id": g.id, "type": g.terms.basis_type, "reference": g.terms.reference,
                                    "covert": g.terms.covert} for g in bases],
            "consent_withheld": dict(sorted(withheld.items())),
            # A covert legal basis hides the access from the subject's data tracker until then.
            "disclose_after": max(disclose) if disclose else None,
        }


def _message(code: Refusal, field_ref: str, why: str, ctx: RequestContext) -> str:
    if code is Refusal.REQUIRED:
        return (f"{field_ref} of this record is shared only with its subject's consent (or a legal basis) for "
                f"department {ctx.subject.department} and purpose {ctx.purpose!r}: {why}")
    if code is Refusal.UNAVAILABLE:
        return f"{field_ref} is withheld: {why}; retry later"
    return f"{field_ref} of this record is withheld: {why}"


async def apply_consent(plan: Plan, results: dict[int, FetchResult], ctx: RequestContext, catalog: Catalog,
                        store: ConsentStore, signer: ConsentSigner, pseudonym: Any, now: datetime) -> ConsentOutcome:
    """Judge every gated value of ``results`` (mutating their rows); see the module docstring."""
    out = ConsentOutcome()
    gated = [(f, results[f.id]) for f in plan.fetches
             if f.gated and f.id in results and results[f.id].error is None and results[f.id].rows]
    if not gated:
        return out

    # 1. Subjects, as pseudonyms, of every gated row.
    hashes: dict[tuple[str, Any], str] = {}
    row_subjects: list[list[str | None]] = []
    for f, r in gated:
        spec = catalog.datasets[f.dataset].subject_field
        assert spec is not None and spec.key is not None  # catalogue validation guarantees both
        kind = KEY_KINDS[spec.key]
        subjects: list[str | None] = []
        for row in r.rows:
            value = row.get(spec.name)
            if value is None:
                subjects.append(None)
                continue
            memo = (spec.key, value)
            h = hashes.get(memo)
            if h is None:
                try:
                    h = pseudonym(kind.normalise(str(value)))
                except InvalidKey:
                    h = pseudonym(str(value))  # a malformed stored key matches no consent, but is never raw
                hashes[memo] = h
            subjects.append(h)
        row_subjects.append(subjects)

    def refuse_all(code: Refusal, why: str) -> ConsentOutcome:
        for (f, r), _ in zip(gated, row_subjects, strict=True):
            for column in f.gated:
                ref = f"{f.dataset}.{column}"
                for row in r.rows:
                    row[column] = Refused(code.value, _message(code, ref, why, ctx))
                out.withheld[(f.path, f.dataset, column)][code.value] += len(r.rows)
        out.used.clear()
        out.released.clear()
        return out

    # 2. One lookup for them all.
    try:
        out.lookups += 1
        found = await store.candidates(ctx.subject.department, ctx.purpose or "", set(hashes.values()), now)
    except Exception as exc:
        log.error("consent lookup failed (%s at %s): conditional fields withheld", type(exc).__name__, where(exc))
        return refuse_all(Refusal.UNAVAILABLE, "the consent store cannot be read")
    by_subject: dict[str | None, list[Candidate]] = defaultdict(list)
    everyone: list[Candidate] = []
    for grant, uses in found:
        if not signer.verify(grant):
            log.error("consent %s fails its signature check: ignored (was its row edited outside hutong?)", grant.id)
            continue
        c = Candidate(grant, uses)
        (everyone if grant.terms.subject_hash is None else by_subject[grant.terms.subject_hash]).append(c)
    for cands in by_subject.values():
        cands.extend(everyone)
        cands.sort(key=lambda c: c.grant.terms.kind is not Kind.CONSENT)  # consents first (stable)

    # 3. Judge every value; releases are tentative until the uses are recorded.
    tentative: dict[str, list[tuple[dict[str, Any], str, str, tuple[str, str, str]]]] = defaultdict(list)
    for (f, r), subjects in zip(gated, row_subjects, strict=True):
        dated_by = catalog.datasets[f.dataset].dated_by
        for row, subject in zip(r.rows, subjects, strict=True):
            cands = by_subject.get(subject, everyone) if subject is not None else []
            record_date = row.get(dated_by) if dated_by else None
            for column in f.gated:
                ref = f"{f.dataset}.{column}"
                key = (f.path, f.dataset, column)
                v = judge(cands, ref, now, record_date)
                if v.grant is not None:
                    out.used[v.grant.id] = v.grant
                    tentative[v.grant.id].append((row, column, ref, key))
                else:
                    assert v.refusal is not None
                    why = v.message if subject is not None else "the record names no subject to ask"
                    row[column] = Refused(v.refusal.value, _message(v.refusal, ref, why, ctx))
                    out.withheld[key][v.refusal.value] += 1

    # 4. Count the uses; a grant a concurrent request took to its limit releases nothing here.
    try:
        overrun = await store.record_uses(list(out.used.values()), ctx.request_id or "-", now)
    except Exception as exc:
        log.error("consent uses not recorded (%s at %s): conditional fields withheld", type(exc).__name__, where(exc))
        return refuse_all(Refusal.UNAVAILABLE, "the consent store cannot record this use")
    for grant_id, entries in tentative.items():
        if grant_id in overrun:
            grant = out.used.pop(grant_id)
            why = f"consent {grant_id} allows {grant.terms.max_uses} uses per {grant.terms.per_days} days, all used"
            for row, column, ref, key in entries:
                row[column] = Refused(Refusal.FREQUENCY_EXCEEDED.value,
                                      _message(Refusal.FREQUENCY_EXCEEDED, ref, why, ctx))
                out.withheld[key][Refusal.FREQUENCY_EXCEEDED.value] += 1
        else:
            for _, _, _, key in entries:
                out.released[key] += 1
    return out
