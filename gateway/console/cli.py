"""``hutong console user ...``: people's accounts for the web console.

Passwords are typed (twice, hidden) or read from standard input with ``--password-stdin``;
they are never arguments (they would show in the process list and shell history).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from gateway.audit.admin import actor, admin_event, append_admin
from gateway.cli_support import ConfigOpt, error, out
from gateway.config import ConfigError, load_settings
from gateway.console.accounts import AccountError, AccountStore
from gateway.console.settings import ROLES, ConsoleSettings

__all__ = ["console_app"]

console_app = typer.Typer(help="The web console (/console).", no_args_is_help=True)
user_app = typer.Typer(help="People's accounts: add, list, set a password, disable.", no_args_is_help=True)
console_app.add_typer(user_app, name="user")

T = TypeVar("T")


def _run(config: Path | None, action: Callable[[AccountStore], Awaitable[T]], event: tuple[str, str] | None = None,
         after: Any = None) -> T:
    try:
        settings = load_settings(config)
        store = AccountStore(ConsoleSettings.from_settings(settings).accounts)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None

    async def go() -> T:
        await store.init()
        try:
            result = await action(store)
            if event is not None:  # who changed which account: the audit log
                await append_admin(settings, admin_event(event[0], event[1], by=actor(), after=after))
            return result
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except AccountError as exc:
        error(str(exc))
        raise typer.Exit(1) from None


def _password(stdin: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    first = typer.prompt("Password", hide_input=True)
    if typer.prompt("Again", hide_input=True) != first:
        error("the passwords differ")
        raise typer.Exit(1)
    return str(first)


@user_app.command("add")
def user_add(username: Annotated[str, typer.Argument()],
             role: Annotated[list[str], typer.Option("--role", help=f"One of {', '.join(ROLES)}; repeat.")],
             name: Annotated[str, typer.Option("--name", help="The person's name, as shown.")] = "",
             department: Annotated[str | None, typer.Option("--department", help="For a data-owner.")] = None,
             oidc_only: Annotated[bool, typer.Option("--oidc-only", help="No password: signs in through the "
                                                                         "identity provider.")] = False,
             password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
             config: ConfigOpt = None) -> None:
    """Add a person (roles policy-admin, auditor, data-owner)."""
    password = None if oidc_only else _password(password_stdin)
    _run(config, lambda s: s.add(username, name, tuple(role), password=password, department=department),
         ("console.user_add", username), {"roles": role, "department": department})
    out.print(f"account {username} added")


@user_app.command("list")
def user_list(config: ConfigOpt = None) -> None:
    """Every account, with roles and department."""
    table = Table("username", "name", "roles", "department", "disabled")
    for a in _run(config, lambda s: s.list()):
        table.add_row(a.username, a.display_name, ", ".join(a.roles), a.department or "", "yes" if a.disabled else "")
    out.print(table)


@user_app.command("passwd")
def user_passwd(username: Annotated[str, typer.Argument()],
                password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
                config: ConfigOpt = None) -> None:
    """Set a person's password (and lift a lock after failed attempts)."""
    password = _password(password_stdin)
    _run(config, lambda s: s.set_password(username, password), ("console.user_password", username))
    out.print(f"password of {username} set")


@user_app.command("disable")
def user_disable(username: Annotated[str, typer.Argument()], config: ConfigOpt = None) -> None:
    """Disable an account: it can no longer sign in (its history stays)."""
    _run(config, lambda s: s.disable(username), ("console.user_disable", username))
    out.print(f"account {username} disabled")
