"""Whether a grant lets one conditional value through: for one subject, field and record date.

Pure functions over grants already read from the store (one query per request); the gateway's
consent stage calls :func:`judge` per value, which is a scan of the few grants one subject has.
A value goes through under the first usable grant, consents before legal bases (the citizen's
own terms first, and an access under a consent is never hidden from them). When none is usable,
the refusal reported is the one closest to success, so a caller learns what would fix it: a
frequency limit reached beats a record outside the range, which beats a paused consent, then
an expired one, then a revoked one, then no consent at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from policies.consent.model import Grant, Kind, Refusal, Status

__all__ = ["Candidate", "Verdict", "judge", "obstacle"]

# Higher: closer to being usable.
_RANK = {Refusal.REQUIRED: 0, Refusal.REVOKED: 1, Refusal.EXPIRED: 2, Refusal.PAUSED: 3,
         Refusal.OUTSIDE_RANGE: 4, Refusal.FREQUENCY_EXCEEDED: 5}


@dataclass(frozen=True, slots=True)
class Candidate:
    grant: Grant
    uses_in_window: int  # uses of the grant in its frequency window before this request


@dataclass(frozen=True, slots=True)
class Verdict:
    grant: Grant | None  # the grant the value goes through under (None: withheld)
    refusal: Refusal | None = None
    message: str = ""


def obstacle(c: Candidate, now: datetime, record_date: date | None) -> tuple[Refusal, str] | None:
    """What stops ``c`` covering a record dated ``record_date`` now (None: nothing)."""
    g, t = c.grant, c.grant.terms
    what = "consent" if t.kind is Kind.CONSENT else "legal basis"
    status = g.effective_status(now)
    if status is Status.REVOKED:
        return Refusal.REVOKED, f"{what} {g.id} was revoked on {g.status_at.date()}"
    if status is Status.EXPIRED:
        return Refusal.EXPIRED, f"{what} {g.id} expired on {t.valid_until.date()}"
    if status is Status.PAUSED:
        return Refusal.PAUSED, f"{what} {g.id} is paused (since {g.status_at.date()})"
    if now < t.valid_from:
        return Refusal.REQUIRED, f"{what} {g.id} takes effect on {t.valid_from.date()}"
    if t.max_uses is not None and c.uses_in_window >= t.max_uses:
        return Refusal.FREQUENCY_EXCEEDED, (f"{what} {g.id} allows {t.max_uses} uses per {t.per_days} days, "
                                            "all used")
    if t.data_from is not None or t.data_to is not None:
        if record_date is None:
            return Refusal.OUTSIDE_RANGE, f"{what} {g.id} covers dated records only, and this record has no date"
        day = record_date.date() if isinstance(record_date, datetime) else record_date
        if (t.data_from is not None and day < t.data_from) or (t.data_to is not None and day > t.data_to):
            span = f"{t.data_from or '…'} to {t.data_to or '…'}"
            return Refusal.OUTSIDE_RANGE, f"{what} {g.id} covers records dated {span} only"
    return None


def judge(candidates: list[Candidate], field_ref: str, now: datetime, record_date: date | None) -> Verdict:
    """The verdict for one value of ``field_ref``. ``candidates`` are one subject's grants (and the
    legal bases for every subject), consents first."""
    best: tuple[Refusal, str] | None = None
    for c in candidates:
        if not c.grant.terms.covers(field_ref):
            continue
        stop = obstacle(c, now, record_date)
        if stop is None:
            return Verdict(c.grant)
        if best is None or _RANK[stop[0]] > _RANK[best[0]]:
            best = stop
    if best is None:
        return Verdict(None, Refusal.REQUIRED, "no consent or legal basis covers it")
    return Verdict(None, *best)
