"""Registered clients: the applications departments run, each acting for one department with
fixed roles. One store over SQLAlchemy async Core serves SQLite (embedded default) and
PostgreSQL (production, shared by every gateway node).

Secrets are stored only as salted scrypt hashes (``client_secrets``); a client that
authenticates with ``private_key_jwt`` holds a public JWK instead (or as well). Disabling a
client is how access is revoked: the bearer check reads the store (cached for seconds), so
even unexpired tokens stop working.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from gateway.auth.client_secrets import hash_secret
from gateway.sqlite_files import prepare_sqlite_file

__all__ = ["Client", "ClientExists", "ClientStore", "ClientStoreError", "UnknownClient", "public_jwk"]

CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEPARTMENT = re.compile(r"[a-z][a-z0-9_-]{0,31}")
ROLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")

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
)
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
    Private keys are refused: the private half stays with the department."""
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    from gateway.auth.keys import key_algorithm

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
        raise ValueError("not a public key: give a PEM public key or a JWK (EC P-256/P-384, RSA, or Ed25519)")
    if key.is_private:
        raise ValueError("this is a private key: register the public key only; the private key stays "
                         "with the department that signs with it")
    alg = key_algorithm(key, allow_eddsa=True)
    return {**key.as_dict(private=False), "kid": key.thumbprint(), "alg": alg}


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
        raise ValueError(f"role(s) {', '.join(map(repr, bad))}: use letters, digits, '.', '_', ':' or '-'")
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
        """Create the tables if missing. Several workers may race to do it: the loser retries once."""
        for attempt in (1, 2):
            try:
                async with self.engine.begin() as conn:
                    await conn.run_sync(metadata.create_all, checkfirst=True)
                return
            except (IntegrityError, DBAPIError):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2)

    async def close(self) -> None:
        await self.engine.dispose()

    async def add(self, client_id: str, department: str, roles: Iterable[str], *, secret: str | None = None,
                  public_key: dict[str, Any] | None = None) -> Client:
        """Register a client. ``secret`` is hashed here (in a thread): plain text never reaches the table."""
        roles_ = _check_fields(client_id, department, roles)
        if secret is None and public_key is None:
            raise ValueError("a client needs a secret or a public key to authenticate with")
        hashed = await asyncio.to_thread(hash_secret, secret) if secret is not None else None
        row = {"client_id": client_id, "department": department, "roles": json.dumps(list(roles_)),
               "secret_hash": hashed, "public_jwk": json.dumps(public_key) if public_key else None,
               "disabled": False, "created_at": _now()}
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
                await conn.execute(assertions_table.delete().where(assertions_table.c.expires_at < now))
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
    )
