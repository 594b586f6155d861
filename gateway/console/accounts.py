"""People's accounts for the console: local, with argon2id password hashes, roles and department.

Roles: ``policy-admin`` (changes rules), ``auditor`` (reads the audit log), ``data-owner``
(answers sharing requests for its ``department``). Five wrong passwords in a row lock an
account for 15 minutes, so a password cannot be guessed online; the message for an unknown
name and for a wrong password is the same.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine

from gateway.console.settings import ROLES
from gateway.sqlite_files import create_tables, prepare_sqlite_file

__all__ = ["DEMO_ACCOUNTS", "Account", "AccountError", "AccountStore"]

LOCK_AFTER = 5
LOCK_FOR = timedelta(minutes=15)
MIN_PASSWORD = 12

# Published demo accounts, created only in demo mode (make demo): one per role.
DEMO_ACCOUNTS = (
    ("admin", "Zhang Wei (policy administrator)", "admin-demo-password", ("policy-admin",), None),
    ("auditor", "Li Na (auditor)", "auditor-demo-password", ("auditor",), None),
    ("hrss-owner", "Wang Fang (HRSS data owner)", "hrss-owner-demo-password", ("data-owner",), "hrss"),
    ("civil-owner", "Chen Jie (Civil Affairs data owner)", "civil-owner-demo-password", ("data-owner",), "civil"),
)

metadata = sa.MetaData()
account_table = sa.Table(
    "console_account", metadata,
    sa.Column("username", sa.String(100), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("password_hash", sa.String(200)),  # NULL: signs in through the identity provider only
    sa.Column("roles", sa.Text, nullable=False),  # JSON list
    sa.Column("department", sa.String(64)),
    sa.Column("disabled", sa.Boolean, nullable=False, default=False),
    sa.Column("failed", sa.Integer, nullable=False, default=0),
    sa.Column("locked_until", sa.String(32)),
    # Bumped by sign-out, a new password or disabling: every session signed in before ends.
    sa.Column("session_epoch", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", sa.String(32), nullable=False),
)


class AccountError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Account:
    username: str
    display_name: str
    roles: tuple[str, ...]
    department: str | None
    disabled: bool = False
    session_epoch: int = 0


def _check(username: str, roles: tuple[str, ...], department: str | None) -> None:
    if not username or len(username) > 100 or not username.replace("-", "").replace(".", "").isalnum():
        raise AccountError("a username is letters, digits, - and . (at most 100)")
    bad = [r for r in roles if r not in ROLES]
    if bad or not roles:
        raise AccountError(f"roles must be some of {', '.join(ROLES)}")
    if "data-owner" in roles and not department:
        raise AccountError("a data-owner owns the data of a department: give --department")


class AccountStore:
    def __init__(self, url: str) -> None:
        prepare_sqlite_file(url)
        self.engine = create_async_engine(url, hide_parameters=True, pool_pre_ping=url.startswith("postgresql"))
        self.hasher = PasswordHasher()  # argon2id, the library's current recommended parameters

    async def init(self) -> None:
        await create_tables(self.engine, metadata)

    async def close(self) -> None:
        await self.engine.dispose()

    async def add(self, username: str, display_name: str, roles: tuple[str, ...], *, password: str | None,
                  department: str | None = None) -> Account:
        _check(username, roles, department)
        if password is not None and len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        hashed = await asyncio.to_thread(self.hasher.hash, password) if password is not None else None
        try:
            async with self.engine.begin() as conn:
                await conn.execute(account_table.insert().values(
                    username=username, display_name=display_name or username, password_hash=hashed,
                    roles=json.dumps(list(roles)), department=department, disabled=False, failed=0,
                    session_epoch=0, created_at=datetime.now(UTC).isoformat()))
        except IntegrityError:
            raise AccountError(f"an account {username!r} exists already") from None
        return Account(username, display_name or username, roles, department)

    async def get(self, username: str) -> Account | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(account_table).where(account_table.c.username == username))).first()
        return None if row is None else _account(row)

    async def list(self) -> list[Account]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(account_table).order_by(account_table.c.username))).all()
        return [_account(r) for r in rows]

    async def set_password(self, username: str, password: str) -> None:
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"a password has at least {MIN_PASSWORD} characters")
        hashed = await asyncio.to_thread(self.hasher.hash, password)
        await self._update(username, password_hash=hashed, failed=0, locked_until=None,
                           session_epoch=account_table.c.session_epoch + 1)

    async def disable(self, username: str) -> None:
        await self._update(username, disabled=True, session_epoch=account_table.c.session_epoch + 1)

    async def end_sessions(self, username: str) -> None:
        """Every session of this account ends (sign-out ends them all: a copied cookie is worthless)."""
        await self._update(username, session_epoch=account_table.c.session_epoch + 1)

    async def _update(self, username: str, **values: Any) -> None:
        async with self.engine.begin() as conn:
            done = await conn.execute(account_table.update().where(account_table.c.username == username)
                                      .values(**values))
        if done.rowcount != 1:
            raise AccountError(f"no account {username!r}")

    async def authenticate(self, username: str, password: str, now: datetime | None = None) -> Account | None:
        """The account when the password is right and the account usable; None otherwise (the caller says
        the same thing either way, and every refusal spends the time of a real check, so that neither
        the message nor the timing tells which names exist or are locked). Each attempt is counted
        atomically before the password is checked, so attempts sent at once cannot outrun the lock."""
        now = now or datetime.now(UTC)
        c = account_table.c
        async with self.engine.begin() as conn:
            row = (await conn.execute(sa.select(account_table).where(c.username == username))).first()
            usable = (row is not None and row.password_hash is not None and not row.disabled
                      and not (row.locked_until and datetime.fromisoformat(row.locked_until) > now))
            attempts = 0
            if usable:
                if row is not None and row.locked_until:  # a lock that has run out: counting starts afresh
                    await conn.execute(account_table.update().where(c.username == username)
                                       .values(failed=0, locked_until=None))
                await conn.execute(account_table.update().where(c.username == username)
                                   .values(failed=c.failed + 1))
                attempts = int((await conn.execute(sa.select(c.failed).where(c.username == username))).scalar()
                               or 0)
        if not usable or attempts > LOCK_AFTER:
            await asyncio.to_thread(self._burn, password)
            if usable:
                await self._update(username, locked_until=(now + LOCK_FOR).isoformat())
            return None
        assert row is not None
        try:
            ok = await asyncio.to_thread(self.hasher.verify, row.password_hash, password)
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok:
            if attempts >= LOCK_AFTER:
                await self._update(username, locked_until=(now + LOCK_FOR).isoformat())
            return None
        await self._update(username, failed=0, locked_until=None)
        return _account(row)

    def _burn(self, password: str) -> None:
        self.hasher.hash(password or "x")

    async def ensure_demo(self) -> list[str]:
        """Create the missing demo accounts; several workers starting together may race: the losers skip."""
        added = []
        for username, display, password, roles, department in DEMO_ACCOUNTS:
            if await self.get(username) is None:
                try:
                    await self.add(username, display, roles, password=password, department=department)
                except AccountError:
                    continue  # another worker created it meanwhile
                added.append(username)
        return added


def _account(row: Any) -> Account:
    return Account(row.username, row.display_name, tuple(json.loads(row.roles)), row.department, bool(row.disabled),
                   int(row.session_epoch or 0))
