"""Sharing requests (有条件共享申请) through GraphQL: ask for another department's fields, answer, list.

Roles (from the access token) and what they may do:

- ``share-requester``: ask for fields of another department's dataset, for its own department
  (``requestSharing``), and withdraw its department's pending requests;
- ``data-owner``: approve (which writes the policy lines) or refuse, with a reason, the pending
  requests addressed to its own department;
- both list and read the requests their department made or must answer; ``policy-admin`` lists
  every request, and ``shareRequests(overdue: true)`` is its escalation list.

Changes need ``X-Acting-User`` (the official who asks or answers): it is kept in the request's
history and in the audit event. ``info.context["share_service"]`` is the
:class:`policies.sharing.ShareService` (None where the process has none).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import graphene

from gateway.context import require_role
from policies.lines import format_line
from policies.sharing import ShareRequest as Request
from policies.sharing import ShareService, ShareStatus
from policies.validate import PolicyError

__all__ = ["ADMIN_ROLE", "OWNER_ROLE", "REQUESTER_ROLE", "SharingMutation", "SharingQuery"]

REQUESTER_ROLE = "share-requester"
OWNER_ROLE = "data-owner"
ADMIN_ROLE = "policy-admin"


def _service(info: Any, *roles: str) -> ShareService:
    require_role(info.context, *roles)
    service = info.context.get("share_service")
    if service is None:
        raise ValueError("sharing requests are not available in this process")
    return service


def _acting(info: Any) -> str:
    acting = info.context.get("acting_user")
    if not acting:
        raise ValueError("name the official who does this in the X-Acting-User header: it is kept in the request's "
                         "history and the audit log")
    return str(acting)


class ShareRequestEvent(graphene.ObjectType):
    seq = graphene.Int(required=True)
    at = graphene.DateTime(required=True)
    action = graphene.String(required=True, description="created, approved, refused or withdrawn")
    by = graphene.String(required=True, description="The official (X-Acting-User)")
    via = graphene.String(required=True, description="The client, or cli")
    reason = graphene.String(required=True, description="For created: the justification")


class ShareRequest(graphene.ObjectType):
    """A request for fields of another department's dataset, with its answer and history."""

    id = graphene.ID(required=True)
    status = graphene.String(required=True, description="PENDING, APPROVED, REFUSED or WITHDRAWN")
    overdue = graphene.Boolean(required=True, description="PENDING past its deadline: to escalate")
    working_days_left = graphene.Int(description="PENDING: working days left to answer after today (0: due "
                                                 "today); once overdue, minus the working days since the "
                                                 "deadline. Null once answered")
    requester = graphene.String(required=True, description="The department asking")
    provider = graphene.String(required=True, description="The department whose dataset it is, which answers")
    dataset = graphene.String(required=True)
    fields = graphene.List(graphene.NonNull(graphene.String), required=True, description="Field names")
    purpose = graphene.String(required=True)
    access = graphene.String(required=True, description="read or read_masked")
    mask = graphene.String(description="read_masked: the mask (null: each field's default mask)")
    justification = graphene.String(required=True)
    requested_by = graphene.String(required=True)
    requested_via = graphene.String(required=True)
    created_at = graphene.DateTime(required=True)
    deadline = graphene.DateTime(required=True, description="The end of the last working day to answer")
    deadline_day = graphene.Date(required=True, description="That last working day, in the gateway's calendar")
    decided_by = graphene.String(description="Who approved, refused or withdrew it")
    decided_at = graphene.DateTime()
    reason = graphene.String(description="The answer's reason (refused, withdrawn: always given)")
    grant_until = graphene.Date(description="Approved until the end of this day (null: no time limit)")
    expires_at = graphene.DateTime(description="When the granted policy lines leave force")
    policy_version = graphene.Int(description="The policy version the approval created")
    lines = graphene.List(graphene.NonNull(graphene.String), required=True,
                          description="The policy lines an approval writes (or wrote)")
    history = graphene.List(graphene.NonNull(ShareRequestEvent), required=True)

    @staticmethod
    def of(req: Request, service: ShareService) -> dict[str, Any]:
        now = service.clock()
        return {
            "id": req.id, "status": req.status.value, "overdue": req.overdue(now),
            "working_days_left": service.days_left(req, now), "requester": req.requester, "provider": req.provider,
            "dataset": req.dataset, "fields": list(req.fields), "purpose": req.purpose, "access": req.access,
            "mask": req.mask, "justification": req.justification, "requested_by": req.requested_by,
            "requested_via": req.requested_via, "created_at": req.created_at, "deadline": req.deadline,
            "deadline_day": service.calendar.local_day(req.deadline), "decided_by": req.decided_by,
            "decided_at": req.decided_at, "reason": req.reason, "grant_until": req.grant_until,
            "expires_at": req.expires_at, "policy_version": req.policy_version,
            "lines": [format_line(x) for x in req.lines],
            "history": [{"seq": e.seq, "at": e.at, "action": e.action, "by": e.by, "via": e.via, "reason": e.reason}
                        for e in req.history],
        }


class ShareRequestInput(graphene.InputObjectType):
    dataset = graphene.String(required=True, description="The dataset code, e.g. hrss.pension")
    fields = graphene.List(graphene.NonNull(graphene.String), required=True,
                           description="Field names of the dataset (monthly_amount or hrss.pension.monthly_amount)")
    purpose = graphene.String(required=True, description="A purpose covering the dataset")
    access = graphene.String(description="read (default) or read_masked")
    mask = graphene.String(description="With read_masked: the mask (default: each field's own)")
    justification = graphene.String(required=True, description="Why the department needs the fields")


class SharingMutation(graphene.ObjectType):
    request_sharing = graphene.Field(
        ShareRequest, required=True, input=graphene.Argument(ShareRequestInput, required=True),
        description="Ask another department for fields of its dataset, for your department (role share-requester).")
    approve_share_request = graphene.Field(
        ShareRequest, required=True, id=graphene.ID(required=True), reason=graphene.String(),
        grant_until=graphene.Date(description="Grant until the end of this day (default: no time limit)"),
        description="Approve a pending request to your department: writes its policy lines (role data-owner).")
    refuse_share_request = graphene.Field(
        ShareRequest, required=True, id=graphene.ID(required=True), reason=graphene.String(required=True),
        description="Refuse a pending request to your department, saying why (role data-owner).")
    withdraw_share_request = graphene.Field(
        ShareRequest, required=True, id=graphene.ID(required=True), reason=graphene.String(required=True),
        description="Withdraw your department's pending request (role share-requester).")

    @staticmethod
    async def resolve_request_sharing(_: Any, info: Any, input: dict[str, Any]) -> dict[str, Any]:
        service = _service(info, REQUESTER_ROLE)
        subject = info.context["subject"]
        req = await service.request(
            requester=subject.department, dataset=input["dataset"], fields=list(input["fields"]),
            purpose=input["purpose"], access=input.get("access") or "read", mask=input.get("mask"),
            justification=input["justification"], requested_by=_acting(info), requested_via=subject.client_id)
        return ShareRequest.of(req, service)

    @staticmethod
    async def resolve_approve_share_request(_: Any, info: Any, id: str, reason: str | None = None,
                                            grant_until: date | None = None) -> dict[str, Any]:
        service = _service(info, OWNER_ROLE)
        subject = info.context["subject"]
        try:
            req = await service.approve(id, by=_acting(info), via=subject.client_id, reason=reason,
                                        grant_until=grant_until, as_department=subject.department)
        except PolicyError as exc:  # not a ValueError: say which lines, and that nothing changed
            raise ValueError(f"{id} stays PENDING: the policy refuses its lines: {'; '.join(exc.problems)}") from None
        return ShareRequest.of(req, service)

    @staticmethod
    async def resolve_refuse_share_request(_: Any, info: Any, id: str, reason: str) -> dict[str, Any]:
        service = _service(info, OWNER_ROLE)
        subject = info.context["subject"]
        req = await service.refuse(id, by=_acting(info), via=subject.client_id, reason=reason,
                                   as_department=subject.department)
        return ShareRequest.of(req, service)

    @staticmethod
    async def resolve_withdraw_share_request(_: Any, info: Any, id: str, reason: str) -> dict[str, Any]:
        service = _service(info, REQUESTER_ROLE)
        subject = info.context["subject"]
        req = await service.withdraw(id, by=_acting(info), via=subject.client_id, reason=reason,
                                     as_department=subject.department)
        return ShareRequest.of(req, service)


class ShareRequestPage(graphene.ObjectType):
    requests = graphene.List(graphene.NonNull(ShareRequest), required=True)
    end_cursor = graphene.String(description="Pass as `after` for the next (older) page.")


class SharingQuery(graphene.ObjectType):
    share_requests = graphene.Field(
        ShareRequestPage, required=True, status=graphene.String(), overdue=graphene.Boolean(),
        department=graphene.String(description="As requester or provider (policy-admin: any; others: their own)"),
        limit=graphene.Int(), after=graphene.String(),
        description="Sharing requests, newest first; overdue: true lists the PENDING ones past their deadline "
                    "(roles share-requester, data-owner: their department's; policy-admin: all).")
    share_request = graphene.Field(ShareRequest, id=graphene.ID(required=True),
                                   description="One sharing request with its history (null if not yours to see).")

    @staticmethod
    async def resolve_share_requests(_: Any, info: Any, status: str | None = None, overdue: bool | None = None,
                                     department: str | None = None, limit: int | None = None,
                                     after: str | None = None) -> dict[str, Any]:
        service = _service(info, REQUESTER_ROLE, OWNER_ROLE, ADMIN_ROLE)
        subject = info.context["subject"]
        if ADMIN_ROLE not in subject.roles:
            if department not in (None, subject.department):
                raise PermissionError(f"a client of {subject.department} lists only the requests {subject.department} "
                                      f"made or must answer; listing {department}'s needs the role {ADMIN_ROLE!r}")
            department = subject.department
        wanted = None
        if status is not None:
            try:
                wanted = ShareStatus(status.upper())
            except ValueError:
                raise ValueError(f"status must be {', '.join(s.value for s in ShareStatus)}, not {status!r}") from None
        size = 50 if limit is None else limit
        found = await service.search(status=wanted, overdue=overdue, department=department, limit=size, after=after)
        return {"requests": [ShareRequest.of(r, service) for r in found],
                "end_cursor": found[-1].id if len(found) == size else None}

    @staticmethod
    async def resolve_share_request(_: Any, info: Any, id: str) -> dict[str, Any] | None:
        service = _service(info, REQUESTER_ROLE, OWNER_ROLE, ADMIN_ROLE)
        subject = info.context["subject"]
        req = await service.get(id)
        if req is None or (ADMIN_ROLE not in subject.roles
                           and subject.department not in (req.requester, req.provider)):
            return None  # another pair of departments' request (and justification) is not acknowledged
        return ShareRequest.of(req, service)
