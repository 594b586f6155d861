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

from catalog.model import Catalog
from gateway.audit.entry import SubjectHasher
from gateway.context import RequestContext
from gateway.errors import Code, GraphQLErrorOut, RequestError
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
        # A covert legal basis names one subject: the access is hidden from that person's data
        # tracker until its date, and from no one else's.
        disclose: dict[str, str] = {}
        for g in bases:
            if g.terms.covert and g.terms.disclose_after and g.terms.subject_hash:
                day = g.terms.disclose_after.isoformat()
                disclose[g.terms.subject_hash] = max(day, disclose.get(g.terms.subject_hash, day))
        return {
            "consents": consents,
            # Whose each consent is (pseudonyms), so a person's data tracker shows only their own.
            "consent_subjects": {i: self.used[i].terms.subject_hash for i in consents},
            "legal_basis_grants": [{"id": g.id, "type": g.terms.basis_type, "reference": g.terms.reference,
                                    "covert": g.terms.covert, "subject": g.terms.subject_hash} for g in bases],
            "consent_withheld": dict(sorted(withheld.items())),
            "disclose_after": disclose,
        }


def _message(code: Refusal, field_ref: str, why: str, ctx: RequestContext) -> str:
    if code is Refusal.REQUIRED:
        return (f"{field_ref} of this record is shared only with its subject's consent (or a legal basis) for "
                f"department {ctx.subject.department} and purpose {ctx.purpose!r}: {why}")
    if code is Refusal.UNAVAILABLE:
        return f"{field_ref} is withheld: {why}; retry later"
    return f"{field_ref} of this record is withheld: {why}"


@dataclass(slots=True)
class _Value:
    """One gated value of one fetched row, while it is judged."""

    row: dict[str, Any]
    column: str
    ref: str  # dataset.field
    key: tuple[str, str, str]  # (path, dataset, field) for the audit record
    candidates: list[Candidate]
    record_date: Any
    has_subject: bool


async def apply_consent(plan: Plan, results: dict[int, FetchResult], ctx: RequestContext, catalog: Catalog,
                        store: ConsentStore, signer: ConsentSigner, pseudonyms: SubjectHasher,
                        now: datetime) -> ConsentOutcome:
    """Judge every gated value of ``results`` (mutating their rows); see the module docstring."""
    out = ConsentOutcome()
    gated = [(f, results[f.id]) for f in plan.fetches
             if f.gated and f.id in results and results[f.id].error is None and results[f.id].rows]
    if not gated:
        return out

    # 1. Subjects, as pseudonyms, of every gated row.
    row_subjects: list[list[str | None]] = []
    for f, r in gated:
        spec = catalog.datasets[f.dataset].subject_field
        assert spec is not None and spec.key is not None  # catalogue validation guarantees both
        kind, column = spec.key, spec.name
        row_subjects.append([None if (v := row.get(column)) is None else pseudonyms.of_stored(kind, str(v))
                             for row in r.rows])
    hashes = {h for subjects in row_subjects for h in subjects if h is not None}

    def refuse_all(code: Refusal, why: str) -> ConsentOutcome:
        out.used.clear()
        out.released.clear()
        out.withheld.clear()
        for f, r in gated:
            for column in f.gated:
                ref = f"{f.dataset}.{column}"
                for row in r.rows:
                    row[column] = Refused(code.value, _message(code, ref, why, ctx))
                out.withheld[(f.path, f.dataset, column)][code.value] += len(r.rows)
        return out

    # 2. One lookup for them all.
    try:
        out.lookups += 1
        found = await store.candidates(ctx.subject.department, ctx.purpose or "", hashes, now)
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

    values: list[_Value] = []
    for (f, r), subjects in zip(gated, row_subjects, strict=True):
        dated_by = catalog.datasets[f.dataset].dated_by
        for row, subject in zip(r.rows, subjects, strict=True):
            cands = by_subject.get(subject, everyone) if subject is not None else []
            record_date = row.get(dated_by) if dated_by else None
            for column in f.gated:
                values.append(_Value(row, column, f"{f.dataset}.{column}", (f.path, f.dataset, column), cands,
                                     record_date, subject is not None))

    # 3. Judge every value; 4. count the uses. A grant a concurrent request took to its limit meanwhile
    # is marked exhausted and its values judged again: another grant may still cover them.
    exhausted: set[str] = set()
    counted: set[str] = set()  # grants whose use by this request is recorded
    pending = values
    while pending:
        tentative: dict[str, list[_Value]] = defaultdict(list)
        refused: list[tuple[_Value, Refusal, str]] = []
        for v in pending:
            cands = v.candidates if not exhausted else [
                Candidate(c.grant, c.grant.terms.max_uses or 0) if c.grant.id in exhausted else c
                for c in v.candidates]
            verdict = judge(cands, v.ref, now, v.record_date)
            if verdict.grant is not None:
                tentative[verdict.grant.id].append(v)
                out.used[verdict.grant.id] = verdict.grant
            else:
                assert verdict.refusal is not None
                why = verdict.message if v.has_subject else "the record names no subject to ask"
                refused.append((v, verdict.refusal, why))
        if ctx.reject_unauthorized and refused:
            # Reject mode: the whole request fails rather than answer with consent-withheld nulls,
            # and no use is counted for an answer that is not given.
            listed = Counter(f"{v.ref} ({code.value})" for v, code, _ in refused)
            message = ("the request asks for conditional values their subjects did not allow: "
                       + ", ".join(f"{k} x{n}" for k, n in sorted(listed.items()))
                       + " (reject mode: remove them, or drop X-Reject-Unauthorized)")
            raise RequestError(Code(refused[0][1].value), message, 403,
                               errors=[GraphQLErrorOut(message, Code(refused[0][1].value))])
        for v, code, why in refused:
            v.row[v.column] = Refused(code.value, _message(code, v.ref, why, ctx))
            out.withheld[v.key][code.value] += 1
        fresh = [out.used[i] for i in tentative if i not in counted]
        try:
            overrun = await store.record_uses(fresh, ctx.request_id or "-", now)
            counted.update(g.id for g in fresh if g.id not in overrun)
        except Exception as exc:
            log.error("consent uses not recorded (%s at %s): conditional fields withheld", type(exc).__name__,
                      where(exc))
            return refuse_all(Refusal.UNAVAILABLE, "the consent store cannot record this use")
        pending = []
        for grant_id, under in tentative.items():
            if grant_id in overrun:
                out.used.pop(grant_id, None)
                exhausted.add(grant_id)
                pending.extend(under)
            else:
                for v in under:
                    out.released[v.key] += 1
    return out
