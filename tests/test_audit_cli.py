"""`hutong audit` as operators use it: the first install, verify with the configured interval and the
head mark (checkpoints deleted, a chain cut back), keys given as the JWK `audit key` prints, the
loud warning on a file's own key, several files and the live store, archive and prune (with a clear
error for the gateway's insert-only role), export into a closed pipe or failing half-way; on SQLite
and PostgreSQL where the store matters."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from gateway.audit.cli import audit_app
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, insert_only_grants
from gateway.audit.writer import AuditWriter
from gateway.config import REPO_ROOT, load_settings
from tests.test_audit_damage import rewrite_chain
from tests.test_audit_support import body, drop_role, rows, sql, sqlite_url


def configure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, extra: str = "") -> AuditSettings:
    cfg = tmp_path / "hutong.toml"
    cfg.write_text(f'[gateway]\ncatalog = "catalog"\n[audit]\nurl = "{url}"\ncheckpoint_every = 10\n{extra}\n',
                   encoding="utf-8")
    monkeypatch.setenv("HUTONG_CONFIG", str(cfg))
    return AuditSettings.from_settings(load_settings(cfg, environ={}))


def run(*args: str) -> Any:
    return CliRunner().invoke(audit_app, list(args))


def seed(audit: AuditSettings, n: int, start: int = 0) -> None:
    """n records through the gateway's own writer (as configured: it keeps the head mark)."""
    async def go() -> None:
        writer = AuditWriter.from_settings(audit, checkpoint_on_close=False)
        await writer.start()
        try:
            for i in range(start, start + n):
                await writer.append("request", body(i))
        finally:
            await writer.close()

    asyncio.run(go())


# --- the first install -------------------------------------------------------------------------------


def test_first_install(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, url)
    r = run("verify")
    assert r.exit_code == 2 and "`hutong audit init`" in r.output, r.output
    r = run("init")
    assert r.exit_code == 0, r.output
    assert audit.signing_key.stat().st_mode & 0o777 == 0o600
    jwk = orjson.loads(r.output.strip().splitlines()[-1])
    assert jwk["kid"] == AuditKeys.load(audit.signing_key, generate=False).signing_id and jwk["kid"] in r.output
    r = run("verify")
    assert r.exit_code == 0 and "OK no records" in r.output, r.output
    r = run("init")  # again: keeps the key
    assert r.exit_code == 0 and "(kept)" in r.output
    assert orjson.loads(r.output.strip().splitlines()[-1]) == jwk


@pytest.mark.services
def test_first_install_on_postgresql_with_an_owner_and_an_insert_only_role(
        pg_audit_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented procedure: init as the owner, grants for the gateway's role, which then needs no
    CREATE; verify works as that role."""
    role = f"hutong_audit_gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(sql(pg_audit_url, f"CREATE ROLE {role} LOGIN"))
    try:
        audit = configure(tmp_path, monkeypatch, pg_audit_url.replace("postgres@", f"{role}@"))
        r = run("init", "--owner-url", pg_audit_url)
        assert r.exit_code == 0, r.output
        asyncio.run(sql(pg_audit_url, *run("grants", role).output.strip().split(";\n")[:2]))
        seed(audit, 12)
        r = run("verify")
        assert r.exit_code == 0 and "OK records 1 to 12" in r.output, r.output
    finally:
        asyncio.run(drop_role(pg_audit_url, role))


# --- verify: the configured interval and the head mark -------------------------------------------------


def test_verify_finds_checkpoints_deleted_and_chain_rewritten(url: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, url)
    run("init")
    seed(audit, 35)
    assert run("verify").exit_code == 0

    async def tamper() -> None:
        await sql(url, "DELETE FROM audit_checkpoint")
        store = AuditStore(url)
        try:
            await rewrite_chain(url, store, 5)
        finally:
            await store.close()

    asyncio.run(tamper())
    r = run("verify", "--json")
    assert r.exit_code == 1 and (orjson.loads(r.output)["damage"], orjson.loads(r.output)["first_bad_seq"]) == (
        "missing_checkpoint", 10), r.output


def test_verify_finds_a_chain_cut_back_to_a_checkpoint(url: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, url)
    run("init")
    seed(audit, 35)
    assert audit.head_mark.exists()
    asyncio.run(sql(url, "DELETE FROM audit_record WHERE seq > 10", "DELETE FROM audit_checkpoint WHERE seq > 10"))
    r = run("verify")
    assert r.exit_code == 1 and "truncated at seq 11" in r.output, r.output
    audit.head_mark.unlink()  # without the witness, a shorter chain is all there is: verify says so
    r = run("verify")
    assert r.exit_code == 0 and "there is no head mark" in r.output, r.output


def test_checkpoint_every_flag(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, url)
    run("init")
    seed(audit, 35)
    asyncio.run(sql(url, "DELETE FROM audit_checkpoint"))
    r = run("verify", "--checkpoint-every", "5")
    assert r.exit_code == 1 and "missing_checkpoint at seq 5" in r.output, r.output


# --- keys --------------------------------------------------------------------------------------------


def test_verify_a_file_with_the_published_jwk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path))
    run("init")
    seed(audit, 25)
    jwk_file = tmp_path / "published.jwk"
    jwk_file.write_text(run("key").output)
    export = tmp_path / "all.jsonl"
    assert run("export", "-o", str(export)).exit_code == 0
    monkeypatch.setenv("HUTONG_CONFIG", str(tmp_path / "elsewhere.toml"))  # an auditor's machine: no gateway keys
    for given in (str(jwk_file), jwk_file.read_text().strip(), str(audit.signing_key)):
        r = run("verify", str(export), "--key", given)
        assert r.exit_code == 0 and "OK records 1 to 25" in r.output and "UNVERIFIED" not in r.output, r.output
    r = run("verify", str(export))  # only the key the file carries: said loudly, with its kid and fingerprint
    kid = orjson.loads(jwk_file.read_text())["kid"]
    assert r.exit_code == 0 and "UNVERIFIED KEY" in r.stdout and kid in r.stdout and "SHA-256" in r.stdout, r.output
    assert orjson.loads(run("verify", str(export), "--json").output)["key_trusted"] is False
    other = tmp_path / "other.jwk"
    other.write_text(orjson.dumps({**orjson.loads(jwk_file.read_text()), "kid": "not-its-thumbprint"}).decode())
    r = run("verify", str(export), "--key", str(other))
    assert r.exit_code == 2 and "thumbprint" in r.output, r.output


def test_previous_keys_as_jwk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checkpoints signed by an earlier key verify when previous_keys names its JWK."""
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path))
    run("init")
    seed(audit, 15)
    (tmp_path / "old.jwk").write_text(run("key").output)
    audit.signing_key.rename(tmp_path / "old-key.pem")
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path), 'previous_keys = ["old.jwk"]')
    run("init")  # a new signing key
    seed(audit, 10, start=15)
    r = run("verify")
    assert r.exit_code == 0 and "OK records 1 to 25" in r.output, r.output


# --- several files, and the live store ----------------------------------------------------------------


def test_verify_files_in_order_and_the_live_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path))
    run("init")
    seed(audit, 35)
    a, b, c = (tmp_path / f"{n}.jsonl" for n in "abc")
    assert run("export", "--through-seq", "20", "-o", str(a)).exit_code == 0
    assert run("export", "-o", str(c)).exit_code == 0
    r = run("verify", str(a), "--live")
    assert r.exit_code == 0 and f"OK {a}: records 1 to 20" in r.output and "OK the live store: records 1 to 35" \
        in r.output, r.output
    r = run("verify", str(a), str(c))
    assert r.exit_code == 1 and f"DAMAGED {c}: overlap at seq 1" in r.output, r.output
    b.write_text("".join(line for line in c.read_text().splitlines(keepends=True)
                         if '"seq":3' not in line[:40]))  # any damage in a later file is found in it
    r = run("verify", str(a), str(b), "--json")
    doc = orjson.loads(r.output)
    assert r.exit_code == 1 and doc["source"] == str(b) and len(doc["reports"]) == 2, r.output


# --- archive and prune --------------------------------------------------------------------------------


def test_archive_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    audit = configure(tmp_path, monkeypatch, url, "retention_days = 1")
    run("init")
    seed(audit, 35)
    archive = tmp_path / "archive-1.jsonl"
    r = run("archive", "-o", str(archive), "--owner-url", url)
    assert r.exit_code == 2 and "repeat with --yes" in r.output, r.output
    r = run("archive", "-o", str(archive), "--owner-url", url, "--yes")
    assert r.exit_code == 2 and "nothing to archive yet" in r.output, r.output  # all younger than a day
    assert not archive.exists() and asyncio.run(_count(url)) == 35
    monkeypatch.setattr("gateway.audit.retention.datetime", _Later)
    r = run("archive", "-o", str(archive), "--owner-url", url, "--yes")
    assert r.exit_code == 0 and "archived and removed records 1 to 30 (30)" in r.output, r.output
    assert asyncio.run(_count(url)) == 6  # 31..35 and the prune's own record
    r = run("verify", str(archive), "--live")
    assert r.exit_code == 0 and "OK the live store: records 31 to 36" in r.output, r.output


async def _count(url: str) -> int:
    store = AuditStore(url)
    try:
        return await store.count()
    finally:
        await store.close()


def test_prune_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = sqlite_url(tmp_path)
    audit = configure(tmp_path, monkeypatch, url, "retention_days = 1")
    run("init")
    seed(audit, 35)
    archive = tmp_path / "a.jsonl"
    assert run("export", "--through-seq", "20", "-o", str(archive)).exit_code == 0
    r = run("prune", "--archive", str(archive), "--owner-url", url)
    assert r.exit_code == 2 and "`hutong audit export --through-seq N -o FILE`" in r.output
    r = run("prune", "--archive", str(archive), "--owner-url", url, "--yes")
    assert r.exit_code == 2 and "within retention_days" in r.output, r.output  # written moments ago
    monkeypatch.setattr("gateway.audit.retention.datetime", _Later)
    r = run("prune", "--archive", str(archive), "--owner-url", url, "--yes")
    assert r.exit_code == 0 and "archived and removed records 1 to 20 (20)" in r.output, r.output
    events = [orjson.loads(x["body"]) for x in asyncio.run(rows(url)) if x["kind"] == "admin"]
    assert [e["event"] for e in events] == ["audit.prune"] and events[0]["archive"] == "a.jsonl"
    assert events[0]["actor"].startswith("os:") and len(events[0]["archive_sha256"]) == 64
    r = run("verify", str(archive), "--live")
    assert r.exit_code == 0, r.output


class _Later(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return datetime.now(tz) + timedelta(days=3)


@pytest.mark.services
def test_prune_as_the_gateways_role(pg_audit_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    role = f"hutong_audit_gw_{uuid.uuid4().hex[:8]}"
    asyncio.run(sql(pg_audit_url, f"CREATE ROLE {role} LOGIN"))
    gw_url = pg_audit_url.replace("postgres@", f"{role}@")
    try:
        audit = configure(tmp_path, monkeypatch, gw_url, "retention_days = 1")
        assert run("init", "--owner-url", pg_audit_url).exit_code == 0
        asyncio.run(sql(pg_audit_url, *insert_only_grants(role).strip().split(";\n")[:2]))
        seed(audit, 25)
        archive = tmp_path / "a.jsonl"
        assert run("export", "--through-seq", "20", "-o", str(archive)).exit_code == 0
        r = run("prune", "--archive", str(archive), "--owner-url", gw_url, "--yes")
        assert r.exit_code == 2, r.output
        assert f"the database role '{role}' has no DELETE privilege on audit_record" in r.output, r.output
        assert "ProgrammingError" not in r.output
    finally:
        asyncio.run(drop_role(pg_audit_url, role))


def test_commands_named_in_messages_exist() -> None:
    """Every `hutong audit X` the audit code and its guide tell someone to run is a command."""
    import typer.main

    commands = set(typer.main.get_command(audit_app).commands)  # type: ignore[attr-defined]
    texts = [p.read_text() for p in (REPO_ROOT / "gateway" / "audit").glob("*.py")]
    texts.append((REPO_ROOT / "docs" / "audit.md").read_text())
    named = {m for t in texts for m in re.findall(r"`hutong audit ([a-z]+)", t)}
    assert named and named <= commands, named - commands


# --- export into a closed pipe, or failing half-way ------------------------------------------------------


def test_export_into_a_closed_pipe_exits_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path))
    run("init")

    async def many() -> None:
        writer = AuditWriter.from_settings(audit)
        await writer.start()
        await asyncio.gather(*(writer.append("request", body(i)) for i in range(600)))
        await writer.close()

    asyncio.run(many())
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "audit", "export"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**_env(), "HUTONG_CONFIG": str(tmp_path / "hutong.toml")})
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b'{"type":"header"')  # like `| head -1`
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_failed_export_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    audit = configure(tmp_path, monkeypatch, sqlite_url(tmp_path))
    run("init")
    seed(audit, 5)
    from gateway.audit import export as export_module

    real = export_module.export

    async def failing(store: AuditStore, out: Any, *args: Any, **kwargs: Any) -> int:
        await real(store, out, *args, **kwargs)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("gateway.audit.cli.export", failing)
    target = tmp_path / "out" / "a.jsonl"
    target.parent.mkdir()
    r = run("export", "-o", str(target))
    assert r.exit_code == 2, r.output
    assert list(target.parent.iterdir()) == []
    monkeypatch.setattr("gateway.audit.cli.export", real)
    assert run("export", "-o", str(target)).exit_code == 0 and [p.name for p in target.parent.iterdir()] == [
        "a.jsonl"]
    assert target.stat().st_mode & 0o777 == 0o600
