"""Consents and legal bases through GraphQL: mutations to record and change them, queries to list them.

Role ``consent-recorder`` (citizen-facing apps, counter staff) records, pauses, resumes and
revokes consents and reads them, and nothing of legal bases; role ``legal-basis-recorder``
records, withdraws and reads legal bases (and reads consents). Two guards keep duties apart:

- a client may not record a consent to its own department's use of data (the department
  that wants the data does not write its own permission slip), unless ``[consent]
  self_recording = true``;
- a change names the subject (``idNumber`` / ``creditCode``), which must be the consent's:
  the app changes the consent of the person it has signed in, not any consent by id.

``X-Acting-User`` names the official (or the signed-in citizen) who does it: it is kept in
the consent and in the audit event of the change. Subjects are given as ID numbers or credit
codes and kept only as pseudonyms; answers show a masked hint.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import graphene

from gateway.context import require_role
from policies.consent.model import Grant, Kind
from policies.consent.terms import ConsentInputError, GrantRequest

__all__ = ["ConsentMutation", "ConsentQuery"]

CONSENT_ROLE = "consent-recorder"
LEGAL_BASIS_ROLE = "legal-basis-recorder"


def _admin(info: Any, *roles: str) -> Any:
    require_role(info.context, *roles)
    admin = info.context.get("consent_admin")
    if admin is None:
        raise ValueError("consents cannot be managed in this process (the gateway has no audit log open)")
    return admin


def _acting(info: Any) -> str:
    acting = info.context.get("acting_user")
    if not acting:
        raise ValueError("name the official (or the signed-in citizen) recording this in the X-Acting-User header")
    return str(acting)


class ConsentEvent(graphene.ObjectType):
    seq = graphene.Int(required=True)
    at = graphene.DateTime(required=True)
    status = graphene.String(required=True)
    by = graphene.String(required=True)
    reason = graphene.String(required=True)


class ConsentGrant(graphene.ObjectType):
    """A consent or a legal basis, with its current status (EXPIRED once past its expiry)."""

    id = graphene.ID(required=True)
    kind = graphene.String(required=True, description="consent or legal_basis")
    status = graphene.String(required=True, description="ACTIVE, PAUSED, REVOKED or EXPIRED")
    subject_hint = graphene.String(description="The subject's key, masked; null: a legal basis for every subject")
    requester = graphene.String(required=True)
    providers = graphene.List(graphene.NonNull(graphene.String), required=True)
    purpose = graphene.String(required=True)
    fields = graphene.List(graphene.NonNull(graphene.String), required=True)
    valid_from = graphene.DateTime(required=True)
    valid_until = graphene.DateTime(required=True)
    data_from = graphene.Date()
    data_to = graphene.Date()
    max_uses = graphene.Int()
    per_days = graphene.Int()
    explicit_request = graphene.Boolean()
    method = graphene.String()
    basis_type = graphene.String()
    reference = graphene.String()
    covert = graphene.Boolean(required=True)
    disclose_after = graphene.Date()
    recorded_by = graphene.String(required=True)
    recorded_via = graphene.String(required=True)
    created_at = graphene.DateTime(required=True)
    use_count = graphene.Int(required=True)
    last_used_at = graphene.DateTime()
    key_id = graphene.String(required=True, description="The gateway key that signed it")
    signature = graphene.String(required=True)
    signature_valid = graphene.Boolean(required=True, description="Terms and status verify against the gateway's "
                                                                  "keys (false: edited outside hutong, ignored)")
    history = graphene.List(graphene.NonNull(ConsentEvent), required=True)

    @staticmethod
    def of(g: Grant, valid: bool) -> dict[str, Any]:
        t = g.terms
        return {
            "id": t.id, "kind": t.kind.value, "status": g.effective_status(datetime.now(UTC)).value,
            "subject_hint": t.subject_hint, "requester": t.requester, "providers": list(t.providers),
            "purpose": t.purpose, "fields": list(t.fields), "valid_from": t.valid_from, "valid_until": t.valid_until,
            "data_from": t.data_from, "data_to": t.data_to, "max_uses": t.max_uses, "per_days": t.per_days,
            "explicit_request": t.explicit_request, "method": t.method, "basis_type": t.basis_type,
            "reference": t.reference, "covert": t.covert, "disclose_after": t.disclose_after,
            "recorded_by": t.recorded_by, "recorded_via": t.recorded_via, "created_at": t.created_at,
            "use_count": g.use_count, "last_used_at": g.last_used_at, "key_id": g.key_id, "signature": g.signature,
            "signature_valid": valid,
            "history": [{"seq": e.seq, "at": e.at, "status": e.status.value, "by": e.by, "reason": e.reason}
                        for e in g.history],
        }


class _Common:
    id_number = graphene.String(description="The subject's resident ID number")
    credit_code = graphene.String(description="The subject's unified social credit code")
    requester = graphene.String(required=True, description="The department that may use the data")
    purpose = graphene.String(required=True)
    fields = graphene.List(graphene.NonNull(graphene.String), required=True,
                           description="dataset.field, or a dataset for all its conditional fields")
    valid_from = graphene.DateTime(description="Default: now")
    valid_until = graphene.DateTime(required=True)


class ConsentInput(_Common, graphene.InputObjectType):
    data_from = graphene.Date(description="Covers records dated on or after (datasets with dated_by)")
    data_to = graphene.Date(description="... and on or before")
    max_uses = graphene.Int(description="At most this many requests ...")
    per_days = graphene.Int(description="... in any window of this many days")
    explicit_request = graphene.Boolean(required=True, description="The subject asked for the sharing themselves")
    method = graphene.String(required=True, description="counter, app or paper")


class LegalBasisInput(_Common, graphene.InputObjectType):
    every_subject = graphene.Boolean(description="A basis covering everyone (a statutory duty): give it instead of "
                                                 "a subject, explicitly")
    basis_type = graphene.String(required=True,
                                 description="court_order, statutory_duty, administrative_decision or investigation")
    reference = graphene.String(required=True, description="Document number, statute and article")
    covert = graphene.Boolean(description="Hide the accesses from the subject's data tracker until discloseAfter")
    disclose_after = graphene.Date()


def _subject(given: dict[str, Any], *, required: bool) -> str | None:
    ids = [v for v in (given.get("id_number"), given.get("credit_code")) if v is not None]
    if len(ids) > 1:
        raise ConsentInputError(["give idNumber or creditCode, not both"])
    if not ids and required:
        raise ConsentInputError(["name the data subject: idNumber or creditCode"])
    return ids[0] if ids else None


def _view(admin: Any, grant: Grant) -> dict[str, Any]:
    return ConsentGrant.of(grant, admin.store.signer.verify(grant))


async def _grant(info: Any, kind: Kind, given: dict[str, Any]) -> dict[str, Any]:
    admin = _admin(info, CONSENT_ROLE if kind is Kind.CONSENT else LEGAL_BASIS_ROLE)
    subject = info.context["subject"]
    if kind is Kind.CONSENT and given["requester"] == subject.department and not admin.self_recording:
        raise PermissionError(f"a client of department {subject.department} may not record consents to "
                              f"{subject.department}'s own use of data (separation of duties): the citizen gives "
                              "them through the service centre's counter or the portal")
    req = GrantRequest(
        kind=kind, subject=_subject(given, required=kind is Kind.CONSENT), requester=given["requester"],
        every_subject=bool(given.get("every_subject")),
        purpose=given["purpose"], fields=list(given["fields"]), valid_from=given.get("valid_from"),
        valid_until=given["valid_until"], data_from=given.get("data_from"), data_to=given.get("data_to"),
        max_uses=given.get("max_uses"), per_days=given.get("per_days"),
        explicit_request=given.get("explicit_request"), method=given.get("method"),
        basis_type=given.get("basis_type"), reference=given.get("reference"), covert=bool(given.get("covert")),
        disclose_after=given.get("disclose_after"), recorded_by=_acting(info), recorded_via=subject.client_id)
    return _view(admin, await admin.grant(req))


async def _change(info: Any, kind: Kind, grant_id: str, action: str, reason: str,
                  given: dict[str, Any] | None = None) -> dict[str, Any]:
    admin = _admin(info, CONSENT_ROLE if kind is Kind.CONSENT else LEGAL_BASIS_ROLE)
    grant = await admin.store.get(grant_id)
    what = "consent" if kind is Kind.CONSENT else "legal basis"
    if grant is None or grant.terms.kind is not kind:
        raise ValueError(f"no {what} with id {grant_id!r}")
    if kind is Kind.CONSENT:  # the app changes the consent of the subject it names (the person signed in)
        subject = _subject(given or {}, required=True)
        assert subject is not None
        key_kind = "id_number" if (given or {}).get("id_number") is not None else "credit_code"
        if admin.subject_hash(key_kind, subject) != grant.terms.subject_hash:
            raise ValueError(f"{grant_id} is not a consent of the subject named: check the ID number")
    return _view(admin, await admin.change(grant_id, action, by=_acting(info), via=info.context["subject"].client_id,
                                           reason=reason))


class ConsentMutation(graphene.ObjectType):
    grant_consent = graphene.Field(ConsentGrant, required=True, input=graphene.Argument(ConsentInput, required=True),
                                   description="Record a subject's consent (role consent-recorder).")
    pause_consent = graphene.Field(ConsentGrant, required=True, id=graphene.ID(required=True),
                             reason=graphene.String(required=True), id_number=graphene.String(),
                             credit_code=graphene.String(), description="Give the subject's key: it must be the "
                                                                        "consent's.")
    resume_consent = graphene.Field(ConsentGrant, required=True, id=graphene.ID(required=True),
                             reason=graphene.String(required=True), id_number=graphene.String(),
                             credit_code=graphene.String(), description="Give the subject's key: it must be the "
                                                                        "consent's.")
    revoke_consent = graphene.Field(ConsentGrant, required=True, id=graphene.ID(required=True),
                                    reason=graphene.String(required=True), id_number=graphene.String(),
                                    credit_code=graphene.String(),
                                    description="Final: takes effect on the next request, on every worker. Give "
                                                "the subject's key: it must be the consent's.")
    record_legal_basis = graphene.Field(ConsentGrant, required=True,
                                        input=graphene.Argument(LegalBasisInput, required=True),
                                        description="Record a legal basis standing in for consent "
                                                    "(role legal-basis-recorder).")
    withdraw_legal_basis = graphene.Field(ConsentGrant, required=True, id=graphene.ID(required=True),
                                          reason=graphene.String(required=True))

    @staticmethod
    async def resolve_grant_consent(_: Any, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        return await _grant(info, Kind.CONSENT, dict(input))

    @staticmethod
    async def resolve_record_legal_basis(_: Any, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        return await _grant(info, Kind.LEGAL_BASIS, dict(input))

    @staticmethod
    async def resolve_pause_consent(_: Any, info: Any, id: str, reason: str, **given: Any) -> dict[str, Any]:
        return await _change(info, Kind.CONSENT, id, "pause", reason, given)

    @staticmethod
    async def resolve_resume_consent(_: Any, info: Any, id: str, reason: str, **given: Any) -> dict[str, Any]:
        return await _change(info, Kind.CONSENT, id, "resume", reason, given)

    @staticmethod
    async def resolve_revoke_consent(_: Any, info: Any, id: str, reason: str, **given: Any) -> dict[str, Any]:
        return await _change(info, Kind.CONSENT, id, "revoke", reason, given)

    @staticmethod
    async def resolve_withdraw_legal_basis(_: Any, info: Any, id: str, reason: str) -> dict[str, Any]:
        return await _change(info, Kind.LEGAL_BASIS, id, "revoke", reason)


class ConsentPage(graphene.ObjectType):
    grants = graphene.List(graphene.NonNull(ConsentGrant), required=True)
    end_cursor = graphene.String(description="Pass as `after` for the next (older) page.")


class ConsentQuery(graphene.ObjectType):
    consents = graphene.Field(
        ConsentPage, required=True, id_number=graphene.String(), credit_code=graphene.String(),
        requester=graphene.String(), purpose=graphene.String(), kind=graphene.String(),
        limit=graphene.Int(), after=graphene.String(),
        description="Consents and legal bases, newest first (role consent-recorder or legal-basis-recorder).")
    consent = graphene.Field(ConsentGrant, id=graphene.ID(required=True),
                             description="One consent or legal basis with its history.")

    @staticmethod
    async def resolve_consents(_: Any, info: Any, limit: int | None = None, after: str | None = None,
                               kind: str | None = None, **given: Any) -> dict[str, Any]:
        admin = _admin(info, CONSENT_ROLE, LEGAL_BASIS_ROLE)
        size = 50 if limit is None else limit
        if not 1 <= size <= 500:
            raise ValueError("limit must be from 1 to 500")
        if kind is not None and kind not in ("consent", "legal_basis"):
            raise ValueError("kind must be consent or legal_basis")
        if LEGAL_BASIS_ROLE not in info.context["subject"].roles:
            # Legal bases (covert ones above all) are not shown to consent recorders such as the portal.
            if kind == "legal_basis":
                raise PermissionError("legal bases are listed only for the role 'legal-basis-recorder'")
            kind = "consent"
        subject = _subject(given, required=False)
        subject_hash = None
        if subject is not None:
            subject_hash = admin.subject_hash("id_number" if given.get("id_number") else "credit_code", subject)
            info.context.get("looked_up", set()).add(subject_hash)  # recorded: whose consents were read
        grants = await admin.store.search(subject_hash=subject_hash, requester=given.get("requester"),
                                          purpose=given.get("purpose"), kind=Kind(kind) if kind else None,
                                          limit=size, after=after)
        return {"grants": [_view(admin, g) for g in grants],
                "end_cursor": grants[-1].id if len(grants) == size else None}

    @staticmethod
    async def resolve_consent(_: Any, info: Any, id: str) -> dict[str, Any] | None:
        admin = _admin(info, CONSENT_ROLE, LEGAL_BASIS_ROLE)
        grant = await admin.store.get(id)
        if grant is None or (grant.terms.kind is Kind.LEGAL_BASIS and LEGAL_BASIS_ROLE not in info.context[
                "subject"].roles):
            return None  # a legal basis is not even acknowledged to consent recorders
        return _view(admin, grant)
