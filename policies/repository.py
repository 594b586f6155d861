"""The versioned policy repository: every line with the versions it lived in, every change numbered.

A SQL database (SQLite, or PostgreSQL shared by every replica) holds

``policy_line``     each line with ``version_from`` (the change that added it) and ``version_to``
                    (the change that removed it; NULL while in force) and an optional
                    ``expires_at`` (a time-limited grant, from an approved sharing request)
``policy_version``  each change: number, time, author, reason, source, lines added and removed
``policy_dry_run``  at most one proposed policy that every gateway evaluates without enforcing
``casbin_rule``     the lines of the version in force, in the standard table of pycasbin's
                    SQLAlchemy adapters (:mod:`policies.casbin_rule`), written in the same
                    transaction as every version; gateways load their policy from it through
                    the maintained adapter, and other Casbin tools can read it

So the policy of any version is a query (``version_from <= N < version_to``), a diff between
two versions is two, and a rollback is a new version whose lines are an old one's. Writers
take a lock (``BEGIN IMMEDIATE`` on SQLite, an advisory lock on PostgreSQL) and may name the
version they started from: a change made meanwhile by someone else makes theirs fail rather
than silently undo it. On PostgreSQL every change sends ``NOTIFY hutong_policy`` on commit
(see :mod:`policies.watcher`).

The policy in force is loaded through ``casbin-async-sqlalchemy-adapter``'s ``load_policy``, read in
one transaction with the version it must equal: a ``casbin_rule`` changed outside hutong is
refused, never enforced or overwritten silently (see :mod:`policies.casbin_rule`). Changing
the policy is :mod:`policies.admin`'s business, noticing changes the watcher's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import casbin
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from gateway.sqlite_files import create_tables, sqlite_store, store_engine, write_transaction
from policies.casbin_rule import (
    SKEW,
    TABLE,
    CasbinRule,
    differences,
    edited,
    install_triggers,
    line_of_row,
    load_rules,
    readable,
    row_of,
    unstorable,
)
from policies.lines import ARITY, PolicyLine, format_line, lines_of
from policies.validate import PolicyError

__all__ = ["CHANNEL", "InForce", "PolicyConflict", "PolicyRepository", "PolicyVersion", "metadata"]

log = logging.getLogger("hutong.policies")

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
# The policy in force, exactly as the maintained adapter defines its table (id, ptype, v0 .. v5).
rule_table = CasbinRule.__table__.to_metadata(metadata)
# One row (id 1): how many writes casbin_rule has had, counted by triggers; part of the stamp, so
# that a direct edit of casbin_rule is noticed at the next poll. Its presence also says that
# casbin_rule has been filled from the versions (an existing store is backfilled once).
writes_table = sa.Table(
    "policy_rule_writes", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
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
    overwritten: tuple[str, ...] = ()  # how casbin_rule, changed outside hutong, differed before it (rewritten)


@dataclass(slots=True)
class InForce:
    """The policy in force, as a gateway loads it: casbin_rule through the adapter, checked against
    the version it must hold, time-limited lines that have lapsed left out."""

    stamp: str  # read with it (see PolicyRepository.stamp)
    version: int
    enforcer: casbin.Enforcer
    upcoming: datetime | None  # when the next time-limited line lapses
    problems: list[str]  # casbin_rule differs from the version: refuse it (empty: it does not)
    lapsed: int  # lines still in casbin_rule whose time limit has passed (to remove)


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


_STAMP = sa.select(sa.select(sa.func.max(version_table.c.number)).scalar_subquery(),
                   sa.select(dry_run_table.c.started_at).scalar_subquery(),
                   sa.select(writes_table.c.n).where(writes_table.c.id == 1).scalar_subquery())


def _stamp_of(head: int | None, dry: str | None, writes: int | None) -> str:
    return f"{head or 0}|{dry or ''}|{writes or 0}"


async def _rules(conn: AsyncConnection) -> list[tuple[int, PolicyLine | None]]:
    """casbin_rule's rows: (id, the line Casbin reads from it, or None)."""
    rows = (await conn.execute(sa.select(rule_table).order_by(rule_table.c.id))).all()
    return [(r.id, line_of_row(r)) for r in rows]


async def _differences(conn: AsyncConnection, head: int, now: datetime) -> list[str]:
    rows = (await conn.execute(sa.select(line_table).where(_live()).order_by(line_table.c.id))).all()
    return _rule_differences(await _rules(conn), [(_line(r), r.expires_at) for r in rows], head, now)


def _rule_differences(rules: list[tuple[int, PolicyLine | None]], live: Sequence[tuple[PolicyLine, str | None]],
                      head: int, now: datetime) -> list[str]:
    """How casbin_rule's rows differ from version ``head``'s lines in force (``casbin_rule.differences``)."""
    found = [x for _, x in rules if readable(x)]
    return differences(found, live, _stamp(now + SKEW), head, unread=len(rules) - len(found))


async def _lapsed_rows(conn: AsyncConnection, now: datetime) -> list[Any]:
    """The rows in force whose time limit has passed by ``now``."""
    c = line_table.c
    return list((await conn.execute(sa.select(line_table).where(_live(), c.expires_at.is_not(None),
                                                                 c.expires_at <= _stamp(now)))).all())


async def _delete_rules(conn: AsyncConnection, ids: Sequence[int]) -> None:
    for i in range(0, len(ids), 500):
        await conn.execute(rule_table.delete().where(rule_table.c.id.in_(ids[i:i + 500])))


async def _write_rules(conn: AsyncConnection, rules: Sequence[tuple[int, PolicyLine | None]],
                       lines: Sequence[PolicyLine]) -> None:
    """Make casbin_rule hold ``lines``, each once, and nothing else: rows already right stay."""
    wanted = set(lines)
    kept: set[PolicyLine] = set()
    drop: list[int] = []
    for i, x in rules:
        if x is not None and x in wanted and x not in kept:
            kept.add(x)
        else:
            drop.append(i)
    await _delete_rules(conn, drop)
    new = [row_of(x) for x in lines if x not in kept]
    if new:
        await conn.execute(rule_table.insert(), new)


class PolicyRepository:
    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.backend = sa.engine.make_url(url).get_backend_name()
        self.engine = store_engine(url, engine)

    @property
    def name(self) -> str:
        return f"policy store {sa.engine.make_url(self.url).render_as_string(hide_password=True)}"

    async def init(self) -> None:
        """Create the tables that are missing, the triggers that count writes to casbin_rule, and fill
        casbin_rule from the version in force if this store has never done so (an existing store)."""
        await create_tables(self.engine, metadata)
        if await self._initialised():
            return
        async with self._write() as conn:
            if not await install_triggers(conn, self.backend):
                log.warning("%s: on %s, a direct edit of %s is noticed at the next policy version only",
                            self.name, self.backend, TABLE)
            if (await conn.execute(sa.select(writes_table.c.n).where(writes_table.c.id == 1))).first() is None:
                await self._backfill(conn)
                await conn.execute(writes_table.insert().values(id=1, n=0))

    async def _initialised(self) -> bool:
        """casbin_rule filled and its triggers present: one cheap read, no lock."""
        async with self.engine.connect() as conn:
            if (await conn.execute(sa.select(writes_table.c.n).where(writes_table.c.id == 1))).first() is None:
                return False
            if self.backend == "sqlite":
                q = "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'hutong_casbin_rule_%'"
                return (await conn.exec_driver_sql(q)).scalar() == 3
            if self.backend == "postgresql":
                q = "SELECT count(*) FROM pg_trigger WHERE tgname = 'hutong_casbin_rule_written'"
                return (await conn.exec_driver_sql(q)).scalar() == 1
            return True

    async def _backfill(self, conn: AsyncConnection) -> None:
        """casbin_rule for a store that has never had it: the lines in force now. A casbin_rule that
        already holds other rules (another application's?) is not taken over."""
        head = int((await conn.execute(sa.select(sa.func.max(version_table.c.number)))).scalar() or 0)
        live = [(_line(r), r.expires_at) for r in (await conn.execute(
            sa.select(line_table).where(_live()).order_by(line_table.c.id))).all()]
        now = datetime.now(UTC)
        rules = await _rules(conn)
        if rules:
            problems = _rule_differences(rules, live, head, now)
            if problems:
                raise PolicyError([
                    f"{self.name}: {TABLE} already holds rules that are not this store's policy (version {head}); "
                    f"hutong keeps the policy in force there: give the policy store a database (or schema) of its "
                    f"own, or empty {TABLE} to let hutong fill it", *problems])
            return
        stamp = _stamp(now)
        lines = [x for x, e in live if e is None or e > stamp]
        for x in lines:
            if problem := unstorable(x):
                log.error("%s: %s; it stays out of %s, which is refused until it is removed", self.name, problem,
                          TABLE)
        lines = [x for x in lines if unstorable(x) is None]
        if lines:
            await conn.execute(rule_table.insert(), [row_of(x) for x in lines])
            log.info("%s: %s filled with the %d line(s) of policy version %d", self.name, TABLE, len(lines), head)

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
        """Changes whenever the policy, casbin_rule or the dry run does: one cheap read, for polling."""
        async with self.engine.connect() as conn:
            return _stamp_of(*(await conn.execute(_STAMP)).one())

    async def load(self, now: datetime) -> InForce:
        """The policy in force ``now``: casbin_rule loaded through the maintained adapter into a new
        enforcer, read in one transaction with the version it must hold and compared with it.

        The adapter builds an ORM object per row (2 s for 100,000 lines): the read runs in a worker
        thread, on a connection of its own, so the gateway's event loop keeps serving meanwhile."""
        in_memory = self.backend == "sqlite" and sa.engine.make_url(self.url).database in (None, "", ":memory:")
        if in_memory or self.backend not in ("sqlite", "postgresql"):
            return await self._load(self.engine, now)
        return await asyncio.to_thread(asyncio.run, self._load_apart(now))

    async def _load_apart(self, now: datetime) -> InForce:
        engine = create_async_engine(self.url, hide_parameters=True, poolclass=NullPool)
        if self.backend == "sqlite":
            sqlite_store(engine)
        try:
            return await self._load(engine, now)
        finally:
            await engine.dispose()

    async def _load(self, engine: AsyncEngine, now: datetime) -> InForce:
        from policies.store import new_enforcer

        enforcer = new_enforcer()
        async with engine.connect() as conn:
            if engine.dialect.name == "postgresql":  # every statement below sees the same snapshot
                await conn.execution_options(isolation_level="REPEATABLE READ")
            async with conn.begin():
                head, dry, writes = (await conn.execute(_STAMP)).one()
                rows = (await conn.execute(sa.select(line_table).where(_live()).order_by(line_table.c.id))).all()
                count = int((await conn.execute(sa.select(sa.func.count()).select_from(rule_table))).scalar() or 0)
                with contextlib.suppress(TypeError, IndexError, ValueError):  # a row Casbin cannot read:
                    await load_rules(conn, enforcer)  # counted below as not loaded
        version = int(head or 0)
        found: list[PolicyLine] = [tuple(x) for x in lines_of(enforcer)]
        live = [(_line(r), r.expires_at) for r in rows]
        problems = differences(found, live, _stamp(now + SKEW), version, unread=count - len(found))
        stamp = _stamp(now)
        lapsed = {x for x, e in live if e is not None and e <= stamp}
        present = set(found)
        if lapsed:  # a time-limited grant ends by itself, version or not
            model = enforcer.get_model()
            for sec in ("p", "g"):
                for ptype, assertion in model[sec].items():
                    assertion.policy = [r for r in assertion.policy if (ptype, *r) not in lapsed]
        enforcer.build_role_links()
        upcoming = min((_time(e) for x, e in live if e is not None and e > stamp and x in present), default=None)
        return InForce(_stamp_of(head, dry, writes), version, enforcer, upcoming,
                       [edited(version), *problems] if problems else [], len(lapsed & present))

    async def casbin_rule_lines(self) -> list[PolicyLine | None]:
        """What casbin_rule holds, row by row, as Casbin reads it (None: a row it cannot read)."""
        async with self.engine.connect() as conn:
            return [x for _, x in await _rules(conn)]

    async def casbin_rule_problems(self, now: datetime | None = None) -> list[str]:
        """How casbin_rule differs from the version in force (empty: it holds it)."""
        now = now or datetime.now(UTC)
        async with self.engine.connect() as conn, conn.begin():
            head = int((await conn.execute(sa.select(sa.func.max(version_table.c.number)))).scalar() or 0)
            problems = await _differences(conn, head, now)
        return [edited(head), *problems] if problems else []

    async def prune_lapsed(self, now: datetime) -> int:
        """Remove from casbin_rule the time-limited lines that have lapsed by ``now`` (the versions keep
        them until the next one records their end): what outside Casbin tools read stops granting them."""
        async with self._write() as conn:
            lapsed = {_line(r) for r in await _lapsed_rows(conn, now)}
            ids = [i for i, x in await _rules(conn) if x in lapsed] if lapsed else []
            await _delete_rules(conn, ids)
        return len(ids)

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

    async def lapsed(self, now: datetime) -> set[PolicyLine]:
        """The lines of the version in force whose time limit has passed by ``now``."""
        async with self.engine.connect() as conn:
            return {_line(r) for r in await _lapsed_rows(conn, now)}

    async def lapsed_ever(self, now: datetime) -> set[PolicyLine]:
        """Every line that was ever granted for a limited time, and whose limit has passed by ``now``."""
        c = line_table.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(line_table).where(c.expires_at.is_not(None),
                                                                   c.expires_at <= _stamp(now)))).all()
        return {_line(r) for r in rows}

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
                     then: Callable[[PolicyVersion, list[PolicyLine]], Awaitable[None]] | None = None,
                     resync: bool = False) -> PolicyVersion:
        """Record a new version: ``remove`` leaves force, ``add`` enters it, and casbin_rule is made to
        hold the lines in force after it, in the same transaction. Lines whose time limit has passed
        leave the record of what is in force with it (so they can be granted again).
        ``then(version, lines in force after it)`` runs inside the transaction (validation, the
        audit event): if it raises, nothing is recorded.

        A casbin_rule changed outside hutong makes the change fail (PolicyConflict listing the
        differences), unless ``resync``: a change that states the whole policy (an import, a
        rollback) then rewrites it, and says so in the version's reason and ``overwritten``; such a
        change may add and remove nothing."""
        if not add and not remove and not resync:
            raise PolicyConflict("the change adds and removes nothing")
        removed, added = Counter(remove), Counter(x for x, _ in add)  # counted once: imports hold 100k lines
        twice = sorted({format_line(x) for x, n in (*removed.items(), *added.items()) if n > 1})
        if twice:
            raise PolicyConflict("listed twice: " + "; ".join(twice))
        unfit = [p for x, _ in add if (p := unstorable(x))]
        if unfit:
            raise PolicyError(unfit)
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
            rules = await _rules(conn)
            edits = _rule_differences(rules, [(_line(r), r.expires_at) for r in rows], head, now)
            if edits and not resync:
                raise PolicyConflict("\n".join([edited(head), *edits]))
            if not add and not remove and not edits:
                raise PolicyConflict("the change adds and removes nothing")
            if edits:
                reason = f"{reason} [{TABLE}, changed outside hutong, rewritten to this version]"
            number = head + 1
            ids = [i for x in remove for i in live[x]] + lapsed
            for at in range(0, len(ids), 500):  # asyncpg takes at most 32,767 parameters a statement
                await conn.execute(line_table.update().where(c.id.in_(ids[at:at + 500])).values(version_to=number))
            if add:
                await conn.execute(line_table.insert(), [
                    {**_values(x), "version_from": number, "expires_at": _stamp(e) if e else None} for x, e in add])
            after = [x for x in live if x not in removing] + [x for x, _ in add]
            await _write_rules(conn, rules, after)
            version = PolicyVersion(number, now, author, reason, source, len(add), len(remove), digest_of(after),
                                    tuple(edits))
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
