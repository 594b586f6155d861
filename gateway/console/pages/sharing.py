"""The console's sharing-requests page (有条件共享申请): inboxes, answers, the escalation list.

- ``data-owner``: the requests addressed to its department (PENDING first, with the deadline, the
  working days left and an "overdue" tag), each pending one with an approve form (optional time
  limit and reason) and a refuse form (reason required); and the requests its department made.
- ``policy-admin``: every request, filtered by status or to the overdue ones (the escalation list).
- both: one request with its whole history (``/sharing/{id}``), if it is theirs to see.

Answers go through :class:`policies.sharing.ShareService` exactly as the GraphQL mutations do
(``as_department`` is the signed-in owner's department, so the service itself refuses another
department's request); ``decided_by`` is ``"<username> (console)"`` and ``via`` is ``console``.
"""

from __future__ import annotations

import logging
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.audit.errors import AuditUnavailable
from gateway.console.app import render
from gateway.console.security import Forbidden, User, check_csrf, require
from policies.lines import format_line
from policies.sharing import ShareRequest, ShareService, ShareStateError, ShareStatus
from policies.validate import PolicyError

__all__ = ["routes"]

log = logging.getLogger("hutong.console.sharing")

OWNER, ADMIN = "data-owner", "policy-admin"
VIA = "console"  # the "client" a console answer is recorded as coming through
LIMIT = 200  # requests listed per page
MAX_REASON = 4000
DONE = {"approved": "approved: its policy lines are in force", "refused": "refused: the reason was sent back"}


def _service(request: Request) -> ShareService:
    service = getattr(request.app.state.gateway, "sharing", None)
    if service is None:
        raise HTTPException(503, "sharing requests are not available in this gateway")
    return service


def _when(service: ShareService, at: datetime | None) -> str:
    return at.astimezone(service.calendar.tz).strftime("%Y-%m-%d %H:%M") if at else ""


def view(req: ShareRequest, service: ShareService, now: datetime) -> dict[str, Any]:
    """What the templates show of a request (times in the calendar's time zone)."""
    left = service.days_left(req, now)
    return {
        "id": req.id, "status": req.status.value, "pending": req.status is ShareStatus.PENDING,
        "overdue": req.overdue(now), "days_left": left, "requester": req.requester, "provider": req.provider,
        "dataset": req.dataset, "fields": list(req.fields), "purpose": req.purpose, "access": req.access,
        "mask": req.mask, "justification": req.justification, "requested_by": req.requested_by,
        "requested_via": req.requested_via, "created": _when(service, req.created_at),
        "deadline_day": service.calendar.local_day(req.deadline).isoformat(), "deadline": _when(service, req.deadline),
        "decided_by": req.decided_by, "decided": _when(service, req.decided_at), "reason": req.reason,
        "grant_until": req.grant_until.isoformat() if req.grant_until else None,
        "expires": _when(service, req.expires_at), "policy_version": req.policy_version,
        "lines": [format_line(x) for x in req.lines],
        "history": [{"seq": e.seq, "at": _when(service, e.at), "action": e.action, "by": e.by, "via": e.via,
                     "reason": e.reason} for e in req.history],
    }


def _grant_bounds(service: ShareService, now: datetime) -> dict[str, str]:
    today = service.calendar.local_day(now)
    return {"min": today.isoformat(), "max": (today + timedelta(days=service.settings.max_grant_days)).isoformat()}


def _may_see(user: User, req: ShareRequest) -> bool:
    return user.has(ADMIN) or (user.department is not None and user.department in (req.requester, req.provider))


def _may_answer(user: User, req: ShareRequest) -> bool:
    return user.has(OWNER) and user.department is not None and user.department == req.provider


async def sharing_page(request: Request) -> Response:
    user = require(request, OWNER, ADMIN)
    service = _service(request)
    now = service.clock()
    q = request.query_params
    context: dict[str, Any] = {"bounds": _grant_bounds(service, now), "statuses": [s.value for s in ShareStatus]}
    if user.has(OWNER) and user.department:
        mine = await service.search(department=user.department, limit=LIMIT, now=now)
        inbox = [r for r in mine if r.provider == user.department]
        # Every PENDING request to the department, however old (the oldest are the most overdue), is read on
        # its own, not cut off with the newest answered ones; the most urgent on top.
        waiting = await service.search(department=user.department, status=ShareStatus.PENDING, limit=500, now=now)
        pending = sorted((r for r in waiting if r.provider == user.department), key=lambda r: r.deadline)
        context.update(
            inbox_pending=[view(r, service, now) for r in pending],
            inbox_answered=[view(r, service, now) for r in inbox if r.status is not ShareStatus.PENDING],
            made=[view(r, service, now) for r in mine if r.requester == user.department],
            mine_truncated=len(mine) == LIMIT)
    if user.has(ADMIN):
        overdue = q.get("overdue") in ("1", "on", "true")
        status = q.get("status") or ""
        wanted = ShareStatus(status) if status in ShareStatus.__members__ else None
        after = q.get("after") or None
        try:
            found = await service.search(status=wanted, overdue=True if overdue else None, limit=LIMIT, after=after,
                                         now=now)
        except ShareStateError:  # a stale "after": start again from the newest
            found, after = await service.search(status=wanted, overdue=True if overdue else None, limit=LIMIT,
                                                now=now), None
        context.update(everyone=[view(r, service, now) for r in found], overdue_only=overdue,
                       status_filter=wanted.value if wanted else "", after=after,
                       next_after=found[-1].id if len(found) == LIMIT else None)
    return render(request, "sharing.html", **context)


async def _detail(request: Request, request_id: str, user: User, *, status: int = 200, flash: str | None = None,
                  flash_kind: str = "ok", form: dict[str, Any] | None = None) -> Response:
    service = _service(request)
    req = await service.get(request_id)
    if req is None or not _may_see(user, req):
        # Neither party (and not a policy administrator): the request is not even acknowledged, whether
        # looked at or answered.
        raise HTTPException(404, f"no sharing request {request_id} for you to see")
    now = service.clock()
    return render(request, "sharing_detail.html", status, r=view(req, service, now),
                  may_answer=_may_answer(user, req) and req.status is ShareStatus.PENDING,
                  bounds=_grant_bounds(service, now), flash=flash, flash_kind=flash_kind, form=form or {})


async def sharing_detail(request: Request) -> Response:
    user = require(request, OWNER, ADMIN)
    rid = request.path_params["id"]
    done = request.query_params.get("done")
    return await _detail(request, rid, user, flash=f"{rid} {DONE[done]}" if done in DONE else None)


async def _answer(request: Request, action: str) -> Response:
    form = await check_csrf(request)  # first: nothing is done for a forged form
    user = require(request, OWNER)
    rid = request.path_params["id"]
    service = _service(request)
    reason = str(form.get("reason") or "").strip()
    kept = {"action": action, "reason": reason, "grant_until": str(form.get("grant_until") or "")}
    if not user.department:
        raise Forbidden("your account names no department, so it answers no department's requests")

    def refused(status: int, message: str) -> Any:
        return _detail(request, rid, user, status=status, flash=message, flash_kind="error", form=kept)

    if len(reason) > MAX_REASON:
        return await refused(400, f"keep the reason under {MAX_REASON} characters")
    by = f"{user.username} (console)"
    try:
        if action == "approve":
            until: date | None = None
            if kept["grant_until"]:
                try:
                    until = date.fromisoformat(kept["grant_until"])
                except ValueError:
                    return await refused(400, f"grant until must be a date (YYYY-MM-DD), not {kept['grant_until']!r}")
            await service.approve(rid, by=by, via=VIA, reason=reason or None, grant_until=until,
                                  as_department=user.department)
        else:
            await service.refuse(rid, by=by, via=VIA, reason=reason, as_department=user.department)
    except PermissionError as exc:  # another department's request: the service's own check
        return await refused(403, str(exc))
    except PolicyError as exc:
        return await refused(409, f"{rid} stays PENDING: the policy refuses its lines: {'; '.join(exc.problems)}")
    except AuditUnavailable:
        return await refused(503, "the audit log cannot record this answer, so it was not made: retry later")
    except ShareStateError as exc:
        return await refused(409, str(exc))
    except ValueError as exc:  # ShareInputError and the policy administration's refusals
        return await refused(400, str(exc))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        log.error("sharing request %s: a store failed while answering: %s", rid, type(exc).__name__)
        return await refused(503, "a store this answer needs (sharing or policy) cannot be reached: retry later")
    done = "approved" if action == "approve" else "refused"
    return RedirectResponse(str(request.url_for("console:sharing_detail", id=rid)) + f"?done={done}", 303)


async def sharing_approve(request: Request) -> Response:
    return await _answer(request, "approve")


async def sharing_refuse(request: Request) -> Response:
    return await _answer(request, "refuse")


def routes() -> list[BaseRoute]:
    return [
        Route("/sharing", sharing_page, methods=["GET"], name="sharing"),
        Route("/sharing/{id}", sharing_detail, methods=["GET"], name="sharing_detail"),
        Route("/sharing/{id}/approve", sharing_approve, methods=["POST"], name="sharing_approve"),
        Route("/sharing/{id}/refuse", sharing_refuse, methods=["POST"], name="sharing_refuse"),
    ]
