"""``hutong consent ...`` and ``hutong legal-basis ...``: record and manage grants at the counter.

Each change is signed with the gateway's key, stored, and recorded in the audit log as an
administrative event naming who made it (``--by``, the official at the counter) and the
operator account running the tool; if the audit log cannot take it, nothing changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from catalog.loader import CatalogError, load_catalog
from gateway.audit.admin import actor, append_admin
from gateway.audit.entry import SubjectHasher
from gateway.audit.errors import AuditUnavailable
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, load_settings
from gateway.consent_admin import ConsentAdmin, ConsentInputError, ConsentStateError, open_store
from policies.consent.model import Grant, Kind
from policies.consent.terms import GrantRequest
from policies.settings import PolicySettings

__all__ = ["consent_app", "legal_basis_app"]

consent_app = typer.Typer(help="Record and manage citizens' consents to conditional sharing.", no_args_is_help=True)
legal_basis_app = typer.Typer(help="Record and withdraw legal bases that stand in for consent.", no_args_is_help=True)

T = TypeVar("T")

By = Annotated[str | None, typer.Option("--by", help="The official recording it (default: $HUTONG_ACTOR or the "
                                                     "OS account).")]
Reason = Annotated[str, typer.Option("--reason", help="Why (kept in the history and the audit log).")]
GrantId = Annotated[str, typer.Argument(help="The consent or legal-basis id (cst-... / lb-...).")]
Fields = Annotated[list[str], typer.Option("--field", "-f", help="dataset.field, or a dataset for all its "
                                                                 "conditional fields; repeat for more.")]


def _day(value: str | None, name: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{name} must be a date, YYYY-MM-DD") from None


def _moment(value: str | None, name: str, *, end: bool = False) -> datetime | None:
    """A date (start or end of that day, UTC) or an ISO 8601 time."""
    if value is None:
        return None
    try:
        if len(value) == 10:
            return datetime.combine(date.fromisoformat(value), time.max if end else time.min, UTC)
        t = datetime.fromisoformat(value)
        return t if t.tzinfo else t.replace(tzinfo=UTC)
    except ValueError:
        raise typer.BadParameter(f"{name} must be YYYY-MM-DD or an ISO 8601 time") from None


def _run(config: Path | None, action: Callable[[ConsentAdmin], Awaitable[T]]) -> T:
    """Open the catalogue and the store, run ``action``, close; or exit saying what is wrong."""
    try:
        settings = load_settings(config)
        catalog = load_catalog(*settings.catalog)
        hasher = SubjectHasher(PolicySettings.from_settings(settings).mask_key)
    except (ConfigError, CatalogError) as exc:
        error(str(exc))
        raise typer.Exit(2) from None

    async def record(body: dict[str, Any]) -> None:
        await append_admin(settings, body)

    async def go() -> T:
        store = open_store(settings)
        try:
            await store.init()
            return await action(ConsentAdmin(catalog, store, hasher, record))
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except ConsentInputError as exc:
        for problem in exc.problems:
            error(problem)
        raise typer.Exit(1) from None
    except ConsentStateError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except AuditUnavailable as exc:
        error(f"the audit log cannot record the change, so it was not made ({exc})")
        raise typer.Exit(3) from None
    except SQLAlchemyError as exc:
        error(f"the consent store cannot be used: {type(exc).__name__}")
        raise typer.Exit(3) from None


def _show(g: Grant) -> None:
    t = g.terms
    now = datetime.now(UTC)
    rows = [("id", t.id), ("kind", t.kind.value), ("status", g.effective_status(now).value),
            ("subject", t.subject_hint or "(every subject)"), ("requester", t.requester), ("purpose", t.purpose),
            ("fields", ", ".join(t.fields)), ("providers", ", ".join(t.providers)),
            ("valid", f"{t.valid_from.isoformat()} to {t.valid_until.isoformat()}")]
    if t.data_from or t.data_to:
        rows.append(("data range", f"{t.data_from or '…'} to {t.data_to or '…'}"))
    if t.max_uses:
        rows.append(("frequency", f"{t.max_uses} uses per {t.per_days} days"))
    if t.kind is Kind.CONSENT:
        rows += [("method", str(t.method)), ("explicit request", "yes" if t.explicit_request else "no")]
    else:
        rows += [("basis", f"{t.basis_type}: {t.reference}")]
        if t.covert:
            rows.append(("covert", f"hidden from the subject until {t.disclose_after}"))
    rows += [("recorded", f"by {t.recorded_by} via {t.recorded_via} at {t.created_at.isoformat()}"),
             ("uses", f"{g.use_count}" + (f", last {g.last_used_at.isoformat()}" if g.last_used_at else "")),
             ("signed by", g.key_id)]
    for k, v in rows:
        out.print(Text(f"{k:>16}  ", style="bold") + Text(v))
    for e in g.history:
        out.print(Text(f"{'history':>16}  ", style="bold") + Text(f"{e.seq}. {e.at.isoformat()} {e.status.value} "
                                                                  f"by {e.by}: {e.reason}"))


def _table(grants: list[Grant]) -> None:
    now = datetime.now(UTC)
    table = Table("id", "status", "subject", "requester", "purpose", "fields", "until", "uses")
    for g in grants:
        t = g.terms
        table.add_row(t.id, g.effective_status(now).value, t.subject_hint or "(every subject)", t.requester,
                      t.purpose, ", ".join(t.fields), t.valid_until.date().isoformat(), str(g.use_count))
    out.print(table if grants else "no grants match")


@consent_app.command("grant")
def consent_grant(
    subject: Annotated[str, typer.Option("--subject", help="The subject's ID number or credit code.")],
    requester: Annotated[str, typer.Option("--requester", help="The department that may use the data.")],
    purpose: Annotated[str, typer.Option("--purpose", help="The purpose code.")],
    fields: Fields,
    until: Annotated[str, typer.Option("--until", help="Expiry: YYYY-MM-DD (end of that day, UTC) or ISO time.")],
    method: Annotated[str, typer.Option("--method", help="How it was collected: counter, app or paper.")] = "counter",
    explicit: Annotated[bool, typer.Option("--explicit/--not-explicit",
                                           help="The subject asked for the sharing themselves.")] = False,
    start: Annotated[str | None, typer.Option("--from", help="Start (default: now).")] = None,
    data_from: Annotated[str | None, typer.Option("--data-from", help="Covers records dated from (YYYY-MM-DD).")
                         ] = None,
    data_to: Annotated[str | None, typer.Option("--data-to", help="... to (YYYY-MM-DD).")] = None,
    max_uses: Annotated[int | None, typer.Option("--max-uses", help="At most this many requests ...")] = None,
    per_days: Annotated[int | None, typer.Option("--per-days", help="... in any window of this many days.")] = None,
    by: By = None,
    config: ConfigOpt = None,
) -> None:
    """Record a subject's consent; prints its id."""
    req = GrantRequest(kind=Kind.CONSENT, subject=subject, requester=requester, purpose=purpose, fields=fields,
                       valid_until=_moment(until, "--until", end=True) or datetime.now(UTC),
                       valid_from=_moment(start, "--from"), data_from=_day(data_from, "--data-from"),
                       data_to=_day(data_to, "--data-to"), max_uses=max_uses, per_days=per_days,
                       explicit_request=explicit, method=method, recorded_by=by or actor(), recorded_via=_via())
    grant = _run(config, lambda admin: admin.grant(req))
    _show(grant)


def _change(kind: Kind, action: str, grant_id: str, reason: str, by: str | None, config: Path | None) -> None:
    async def change(admin: ConsentAdmin) -> Grant:
        found = await admin.store.get(grant_id)
        if found is None or found.terms.kind is not kind:  # consent commands never touch legal bases, and back
            raise ConsentStateError(f"no {'consent' if kind is Kind.CONSENT else 'legal basis'} with id {grant_id!r}")
        return await admin.change(grant_id, action, by=by or actor(), via=_via(), reason=reason)

    grant = _run(config, change)
    out.print(f"{grant.id} is now {grant.status.value}")


@consent_app.command("revoke")
def consent_revoke(grant_id: GrantId, reason: Reason = "revoked by the subject", by: By = None,
                   config: ConfigOpt = None) -> None:
    """Revoke a consent: final, and in force from the next request on every gateway worker."""
    _change(Kind.CONSENT, "revoke", grant_id, reason, by, config)


@consent_app.command("pause")
def consent_pause(grant_id: GrantId, reason: Reason = "paused by the subject", by: By = None,
                  config: ConfigOpt = None) -> None:
    """Pause a consent until it is resumed."""
    _change(Kind.CONSENT, "pause", grant_id, reason, by, config)


@consent_app.command("resume")
def consent_resume(grant_id: GrantId, reason: Reason = "resumed by the subject", by: By = None,
                   config: ConfigOpt = None) -> None:
    """Resume a paused consent."""
    _change(Kind.CONSENT, "resume", grant_id, reason, by, config)


def _list(kind: Kind, subject: str | None, requester: str | None, purpose: str | None, limit: int,
          config: Path | None) -> None:
    async def action(admin: ConsentAdmin) -> list[Grant]:
        h = None
        if subject is not None:  # an ID number, else a credit code (both carry check characters)
            try:
                h = admin.subject_hash("id_number", subject)
            except ConsentInputError:
                h = admin.subject_hash("credit_code", subject)
        return await admin.store.search(subject_hash=h, requester=requester, purpose=purpose, kind=kind, limit=limit)

    _table(_run(config, action))


@consent_app.command("list")
def consent_list(subject: Annotated[str | None, typer.Option("--subject", help="A subject's ID number.")] = None,
                 requester: Annotated[str | None, typer.Option("--requester")] = None,
                 purpose: Annotated[str | None, typer.Option("--purpose")] = None,
                 limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
                 config: ConfigOpt = None) -> None:
    """List consents, newest first."""
    _list(Kind.CONSENT, subject, requester, purpose, limit, config)


@consent_app.command("show")
def consent_show(grant_id: GrantId, config: ConfigOpt = None) -> None:
    """One consent or legal basis with its history; exit 1 if unknown or its signature fails."""
    async def action(admin: ConsentAdmin) -> tuple[Grant | None, bool]:
        g = await admin.store.get(grant_id)
        return g, g is not None and admin.store.signer.verify(g)

    grant, valid = _run(config, action)
    if grant is None:
        error(f"no consent or legal basis with id {grant_id!r}")
        raise typer.Exit(1)
    _show(grant)
    if not valid:
        error("its signature does not verify: the stored row was changed outside hutong, and the gateway "
              "ignores it")
        raise typer.Exit(1)


@consent_app.command("verify")
def consent_verify(config: ConfigOpt = None,
                   offline: Annotated[bool, typer.Option("--without-audit", help="Check signatures and histories "
                                                                                 "only, not against the audit log.")]
                   = False) -> None:
    """Check every consent and legal basis: signatures, histories, uses, and agreement with the audit log.
    Exit 1 on any problem."""
    from gateway.audit.settings import AuditSettings
    from gateway.audit.store import AuditStore
    from gateway.consent_verify import verify_consents

    async def check(admin: ConsentAdmin) -> tuple[int, list[str]]:
        audit = None if offline else AuditStore(AuditSettings.from_settings(load_settings(config)).url)
        try:
            return await verify_consents(admin.store, audit)
        finally:
            if audit is not None:
                await audit.close()

    checked, problems = _run(config, check)
    for p in problems:
        err.print(Text("damaged: ", style="red") + Text(p))
    if problems:
        raise typer.Exit(1)
    out.print(f"OK {checked} consent(s) and legal basis(es): signatures, histories and uses intact"
              + ("" if offline else ", in agreement with the audit log"))


@legal_basis_app.command("add")
def legal_basis_add(
    requester: Annotated[str, typer.Option("--requester", help="The department it empowers.")],
    purpose: Annotated[str, typer.Option("--purpose")],
    fields: Fields,
    basis_type: Annotated[str, typer.Option("--type", help="court_order, statutory_duty, administrative_decision "
                                                          "or investigation.")],
    reference: Annotated[str, typer.Option("--reference", help="Document number, statute and article.")],
    until: Annotated[str, typer.Option("--until", help="Expiry: YYYY-MM-DD or ISO time.")],
    subject: Annotated[str | None, typer.Option("--subject", help="The person or organisation it names.")] = None,
    every_subject: Annotated[bool, typer.Option("--every-subject", help="It covers everyone (a statutory duty): "
                                                                        "instead of --subject.")] = False,
    start: Annotated[str | None, typer.Option("--from", help="Start (default: now).")] = None,
    covert: Annotated[bool, typer.Option("--covert", help="Hide the accesses from the subject's data tracker ...")]
    = False,
    disclose_after: Annotated[str | None, typer.Option("--disclose-after", help="... until this date.")] = None,
    by: By = None,
    config: ConfigOpt = None,
) -> None:
    """Record a legal basis that stands in for consent; prints its id."""
    req = GrantRequest(kind=Kind.LEGAL_BASIS, subject=subject, every_subject=every_subject, requester=requester,
                       purpose=purpose, fields=fields,
                       valid_until=_moment(until, "--until", end=True) or datetime.now(UTC),
                       valid_from=_moment(start, "--from"), basis_type=basis_type, reference=reference,
                       covert=covert, disclose_after=_day(disclose_after, "--disclose-after"),
                       recorded_by=by or actor(), recorded_via=_via())
    _show(_run(config, lambda admin: admin.grant(req)))


@legal_basis_app.command("list")
def legal_basis_list(requester: Annotated[str | None, typer.Option("--requester")] = None,
                     purpose: Annotated[str | None, typer.Option("--purpose")] = None,
                     limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
                     config: ConfigOpt = None) -> None:
    """List legal bases, newest first."""
    _list(Kind.LEGAL_BASIS, None, requester, purpose, limit, config)


@legal_basis_app.command("withdraw")
def legal_basis_withdraw(grant_id: GrantId, reason: Reason, by: By = None, config: ConfigOpt = None) -> None:
    """Withdraw a legal basis (final)."""
    _change(Kind.LEGAL_BASIS, "revoke", grant_id, reason, by, config)


def _via() -> str:
    """How a consent change was made: this CLI, run by whom (the OS account, or $HUTONG_ACTOR), beside
    the official it names (--by), which is the operator's word."""
    return f"cli ({actor()})"
