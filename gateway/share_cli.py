"""``hutong share ...``: conditional sharing requests (有条件共享申请) at the command line.

An operator's tool: ``--by`` names the official who asks or answers (default: $HUTONG_ACTOR or
the OS account), and the client recorded is ``cli``. Each change is recorded in the audit log as
an administrative event before it commits; if the audit log cannot take it, nothing changes.
``approve`` writes the policy lines through the policy administration, so it needs a policy
kept in a store (``[policies] url``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Column, Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from catalog.loader import CatalogError, load_catalog
from catalog.model import Catalog
from gateway.audit.admin import actor, append_admin
from gateway.audit.errors import AuditUnavailable
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, Settings, load_settings
from policies.lines import PolicyLine, format_line
from policies.sharing import ApplyLines, ShareInputError, ShareRequest, ShareService, ShareStatus
from policies.validate import PolicyError

__all__ = ["share_app"]

share_app = typer.Typer(help="Ask another department for fields of its dataset, answer such requests, list them.",
                        no_args_is_help=True)

T = TypeVar("T")

By = Annotated[str | None, typer.Option("--by", help="The official who does it (default: $HUTONG_ACTOR or the OS "
                                                     "account).")]
RequestId = Annotated[str, typer.Argument(help="The request id (sr-...).")]


def _fail(message: str, code: int) -> typer.Exit:
    error(message)
    return typer.Exit(code)


def _run(config: Path | None, action: Callable[[ShareService], Awaitable[T]], *, approving: bool = False) -> T:
    """Open the catalogue and the store (and, to approve, the policy administration), run ``action``,
    close; or exit saying what is wrong: 1 for a refused change, 2 for the configuration, 3 for a
    store or the audit log that cannot be used."""
    try:
        settings = load_settings(config)
        catalog = load_catalog(*settings.catalog)
    except (ConfigError, CatalogError) as exc:
        raise _fail(str(exc), 2) from None

    async def go() -> T:
        if not approving:
            return await _with_service(settings, catalog, None, action)
        from policies.admin import open_policy_admin  # the approval writes through the policy administration

        async with open_policy_admin(settings, catalog) as admin:
            async def apply_lines(lines: list[PolicyLine], author: str, reason: str,
                                  expires_at: datetime | None) -> int:
                version = await admin.change(add=lines, author=author, reason=reason, source="share-request",
                                             expires_at=expires_at)
                return int(version.number)

            return await _with_service(settings, catalog, apply_lines, action)

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    except ShareInputError as exc:
        for problem in exc.problems:
            err.print(Text("error: ", style="red") + Text(problem))
        raise typer.Exit(1) from None
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(Text("error: ", style="red") + Text(f"the policy refuses the lines: {problem}"))
        raise _fail("nothing was changed: the request stays PENDING", 1) from None
    except AuditUnavailable as exc:
        raise _fail(f"the audit log cannot record the change, so it was not made ({exc})", 3) from None
    except SQLAlchemyError as exc:
        raise _fail(f"the sharing-request store cannot be used: {type(exc).__name__}", 3) from None
    except ValueError as exc:  # ShareStateError, and the policy administration's own refusals
        raise _fail(str(exc), 1) from None


async def _with_service(settings: Settings, catalog: Catalog, apply_lines: ApplyLines | None,
                        action: Callable[[ShareService], Awaitable[T]]) -> T:
    async def record(body: dict[str, Any]) -> None:
        await append_admin(settings, body)

    service = ShareService.from_settings(settings, catalog, record, apply_lines=apply_lines)
    try:
        await service.start()
        return await action(service)
    finally:
        await service.close()


def _days(service: ShareService, r: ShareRequest, now: datetime) -> str:
    left = service.days_left(r, now)
    if left is None:
        return ""
    if r.overdue(now):
        return f"OVERDUE since {service.calendar.local_day(r.deadline)}: escalate"
    return "due today" if left == 0 else f"{left} working day(s) left"


def _show(service: ShareService, r: ShareRequest) -> None:
    now = datetime.now(UTC)
    deadline = f"{service.calendar.local_day(r.deadline)} (end of day)"
    if r.status is ShareStatus.PENDING:
        deadline += f", {_days(service, r, now)}"
    rows = [("id", r.id), ("status", r.status.value), ("requester", r.requester), ("provider", r.provider),
            ("dataset", r.dataset), ("fields", ", ".join(r.fields)), ("purpose", r.purpose),
            ("access", r.access + (f" (mask {r.mask})" if r.mask else "")), ("justification", r.justification),
            ("requested", f"by {r.requested_by} via {r.requested_via} at {r.created_at.isoformat()}"),
            ("deadline", deadline)]
    if r.decided_at is not None:
        rows.append((r.status.value.lower(), f"by {r.decided_by} at {r.decided_at.isoformat()}: {r.reason}"))
    if r.status is ShareStatus.APPROVED:
        rows += [("policy version", str(r.policy_version)),
                 ("until", f"{r.grant_until} (end of day)" if r.grant_until else "no time limit")]
    for k, v in rows:
        out.print(Text(f"{k:>15}  ", style="bold") + Text(v))
    label = "lines written" if r.status is ShareStatus.APPROVED else "lines asked"
    for line in r.lines:
        out.print(Text(f"{label:>15}  ", style="bold") + Text(format_line(line)))
    for e in r.history:
        out.print(Text(f"{'history':>15}  ", style="bold")
                  + Text(f"{e.seq}. {e.at.isoformat()} {e.action} by {e.by} via {e.via}: {e.reason}"))


@share_app.command("request")
def share_request(
    requester: Annotated[str, typer.Option("--requester", help="The department asking.")],
    dataset: Annotated[str, typer.Option("--dataset", help="The dataset code, e.g. hrss.pension.")],
    fields: Annotated[list[str], typer.Option("--field", "-f", help="A field of the dataset; repeat for more.")],
    purpose: Annotated[str, typer.Option("--purpose", help="A purpose covering the dataset.")],
    justification: Annotated[str, typer.Option("--justification", help="Why the department needs the fields.")],
    access: Annotated[str, typer.Option("--access", help="read or read_masked.")] = "read",
    mask: Annotated[str | None, typer.Option("--mask", help="With read_masked: the mask (default: each field's "
                                                            "own).")] = None,
    by: By = None,
    config: ConfigOpt = None,
) -> None:
    """Ask the dataset's department for fields; prints the request and its answer deadline."""
    async def action(service: ShareService) -> tuple[ShareService, ShareRequest]:
        return service, await service.request(requester=requester, dataset=dataset, fields=fields, purpose=purpose,
                                              justification=justification, access=access, mask=mask,
                                              requested_by=by or actor(), requested_via="cli")

    _show(*_run(config, action))


@share_app.command("approve")
def share_approve(
    request_id: RequestId,
    until: Annotated[str | None, typer.Option("--until", help="Grant until the end of this day (YYYY-MM-DD); "
                                                              "default: no time limit.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Kept in the history and the audit log.")] = None,
    by: By = None,
    config: ConfigOpt = None,
) -> None:
    """Approve a pending request: writes its policy lines (one new policy version)."""
    try:
        grant_until = None if until is None else date.fromisoformat(until)
    except ValueError:
        raise typer.BadParameter("--until must be a date, YYYY-MM-DD") from None

    async def action(service: ShareService) -> ShareRequest:
        return await service.approve(request_id, by=by or actor(), via="cli", reason=reason, grant_until=grant_until)

    r = _run(config, action, approving=True)
    out.print(f"{r.id} is APPROVED: policy version {r.policy_version} grants {r.requester} "
              f"{', '.join(f'{r.dataset}.{f}' for f in r.fields)} for {r.purpose}"
              + (f" until the end of {r.grant_until}" if r.grant_until else ""))


@share_app.command("refuse")
def share_refuse(request_id: RequestId,
                 reason: Annotated[str, typer.Option("--reason", help="Why (required: the requester is owed one).")],
                 by: By = None, config: ConfigOpt = None) -> None:
    """Refuse a pending request, saying why."""
    r = _run(config, lambda service: service.refuse(request_id, by=by or actor(), via="cli", reason=reason))
    out.print(f"{r.id} is REFUSED")


@share_app.command("withdraw")
def share_withdraw(request_id: RequestId,
                   reason: Annotated[str, typer.Option("--reason", help="Why it is no longer needed.")],
                   by: By = None, config: ConfigOpt = None) -> None:
    """Withdraw a pending request."""
    r = _run(config, lambda service: service.withdraw(request_id, by=by or actor(), via="cli", reason=reason))
    out.print(f"{r.id} is WITHDRAWN")


@share_app.command("list")
def share_list(
    overdue: Annotated[bool, typer.Option("--overdue", help="Only PENDING requests past their deadline: the "
                                                            "escalation list.")] = False,
    status: Annotated[str | None, typer.Option("--status", help="PENDING, APPROVED, REFUSED or WITHDRAWN.")] = None,
    department: Annotated[str | None, typer.Option("--department", help="Requests it made or must answer.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=500)] = 50,
    config: ConfigOpt = None,
) -> None:
    """List requests, newest first."""
    try:
        wanted = None if status is None else ShareStatus(status.upper())
    except ValueError:
        raise typer.BadParameter(f"--status must be {', '.join(s.value for s in ShareStatus)}") from None

    async def action(service: ShareService) -> tuple[ShareService, list[ShareRequest]]:
        return service, await service.search(status=wanted, overdue=True if overdue else None, department=department,
                                             limit=limit)

    service, found = _run(config, action)
    if not found:
        out.print("no overdue requests" if overdue else "no requests match")
        return
    now = datetime.now(UTC)
    # The id and status are what an operator acts on: never cut short, whatever the terminal's width.
    table = Table(Column("id", no_wrap=True), Column("status", no_wrap=True), "requester", "provider", "dataset",
                  "fields", "purpose", "deadline", "answer")
    for r in found:
        table.add_row(r.id, r.status.value, r.requester, r.provider, r.dataset, ", ".join(r.fields), r.purpose,
                      service.calendar.local_day(r.deadline).isoformat(),
                      Text(_days(service, r, now), style="red bold" if r.overdue(now) else ""))
    out.print(table)


@share_app.command("show")
def share_show(request_id: RequestId, config: ConfigOpt = None) -> None:
    """One request with the lines it asks for (or wrote) and its history; exit 1 if unknown."""
    async def action(service: ShareService) -> tuple[ShareService, ShareRequest | None]:
        return service, await service.get(request_id)

    service, found = _run(config, action)
    if found is None:
        raise _fail(f"no sharing request with id {request_id!r}", 1)
    _show(service, found)
