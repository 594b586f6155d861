"""``hutong client ...`` run as an operator would: typer's runner, a real config file and store."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey
from typer.testing import CliRunner

from gateway.auth.cli import client_app
from gateway.auth.client_secrets import verify_secret
from gateway.auth.clients import ClientStore
from tests.conftest import throwaway_pg_database
from tests.test_auth_support import drop_store_tables

runner = CliRunner()

CATALOG = """departments:
  - {code: civil, name: Civil Affairs, contact: {name: Civil office}}
  - {code: health, name: Health Commission, contact: {name: Health office}}
  - {code: mr, name: Market Regulation, contact: {name: MR office}}
"""


def write_catalog(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir(exist_ok=True)
    (tmp_path / "cat" / "departments.yaml").write_text(CATALOG, encoding="utf-8")


@pytest.fixture(scope="module")
def pg_auth_url() -> Iterator[str]:
    yield from throwaway_pg_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def cfg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "hutong.toml"
    write_catalog(tmp_path)
    store = ""
    if request.param == "postgresql":
        store = f'client_store = "{request.getfixturevalue("pg_auth_url")}"\n'
    path.write_text(f'[gateway]\ncatalog = "cat"\n[auth]\nextra_departments = ["audit"]\n{store}', encoding="utf-8")
    yield path
    if request.param == "postgresql":
        asyncio.run(drop_store_tables(request.getfixturevalue("pg_auth_url")))


def run(cfg: Path, *args: str) -> Any:
    return runner.invoke(client_app, [*args, "--config", str(cfg)])


def stored(cfg: Path, client_id: str) -> Any:
    from gateway.auth.settings import AuthSettings
    from gateway.config import load_settings

    async def get() -> Any:
        store = ClientStore(AuthSettings.from_settings(load_settings(cfg, environ={})).client_store)
        try:
            await store.init()
            return await store.get(client_id)
        finally:
            await store.close()

    return asyncio.run(get())


def secret_of(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.startswith("client_secret")]
    return line.split()[1]


def test_add_list_rotate_disable(cfg: Path) -> None:
    r = run(cfg, "add", "health-app", "--department", "health", "--role", "clinician", "--role", "nurse")
    assert r.exit_code == 0, r.output
    secret = secret_of(r.output)
    assert "cannot be shown again" in r.output
    client = stored(cfg, "health-app")
    assert client.roles == ("clinician", "nurse") and verify_secret(secret, client.secret_hash)

    r = run(cfg, "list")
    assert r.exit_code == 0 and "health-app" in r.output and "clinician, nurse" in r.output
    assert "active" in r.output and secret not in r.output and "scrypt" not in r.output

    r = run(cfg, "rotate-secret", "health-app")
    assert r.exit_code == 0, r.output
    new = secret_of(r.output)
    assert new != secret
    client = stored(cfg, "health-app")
    assert verify_secret(new, client.secret_hash) and not verify_secret(secret, client.secret_hash)

    r = run(cfg, "disable", "health-app")
    assert r.exit_code == 0 and "disabled" in r.output
    assert stored(cfg, "health-app").disabled
    assert "disabled" in run(cfg, "list").output


def test_mistakes_exit_non_zero_saying_why(cfg: Path) -> None:
    assert run(cfg, "add", "a", "--department", "civil").exit_code == 0
    r = run(cfg, "add", "a", "--department", "civil")
    assert r.exit_code == 1 and "already registered" in r.output
    r = run(cfg, "add", "b c", "--department", "civil")
    assert r.exit_code == 1 and "client id" in r.output
    r = run(cfg, "rotate-secret", "ghost")
    assert r.exit_code == 1 and "no client 'ghost'" in r.output
    r = run(cfg, "disable", "ghost")
    assert r.exit_code == 1 and "no client 'ghost'" in r.output
    r = run(cfg, "add", "c")
    assert r.exit_code == 2 and "--department" in r.output


def test_private_key_jwt_clients(cfg: Path, tmp_path: Path) -> None:
    key = ECKey.generate_key("P-256", private=True)
    public, private = tmp_path / "pub.pem", tmp_path / "priv.pem"
    public.write_bytes(key.as_pem(private=False))
    private.write_bytes(key.as_pem(private=True))
    r = run(cfg, "add", "market-app", "--department", "mr", "--role", "market-inspector", "--public-key", str(public))
    assert r.exit_code == 0, r.output
    assert "client_secret" not in r.output and key.thumbprint() in r.output
    client = stored(cfg, "market-app")
    assert client.secret_hash is None and client.public_jwk["kid"] == key.thumbprint()
    assert "private_key_jwt" in run(cfg, "list").output

    r = run(cfg, "add", "x", "--department", "mr", "--public-key", str(private))
    assert r.exit_code == 2 and "private key" in r.output
    other = ECKey.generate_key("P-256", private=True)
    (tmp_path / "other.pem").write_bytes(other.as_pem(private=False))
    r = run(cfg, "set-key", "market-app", str(tmp_path / "other.pem"))
    assert r.exit_code == 0 and stored(cfg, "market-app").public_jwk["kid"] == other.thumbprint()


def test_empty_list_and_bad_config(cfg: Path, tmp_path: Path) -> None:
    r = run(cfg, "list")
    assert r.exit_code == 0 and "no clients registered" in r.output
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\ncatalog = "cat"\n[auth]\ntoken_tl = 5\n', encoding="utf-8")
    r = runner.invoke(client_app, ["list", "--config", str(bad)])
    assert r.exit_code == 2 and "token_tl" in r.output


def test_client_changes_are_audit_events(tmp_path: Path) -> None:
    from gateway.audit.keys import AuditKeys
    from gateway.audit.settings import AuditSettings
    from gateway.audit.store import AuditStore
    from gateway.audit.verify import verify_store
    from gateway.config import load_settings

    cfg = tmp_path / "hutong.toml"
    write_catalog(tmp_path)
    cfg.write_text('[gateway]\ncatalog = "cat"\n', encoding="utf-8")
    r = run(cfg, "add", "records-app", "--department", "civil", "--role", "clerk", "--attr", "district=北苑区")
    assert r.exit_code == 0, r.output
    secret = secret_of(r.output)
    assert run(cfg, "set-attr", "records-app", "district=南湖区").exit_code == 0
    assert run(cfg, "disable", "records-app").exit_code == 0
    audit = AuditSettings.from_settings(load_settings(cfg, environ={}))

    async def read() -> tuple[list[dict[str, Any]], Any]:
        store = AuditStore(audit.url)
        try:
            records, _ = await store.search({}, limit=10)
            return records, await verify_store(store, AuditKeys.load(audit.signing_key, audit.previous_keys))
        finally:
            await store.close()

    records, report = asyncio.run(read())
    assert report.ok, report.detail
    events = [(r["kind"], r["body"]["event"], r["body"]["target"]) for r in records]
    assert events == [("admin", "client.disable", "records-app"), ("admin", "client.set_attr", "records-app"),
                      ("admin", "client.add", "records-app")]
    assert records[2]["body"]["after"]["attributes"] == {"district": "北苑区"}
    set_attr = records[1]["body"]
    assert (set_attr["before"]["attributes"], set_attr["after"]["attributes"]) == ({"district": "北苑区"},
                                                                                    {"district": "南湖区"})
    disable = records[0]["body"]
    assert disable["before"]["disabled"] is False and disable["after"]["disabled"] is True
    assert disable["actor"].startswith("os:") or disable["actor"]
    assert secret not in json.dumps([r["body"] for r in records])
    assert "secret_hash" not in json.dumps([r["body"] for r in records])


def test_departments_are_checked_against_the_catalogue(cfg: Path) -> None:
    r = run(cfg, "add", "xdept", "--department", "nosuchdept")
    assert r.exit_code == 1 and "unknown department 'nosuchdept'" in r.output
    assert "known: audit, civil, health, mr" in r.output
    assert stored(cfg, "xdept") is None
    assert run(cfg, "add", "auditor", "--department", "audit", "--role", "auditor").exit_code == 0, \
        "[auth] extra_departments: an office the catalogue does not list"
    r = run(cfg, "add", "x", "--department", "civil", "--role", "Street Office")
    assert r.exit_code == 1 and "role(s) 'Street Office'" in r.output


def test_a_catalogue_that_cannot_be_read_refuses_the_registration(tmp_path: Path) -> None:
    cfg = tmp_path / "hutong.toml"
    cfg.write_text('[gateway]\ncatalog = "missing"\n', encoding="utf-8")
    r = run(cfg, "add", "x", "--department", "civil")
    assert r.exit_code == 2 and "cannot check the department against the catalogue" in r.output
    assert "client_secret" not in r.output


def test_attributes_on_the_command_line(cfg: Path) -> None:
    r = run(cfg, "add", "street-office-app", "--department", "civil", "--role", "street-office",
            "--attr", "district=北苑区", "--attr", "street=北苑街道")
    assert r.exit_code == 0, r.output
    assert dict(stored(cfg, "street-office-app").attributes) == {"district": "北苑区", "street": "北苑街道"}
    listed = runner.invoke(client_app, ["list", "--config", str(cfg)], env={"COLUMNS": "250"}).output
    assert "district=北苑区, street=北苑街道" in listed

    r = run(cfg, "set-attr", "street-office-app", "district=南湖区", "--unset", "street")
    assert r.exit_code == 0, r.output
    assert "district=南湖区" in r.output and "until they expire" in r.output
    assert dict(stored(cfg, "street-office-app").attributes) == {"district": "南湖区"}
    r = run(cfg, "set-attr", "street-office-app", "--unset", "district")
    assert r.exit_code == 0 and "has no attributes" in r.output
    assert dict(stored(cfg, "street-office-app").attributes) == {}

    for args, code, words in (
            (["set-attr", "street-office-app"], 2, "nothing to change"),
            (["set-attr", "street-office-app", "district"], 2, "give NAME=VALUE"),
            (["set-attr", "street-office-app", "a=1", "a=2"], 2, "given twice"),
            (["set-attr", "street-office-app", "District=x"], 1, "attribute name"),
            (["set-attr", "street-office-app", "district="], 1, "non-empty"),
            (["set-attr", "street-office-app", "--unset", "district"], 1, "has no attribute district"),
            (["set-attr", "ghost", "district=x"], 1, "no client 'ghost'"),
            (["add", "x-app", "--department", "civil", "--attr", "district"], 2, "give NAME=VALUE"),
            (["add", "x-app", "--department", "civil", "--attr", f"district={'x' * 201}"], 1, "201 characters"),
    ):
        r = run(cfg, *args)
        assert r.exit_code == code and words in r.output, (args, r.output)
    assert stored(cfg, "x-app") is None
