"""``hutong policy ...``: administer the sharing rules in the policy store.

Every change is validated against the catalogue, becomes a numbered version with its author
(``--by``, default ``$HUTONG_ACTOR`` or the OS account) and reason, and is an audit event;
running gateways take it within a second (PostgreSQL) or their poll interval (SQLite).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from catalog.loader import CatalogError, load_catalog
from catalog.model import Catalog
from gateway.audit.admin import actor
from gateway.audit.errors import AuditUnavailable
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, Settings, load_settings
from policies.admin import PolicyAdmin, PolicyAdminUnavailable, open_policy_admin
from policies.lines import format_line, parse_csv, parse_line
from policies.repository import PolicyConflict, PolicyVersion
from policies.validate import PolicyError

__all__ = ["policy_app"]

policy_app = typer.Typer(help="Administer the sharing rules: list, change, history, rollback, explain, simulate.",
                         no_args_is_help=True)
dry_run_app = typer.Typer(help="Evaluate a proposed policy on every gateway without enforcing it.",
                          no_args_is_help=True)
policy_app.add_typer(dry_run_app, name="dry-run")

T = TypeVar("T")

By = Annotated[str | None, typer.Option("--by", help="Who makes the change (default: $HUTONG_ACTOR or the OS "
                                                     "account).")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="Why (kept in the history and the audit log).")]
Lines = Annotated[list[str] | None, typer.Argument(help='Policy lines, e.g. "p, dept:civil, hrss.pension.status, '
                                                       'read, subsistence-allowance-review, allow, default".')]


def fail(message: str, code: int = 1) -> None:
    error(message)
    raise typer.Exit(code)


def _configured(config: Path | None) -> tuple[Settings, Catalog]:
    """The configuration and its catalogue, or exit 2 saying what is wrong."""
    try:
        settings = load_settings(config)
        return settings, load_catalog(*settings.catalog)
    except (ConfigError, CatalogError) as exc:
        fail(str(exc), 2)
        raise


def run(config: Path | None, action: Callable[[PolicyAdmin, Any], Awaitable[T]]) -> T:
    """Open the configured policy store's administration, run ``action(admin, settings)``, or exit
    saying what is wrong (1: refused change, 2: configuration, 3: a store is unreachable)."""
    settings, catalog = _configured(config)

    async def go() -> T:
        async with open_policy_admin(settings, catalog) as admin:
            return await action(admin, settings)

    try:
        return asyncio.run(go())
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(Text("refused: ", style="red") + Text(problem))
        raise typer.Exit(1) from None
    except (PolicyConflict, PolicyAdminUnavailable, ValueError) as exc:
        fail(str(exc))
        raise
    except AuditUnavailable as exc:
        fail(f"the audit log cannot record the change, so it was not made ({exc})", 3)
        raise
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        fail(f"the policy store cannot be used: {type(exc).__name__}", 3)
        raise


def _read(path: Path) -> str:
    """A file's text (``-``: standard input), or exit 2 naming the file and the reason."""
    if str(path) == "-":
        return sys.stdin.read()
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or type(exc).__name__}", 2)
        raise


def _lines(texts: list[str] | None, what: str) -> list[tuple[str, ...]]:
    out_lines = []
    for t in texts or []:
        try:
            out_lines.append(parse_line(t))
        except ValueError as exc:
            fail(f"{what}: {exc}", 2)
    return out_lines


def _done(v: PolicyVersion) -> None:
    out.print(f"version {v.number}: +{v.added} -{v.removed} by {v.author} ({v.reason})")


@policy_app.command("list")
def policy_list(department: Annotated[str | None, typer.Option("--department", "-d")] = None,
                dataset: Annotated[str | None, typer.Option("--dataset")] = None,
                purpose: Annotated[str | None, typer.Option("--purpose")] = None,
                subject: Annotated[str | None, typer.Option("--subject", help="A client id, role:X or dept:X.")]
                = None, config: ConfigOpt = None) -> None:
    """The rules in force, filtered by department, dataset, purpose or subject."""
    async def action(admin: PolicyAdmin, _: Any) -> tuple[int, list[Any]]:
        return await admin.repo.head(), await admin.lines(department=department, dataset=dataset,
                                                          purpose=purpose, subject=subject)

    head, found = run(config, action)
    for line, expires in found:
        out.print(format_line(line) + (f"    # until {expires.isoformat()}" if expires else ""))
    err.print(f"{len(found)} rule(s) of version {head}")


@policy_app.command("add")
def policy_add(lines: Lines, reason: Reason, by: By = None,
               until: Annotated[str | None, typer.Option("--until", help="Time limit (ISO 8601).")] = None,
               base: Annotated[int | None, typer.Option("--base", help="Refuse if the policy is no longer at this "
                                                                      "version.")] = None,
               config: ConfigOpt = None) -> None:
    """Add rules (one new version)."""
    from datetime import UTC, datetime

    expires = None
    if until is not None:
        try:
            expires = datetime.fromisoformat(until)
        except ValueError:
            fail("--until must be an ISO 8601 date or time", 2)
            raise
        expires = expires if expires.tzinfo else expires.replace(tzinfo=UTC)
    add = _lines(lines, "add")
    _done(run(config, lambda admin, _: admin.change(add=add, author=by or actor(), reason=reason,
                                                    source="cli", expires_at=expires, base_version=base)))


@policy_app.command("remove")
def policy_remove(lines: Lines, reason: Reason, by: By = None,
                  base: Annotated[int | None, typer.Option("--base")] = None, config: ConfigOpt = None) -> None:
    """Remove rules (one new version)."""
    remove = _lines(lines, "remove")
    _done(run(config, lambda admin, _: admin.change(remove=remove, author=by or actor(), reason=reason,
                                                    source="cli", base_version=base)))


@policy_app.command("replace")
def policy_replace(reason: Reason,
                   remove: Annotated[list[str], typer.Option("--remove", help="A line to remove; repeat.")],
                   add: Annotated[list[str], typer.Option("--add", help="A line to add; repeat.")],
                   by: By = None, base: Annotated[int | None, typer.Option("--base")] = None,
                   config: ConfigOpt = None) -> None:
    """Remove some rules and add others in one version."""
    old, new = _lines(remove, "remove"), _lines(add, "add")
    _done(run(config, lambda admin, _: admin.change(add=new, remove=old, author=by or actor(), reason=reason,
                                                    source="cli", base_version=base)))


@policy_app.command("import")
def policy_import(file: Annotated[Path, typer.Argument(help="A Casbin CSV policy file, or - for standard input.")],
                  reason: Reason, by: By = None, config: ConfigOpt = None) -> None:
    """Make a CSV file the whole policy (one version: the diff from the current one)."""
    text = _read(file)
    _done(run(config, lambda admin, _: admin.import_csv(text, author=by or actor(), reason=reason)))


@policy_app.command("export")
def policy_export(config: ConfigOpt = None) -> None:
    """The rules in force as a Casbin CSV file (standard output)."""
    sys.stdout.write(run(config, lambda admin, _: admin.export_csv()))


@policy_app.command("history")
def policy_history(limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 30,
                   config: ConfigOpt = None) -> None:
    """The numbered versions, newest first."""
    versions = run(config, lambda admin, _: admin.repo.versions(limit))
    table = Table("version", "time", "author", "source", "+", "-", "reason")
    for v in versions:
        table.add_row(str(v.number), v.at.isoformat(timespec="seconds"), v.author, v.source, str(v.added),
                      str(v.removed), v.reason)
    out.print(table)


@policy_app.command("diff")
def policy_diff(a: Annotated[int, typer.Argument(help="The older version.")],
                b: Annotated[int, typer.Argument(help="The newer version.")], config: ConfigOpt = None) -> None:
    """What changed from version A to version B (+ added, - removed)."""
    added, removed = run(config, lambda admin, _: admin.repo.diff(a, b))
    for x in removed:
        out.print(Text("- " + format_line(x), style="red"))
    for x in added:
        out.print(Text("+ " + format_line(x), style="green"))
    err.print(f"{len(added)} added, {len(removed)} removed")


@policy_app.command("rollback")
def policy_rollback(version: Annotated[int, typer.Argument(help="The version whose rules to restore.")],
                    reason: Reason, by: By = None, config: ConfigOpt = None) -> None:
    """Restore the rules of an earlier version, as a new version (history is never rewritten)."""
    _done(run(config, lambda admin, _: admin.rollback(version, author=by or actor(), reason=reason)))


@dry_run_app.command("start")
def dry_run_start(reason: Reason,
                  file: Annotated[Path | None, typer.Option("--file", help="A whole proposed policy (CSV).")] = None,
                  add: Annotated[list[str] | None, typer.Option("--add", help="Or: a line to add; repeat.")] = None,
                  remove: Annotated[list[str] | None, typer.Option("--remove", help="... a line to remove.")] = None,
                  by: By = None, config: ConfigOpt = None) -> None:
    """Every gateway evaluates the proposal beside the policy in force and logs what it would decide
    differently (also in each request's audit record), without enforcing it."""
    if (file is None) == (not add and not remove):
        fail("give --file, or --add/--remove lines", 2)
    plus, minus = _lines(add, "add"), _lines(remove, "remove")

    async def action(admin: PolicyAdmin, _: Any) -> int:
        if file is not None:
            lines = parse_csv(_read(file))
        else:
            current = [x for x, _ in await admin.repo.live()]
            missing = [format_line(x) for x in minus if x not in set(current)]
            if missing:
                raise PolicyConflict("not in force, cannot be removed: " + "; ".join(missing))
            lines = [x for x in current if x not in set(minus)] + plus
        await admin.dry_run(lines, by=by or actor(), reason=reason)
        return len(lines)

    out.print(f"dry run started: {run(config, action)} rule(s) proposed")


@dry_run_app.command("stop")
def dry_run_stop(reason: Reason, by: By = None, config: ConfigOpt = None) -> None:
    """Stop the dry run."""
    run(config, lambda admin, _: admin.dry_run(None, by=by or actor(), reason=reason))
    out.print("dry run stopped")


def _current_and_clients(config: Path | None) -> tuple[Any, Any, Any, list[Any]]:
    """(settings, catalogue, the policy in force (store or file), the enabled clients), for explain and
    simulate; or exit saying what is wrong (2: configuration, 3: a store cannot be read)."""
    settings, catalog = _configured(config)
    from gateway.auth.clients import ClientStore
    from gateway.auth.settings import AuthSettings
    from policies.store import open_policy_store

    async def load() -> tuple[Any, list[Any]]:
        from policies.settings import PolicySettings

        if PolicySettings.from_settings(settings).url is not None:
            async with open_policy_admin(settings, catalog):
                pass  # an empty store is seeded first, as the gateway would
        store = open_policy_store(settings, catalog)
        clients = ClientStore(AuthSettings.from_settings(settings).client_store)
        try:
            await store.refresh(force=True)
            await clients.init()
            return store.snapshot.enforcer, [c for c in await clients.list() if not c.disabled]
        finally:
            await store.close()
            await clients.close()

    try:
        enforcer, clients = asyncio.run(load())
    except (PolicyError, SQLAlchemyError, OSError, TimeoutError) as exc:
        why = exc if isinstance(exc, PolicyError) else type(exc).__name__
        fail(f"the policy or the client store cannot be read: {why}", 3)
        raise
    return settings, catalog, enforcer, clients


@policy_app.command("explain")
def policy_explain(client: Annotated[str, typer.Option("--client", help="The client id asking.")],
                   purpose: Annotated[str, typer.Option("--purpose")],
                   field: Annotated[str | None, typer.Option("--field", help="dataset.field")] = None,
                   query: Annotated[str | None, typer.Option("--query", help="A GraphQL query, or @file: every "
                                                                             "field it reads.")] = None,
                   as_json: Annotated[bool, typer.Option("--json")] = False, config: ConfigOpt = None) -> None:
    """Why a client may (or may not) use a field for a purpose: the decision, the allow that granted it,
    the deny that overrode it, the role path, the catalogue's terms and the row rules."""
    import json

    from gateway.pipeline import Gateway
    from policies.decide import Subject
    from policies.explain import explain_query

    if (field is None) == (query is None):
        fail("give --field or --query", 2)
    settings, catalog, enforcer, clients = _current_and_clients(config)
    found = next((c for c in clients if c.client_id == client), None)
    if found is None:
        fail(f"no enabled client {client!r}; known: {', '.join(sorted(c.client_id for c in clients))}")
        raise typer.Exit(1)
    if query is not None:
        text = _read(Path(query[1:])) if query.startswith("@") else query
        try:
            fields = Gateway(catalog, settings).plan(text).fields()
        except Exception as exc:  # a bad query: its own message
            fail(f"the query cannot be planned: {exc}", 2)
            raise
    else:
        fields = [field or ""]
    subject = Subject.of_client(found)
    try:
        explanations = explain_query(enforcer, catalog, subject, purpose, fields)
    except ValueError as exc:
        fail(str(exc), 2)
        raise
    if as_json:
        sys.stdout.write(json.dumps([e.to_dict() for e in explanations], ensure_ascii=False, indent=2) + "\n")
        return
    for e in explanations:
        out.print(Text(f"{e.field}: {e.access.name}" + (f" ({e.mask})" if e.mask else ""), style="bold"))
        for sentence in e.summary:
            out.print("  " + sentence)


@policy_app.command("simulate")
def policy_simulate(file: Annotated[Path | None, typer.Option("--file", help="A whole proposed policy (CSV).")] = None,
                    add: Annotated[list[str] | None, typer.Option("--add", help="A line to add; repeat.")] = None,
                    remove: Annotated[list[str] | None, typer.Option("--remove", help="A line to remove; repeat.")]
                    = None, purpose: Annotated[str | None, typer.Option("--purpose")] = None,
                    as_json: Annotated[bool, typer.Option("--json")] = False, config: ConfigOpt = None) -> None:
    """Before applying anything: which (client, purpose, field) decisions and row rules a proposed change
    (or a whole new policy file) would change. Exit 0 with the list; nothing is changed."""
    import json

    from policies.decide import Subject
    from policies.lines import enforcer_of, lines_of
    from policies.simulate import proposed, simulate
    from policies.validate import validate_policy

    if (file is None) == (not add and not remove):
        fail("give --file, or --add/--remove lines", 2)
    _, catalog, before, clients = _current_and_clients(config)
    try:
        new_lines = (parse_csv(_read(file)) if file is not None
                     else proposed(lines_of(before), add=_lines(add, "add"), remove=_lines(remove, "remove")))
        after = enforcer_of(new_lines)
        validate_policy(after, catalog, "the proposed policy")
    except PolicyError as exc:
        for problem in exc.problems:
            err.print(Text("invalid: ", style="red") + Text(problem))
        raise typer.Exit(1) from None
    except ValueError as exc:
        fail(str(exc), 2)
        raise
    subjects = [Subject.of_client(c) for c in clients]
    result = simulate(catalog, before, after, subjects, [purpose] if purpose else None)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    table = Table("client", "purpose", "field", "now", "would be")
    for c in result.changes:
        table.add_row(c.client_id, c.purpose, c.field, c.before.access.name + (f" ({c.before.mask})" if c.before.mask
                                                                               else ""),
                      c.after.access.name + (f" ({c.after.mask})" if c.after.mask else ""))
    out.print(table)
    for r in result.row_rule_changes:
        out.print(f"row rules of {r.client_id} on {r.dataset} for {r.purpose} would change")
    counts = result.counts
    err.print(f"{counts['changed']} of {counts['checked']} decisions would change ({counts['stronger']} stronger, "
              f"{counts['weaker']} weaker, {counts['mask_changed']} masks); {counts['row_rules_changed']} row-rule "
              "changes")
