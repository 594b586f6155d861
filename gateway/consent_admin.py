"""Recording and changing consents and legal bases: one service behind the GraphQL mutations
and ``hutong consent`` / ``hutong legal-basis``.

Each change is checked (:func:`policies.consent.terms.build_terms`), signed, stored, and
recorded in the audit log as an administrative event with who made it and the before/after,
in one transaction: if the audit log cannot take the event, the change is not made.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog
from gateway.audit.admin import admin_event
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.config import Settings
from policies.consent.model import Grant, Kind
from policies.consent.settings import ConsentSettings
from policies.consent.signing import ConsentSigner
from policies.consent.store import ConsentStateError, ConsentStore
from policies.consent.terms import ConsentInputError, GrantRequest, build_terms

__all__ = ["ConsentAdmin", "ConsentInputError", "ConsentStateError", "open_store"]

def open_store(settings: Settings) -> ConsentStore:
    """The configured consent store, signing with the gateway's audit key (created if missing)."""
    audit = AuditSettings.from_settings(settings)
    signer = ConsentSigner(AuditKeys.load(audit.signing_key, audit.previous_keys))
    return ConsentStore(ConsentSettings.from_settings(settings).url, signer)


Recorder = Callable[[dict[str, Any]], Awaitable[Any]]  # appends an admin event to the audit log


class ConsentAdmin:
    def __init__(self, catalog: Catalog, store: ConsentStore, pseudonym: Callable[[str], str],
                 record: Recorder, *, self_recording: bool = False) -> None:
        self.catalog = catalog
        self.store = store
        self.pseudonym = pseudonym
        self.record = record
        self.self_recording = self_recording  # may a department's client record consents to its own use?

    async def grant(self, req: GrantRequest, *, now: datetime | None = None) -> Grant:
        now = now or datetime.now(UTC)
        terms = build_terms(req, self.catalog, self.pseudonym, now)
        action = "consent.grant" if terms.kind is Kind.CONSENT else "legal_basis.record"

        async def audit(grant: Grant) -> None:
            await self.record(admin_event(action, grant.id, by=terms.recorded_by, after=_for_audit(grant, now),
                                          detail={"via": terms.recorded_via}))

        return await self.store.add(terms, by=terms.recorded_by, then=audit)

    async def change(self, grant_id: str, action: str, *, by: str, via: str, reason: str,
                     now: datetime | None = None) -> Grant:
        """``action``: pause, resume or revoke (withdraw, for a legal basis, is revoke)."""
        now = now or datetime.now(UTC)

        async def audit(before: Grant, after: Grant) -> None:
            kind = "consent" if after.terms.kind is Kind.CONSENT else "legal_basis"
            await self.record(admin_event(f"{kind}.{action}", grant_id, by=by, before=_for_audit(before, now),
                                          after=_for_audit(after, now), detail={"via": via, "reason": reason}))

        _, after = await self.store.change(grant_id, action, by=by, reason=reason, now=now, then=audit)
        return after

    def subject_hash(self, kind: str, value: str) -> str:
        """The pseudonym of a key typed by a person (ConsentInputError if it is not a valid key)."""
        try:
            return self.pseudonym(KEY_KINDS[kind].normalise(value))
        except InvalidKey as exc:
            raise ConsentInputError([str(exc)]) from None


def _for_audit(grant: Grant, now: datetime) -> dict[str, Any]:
    """A grant as the audit log keeps it: its subject by pseudonym only. The masked key people see in
    lists (region and last four digits: 10 of 18) is personal data the log does not need."""
    out = grant.describe(now)
    out.pop("subject_hint", None)
    return out
