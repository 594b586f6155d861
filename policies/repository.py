"""The versioned policy repository: every line with the versions it lived in, every change numbered.

A SQL database (SQLite, or PostgreSQL shared by every replica) holds

``policy_line``     each line with ``version_from`` (the change that added it) and ``version_to``
                    (the change that removed it; NULL while in force) and an optional
                    ``expires_at`` (a time-limited grant, from an approved sharing request)
``policy_version``  each change: number, time, author, reason, source, lines added and removed
``policy_dry_run``  at most one proposed policy that every gateway evaluates without enforcing

So the policy of any version is a query (``version_from <= N < version_to``), a diff between
two versions is two, and a rollback is a new version whose lines are an old one's. Writers
take a lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL) and may name the
version they started from: a change made meanwhile by someone else makes theirs fail rather
than silently undo it. On PostgreSQL every change sends ``NOTIFY hutong_policy`` on commit
(see :mod:`policies.watcher`).

This is hutong's policy *adapter* in pycasbin's terms: it loads lines into an enforcer's
model; changing them is :mod:`policies.admin`'s business, noticing changes the watcher's.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.sqlite_files import create_tables, store_engine, write_transaction
from policies.lines import ARITY, PolicyLine, format_line

__all__ = ["CHANNEL", "PolicyConflict", "PolicyRepository", "PolicyVersion", "metadata"]

CHANNEL = "hutong_policy"  # the PostgreSQL NOTIFY channel of policy changes
WRITE_LOCK = 0x706F6C696379  # "policy": the advisory lock every PostgreSQL writer takes
VALUES = ("v0", "v1", "v2", "v3", "v4", "v5")

metadata = sa.MetaData()
line_table = sa.Table(
    "policy_line", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("ptype", sa.String(4), nullable=False),
    *(sa.Column(v, sa.String(500), nullable=False, default="") for v in VALUES),
    sa.Column("version_from", sa.Integer, nullable=False),
    sa.Column("version_to", sa.Integer),
    sa.Column("expires_at", sa.String(32)),
    sa.Index("ix_policy_line_live", "version_to"),
    sa.Index("ix_policy_line_range", "version_from", "version_to"),
)
version_table = sa.Table(
    "policy_version", metadata,
    sa.Column("number", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("author", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),
    sa.Column("added", sa.Integer, nullable=False),
    sa.Column("removed", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
)
dry_run_table = sa.Table(
    "policy_dry_run", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),  # always 1: one proposal at a time
    sa.Column("lines", sa.Text, nullable=False),  # CSV
    sa.Column("started_by", sa.String(200), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)


class PolicyConflict(ValueError):
    """A change that cannot be made as asked: the base version moved, a line to remove is not in
    force, a line to add already is."""


@dataclass(frozen=True, slots=True)
class PolicyVersion:
    number: int
    at: datetime
    author: str
    reason: str
    source: str  # api, cli, import, rollback, share-request, seed
    added: int
    removed: int
    digest: str  # of the lines in force after it, independent of their order


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def digest_of(lines: Sequence[PolicyLine]) -> str:
    return hashlib.sha256("\n".join(sorted(format_line(x) for x in lines)).encode()).hexdigest()


def _line(row: Any) -> PolicyLine:
    n = ARITY.get(row.ptype, 6)
    return (row.ptype, *(getattr(row, v) for v in VALUES[:n]))


def _values(line: PolicyLine) -> dict[str, str]:
    return {"ptype": line[0], **{v: (line[i + 1] if i + 1 < len(line) else "") for i, v in enumerate(VALUES)}}


def _live(at: int | None = None) -> Any:
    c = line_table.c
    if at is None:
        return c.version_to.is_(None)
    return sa.and_(c.version_from <= at, sa.or_(c.version_to.is_(None), c.version_to > at))


class PolicyRepository:
    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.backend = sa.engine.make_url(url).get_backend_name()
        self.engine = store_engine(url, engine)

    @property
    def name(self) -> str:
        return f"policy store {sa.engine.make_url(self.url).render_as_string(hide_password=True)}"

    async def init(self) -> None:
        await create_tables(self.engine, metadata)

    async def close(self) -> None:
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with write_transaction(self.engine) as conn:
            if self.backend == "postgresql":
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": WRITE_LOCK})
            yield conn

    # --- reading ------------------------------------------------------------------------------------

    async def stamp(self) -> str:
        """Changes whenever the policy or the dry run does: one cheap read, for polling."""
        q = sa.select(sa.select(sa.func.max(version_table.c.number)).scalar_subquery(),
                      sa.select(dry_run_table.c.started_at).scalar_subquery())
        async with self.engine.connect() as conn:
            head, dry = (await conn.execute(q)).one()
        return f"{head or 0}|{dry or ''}"

    async def head(self) -> int:
        """The number of the latest version (0: nothing recorded yet). One indexed read."""
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.max(version_table.c.number)))).scalar() or 0)

    async def current(self, now: datetime) -> tuple[int, list[PolicyLine], datetime | None]:
        """(version, the lines in force now, when the next time-limited line expires)."""
        c = line_table.c
        async with self.engine.connect() as conn:
            head = int((await conn.execute(sa.select(sa.func.max(version_table.c.number)))).scalar() or 0)
            rows = (await conn.execute(sa.select(line_table).where(_live()).order_by(c.id))).all()
        lines: list[PolicyLine] = []
        upcoming: datetime | None = None
        stamp = _stamp(now)
        for r in rows:
            if r.expires_at is not None:
                if r.expires_at <= stamp:
                    continue  # lapsed: a time-limited grant ends by itself
                expiry = _time(r.expires_at)
                upcoming = expiry if upcoming is None else min(upcoming, expiry)
            lines.append(_line(r))
        return head, lines, upcoming

    async def live(self, now: datetime | None = None) -> list[tuple[PolicyLine, datetime | None]]:
        """The lines in force with their time limit; lines that have lapsed by ``now`` are left out."""
        stamp = _stamp(now or datetime.now(UTC))
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(line_table).where(_live()).order_by(line_table.c.id))).all()
        return [(_line(r), _time(r.expires_at) if r.expires_at else None) for r in rows
                if r.expires_at is None or r.expires_at > stamp]

    async def live_at_head(self, now: datetime | None = None) -> tuple[int, list[tuple[PolicyLine, datetime | None]]]:
        """The latest version number and its lines in force, read consistently (for a change that
        replaces the whole policy: it is committed against that version)."""
        while True:
            head = await self.head()
            lines = await self.live(now)
            if await self.head() == head:
                return head, lines

    async def lines_at(self, version: int) -> list[tuple[PolicyLine, datetime | None]]:
        """The lines of version ``version`` as recorded, each with its time limit."""
        if not 0 <= version <= await self.head():
            raise PolicyConflict(f"there is no policy version {version}; the latest is {await self.head()}")
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(line_table).where(_live(version)).order_by(line_table.c.id))).all()
        return [(_line(r), _time(r.expires_at) if r.expires_at else None) for r in rows]

    async def versions(self, limit: int = 50, before: int | None = None) -> list[PolicyVersion]:
        """Versions newest first; ``before``: the last number of the previous page."""
        v = version_table.c
        q = sa.select(version_table).order_by(v.number.desc()).limit(limit)
        if before is not None:
            q = q.where(v.number < before)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(q)).all()
        return [PolicyVersion(r.number, _time(r.at), r.author, r.reason, r.source, r.added, r.removed, r.digest)
                for r in rows]

    async def version(self, number: int) -> PolicyVersion | None:
        found = await self.versions(limit=1, before=number + 1)
        return found[0] if found and found[0].number == number else None

    async def diff(self, a: int, b: int) -> tuple[list[PolicyLine], list[PolicyLine]]:
        """(lines in b and not in a, lines in a and not in b), as recorded (time limits aside)."""
        old = [x for x, _ in await self.lines_at(a)]
        new = [x for x, _ in await self.lines_at(b)]
        old_set, new_set = set(old), set(new)
        return [x for x in new if x not in old_set], [x for x in old if x not in new_set]

    # --- writing ------------------------------------------------------------------------------------

    async def commit(self, *, add: Sequence[tuple[PolicyLine, datetime | None]], remove: Sequence[PolicyLine],
                     author: str, reason: str, source: str, now: datetime, base: int | None = None,
                     then: Callable[[PolicyVersion, list[PolicyLine]], Awaitable[None]] | None = None) -> PolicyVersion:
        """Record a new version: ``remove`` leaves force, ``add`` enters it. Lines whose time limit has
        passed leave the record of what is in force with it (so they can be granted again).
        ``then(version, lines in force after it)`` runs inside the transaction (validation, the
        audit event): if it raises, nothing is recorded."""
        if not add and not remove:
            raise PolicyConflict("the change adds and removes nothing")
        twice = sorted({format_line(x) for x in remove if list(remove).count(x) > 1}
                       | {format_line(x) for x, _ in add if [y for y, _ in add].count(x) > 1})
        if twice:
            raise PolicyConflict("listed twice: " + "; ".join(twice))
        c = line_table.c
        stamp = _stamp(now)
        async with self._write() as conn:
            head = int((await conn.execute(sa.select(sa.func.max(version_table.c.number)))).scalar() or 0)
            if base is not None and base != head:
                raise PolicyConflict(f"the policy changed meanwhile (version {head}, you started from {base}): "
                                     "look at the new version and make your change again")
            rows = (await conn.execute(sa.select(line_table).where(_live()))).all()
            live: dict[PolicyLine, list[int]] = {}
            lapsed: list[int] = []
            for r in rows:
                if r.expires_at is not None and r.expires_at <= stamp:
                    lapsed.append(r.id)
                else:
                    live.setdefault(_line(r), []).append(r.id)
            gone = [x for x in remove if x not in live]
            if gone:
                raise PolicyConflict("not in force, cannot be removed: " + "; ".join(format_line(x) for x in gone))
            removing = set(remove)
            dupes = [x for x, _ in add if x in live and x not in removing]
            if dupes:
                raise PolicyConflict("already in force: " + "; ".join(format_line(x) for x in dupes))
            number = head + 1
            ids = [i for x in remove for i in live[x]] + lapsed
            if ids:
                await conn.execute(line_table.update().where(c.id.in_(ids)).values(version_to=number))
            if add:
                await conn.execute(line_table.insert(), [
                    {**_values(x), "version_from": number, "expires_at": _stamp(e) if e else None} for x, e in add])
            after = [x for x in live if x not in removing] + [x for x, _ in add]
            version = PolicyVersion(number, now, author, reason, source, len(add), len(remove), digest_of(after))
            await conn.execute(version_table.insert().values(
                number=number, at=_stamp(now), author=author, reason=reason, source=source, added=len(add),
                removed=len(remove), digest=version.digest))
            if then is not None:
                await then(version, after)
            if self.backend == "postgresql":  # delivered to every listener when this transaction commits
                await conn.execute(sa.text("SELECT pg_notify(:ch, :v)"), {"ch": CHANNEL, "v": str(number)})
        return version

    # --- dry run ------------------------------------------------------------------------------------

    async def dry_run(self) -> tuple[str, str, datetime, str] | None:
        """(CSV lines, started by, when, why) of the proposal every gateway evaluates, if any."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(dry_run_table))).first()
        return None if row is None else (row.lines, row.started_by, _time(row.started_at), row.reason)

    async def set_dry_run(self, csv_text: str | None, *, by: str, reason: str, now: datetime,
                          then: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start (``csv_text``) or stop (None) the dry run; it reaches the gateways like a change."""
        async with self._write() as conn:
            await conn.execute(dry_run_table.delete())
            if csv_text is not None:
                await conn.execute(dry_run_table.insert().values(id=1, lines=csv_text, started_by=by,
                                                                 started_at=_stamp(now), reason=reason))
            if then is not None:
                await then()
            if self.backend == "postgresql":
                await conn.execute(sa.text("SELECT pg_notify(:ch, 'dry-run')"), {"ch": CHANNEL})
