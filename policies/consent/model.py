"""Consent artefacts and legal-basis rules: the terms on which conditional data (有条件共享) flows.

A :class:`Grant` is either a data subject's **consent** (this department may use these fields
of mine for this purpose, until then, so often, for records of these dates) or a **legal
basis** that stands in for consent (a court order naming a person, a statutory duty covering
everyone), recorded with its reference. Its :class:`Terms` never change once recorded and are
signed by the gateway; its state (status, uses) changes, and each status change is signed too,
so that a row edited in the database behind the gateway's back is not honoured.

Subjects are kept as keyed HMACs (the same pseudonyms as the audit log) plus a masked hint for
people reading lists: the consent store never holds a raw ID number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

__all__ = ["BASIS_TYPES", "METHODS", "Grant", "Kind", "Refusal", "Status", "StatusEvent", "Terms", "utcnow"]


class Kind(StrEnum):
    CONSENT = "consent"
    LEGAL_BASIS = "legal_basis"


class Status(StrEnum):
    ACTIVE = "ACTIVE"
    PAUSED = "PAUSED"  # the subject suspended it; resume restores it
    REVOKED = "REVOKED"  # final
    EXPIRED = "EXPIRED"  # derived: an active grant past its expiry (never stored)


class Refusal(StrEnum):
    """Why a conditional value was withheld for one subject: the GraphQL ``extensions.code``."""

    REQUIRED = "CONSENT_REQUIRED"  # no consent or legal basis covers it (or one not yet in force)
    EXPIRED = "CONSENT_EXPIRED"
    REVOKED = "CONSENT_REVOKED"
    PAUSED = "CONSENT_PAUSED"
    FREQUENCY_EXCEEDED = "CONSENT_FREQUENCY_EXCEEDED"
    OUTSIDE_RANGE = "OUTSIDE_CONSENT_RANGE"  # the record's date is outside the consent's data range
    UNAVAILABLE = "CONSENT_UNAVAILABLE"  # the consent store cannot be read: nothing conditional flows


# How a consent was collected, and the kinds of legal basis recorded.
METHODS = ("counter", "app", "paper")
BASIS_TYPES = ("court_order", "statutory_duty", "administrative_decision", "investigation")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class Terms:
    """What was agreed (or ordered): fixed once recorded, and signed."""

    id: str
    kind: Kind
    subject_kind: str | None  # id_number | credit_code; None: a legal basis for every subject
    subject_hash: str | None  # keyed HMAC of the normalised key
    subject_hint: str | None  # masked key for people reading lists (990111********3439)
    requester: str  # the department that may use the data
    providers: tuple[str, ...]  # departments whose datasets are covered
    purpose: str
    fields: tuple[str, ...]  # dataset.field, conditional fields only, sorted
    valid_from: datetime
    valid_until: datetime
    data_from: date | None = None  # records dated (dataset's dated_by) on or after ...
    data_to: date | None = None  # ... and on or before
    max_uses: int | None = None  # at most this many requests ...
    per_days: int | None = None  # ... in any window of this many days
    explicit_request: bool | None = None  # consent: the subject asked for the sharing themselves
    method: str | None = None  # consent: counter | app | paper
    basis_type: str | None = None  # legal basis: court_order | statutory_duty | ...
    reference: str | None = None  # legal basis: document number, article
    covert: bool = False  # legal basis: accesses hidden from the subject's data tracker ...
    disclose_after: date | None = None  # ... until this date
    recorded_by: str  # the official (or the signed-in citizen) who recorded it
    recorded_via: str  # the client id, or "cli"
    created_at: datetime

    def canonical(self) -> dict[str, Any]:
        """The signed form: every term, in a stable JSON-ready shape."""
        out: dict[str, Any] = {}
        for spec in dataclasses.fields(self):
            name = spec.name
            v = getattr(self, name)
            if isinstance(v, datetime):
                v = v.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
            elif isinstance(v, date):
                v = v.isoformat()
            elif isinstance(v, tuple):
                v = list(v)
            out[name] = v.value if isinstance(v, StrEnum) else v
        return out

    def covers(self, field_ref: str) -> bool:
        return field_ref in self.fields


@dataclass(frozen=True, slots=True)
class StatusEvent:
    """One status change. Each is signed over its content and the signature of the one before,
    so the history is a chain: a state cannot be rolled back without cutting the chain."""

    seq: int
    at: datetime
    status: Status
    by: str
    reason: str
    signature: str = ""


@dataclass(slots=True, kw_only=True)
class Grant:
    """Terms plus their current state, as read from the store."""

    terms: Terms
    key_id: str
    signature: str  # over the canonical terms
    status: Status  # stored status: ACTIVE, PAUSED or REVOKED
    status_seq: int
    status_at: datetime
    status_by: str
    status_reason: str
    prev_signature: str  # the previous state's signature ("" for the first)
    state_signature: str  # over (id, status, seq, at, by, reason, prev_signature): the last event's
    use_count: int = 0
    last_used_at: datetime | None = None
    history: list[StatusEvent] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.terms.id

    @property
    def last_event(self) -> StatusEvent:
        return StatusEvent(self.status_seq, self.status_at, self.status, self.status_by, self.status_reason,
                           self.state_signature)

    def effective_status(self, now: datetime) -> Status:
        """REVOKED is final; otherwise past its expiry a grant is EXPIRED, paused or not."""
        if self.status is not Status.REVOKED and now > self.terms.valid_until:
            return Status.EXPIRED
        return self.status

    def describe(self, now: datetime | None = None) -> dict[str, Any]:
        """A JSON-ready view (no raw subject key: only its hint and HMAC)."""
        now = now or utcnow()
        out = self.terms.canonical()
        out.update(status=self.effective_status(now).value, use_count=self.use_count,
                   last_used_at=self.last_used_at.isoformat() if self.last_used_at else None)
        return out
