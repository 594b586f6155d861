"""``hutong audit ...``: verify, export, search and summarise the audit trail.

``verify`` exits 0 when the chain and its checkpoints are intact, 1 on any damage (naming the
first bad record and the kind of damage), 2 when it cannot run (configuration, unreachable store,
unreadable file).
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import SQLAlchemyError

from gateway.audit.export import FORMATS, export
from gateway.audit.keys import AuditKeys, jwk_of, load_public_key
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, insert_only_grants
from gateway.audit.verify import ExportFormatError, Report, verify_file, verify_store
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, load_settings

__all__ = ["audit_app"]

audit_app = typer.Typer(help="Verify, export and search the tamper-evident audit trail.", no_args_is_help=True)


KeyOpt = Annotated[list[Path] | None, typer.Option("--key", help="Trust this audit public key (PEM; repeat for "
                                                                 "several) instead of the configured ones.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
T = TypeVar("T")


def _settings(config: Path | None) -> AuditSettings:
    try:
        return AuditSettings.from_settings(load_settings(config))
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _keys(config: Path | None, key_files: list[Path] | None) -> AuditKeys:
    try:
        if key_files:
            return AuditKeys.public_only([load_public_key(p) for p in key_files])
        audit = _settings(config)
        return AuditKeys.load(audit.signing_key, audit.previous_keys, generate=False)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _configured_keys_if_any() -> AuditKeys | None:
    """Offline verification trusts the configured keys when this machine has them, else none."""
    try:
        audit = AuditSettings.from_settings(load_settings(None))
        if not audit.signing_key.exists():
            return None
        return AuditKeys.load(audit.signing_key, audit.previous_keys, generate=False)
    except ConfigError:
        return None


def _run(config: Path | None, action: Callable[[AuditStore], Awaitable[T]], url: str | None = None) -> T:
    audit = _settings(config) if url is None else None

    async def go() -> T:
        store = AuditStore(url or (audit.url if audit else ""))
        try:
            await store.init()
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError) as exc:  # by kind only: the URL may hold a password
        error(f"cannot reach the audit store: {type(exc).__name__}")
        raise typer.Exit(2) from None


def _show(report: Report, as_json: bool) -> None:
    if as_json:
        out.print(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2).decode())
    elif report.ok:
        out.print(Text("OK ", style="green") + Text(report.detail))
    else:
        out.print(Text("DAMAGED ", style="red") + Text(f"{report.damage} at seq {report.first_bad_seq}: "
                                                       f"{report.detail}"))
    if not as_json:
        for w in report.warnings:
            err.print(Text("warning: ", style="yellow") + Text(w))
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("verify")
def verify(file: Annotated[Path | None, typer.Argument(help="An export (JSON Lines or CSV) to verify offline; "
                                                            "default: the live store.")] = None,
           config: ConfigOpt = None, key: KeyOpt = None, as_json: JsonOpt = False) -> None:
    """Check the hash chain and the signed checkpoints. Exit 1 on any damage."""
    if file is not None:
        keys = _keys(config, key) if key or config else _configured_keys_if_any()
        try:
            report = asyncio.run(verify_file(file, keys))
        except (OSError, ExportFormatError) as exc:
            error(str(exc) if isinstance(exc, ExportFormatError) else f"cannot read {file}: {exc.strerror}")
            raise typer.Exit(2) from None
    else:
        keys = _keys(config, key)
        report = _run(config, lambda store: verify_store(store, keys))
    _show(report, as_json)


@audit_app.command("export")
def export_cmd(fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
               output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout).")] = None,
               since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no zone).")] = None,
               until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
               through_seq: Annotated[int | None, typer.Option(help="Up to this seq (a checkpoint, to prune "
                                                                    "through it afterwards).")] = None,
               config: ConfigOpt = None) -> None:
    """Export records and checkpoints in a file that verifies offline (`hutong audit verify FILE`)."""
    if fmt not in FORMATS:
        error(f"--format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    keys = _keys(config, None)
    if output is None:
        n = _run(config, lambda store: export(store, sys.stdout, fmt, keys, since=since, until=until,
                                              last=through_seq))
    else:
        tmp = output.with_name(f".{output.name}.partial")
        with tmp.open("w", encoding="utf-8", newline="") as f:
            n = _run(config, lambda store: export(store, f, fmt, keys, since=since, until=until, last=through_seq))
        tmp.replace(output)
        err.print(f"exported {n} record(s) to {output}")


def _filters(**kwargs: Any) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if v not in (None, "")}


Opt = Annotated[str | None, typer.Option()]


@audit_app.command("search")
def search(time_from: Annotated[str | None, typer.Option("--from", help="From this time (ISO 8601).")] = None,
           time_to: Annotated[str | None, typer.Option("--to", help="Before this time.")] = None,
           department: Opt = None, client: Annotated[str | None, typer.Option(help="Client id.")] = None,
           official: Annotated[str | None, typer.Option(help="The acting user (X-Acting-User).")] = None,
           purpose: Opt = None, dataset: Opt = None, field: Opt = None, disposition: Opt = None,
           outcome: Opt = None, kind: Opt = None,
           subject: Annotated[str | None, typer.Option(help="A data subject's HMAC (as in the records).")] = None,
           id_number: Annotated[str | None, typer.Option(
               help="A person's ID number: the gateway computes its HMAC (the raw number is never stored).")] = None,
           credit_code: Annotated[str | None, typer.Option(help="An organisation's credit code, likewise.")] = None,
           limit: Annotated[int, typer.Option(help="Records per page.")] = 20,
           after: Annotated[int | None, typer.Option(help="Next page: records before this seq.")] = None,
           config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Find records, newest first, with the total matching."""
    if id_number or credit_code:
        subject = _subject_hmac(config, "id_number" if id_number else "credit_code", id_number or credit_code or "")
    filters = _filters(time_from=time_from, time_to=time_to, department=department, client_id=client,
                       acting_user=official, purpose=purpose, dataset=dataset, field=field, disposition=disposition,
                       outcome=outcome, kind=kind, subject_hmac=subject)
    rows, total = _run(config, lambda store: store.search(filters, limit, after))
    next_after = rows[-1]["seq"] if rows and len(rows) == limit else None
    if as_json:
        out.print(orjson.dumps({"total": total, "records": rows, "next_after": next_after}).decode())
        return
    table = Table("seq", "time", "department", "client", "official", "purpose", "outcome", "fields")
    for r in rows:
        b = r["body"]
        fields = ", ".join(f"{f.get('dataset')}.{f.get('field')}:{f.get('disposition')}"
                           for f in b.get("fields", []) if isinstance(f, dict))
        table.add_row(str(r["seq"]), r["time"], str(b.get("department", "")), str(b.get("client_id", "")),
                      str(b.get("acting_user", "")), str(b.get("purpose", "")), str(b.get("outcome", "")), fields)
    out.print(table)
    out.print(f"{len(rows)} of {total} record(s)" + (f"; next page: --after {next_after}" if next_after else ""))


def _subject_hmac(config: Path | None, kind: str, value: str) -> str:
    """The pseudonym the records hold for this key (keyed with the gateway's secret, as recorded)."""
    from catalog.keys import InvalidKey
    from gateway.audit.entry import SubjectHasher
    from policies.settings import PolicySettings

    try:
        key = PolicySettings.from_settings(load_settings(config)).mask_key
        return SubjectHasher(key).of_input(kind, value)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    except InvalidKey as exc:
        error(str(exc))
        raise typer.Exit(2) from None


async def summarise(store: AuditStore, filters: dict[str, Any]) -> dict[str, dict[str, dict[str, int]]]:
    """Requests, denials and consent withholdings, per department and per purpose."""
    per: dict[str, dict[str, Counter[str]]] = {"department": {}, "purpose": {}}
    async for rec in store.bodies({**filters, "kind": "request"}):
        body = rec["body"]
        dispositions = {f.get("disposition") for f in body.get("fields", []) if isinstance(f, dict)}
        counts = Counter(requests=1)
        counts["denied"] += body.get("outcome") == "denied" or "denied" in dispositions
        counts["consent_withheld"] += "consent_required" in dispositions
        counts["failed"] += body.get("outcome") in ("failed", "rejected")
        for by in ("department", "purpose"):
            per[by].setdefault(str(body.get(by) or "-"), Counter()).update(counts)
    return {by: {k: dict(v) for k, v in sorted(groups.items())} for by, groups in per.items()}


@audit_app.command("report")
def report(since: Annotated[str | None, typer.Option(help="From this time (ISO 8601).")] = None,
           until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
           config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Requests, denials and consent withholdings per department and per purpose."""
    summary = _run(config, lambda store: summarise(store, _filters(time_from=since, time_to=until)))
    if as_json:
        out.print(orjson.dumps(summary).decode())
        return
    for by, groups in summary.items():
        table = Table(by, "requests", "denied", "consent withheld", "failed/rejected", title=f"per {by}")
        for name, c in groups.items():
            table.add_row(name, *(str(c.get(k, 0)) for k in ("requests", "denied", "consent_withheld", "failed")))
        out.print(table)


@audit_app.command("key")
def key(config: ConfigOpt = None) -> None:
    """Print the audit signing key's public half (JWK): publish it where auditors can compare."""
    keys = _keys(config, None)
    assert keys.signing is not None
    out.print(orjson.dumps(jwk_of(keys.signing.public_key())).decode())


@audit_app.command("checkpoint")
def checkpoint(config: ConfigOpt = None) -> None:
    """Sign the chain head now (before an export for archiving, say)."""
    from gateway.audit.writer import AuditWriter

    keys = _keys(config, None)
    seq = _run(config, lambda store: AuditWriter(store, keys).checkpoint_now())
    out.print(f"checkpoint at seq {seq}" if seq else "the head is already signed (or the chain is empty)")


@audit_app.command("grants")
def grants(role: Annotated[str, typer.Argument(help="The gateway's PostgreSQL role.")]) -> None:
    """Print the SQL that makes the audit tables insert-only for the gateway's role."""
    try:
        out.print(insert_only_grants(role), end="")
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


@audit_app.command("prune")
def prune(through_seq: Annotated[int, typer.Option(help="A checkpoint's seq: records up to it are removed.")],
          owner_url: Annotated[str, typer.Option(help="The tables owner's database URL (the gateway's role "
                                                      "may not delete).")],
          yes: Annotated[bool, typer.Option("--yes", help="Confirm: the range was exported and verified.")] = False,
          ) -> None:
    """Remove records through a checkpoint, after exporting them (`export --through-seq`)."""
    if not yes:
        error("export the range first (`hutong audit export --through-seq N -o FILE`, then `hutong audit verify "
               "FILE`), then repeat with --yes")
        raise typer.Exit(2)
    n = _run(None, lambda store: store.prune_through(through_seq), url=owner_url)
    out.print(f"removed {n} record(s) through seq {through_seq}; the chain now starts from checkpoint {through_seq}")
