"""``hutong client ...``: register, list, rotate and disable the clients that may get tokens.

Secrets are generated here (256 random bits) and printed once; the store keeps only their
hash, so a lost secret is replaced (``rotate-secret``), never recovered. A client's department
must be one of the catalogue's (or ``[auth] extra_departments``); its attributes (``--attr
district=北苑区``, ``set-attr``) go into its access tokens for row rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from catalog.loader import CatalogError, load_catalog
from gateway.audit.admin import actor, admin_event, append_admin
from gateway.audit.errors import AuditUnavailable
from gateway.auth.client_secrets import new_secret
from gateway.auth.clients import ClientStore, ClientStoreError, check_department, public_jwk
from gateway.auth.settings import AuthSettings
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import ConfigError, load_settings

__all__ = ["client_app"]

client_app = typer.Typer(help="Register and manage the clients (department applications) that may get tokens.",
                         no_args_is_help=True)


ClientId = Annotated[str, typer.Argument(help="The client id, e.g. street-office-app.")]
T = TypeVar("T")


def _view(client: Any) -> dict[str, Any] | None:
    """A client as the audit log shows it: never its secret hash."""
    if client is None:
        return None
    return {"client_id": client.client_id, "department": client.department, "roles": list(client.roles),
            "attributes": dict(client.attributes), "disabled": client.disabled,
            "has_secret": bool(client.secret_hash), "key_id": (client.public_jwk or {}).get("kid")}


def _run(config: Path | None, action: Callable[[ClientStore], Awaitable[T]], change: str | None = None,
         client_id: str | None = None) -> T:
    """Run one store action against the configured client store, or exit saying what is wrong.
    A ``change`` is recorded in the audit log, with the client before and after."""
    try:
        settings = load_settings(config)
        auth = AuthSettings.from_settings(settings)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None

    async def go() -> T:
        store = ClientStore(auth.client_store)
        try:
            await store.init()
            before = _view(await store.get(client_id)) if change and client_id else None
            result = await action(store)
            if change and client_id:
                after = _view(await store.get(client_id))
                try:
                    await append_admin(settings, admin_event(change, client_id, by=actor(), before=before,
                                                             after=after))
                except AuditUnavailable:
                    error(f"{change} of {client_id} was made but could not be recorded in the audit log: "
                           "check the audit store, then record it by hand")
                    raise typer.Exit(3) from None
            return result
        finally:
            await store.close()

    try:
        return asyncio.run(go())
    except (ClientStoreError, ValueError) as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except (OSError, SQLAlchemyError) as exc:  # shown by kind: the store URL may hold a password
        error(f"cannot reach the client store: {type(exc).__name__}")
        raise typer.Exit(1) from None


def _check_department(config: Path | None, department: str) -> None:
    """Exit unless ``department`` is the catalogue's (or [auth] extra_departments): 2 when the
    configuration or the catalogue cannot be read, 1 for an unknown department."""
    try:
        settings = load_settings(config)
        extra = AuthSettings.from_settings(settings).extra_departments
        known = [*load_catalog(*settings.catalog).departments, *extra]
    except (ConfigError, CatalogError) as exc:
        error(f"cannot check the department against the catalogue: {exc}")
        raise typer.Exit(2) from None
    try:
        check_department(department, known)
    except ValueError as exc:
        error(str(exc))
        raise typer.Exit(1) from None


def _assignments(values: list[str], option: str) -> dict[str, str]:
    """NAME=VALUE arguments as a dict; exit 2 for one without "=" or a name given twice."""
    out_: dict[str, str] = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep:
            error(f"{option} {item!r}: give NAME=VALUE, e.g. district=北苑区")
            raise typer.Exit(2)
        if name in out_:
            error(f"attribute {name} given twice")
            raise typer.Exit(2)
        out_[name] = value
    return out_


def _show_attributes(client: Any) -> str:
    return ", ".join(f"{k}={v}" for k, v in client.attributes.items())


def _read_key(path: Path) -> dict[str, Any]:
    try:
        return public_jwk(path.read_bytes())
    except OSError as exc:
        error(f"cannot read {path}: {exc.strerror}")
        raise typer.Exit(2) from None
    except ValueError as exc:
        error(f"{path}: {exc}")
        raise typer.Exit(2) from None


def _show_secret(client_id: str, secret: str) -> None:
    out.print(f"client_id     {client_id}")
    out.print(f"client_secret {secret}")
    err.print("Give the secret to the client's operators now: it is not stored and cannot be shown again.")


@client_app.command("add")
def add(client_id: ClientId,
        department: Annotated[str, typer.Option(help="The department code the client acts for.")],
        config: ConfigOpt = None,
        role: Annotated[list[str] | None, typer.Option("--role", help="A role (repeat for several).")] = None,
        public_key: Annotated[Path | None, typer.Option(
            help="The client's public key (PEM or JWK) for private_key_jwt; then no secret is made.")] = None,
        attr: Annotated[list[str] | None, typer.Option(
            "--attr", help="An attribute NAME=VALUE for row rules, e.g. district=北苑区 (repeat for several).")] = None
        ) -> None:
    """Register a client. Prints its generated secret once (or uses --public-key instead)."""
    attributes = _assignments(attr or [], "--attr")
    _check_department(config, department)
    jwk = _read_key(public_key) if public_key else None
    secret = None if jwk else new_secret()
    _run(config, lambda store: store.add(client_id, department, role or [], secret=secret, public_key=jwk,
                                         attributes=attributes),
         "client.add", client_id)
    if secret:
        _show_secret(client_id, secret)
    else:
        out.print(f"client {client_id} registered for private_key_jwt (key {jwk['kid'] if jwk else ''})")


@client_app.command("list")
def list_clients(config: ConfigOpt = None) -> None:
    """List the registered clients (never their secrets)."""
    clients = _run(config, lambda store: store.list())
    table = Table("client", "department", "roles", "attributes", "authenticates with", "status", "created",
                  "rotated")
    for c in clients:
        methods = ["secret"] * bool(c.secret_hash) + ["private_key_jwt"] * bool(c.public_jwk)
        table.add_row(c.client_id, c.department, ", ".join(c.roles), _show_attributes(c), ", ".join(methods),
                      "disabled" if c.disabled else "active",
                      f"{c.created_at:%Y-%m-%d %H:%M}" if c.created_at else "",
                      f"{c.rotated_at:%Y-%m-%d %H:%M}" if c.rotated_at else "")
    if not clients:
        out.print("no clients registered: `hutong client add CLIENT_ID --department CODE`")
        return
    # At its natural width, never squeezed to the terminal's: ids cut with "…" would be misread.
    natural = Measurement.get(out, out.options.update_width(1000), table).maximum
    Console(width=max(out.width, natural), highlight=False).print(table)


@client_app.command("rotate-secret")
def rotate_secret(client_id: ClientId, config: ConfigOpt = None) -> None:
    """Give a client a new secret (printed once). Its tokens already issued live until they expire."""
    secret = new_secret()
    _run(config, lambda store: store.rotate_secret(client_id, secret), "client.rotate_secret", client_id)
    _show_secret(client_id, secret)


@client_app.command("set-key")
def set_key(client_id: ClientId, public_key: Annotated[Path, typer.Argument(help="PEM or JWK public key.")],
            config: ConfigOpt = None) -> None:
    """Register (or replace) a client's public key for private_key_jwt."""
    jwk = _read_key(public_key)
    _run(config, lambda store: store.set_public_key(client_id, jwk), "client.set_key", client_id)
    out.print(f"client {client_id} now authenticates with key {jwk['kid']}")


@client_app.command("set-attr")
def set_attr(client_id: ClientId,
             assignments: Annotated[list[str] | None, typer.Argument(
                 help="Attributes to set (add or replace), NAME=VALUE, e.g. district=北苑区.",
                 show_default=False)] = None,
             unset: Annotated[list[str] | None, typer.Option(
                 "--unset", help="An attribute NAME to remove (repeat for several).")] = None,
             config: ConfigOpt = None) -> None:
    """Set or remove a client's attributes. Tokens already issued keep theirs until they expire."""
    values = _assignments(assignments or [], "set-attr")
    if not values and not unset:
        error("nothing to change: give NAME=VALUE to set, or --unset NAME to remove")
        raise typer.Exit(2)
    client = _run(config, lambda store: store.set_attributes(client_id, values, unset or []), "client.set_attr",
                  client_id)
    shown = _show_attributes(client)
    out.print(f"client {client_id} attributes: {shown}" if shown else f"client {client_id} has no attributes")
    err.print("Tokens already issued keep the attributes they carry until they expire ([auth] token_ttl); "
              "disable the client to cut them off at once.")


@client_app.command("disable")
def disable(client_id: ClientId, config: ConfigOpt = None) -> None:
    """Disable a client: no new tokens, and its unexpired tokens are refused within seconds."""
    _run(config, lambda store: store.disable(client_id), "client.disable", client_id)
    out.print(f"client {client_id} disabled")
