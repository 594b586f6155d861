"""The console's policy editor, for the role ``policy-admin`` only.

``/console/policy`` shows the rules in force (filtered by department, dataset, purpose, subject)
with the current version, a form to add a rule and a remove button per rule; ``explain`` says
why a registered client gets what it gets of a field for a purpose; ``simulate`` lists the
decisions a proposed change would change, then applies it; ``history`` lists the numbered
versions, each with its diff, and rolls back to one of them.

Every page calls the services the GraphQL API (``gateway/policy_schema.py``,
``gateway/policy_insight_schema.py``) and the CLI (``hutong policy``) call: lines are parsed by
:func:`policies.lines.parse_line`, changes go through :meth:`policies.admin.PolicyAdmin.change`
(validated against the catalogue, versioned, audited; refused with ``PolicyError`` or
``PolicyConflict``), explanations come from :mod:`policies.explain` and simulations from
:mod:`policies.simulate` over the policy in force. The author of a change is the console
account, ``"<username> (console)"``. A policy read from a file is shown read-only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.audit.errors import AuditUnavailable
from gateway.console.app import render
from gateway.console.security import User, check_csrf, require
from policies.admin import PolicyAdmin, matches
from policies.decide import Subject
from policies.explain import explain
from policies.lines import PolicyLine, enforcer_of, format_line, lines_of, parse_line
from policies.masks import MASKS
from policies.repository import PolicyConflict
from policies.simulate import SimulationResult, proposed, simulate
from policies.validate import ACTIONS, PolicyError, validate_policy

__all__ = ["routes"]

ADMIN = "policy-admin"
FILTERS = ("department", "dataset", "purpose", "subject")
SHOWN = 500  # rules listed at most on one page: narrow the filters for more
SHOWN_CHANGES = 1000  # simulated decision changes listed at most
FLASH_KEY = "policy_flash"


# --- helpers -----------------------------------------------------------------------------------------

def _gateway(request: Request) -> Any:
    return request.app.state.gateway


def _author(user: User) -> str:
    return f"{user.username} (console)"


def _text(values: Mapping[str, Any], key: str, limit: int = 2000) -> str:
    return str(values.get(key) or "").strip()[:limit]


def _filters(values: Mapping[str, Any], prefix: str = "") -> dict[str, str | None]:
    return {k: (_text(values, prefix + k, 200) or None) for k in FILTERS}


def _policy_url(request: Request, filters: Mapping[str, str | None]) -> str:
    query = urlencode({k: v for k, v in filters.items() if v})
    return str(request.url_for("console:policy")) + (f"?{query}" if query else "")


def _flash_later(request: Request, text: str, kind: str = "ok") -> None:
    """A message for the page the browser is sent to next (post, redirect, get)."""
    request.session[FLASH_KEY] = [text[:1500], kind]


def _flash_now(request: Request) -> dict[str, Any]:
    found = request.session.pop(FLASH_KEY, None)
    return {"flash": found[0], "flash_kind": found[1]} if found else {}


def _version_text(v: Any) -> dict[str, Any]:
    return {"number": v.number, "at": v.at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"), "author": v.author,
            "reason": v.reason, "source": v.source, "added": v.added, "removed": v.removed}


def _int(value: Any) -> int | None:
    """A version number as typed, or None (a number no store could hold is not one)."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return n if 0 <= n < 2**31 else None


def _parse_lines(texts: Sequence[str], what: str) -> tuple[list[PolicyLine], list[str]]:
    """Lines as in a policy file (blank lines and # comments skipped), and what is wrong with the others."""
    lines: list[PolicyLine] = []
    problems: list[str] = []
    for text in texts:
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        try:
            lines.append(parse_line(text))
        except ValueError as exc:
            problems.append(f"{what}: {exc}")
    return lines, problems


def _split(value: str) -> list[str]:
    return [x for x in value.splitlines() if x.strip()]


def _rule_of(form: Mapping[str, Any]) -> PolicyLine:
    """The rule the add form describes: its whole line, or its six values (a ``p`` line)."""
    line = _text(form, "line")
    if line:
        return parse_line(line)
    names = ("subject", "object", "action", "purpose", "effect", "mask")
    values = tuple(_text(form, n, 500) for n in names)
    missing = [n for n, v in zip(names, values, strict=True) if not v]
    if missing:
        raise ValueError(f"fill in {', '.join(missing)}, or write the whole line")
    rule = ("p", *values)
    if parse_line(format_line(rule)) != rule:  # a comma in a value would change the line's meaning
        raise ValueError("a value cannot contain a comma or quotes")
    return rule


def _refusal(exc: Exception) -> tuple[int, str, list[str]]:
    """(status, message, problems) of a refused change, in the terms the CLI and the API use."""
    if isinstance(exc, PolicyError):
        n = len(exc.problems)
        return 400, f"Not changed: the policy validator found {n} problem{'s' if n != 1 else ''}.", exc.problems
    if isinstance(exc, AuditUnavailable):
        return 503, f"Not changed: the audit log cannot record the change, so it was not made ({exc}).", []
    if isinstance(exc, (SQLAlchemyError, OSError, TimeoutError)):
        return 503, f"Not changed: the policy store cannot be used ({type(exc).__name__}).", []
    return (409 if isinstance(exc, PolicyConflict) else 400), f"Not changed: {exc}", []


REFUSED = (PolicyError, PolicyConflict, ValueError, AuditUnavailable, SQLAlchemyError, OSError, TimeoutError)


def _read_only(gw: Any) -> str | None:
    """Why the policy cannot be changed here (None: it can)."""
    if gw.policy_admin is not None:
        return None
    return (f"This gateway reads its policy from {gw.store.source.name}, which the console does not write: the "
            "policy is read-only here. Edit the file (it is reloaded), or move the policy to a store ([policies] "
            "url, seeded from the file) to administer it here.")


async def _in_force(gw: Any) -> tuple[Any, int | None]:
    """The enforcer in force on this gateway (brought up to date) and its repository version."""
    await gw.store.refresh(force=True)  # cheap when unchanged: the store's stamp is compared
    snap = gw.store.snapshot
    return snap.enforcer, snap.policy_version


async def _clients(gw: Any) -> list[Any]:
    return [] if gw.clients is None else list(await gw.clients.list())


def _options(catalog: Any) -> dict[str, Any]:
    """What the forms offer to choose from."""
    datasets = sorted(catalog.datasets)
    fields = [f"{d.code}.{f.name}" for d in sorted(catalog.datasets.values(), key=lambda d: d.code) for f in d.fields]
    return {"departments": sorted(catalog.departments.values(), key=lambda d: d.code), "datasets": datasets,
            "purposes": sorted(catalog.purposes), "fields": fields,
            "objects": ["*", *(f"{d}.*" for d in datasets), *fields], "actions": [*ACTIONS, "*"],
            "masks": ["default", *MASKS]}


# --- the rules in force --------------------------------------------------------------------------------

def _rule_row(line: PolicyLine, expires: datetime | None) -> dict[str, Any]:
    return {"line": line, "text": format_line(line), "kind": line[0],
            "until": expires.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if expires else None}


async def _policy_view(request: Request, filters: Mapping[str, str | None], *, status: int = 200,
                       form: Mapping[str, Any] | None = None, problems: Sequence[str] = (),
                       **message: Any) -> Response:
    gw = _gateway(request)
    admin: PolicyAdmin | None = gw.policy_admin
    if admin is not None:
        version, live = await admin.repo.live_at_head()
    else:
        enforcer, version = await _in_force(gw)
        live = [(x, None) for x in lines_of(enforcer)]
    found = [(x, e) for x, e in live if matches(x, **filters)]
    subjects = sorted({x[1] for x, _ in live} | {f"dept:{d}" for d in gw.catalog.departments})[:SHOWN]
    return render(request, "policy.html", status, version=version, rules=[_rule_row(x, e) for x, e in found[:SHOWN]],
                  matched=len(found), total=len(live), shown=SHOWN, filters=filters, form=form or {},
                  problems=list(problems), read_only=_read_only(gw), subjects=subjects,
                  filtered=any(filters.values()), **_options(gw.catalog), **message)


async def policy_page(request: Request) -> Response:
    require(request, ADMIN)
    return await _policy_view(request, _filters(request.query_params), **_flash_now(request))


async def _change(request: Request, user: User, *, add: Sequence[PolicyLine], remove: Sequence[PolicyLine],
                  reason: str, base: int | None) -> Any:
    """Make the change through the policy administration (validated, versioned, audited) and put it in force
    here at once. The new version, or the exception that refused it."""
    gw = _gateway(request)
    version = await gw.policy_admin.change(add=add, remove=remove, author=_author(user), reason=reason,
                                           source="console", base_version=base)
    await gw.store.refresh(force=True)
    return version


def _done(version: Any, what: str) -> str:
    return f"Version {version.number} is in force: {what}. Reason: {version.reason}"


async def policy_add(request: Request) -> Response:
    form = await check_csrf(request)
    user = require(request, ADMIN)
    filters = _filters(form, "f_")
    if (why := _read_only(_gateway(request))) is not None:
        return await _policy_view(request, filters, status=409, form=form, flash=why, flash_kind="error")
    try:
        rule = _rule_of(form)
        version = await _change(request, user, add=[rule], remove=[], reason=_text(form, "reason"),
                                base=_int(form.get("base_version")))
    except REFUSED as exc:
        status, text, problems = _refusal(exc)
        return await _policy_view(request, filters, status=status, form=form, problems=problems, flash=text,
                                  flash_kind="error")
    _flash_later(request, _done(version, f"added {format_line(rule)}"))
    return RedirectResponse(_policy_url(request, filters), 303)


async def policy_remove(request: Request) -> Response:
    form = await check_csrf(request)
    user = require(request, ADMIN)
    filters = _filters(form, "f_")
    if (why := _read_only(_gateway(request))) is not None:
        return await _policy_view(request, filters, status=409, flash=why, flash_kind="error")
    try:
        rule = parse_line(_text(form, "line"))
        version = await _change(request, user, add=[], remove=[rule], reason=_text(form, "reason"),
                                base=_int(form.get("base_version")))
    except REFUSED as exc:
        status, text, problems = _refusal(exc)
        return await _policy_view(request, filters, status=status, problems=problems, flash=text, flash_kind="error")
    _flash_later(request, _done(version, f"removed {format_line(rule)}"))
    return RedirectResponse(_policy_url(request, filters), 303)


# --- explain ---------------------------------------------------------------------------------------------

async def policy_explain(request: Request) -> Response:
    if request.method == "POST":
        values: Mapping[str, Any] = await check_csrf(request)
        require(request, ADMIN)
    else:
        require(request, ADMIN)
        values = request.query_params
    gw = _gateway(request)
    asked = {k: _text(values, k, 300) for k in ("client", "purpose", "field")}
    clients = await _clients(gw)
    context: dict[str, Any] = {"asked": asked, "clients": clients, "read_only": _read_only(gw),
                               "no_client_store": gw.clients is None, **_options(gw.catalog)}
    if not any(asked.values()):
        return render(request, "policy_explain.html", **context)
    missing = [k for k, v in asked.items() if not v]
    if missing:
        return render(request, "policy_explain.html", 400, flash=f"Choose the {' and the '.join(missing)} to explain.",
                      flash_kind="error", **context)
    client = next((c for c in clients if c.client_id == asked["client"]), None)
    if client is None:
        return render(request, "policy_explain.html", 400, flash=f"No client {asked['client']!r} is registered.",
                      flash_kind="error", **context)
    enforcer, version = await _in_force(gw)
    subject = Subject.of_client(client)
    try:
        found = explain(enforcer, gw.catalog, subject, asked["purpose"], asked["field"])
    except ValueError as exc:
        return render(request, "policy_explain.html", 400, flash=f"Cannot explain: {exc}", flash_kind="error",
                      **context)
    return render(request, "policy_explain.html", explanation=found, client=client, version=version, **context)


# --- simulate, then apply ----------------------------------------------------------------------------------

def _simulated(catalog: Any, before: Any, lines: list[PolicyLine], subjects: list[Subject],
               purposes: list[str] | None) -> SimulationResult:
    after = enforcer_of(lines)
    validate_policy(after, catalog, "the proposed policy")
    return simulate(catalog, before, after, subjects, purposes)


async def policy_simulate(request: Request) -> Response:
    gw = _gateway(request)
    if request.method == "GET":  # the form, perhaps with lines to add or remove filled in (from the rules table)
        require(request, ADMIN)
        asked = {"add": "\n".join(request.query_params.getlist("add")),
                 "remove": "\n".join(request.query_params.getlist("remove")), "purpose": ""}
        return render(request, "policy_simulate.html", asked=asked, read_only=_read_only(gw), **_options(gw.catalog))
    form = await check_csrf(request)
    require(request, ADMIN)
    asked = {"add": _text(form, "add", 100_000), "remove": _text(form, "remove", 100_000),
             "purpose": _text(form, "purpose", 100)}
    context = {"asked": asked, "read_only": _read_only(gw), **_options(gw.catalog)}
    add, bad_add = _parse_lines(_split(asked["add"]), "to add")
    remove, bad_remove = _parse_lines(_split(asked["remove"]), "to remove")
    if bad_add or bad_remove:
        return render(request, "policy_simulate.html", 400, flash="These are not policy lines:", flash_kind="error",
                      problems=bad_add + bad_remove, **context)
    if not add and not remove:
        return render(request, "policy_simulate.html", 400, flash="Give lines to add or to remove, one per line, as "
                      "in a policy file: p, role:NAME, dataset.field, read, purpose, allow, default",
                      flash_kind="error", **context)
    purposes = [asked["purpose"]] if asked["purpose"] else None
    before, version = await _in_force(gw)
    subjects = [Subject.of_client(c)
                for c in await _clients(gw) if not c.disabled]
    try:
        lines = proposed(lines_of(before), add=add, remove=remove)
        # Building, validating and comparing a large policy takes a while: off the event loop.
        result = await asyncio.to_thread(_simulated, gw.catalog, before, lines, subjects, purposes)
    except PolicyError as exc:
        return render(request, "policy_simulate.html", 400, flash="The proposed policy would be refused by the "
                      "policy validator:", flash_kind="error", problems=exc.problems, **context)
    except ValueError as exc:
        return render(request, "policy_simulate.html", 400, flash=f"Cannot simulate: {exc}", flash_kind="error",
                      **context)
    return render(request, "policy_simulate.html", result=result, counts=result.counts,
                  changes=result.changes[:SHOWN_CHANGES], shown=SHOWN_CHANGES, version=version,
                  add_lines=[format_line(x) for x in add], remove_lines=[format_line(x) for x in remove],
                  clients=len(subjects), **context)


async def policy_apply(request: Request) -> Response:
    form = await check_csrf(request)
    user = require(request, ADMIN)
    gw = _gateway(request)
    raw = await request.form()  # the form check_csrf read (cached): lines come as repeated fields
    add_texts, remove_texts = [str(x) for x in raw.getlist("add")], [str(x) for x in raw.getlist("remove")]
    asked = {"add": "\n".join(add_texts), "remove": "\n".join(remove_texts), "purpose": ""}
    context = {"asked": asked, "read_only": _read_only(gw), **_options(gw.catalog)}
    if context["read_only"] is not None:
        return render(request, "policy_simulate.html", 409, flash=context["read_only"], flash_kind="error", **context)
    add, bad_add = _parse_lines(add_texts, "to add")
    remove, bad_remove = _parse_lines(remove_texts, "to remove")
    try:
        if bad_add or bad_remove:
            raise ValueError("; ".join(bad_add + bad_remove))
        version = await _change(request, user, add=add, remove=remove, reason=_text(form, "reason"),
                                base=_int(form.get("base_version")))
    except REFUSED as exc:
        status, text, problems = _refusal(exc)
        return render(request, "policy_simulate.html", status, flash=text + " Simulate it again to check it.",
                      flash_kind="error", problems=problems, **context)
    _flash_later(request, _done(version, f"{len(add)} line(s) added, {len(remove)} removed"))
    return RedirectResponse(_policy_url(request, {}), 303)


# --- history, diff, rollback -----------------------------------------------------------------------------

async def _history_view(request: Request, *, status: int = 200, before: int | None = None,
                        rollback_to: int | None = None, reason: str = "", **message: Any) -> Response:
    gw = _gateway(request)
    admin: PolicyAdmin | None = gw.policy_admin
    if admin is None:
        return render(request, "policy_history.html", status, read_only=_read_only(gw), versions=[], head=None,
                      **message)
    head = await admin.repo.head()
    versions = [_version_text(v) for v in await admin.repo.versions(50, before)]
    older = versions[-1]["number"] if versions and versions[-1]["number"] > 1 else None
    return render(request, "policy_history.html", status, read_only=None, versions=versions, head=head, older=older,
                  rollback_to=rollback_to, reason=reason, **message)


async def policy_history(request: Request) -> Response:
    require(request, ADMIN)
    return await _history_view(request, before=_int(request.query_params.get("before")),
                               rollback_to=_int(request.query_params.get("rollback")), **_flash_now(request))


async def policy_diff(request: Request) -> Response:
    require(request, ADMIN)
    gw = _gateway(request)
    admin: PolicyAdmin | None = gw.policy_admin
    context: dict[str, Any] = {"read_only": _read_only(gw), "a": None, "b": None}
    if admin is None:
        return render(request, "policy_diff.html", **context)
    head = await admin.repo.head()
    b = _int(request.query_params.get("b"))
    b = head if b is None else b
    a = _int(request.query_params.get("a"))
    a = b - 1 if a is None else a
    context.update(a=a, b=b, head=head)
    try:
        added, removed = await admin.repo.diff(a, b)
    except PolicyConflict as exc:
        return render(request, "policy_diff.html", 404, flash=str(exc), flash_kind="error", **context)
    va, vb = await admin.repo.version(a), await admin.repo.version(b)
    return render(request, "policy_diff.html", added=[format_line(x) for x in added],
                  removed=[format_line(x) for x in removed], va=va and _version_text(va),
                  vb=vb and _version_text(vb), **context)


async def policy_rollback(request: Request) -> Response:
    form = await check_csrf(request)
    user = require(request, ADMIN)
    gw = _gateway(request)
    number, reason = _int(form.get("version")), _text(form, "reason")
    if (why := _read_only(gw)) is not None:
        return await _history_view(request, status=409, flash=why, flash_kind="error")
    try:
        if number is None:
            raise ValueError("give the number of the version whose rules to restore")
        if not reason:  # the service prefixes "rollback to version N": ask for the why here
            raise PolicyConflict("give a reason for the rollback: it is kept in the history")
        version = await gw.policy_admin.rollback(number, author=_author(user), reason=reason)
        await gw.store.refresh(force=True)
    except REFUSED as exc:
        status, text, problems = _refusal(exc)
        return await _history_view(request, status=status, rollback_to=number, reason=reason, problems=problems,
                                   flash=text, flash_kind="error")
    _flash_later(request, _done(version, f"the rules of version {number} are back (+{version.added} "
                                         f"-{version.removed})"))
    return RedirectResponse(str(request.url_for("console:policy_history")), 303)


def routes() -> list[BaseRoute]:
    return [
        Route("/policy", policy_page, methods=["GET"], name="policy"),
        Route("/policy/add", policy_add, methods=["POST"], name="policy_add"),
        Route("/policy/remove", policy_remove, methods=["POST"], name="policy_remove"),
        Route("/policy/explain", policy_explain, methods=["GET", "POST"], name="policy_explain"),
        Route("/policy/simulate", policy_simulate, methods=["GET", "POST"], name="policy_simulate"),
        Route("/policy/apply", policy_apply, methods=["POST"], name="policy_apply"),
        Route("/policy/history", policy_history, methods=["GET"], name="policy_history"),
        Route("/policy/diff", policy_diff, methods=["GET"], name="policy_diff"),
        Route("/policy/rollback", policy_rollback, methods=["POST"], name="policy_rollback"),
    ]
