"""``hutong audit ...``: set up, verify, export, archive, search and summarise the audit trail.

``verify`` exits 0 when the chain and its checkpoints are intact, 1 on any damage (naming the
first bad record and the kind of damage), 2 when it cannot run (configuration, unreachable store,
unreadable file).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import orjson
import sqlalchemy as sa
import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gateway.audit.export import FORMATS, export, export_file
from gateway.audit.keys import AuditKeys, fingerprint, jwk_of, load_public_keys, parse_public_keys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, insert_only_grants
from gateway.audit.verify import ExportFormatError, Report, verify_files, verify_store
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, load_settings

__all__ = ["audit_app"]

audit_app = typer.Typer(help="Verify, export and search the tamper-evident audit trail.", no_args_is_help=True)


KeyOpt = Annotated[list[str] | None, typer.Option(
    "--key", "-k", help="Trust this audit public key instead of the configured ones: a file holding it as PEM, as "
                        "the JWK `hutong audit key` prints (or a JWK Set), or that JWK itself; repeat for several.")]
EveryOpt = Annotated[int | None, typer.Option(
    "--checkpoint-every", min=1, help="Require a checkpoint at every multiple of N (default: [audit] "
                                      "checkpoint_every for the live store, the export's signed interval for a file).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
OwnerOpt = Annotated[str, typer.Option(help="The tables owner's database URL (the gateway's role may not delete).")]
T = TypeVar("T")
SIGPIPE_EXIT = 141  # 128 + SIGPIPE: what a tool killed by a closed pipe exits with


def _settings(config: Path | None) -> AuditSettings:
    try:
        return AuditSettings.from_settings(load_settings(config))
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _given_keys(values: list[str]) -> AuditKeys:
    keys = []
    for value in values:
        if value.lstrip().startswith("{"):
            keys += parse_public_keys(value.encode(), "--key")
        else:
            keys += load_public_keys(Path(value))
    return AuditKeys.public_only(keys)


def _keys(config: Path | None, key_files: list[str] | None, audit: AuditSettings | None = None) -> AuditKeys:
    """The keys given (``--key``), else the configured ones (``audit``: the settings, if already read)."""
    try:
        if key_files:
            return _given_keys(key_files)
        audit = audit or _settings(config)
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


def _store(audit: AuditSettings, url: str | None = None) -> AuditStore:
    """The configured store (or the same store through ``url``, the owner's), with what the
    configuration says it must satisfy."""
    return AuditStore(url or audit.url, durable=audit.durable, checkpoint_every=audit.checkpoint_every,
                      head_mark=audit.head_mark)


def _closed_pipe() -> typer.Exit:
    """The reader went away (`| head`): stop quietly, as other tools do."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so that the flush at exit does not complain either
    return typer.Exit(SIGPIPE_EXIT)


def _run(config: Path | None, action: Callable[[AuditStore], Awaitable[T]], url: str | None = None,
         audit: AuditSettings | None = None) -> T:
    if audit is None and url is None:
        audit = _settings(config)

    async def go() -> T:
        store = _store(audit, url) if audit is not None else AuditStore(url or "")
        try:
            await store.init()
            return await action(store)
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except BrokenPipeError:
        raise _closed_pipe() from None
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    except DBAPIError as exc:
        if "permission denied" in str(exc.orig).lower():  # the server's words name the object, not the password
            error(f"the audit store refused: {str(exc.orig).strip()}")
        else:
            error(f"cannot reach the audit store: {type(exc).__name__}")
        raise typer.Exit(2) from None
    except (OSError, SQLAlchemyError) as exc:  # by kind only: the URL may hold a password
        error(f"cannot reach the audit store: {type(exc).__name__}")
        raise typer.Exit(2) from None


def _show(reports: list[Report], as_json: bool) -> None:
    ok = all(r.ok for r in reports)
    bad = next((r for r in reports if not r.ok), None)
    if as_json:
        doc = reports[0].as_dict() if len(reports) == 1 else {
            "ok": ok, "damage": bad.damage if bad else None, "first_bad_seq": bad.first_bad_seq if bad else None,
            "source": bad.source if bad else None, "detail": bad.detail if bad else "",
            "reports": [r.as_dict() for r in reports]}
        out.print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
    else:
        for report in reports:
            where = Text(f"{report.source}: ") if len(reports) > 1 else Text("")
            if report.ok:
                out.print(Text("OK ", style="green") + where + Text(report.detail))
            else:
                out.print(Text("DAMAGED ", style="red") + where + Text(
                    f"{report.damage} at seq {report.first_bad_seq}: {report.detail}"))
            if not report.key_trusted:
                out.print(Text("UNVERIFIED KEY", style="bold red") + Text(
                    ": checked only against the key(s) the file itself carries: " + "; ".join(
                        f"kid {k['kid']} (SHA-256 {k['fingerprint']})" for k in report.unverified_keys)
                    + ". Compare with the gateway's published key (`hutong audit key`) or pass --key."))
            for w in report.warnings:
                if not w.startswith("UNVERIFIED KEY"):
                    err.print(Text("warning: ", style="yellow") + where + Text(w))
    if not ok:
        raise typer.Exit(1)


@audit_app.command("init")
def init(config: ConfigOpt = None,
         owner_url: Annotated[str | None, typer.Option(
             help="Create the tables as their owner (PostgreSQL: then run `hutong audit grants ROLE` for the "
                  "gateway's role); default: the configured URL.")] = None) -> None:
    """First step of an install: create the audit signing key (if missing) and the audit tables."""
    audit = _settings(config)
    existed = audit.signing_key.exists()
    try:
        keys = AuditKeys.load(audit.signing_key, audit.previous_keys)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    _run(config, lambda store: asyncio.sleep(0), url=owner_url, audit=audit)
    assert keys.signing is not None
    public = keys.signing.public_key()
    out.print(f"audit signing key {audit.signing_key} ({'kept' if existed else 'created'}): kid {keys.signing_id}, "
              f"SHA-256 {fingerprint(public)}")
    out.print(f"audit tables ready in {sa.engine.make_url(owner_url or audit.url).render_as_string()}")
    out.print("publish the public key (`hutong audit key`) where the gateway's operators cannot change it:")
    out.print(orjson.dumps(jwk_of(public)).decode())


@audit_app.command("verify")
def verify(files: Annotated[list[Path] | None, typer.Argument(
               help="Exports (JSON Lines or CSV) to verify offline, in order: each must continue the one before. "
                    "Default: the live store.")] = None,
           live: Annotated[bool, typer.Option("--live", help="After the files, verify the live store and that it "
                                                             "continues the last file.")] = False,
           config: ConfigOpt = None, key: KeyOpt = None, checkpoint_every: EveryOpt = None,
           as_json: JsonOpt = False) -> None:
    """Check the hash chain, the signed checkpoints (none missing) and, for several sources, that each
    continues the one before. Exit 1 on any damage."""
    if not files:
        audit = _settings(config)
        keys = _keys(config, key, audit)
        report = _run(config, lambda store: verify_store(store, keys, checkpoint_every=checkpoint_every),
                      audit=audit)
        report.source = "the live store"
        _show([report], as_json)
        return
    audit = _settings(config) if live else None
    keys_ = _keys(config, key, audit) if key or config else _configured_keys_if_any()
    # The live store's keys: the same as the files' when given or configured explicitly.
    store_keys = (keys_ if key or config else _keys(config, key, audit)) if live else None

    async def check(store: AuditStore | None) -> list[Report]:
        return await verify_files(files, keys_, checkpoint_every=checkpoint_every, store=store, store_keys=store_keys)

    try:
        reports = _run(config, check, audit=audit) if live else asyncio.run(check(None))
    except (OSError, ExportFormatError) as exc:
        error(str(exc) if isinstance(exc, ExportFormatError) else f"cannot read {exc.filename}: {exc.strerror}")
        raise typer.Exit(2) from None
    _show(reports, as_json)


@audit_app.command("export")
def export_cmd(fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
               output: Annotated[Path | None, typer.Option("--output", "-o", help="File (default: stdout).")] = None,
               since: Annotated[str | None, typer.Option(help="From this time (ISO 8601, UTC if no zone).")] = None,
               until: Annotated[str | None, typer.Option(help="Before this time.")] = None,
               through_seq: Annotated[int | None, typer.Option(help="Up to this seq.")] = None,
               config: ConfigOpt = None) -> None:
    """Export records and checkpoints in a file that verifies offline (`hutong audit verify FILE`)."""
    if fmt not in FORMATS:
        error(f"--format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    audit = _settings(config)
    keys = _keys(config, None, audit)

    def run(f: Any) -> int:
        return _run(config, lambda store: export(store, f, fmt, keys, since=since, until=until, last=through_seq,
                                                 checkpoint_every=audit.checkpoint_every), audit=audit)

    if output is None:
        try:
            run(sys.stdout)
            sys.stdout.flush()
        except BrokenPipeError:
            raise _closed_pipe() from None
        return
    try:
        with export_file(output) as f:
            n = run(f)
    except OSError as exc:
        error(f"cannot write {output}: {exc.strerror}")
        raise typer.Exit(2) from None
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

    audit = _settings(config)
    keys = _keys(config, None, audit)

    async def sign(store: AuditStore) -> tuple[int | None, int]:
        writer = AuditWriter(store, keys, checkpoint_every=audit.checkpoint_every, head_mark=audit.head_mark)
        seq = await writer.checkpoint_now()
        return seq, (await store.last_head()).signed

    seq, signed = _run(config, sign, audit=audit)
    out.print(f"checkpoint at seq {seq}" if seq else
              f"the head is already signed: the last checkpoint is at seq {signed}" if signed else "the chain is empty")


@audit_app.command("grants")
def grants(role: Annotated[str, typer.Argument(help="The gateway's PostgreSQL role.")]) -> None:
    """Print the SQL that makes the audit tables insert-only for the gateway's role."""
    try:
        out.print(insert_only_grants(role), end="")
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(2) from None


def _owner_writer(audit: AuditSettings, store: AuditStore) -> Any:
    from gateway.audit.writer import AuditWriter

    keys = AuditKeys.load(audit.signing_key, audit.previous_keys, generate=False)
    return AuditWriter(store, keys, checkpoint_every=audit.checkpoint_every,
                       checkpoint_seconds=audit.checkpoint_seconds, head_mark=audit.head_mark)


def _pruned_line(p: Any) -> str:
    return (f"archived and removed records {p.first_seq} to {p.last_seq} ({p.removed}); archive {p.archive} "
            f"(SHA-256 {p.archive_sha256}); recorded as admin event seq {p.event_seq}; the live chain now "
            f"continues from checkpoint {p.last_seq}")


@audit_app.command("archive")
def archive_cmd(output: Annotated[Path, typer.Option("--output", "-o", help="The archive file to write.")],
                owner_url: OwnerOpt,
                fmt: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv.")] = "jsonl",
                yes: Annotated[bool, typer.Option("--yes", help="Confirm: records older than retention_days "
                                                                "leave the live store.")] = False,
                config: ConfigOpt = None) -> None:
    """Apply retention_days: export the records older than it (through a checkpoint) to an archive,
    verify it, and prune them, recording the prune as an admin event."""
    from gateway.audit.admin import actor
    from gateway.audit.retention import archive

    if fmt not in FORMATS:
        error(f"--format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    if not yes:
        error("this moves the records older than [audit] retention_days out of the live store; repeat with --yes")
        raise typer.Exit(2)
    audit = _settings(config)
    _pruning(config, owner_url, audit, lambda store: archive(_owner_writer(audit, store), output, fmt,
                                                             retention_days=audit.retention_days, by=actor()))


@audit_app.command("prune")
def prune(archive_file: Annotated[Path, typer.Option("--archive", help="The verified export of the records to "
                                                                       "remove, from where the live chain starts "
                                                                       "through a checkpoint.")],
          owner_url: OwnerOpt,
          yes: Annotated[bool, typer.Option("--yes", help="Confirm: the archive is stored where archives are kept.")
                         ] = False,
          config: ConfigOpt = None) -> None:
    """Remove the records an archive holds, once it verifies and they are older than retention_days;
    the prune is recorded as an admin event. `hutong audit archive` does export and prune at once."""
    from gateway.audit.admin import actor
    from gateway.audit.retention import prune as prune_records

    if not yes:
        error("export the range first (`hutong audit export --through-seq N -o FILE` from where the live chain "
              "starts, through a checkpoint), store the file, then repeat with --yes; or `hutong audit archive`")
        raise typer.Exit(2)
    audit = _settings(config)
    _pruning(config, owner_url, audit, lambda store: prune_records(_owner_writer(audit, store), archive_file,
                                                                   retention_days=audit.retention_days, by=actor()))


def _pruning(config: Any, owner_url: Any, audit: Any, action: Any) -> None:
    """Run an archive or prune on the owner's connection and say what it removed."""
    try:
        pruned = _run(config, action, url=owner_url, audit=audit)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    out.print(_pruned_line(pruned))
