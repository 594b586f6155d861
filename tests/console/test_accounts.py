"""People's accounts: argon2id hashes, lockout after failed attempts, disabled accounts, the CLI,
and the roles an identity provider's claims give."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli import app as cli
from gateway.console.accounts import AccountError, AccountStore
from gateway.console.oidc import console_roles
from gateway.console.settings import ConsoleSettings, OidcSettings


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = AccountStore(f"sqlite+aiosqlite:///{tmp_path}/console.sqlite")
    await s.init()
    yield s
    await s.close()


async def test_passwords_are_argon2id_and_checked(store: AccountStore, tmp_path: Path) -> None:
    await store.add("li", "Li Na", ("auditor",), password="correct horse battery")
    raw = (tmp_path / "console.sqlite").read_bytes()
    assert b"correct horse battery" not in raw and b"$argon2id$" in raw
    assert (await store.authenticate("li", "correct horse battery")) is not None
    assert await store.authenticate("li", "wrong") is None
    assert await store.authenticate("nobody", "whatever") is None


async def test_five_failures_lock_the_account_for_a_while(store: AccountStore) -> None:
    await store.add("wang", "Wang", ("policy-admin",), password="a good long password")
    now = datetime.now(UTC)
    for _ in range(5):
        assert await store.authenticate("wang", "guess", now) is None
    assert await store.authenticate("wang", "a good long password", now) is None  # locked, even when right
    assert await store.authenticate("wang", "a good long password", now + timedelta(minutes=16)) is not None


async def test_rules_for_accounts(store: AccountStore) -> None:
    with pytest.raises(AccountError, match="at least 12"):
        await store.add("a", "A", ("auditor",), password="short")
    with pytest.raises(AccountError, match="roles must be some of"):
        await store.add("b", "B", ("superuser",), password="a good long password")
    with pytest.raises(AccountError, match="give --department"):
        await store.add("c", "C", ("data-owner",), password="a good long password")
    await store.add("d", "D", ("auditor",), password="a good long password")
    await store.disable("d")
    assert await store.authenticate("d", "a good long password") is None


def test_the_command_line_adds_and_lists_people(tmp_path: Path) -> None:
    cfg = tmp_path / "hutong.toml"
    cfg.write_text(f'[gateway]\ncatalog = "{Path(__file__).resolve().parents[2] / "demo" / "catalog"}"\n'
                   f'[policies]\nfile = "x.csv"\nmask_key = "a-mask-key-of-enough-length-0001"\n'
                   f'[console]\nsession_secret = "a-console-session-secret-of-32-bytes-or-more"\n'
                   f'accounts = "sqlite+aiosqlite:///{tmp_path}/console.sqlite"\n', encoding="utf-8")
    runner = CliRunner()
    r = runner.invoke(cli, ["console", "user", "add", "zhao", "--role", "data-owner", "--department", "hrss",
                            "--name", "Zhao", "--password-stdin", "--config", str(cfg)],
                      input="a strong password here\n")
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["console", "user", "list", "--config", str(cfg)], env={"COLUMNS": "200"})
    assert "zhao" in r.output and "data-owner" in r.output and "hrss" in r.output


def test_roles_from_an_identity_provider() -> None:
    oidc = OidcSettings("https://id.example", "c", "s", role_map=(("hutong-auditors", "auditor"),))
    assert console_roles({"roles": ["hutong-auditors", "other"]}, oidc) == ("auditor",)
    # With a role map, a provider role that merely has a console role's name gives nothing ...
    assert console_roles({"roles": "policy-admin unknown"}, oidc) == ()
    # ... without one, the console's role names count only when the configuration trusts them.
    untrusted = OidcSettings("https://id.example", "c", "s")
    assert console_roles({"roles": "policy-admin unknown"}, untrusted) == ()
    plain = OidcSettings("https://id.example", "c", "s", trust_roles=True)
    assert console_roles({"roles": "policy-admin unknown"}, plain) == ("policy-admin",)
    assert console_roles({}, oidc) == () and console_roles({"roles": {"x": 1}}, plain) == ()


def test_console_settings_refuse_weak_or_published_secrets(make_settings: Any) -> None:
    from gateway.config import ConfigError, load_settings

    settings = make_settings()
    text = settings.path.read_text(encoding="utf-8").replace("demo = true", "demo = false")
    settings.path.write_text(text + '[console]\nsession_secret = "short"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        ConsoleSettings.from_settings(load_settings(settings.path, environ={}))


async def test_guesses_sent_at_once_cannot_outrun_the_lock(store: AccountStore) -> None:
    import asyncio

    await store.add("zhou", "Zhou", ("auditor",), password="the right password!")
    results = await asyncio.gather(*(store.authenticate("zhou", f"guess {i}") for i in range(40)))
    assert not any(results)
    assert await store.authenticate("zhou", "the right password!") is None  # locked by the burst


async def test_signing_out_or_disabling_ends_every_session(store: AccountStore) -> None:
    await store.add("sun", "Sun", ("auditor",), password="a good long password")
    epoch = (await store.get("sun")).session_epoch  # type: ignore[union-attr]
    await store.end_sessions("sun")
    assert (await store.get("sun")).session_epoch == epoch + 1  # type: ignore[union-attr]
    await store.set_password("sun", "another long password")
    await store.disable("sun")
    assert (await store.get("sun")).session_epoch == epoch + 3  # type: ignore[union-attr]
