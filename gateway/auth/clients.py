"""Registered clients: the applications departments run, each acting for one department with
fixed roles and, optionally, attributes (``district = "北苑区"``) that row rules compare records
with. One store over SQLAlchemy async Core serves SQLite (embedded default) and PostgreSQL
(production, shared by every gateway node).

Secrets are stored only as salted scrypt hashes (``client_secrets``); a client that
authenticates with ``private_key_jwt`` holds a public JWK instead (or as well). Disabling a
client is how access is revoked: the bearer check reads the store (cached for seconds), so
even unexpired tokens stop working.

The schema grows by adding nullable columns only: ``init()`` adds a column an older store lacks
(``attributes``), so an existing store is upgraded in place with every client kept.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.auth.client_secrets import hash_secret
from gateway.auth.identity import EMPTY, Attributes, check_attribute_name, check_attributes
from gateway.sqlite_files import prepare_sqlite_file

__all__ = ["Client", "ClientExists", "ClientStore", "ClientStoreError", "UnknownClient", "check_department",
           "public_jwk"]

# Used assertion ids are kept this long past their expiry (twice the clock leeway of gateway/auth/tokens.py):
# a node whose clock is behind still accepts an assertion that this node's clock calls expired.
KEEP_PAST_EXPIRY = 60

CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # never a ":": policy names role:X, dept:X, idp:X
DEPARTMENT = re.compile(r"[a-z][a-z0-9_-]{0,31}")
# Roles become policy subjects "role:NAME": lower case, no ":" or spaces, so that one name means one thing.
ROLE = re.compile(r"[a-z][a-z0-9_-]{0,63}")

metadata = sa.MetaData()
clients_table = sa.Table(
    "hutong_clients", metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("department", sa.String(32), nullable=False),
    sa.Column("roles", sa.Text, nullable=False),  # JSON array: one portable type on every backend
    sa.Column("secret_hash", sa.String(255)),  # scrypt$N$r$p$salt$digest; NULL: key-only client
    sa.Column("public_jwk", sa.Text),  # JSON public JWK for private_key_jwt
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rotated_at", sa.DateTime(timezone=True)),  # last secret or key change
    sa.Column("disabled_at", sa.DateTime(timezone=True)),
    sa.Column("attributes", sa.Text),  # JSON object name -> value; NULL (stores made before it): none
)
# Columns added after the first release, with their DDL type: init() adds those a store lacks.
ADDED_COLUMNS = {"attributes": "TEXT"}
# Client assertion ids seen (RFC 7523 §3 replay protection), kept until the assertion expires.
# In the store rather than in memory, so a replay to another worker or node is refused too.
assertions_table = sa.Table(
    "hutong_client_assertions", metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("jti", sa.String(255), primary_key=True),
    sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
)


class ClientStoreError(Exception):
    pass


class UnknownClient(ClientStoreError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id!r} is registered; `hutong client list` shows them")


class ClientExists(ClientStoreError):
    def __init__(self, client_id: str) -> None:
        super().__init__(f"client {client_id!r} is already registered; use rotate-secret to give it a new secret")


@dataclass(frozen=True)
class Client:
    client_id: str
    department: str
    roles: tuple[str, ...]
    secret_hash: str | None = field(default=None, repr=False)
    public_jwk: dict[str, Any] | None = field(default=None, repr=False)
    disabled: bool = False
    created_at: datetime | None = None
    rotated_at: datetime | None = None
    disabled_at: datetime | None = None
    attributes: Mapping[str, str] = EMPTY  # e.g. {"district": "北苑区"}: the access token's attributes claim

    @property
    def auth_methods(self) -> tuple[str, ...]:
        methods: tuple[str, ...] = ()
        if self.secret_hash:
            methods += ("client_secret_basic", "client_secret_post")
        if self.public_jwk:
            methods += ("private_key_jwt",)
        return methods


def public_jwk(data: dict[str, Any] | str | bytes) -> dict[str, Any]:
    """A client's public key as a JWK to store: from a JWK (dict or JSON) or a PEM public key.
    Private keys are refused: the private half stays with the department. A key of a type no
    assertion algorithm fits (EC secp256k1, Ed448, RSA under 2048 bits) is refused here, at
    registration, rather than registered and never able to authenticate.

    No ``alg`` member is stored: the algorithms a key may sign with follow from its type
    (``keys.client_key_algorithms``), and an RSA key signs two (RS256, PS256)."""
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    from gateway.auth.keys import client_key_algorithms

    if isinstance(data, (str, bytes)) and data.strip()[:1] in ("{", b"{"):
        data = json.loads(data)
    key: Any = None
    for cls in (ECKey, RSAKey, OKPKey):
        try:
            key = cls.import_key(data)
            break
        except Exception:  # a key of another type, or not a key at all
            continue
    if key is None:
        raise ValueError("not a public key: give a PEM public key or a JWK (EC P-256/P-384/P-521, RSA, or Ed25519)")
    if key.is_private:
        raise ValueError("this is a private key: register the public key only; the private key stays "
                         "with the department that signs with it")
    client_key_algorithms(key)  # ValueError for a key no algorithm fits
    jwk = {k: v for k, v in key.as_dict(private=False).items() if k not in ("alg", "kid", "use", "key_ops")}
    return {**jwk, "kid": key.thumbprint()}


def check_department(department: str, known: Iterable[str]) -> str:
    """``department`` if it is one of the ``known`` codes (the catalogue's departments), else
    ValueError naming them."""
    known = sorted(set(known))
    if department not in known:
        raise ValueError(f"unknown department {department!r}; known: {', '.join(known) or 'none'} (the catalogue's "
                         "departments, and [auth] extra_departments)")
    return department


def _check_fields(client_id: str, department: str, roles: Iterable[str]) -> tuple[str, ...]:
    if not CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client id {client_id!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting "
                         "with a letter or digit")
    if not DEPARTMENT.fullmatch(department):
        raise ValueError(f"department {department!r}: use the department's code from the catalogue "
                         "(lower-case letters, digits, '_' or '-')")
    out = tuple(sorted(set(roles)))
    bad = [r for r in out if not ROLE.fullmatch(r)]
    if bad:
        raise ValueError(f"role(s) {', '.join(map(repr, bad))}: start with a lower-case letter, then use lower-case "
                         "letters, digits, '_' or '-' (at most 64 characters)")
    return out


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _utc(value: datetime | None) -> datetime | None:
    # SQLite keeps no time zone: every time this store writes is UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class ClientStore:
    """The registered clients, in SQLite or PostgreSQL. Call ``init()`` once before use."""

    def __init__(self, url: str, engine: AsyncEngine | None = None) -> None:
        self.url = url
        if engine is None:
            prepare_sqlite_file(url)
            # hide_parameters: a driver error logged on the server never carries a hash or a client id.
            engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=url.startswith("postgresql"))
        self.engine = engine

    async def init(self) -> None:
        """Create the tables if missing, and add the columns an older store lacks. Several workers
        may race to do it: the loser retries once (and then finds the work done)."""
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all, checkfirst=True)
                    await self._add_missing_columns(conn)
                return
            except (IntegrityError, DBAPIError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)

    async def _add_missing_columns(self, conn: Any) -> None:
        present = await conn.run_sync(
            lambda sync: {c["name"] for c in sa.inspect(sync).get_columns(clients_table.name)})
        for name, ddl in ADDED_COLUMNS.items():
            if name not in present:
                # A nullable column without default: existing rows read as before (no attributes).
                exists = " IF NOT EXISTS" if conn.dialect.name == "postgresql" else ""
                await conn.execute(sa.text(f"ALTER TABLE {clients_table.name} ADD COLUMN{exists} {name} {ddl}"))

    async def close(self) -> None:
        await self.engine.dispose()

    async def add(self, client_id: str, department: str, roles: Iterable[str], *, secret: str | None = None,
                  public_key: dict[str, Any] | None = None, attributes: Mapping[str, str] | None = None) -> Client:
        """Register a client. ``secret`` is hashed here (in a thread): plain text never reaches the table."""
        roles_ = _check_fields(client_id, department, roles)
        attrs = check_attributes(attributes)
        if secret is None and public_key is None:
            raise ValueError("a client needs a secret or a public key to authenticate with")
        hashed = await asyncio.to_thread(hash_secret, secret) if secret is not None else None
        row = {"client_id": client_id, "department": department, "roles": json.dumps(list(roles_)),
               "secret_hash": hashed, "public_jwk": json.dumps(public_key) if public_key else None,
               "disabled": False, "created_at": _now(), "attributes": json.dumps(dict(attrs), ensure_ascii=False)}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(clients_table.insert().values(**row))
        except IntegrityError:
            raise ClientExists(client_id) from None
        return _client(row)

    async def get(self, client_id: str) -> Client | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(clients_table.select().where(clients_table.c.client_id == client_id))
                   ).mappings().first()
        return _client(row) if row else None

    async def list(self) -> list[Client]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(clients_table.select().order_by(clients_table.c.client_id))).mappings().all()
        return [_client(r) for r in rows]

    async def rotate_secret(self, client_id: str, secret: str) -> Client:
        """Replace the secret. Tokens already issued stay valid until they expire: rotating is not
        revoking (disable the client for that)."""
        hashed = await asyncio.to_thread(hash_secret, secret)
        return await self._update(client_id, secret_hash=hashed, rotated_at=_now())

    async def set_public_key(self, client_id: str, public_key: dict[str, Any]) -> Client:
        return await self._update(client_id, public_jwk=json.dumps(public_key), rotated_at=_now())

    async def set_attributes(self, client_id: str, values: Mapping[str, str] | None = None,
                             unset: Iterable[str] = ()) -> Client:
        """Set (add or replace) ``values`` and remove the names in ``unset``, in one transaction.
        ValueError for a bad name or value, or for unsetting an attribute the client does not have.
        Tokens already issued keep the attributes they were issued with until they expire."""
        values = dict(values or {})
        unset = [check_attribute_name(n) for n in unset]
        check_attributes(values)
        both = sorted(set(values) & set(unset))
        if both:
            raise ValueError(f"attribute(s) {', '.join(both)} both set and unset: choose one")
        async with self.engine.begin() as conn:
            # FOR UPDATE (PostgreSQL): two concurrent changes to one client's attributes do not lose either.
            row = (await conn.execute(clients_table.select().where(clients_table.c.client_id == client_id)
                                      .with_for_update())).mappings().first()
            if row is None:
                raise UnknownClient(client_id)
            current = dict(_client(row).attributes)
            missing = sorted(set(unset) - set(current))
            if missing:
                raise ValueError(f"client {client_id!r} has no attribute {', '.join(missing)}; it has: "
                                 f"{', '.join(sorted(current)) or 'none'}")
            updated = check_attributes({**{k: v for k, v in current.items() if k not in unset}, **values})
            await conn.execute(clients_table.update().where(clients_table.c.client_id == client_id)
                               .values(attributes=json.dumps(dict(updated), ensure_ascii=False)))
        client = await self.get(client_id)
        assert client is not None
        return client

    async def disable(self, client_id: str) -> Client:
        client = await self.get(client_id)
        if client is None:
            raise UnknownClient(client_id)
        if client.disabled:
            return client
        return await self._update(client_id, disabled=True, disabled_at=_now())

    async def use_assertion(self, client_id: str, jti: str, expires_at: int, now: int) -> bool:
        """Record a client assertion's jti; False if it was already used (a replay)."""
        try:
            async with self.engine.begin() as conn:
                expired = assertions_table.c.expires_at < now - KEEP_PAST_EXPIRY
                await conn.execute(assertions_table.delete().where(expired))
                await conn.execute(assertions_table.insert().values(client_id=client_id, jti=jti,
                                                                    expires_at=expires_at))
        except IntegrityError:
            return False
        return True

    async def _update(self, client_id: str, **values: Any) -> Client:
        async with self.engine.begin() as conn:
            result = await conn.execute(clients_table.update().where(clients_table.c.client_id == client_id)
                                        .values(**values))
            if result.rowcount == 0:
                raise UnknownClient(client_id)
        client = await self.get(client_id)
        assert client is not None
        return client


def _client(row: Any) -> Client:
    return Client(
        client_id=row["client_id"],
        department=row["department"],
        roles=tuple(json.loads(row["roles"])),
        secret_hash=row["secret_hash"],
        public_jwk=json.loads(row["public_jwk"]) if row["public_jwk"] else None,
        disabled=bool(row["disabled"]),
        created_at=_utc(row["created_at"]),
        rotated_at=_utc(row.get("rotated_at")),
        disabled_at=_utc(row.get("disabled_at")),
        attributes=_attributes(row.get("attributes")),
    )


def _attributes(stored: str | None) -> Attributes:
    # Written by this store only, so valid; checked anyway: a hand-edited row must not reach a token unchecked.
    return check_attributes(json.loads(stored)) if stored else EMPTY
