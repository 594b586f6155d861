"""The audit store: insert-only tables over SQLAlchemy async Core, SQLite or PostgreSQL.

``audit_record`` holds the chain (seq, time, kind, body, prev_hash, hash) plus search columns
copied from the body; ``audit_subject`` and ``audit_field`` index a record's data subjects and
fields; ``audit_checkpoint`` holds the signed chain heads. Nothing here updates or deletes a
row, except ``delete_through`` which only the database owner runs, through
``gateway.audit.retention`` (after a verified archive, recorded as an admin event; docs/audit.md).

Every writer takes the chain lock for its transaction (``BEGIN IMMEDIATE`` on SQLite,
``pg_advisory_xact_lock`` on PostgreSQL), reads the head and appends after it: any number of
processes sharing the store keep one chain.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.audit.record import GENESIS_HASH, derive, parse_time
from gateway.sqlite_files import create_tables, store_engine, write_transaction

__all__ = ["SEARCH_FILTERS", "AuditStore", "Head", "StorePermissionError", "insert_only_grants", "metadata"]

metadata = sa.MetaData()
record_table = sa.Table(
    "audit_record", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("time", sa.String(27), nullable=False, index=True),  # 2025-01-31T08:00:00.000000Z
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False, index=True),
    # Copies of body fields for search; verify checks they agree with the body.
    sa.Column("client_id", sa.String(200), index=True),
    sa.Column("department", sa.String(200), index=True),
    sa.Column("acting_user", sa.String(200), index=True),
    sa.Column("purpose", sa.String(200), index=True),
    sa.Column("outcome", sa.String(200), index=True),
)
subject_table = sa.Table(
    "audit_subject", metadata,
    sa.Column("subject_hmac", sa.String(200), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
)
field_table = sa.Table(
    "audit_field", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("dataset", sa.String(200), primary_key=True),
    sa.Column("field", sa.String(200), primary_key=True),
    sa.Column("disposition", sa.String(200), primary_key=True),
    sa.Index("ix_audit_field_dataset_field", "dataset", "field"),
)
checkpoint_table = sa.Table(
    "audit_checkpoint", metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("time", sa.String(27), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
    # The writer's checkpoint interval, signed with the rest (NULL: a checkpoint of the first format).
    sa.Column("every", sa.BigInteger, nullable=True),
)
TABLES = ("audit_record", "audit_subject", "audit_field", "audit_checkpoint")
CHAIN_LOCK = 0x6875746F6E67  # "hutong": the advisory lock every PostgreSQL writer takes
ROLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
SEARCH_FILTERS = ("time_from", "time_to", "kind", "department", "client_id", "acting_user", "purpose", "outcome",
                  "dataset", "field", "disposition", "subject_hmac")


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str
    time: str
    signed: int = 0  # the seq of the last checkpoint
    signed_every: int | None = None  # the interval that checkpoint signs (None: none, or the first format)


class StorePermissionError(ValueError):
    """The database role may not do what was asked (say, delete as the gateway's insert-only role)."""


def insert_only_grants(role: str) -> str:
    """SQL that leaves ``role`` (the gateway's) able to read and append, never to change or remove.
    Run it as the tables' owner, which must be another role."""
    if not ROLE.fullmatch(role):
        raise ValueError(f"role {role!r}: use a plain identifier (letters, digits, _)")
    tables = ", ".join(TABLES)
    return (f"REVOKE ALL ON {tables} FROM {role};\n"
            f"GRANT SELECT, INSERT ON {tables} TO {role};\n")


class AuditStore:
    """The audit tables of one database. ``durable=False`` commits without waiting for the disk.

    ``checkpoint_every`` and ``head_mark`` are what the configuration says about this store (set
    by ``AuditWriter.from_settings``): ``verify_store`` holds the chain to them when its caller
    gives nothing else. They come from the configuration, never from the store's content."""

    def __init__(self, url: str, *, durable: bool = True, engine: AsyncEngine | None = None,
                 checkpoint_every: int | None = None, head_mark: Path | None = None) -> None:
        self.url = url
        self.durable = durable
        self.backend = sa.engine.make_url(url).get_backend_name()
        self.engine = store_engine(url, engine, synchronous="FULL" if durable else "OFF")
        self.checkpoint_every = checkpoint_every
        self.head_mark = head_mark

    async def init(self) -> None:
        """Create the tables that are missing, and add the columns of a newer version to older ones
        (on PostgreSQL only the tables' owner may: ``hutong audit init --owner-url``)."""
        await create_tables(self.engine, metadata)
        async with self.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns(
                "audit_checkpoint")})
        if "every" not in columns:
            try:
                async with self.engine.begin() as conn:
                    await conn.execute(sa.text("ALTER TABLE audit_checkpoint ADD COLUMN every BIGINT"))
            except sa.exc.DBAPIError as exc:
                async with self.engine.connect() as conn:  # another worker may have added it meanwhile
                    again = await conn.run_sync(lambda c: {col["name"] for col in sa.inspect(c).get_columns(
                        "audit_checkpoint")})
                if "every" not in again:
                    raise StorePermissionError(
                        "the audit tables are of an earlier version (audit_checkpoint has no column every) and "
                        f"this role may not add it ({type(exc.orig).__name__}): run `hutong audit init --owner-url "
                        "URL` once with the tables' owner") from None

    async def role(self) -> str:
        """The database role this store connects as ("" for SQLite, which has none)."""
        if self.backend != "postgresql":
            return ""
        async with self.engine.connect() as conn:
            return str((await conn.execute(sa.text("SELECT current_user"))).scalar())

    async def check_can_delete(self, conn: AsyncConnection) -> None:
        """StorePermissionError naming the role and the privilege it lacks, before anything is deleted."""
        if self.backend != "postgresql":
            return
        role = (await conn.execute(sa.text("SELECT current_user"))).scalar()
        lacking = [t for t in TABLES if not (await conn.execute(
            sa.text("SELECT has_table_privilege(current_user, :t, 'DELETE')"), {"t": t})).scalar()]
        if lacking:
            raise StorePermissionError(
                f"the database role {role!r} has no DELETE privilege on {', '.join(lacking)}: pruning needs it, "
                "and only the tables' owner should have it (the gateway's role is insert-only, see `hutong audit "
                "grants`); give --owner-url the owner's URL")

    async def close(self) -> None:
        await self.engine.dispose()

    # --- writing ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def write_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A transaction holding the chain lock: commit on exit, roll back on error."""
        async with write_transaction(self.engine) as conn:
            if self.backend == "postgresql":
                # The chain lock, and (as SET LOCAL) synchronous_commit: durable, the commit waits for the
                # WAL flush whatever the server, database or role default says; else it does not.
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k), set_config('synchronous_commit', :s, "
                                           "true)"), {"k": CHAIN_LOCK, "s": "on" if self.durable else "off"})
            yield conn

    async def head(self, conn: AsyncConnection) -> Head:
        """The last record (or, after pruning everything, the last checkpoint) and the last
        checkpoint's seq; genesis if none."""
        r, c = record_table.c, checkpoint_table.c
        last = sa.select(c.seq).order_by(c.seq.desc()).limit(1).scalar_subquery()
        last_every = sa.select(c.every).order_by(c.seq.desc()).limit(1).scalar_subquery()
        row = (await conn.execute(sa.select(r.seq, r.hash, r.time, last.label("signed"), last_every.label("every"))
                                  .order_by(r.seq.desc()).limit(1))).first()
        if row is not None:
            return Head(int(row.seq), row.hash, row.time, int(row.signed or 0), row.every)
        row = (await conn.execute(sa.select(c.seq, c.hash, c.time, c.every).order_by(c.seq.desc()).limit(1))).first()
        if row is None:
            return Head(0, GENESIS_HASH, "")
        return Head(int(row.seq), row.hash, row.time, int(row.seq), row.every)

    async def checkpoint_at(self, conn: AsyncConnection, seq: int) -> dict[str, Any] | None:
        row = (await conn.execute(sa.select(checkpoint_table).where(checkpoint_table.c.seq == seq))).mappings().first()
        return dict(row) if row is not None else None

    async def first_record(self, conn: AsyncConnection) -> dict[str, Any] | None:
        """The seq and prev_hash of the first record stored (where the live chain starts)."""
        r = record_table.c
        row = (await conn.execute(sa.select(r.seq, r.prev_hash).order_by(r.seq).limit(1))).first()
        return {"seq": int(row.seq), "prev_hash": row.prev_hash} if row is not None else None

    async def record_at(self, conn: AsyncConnection, seq: int) -> Head | None:
        """The seq, hash and time of the record at ``seq``, if there is one."""
        r = record_table.c
        row = (await conn.execute(sa.select(r.seq, r.hash, r.time).where(r.seq == seq))).first()
        return Head(int(row.seq), row.hash, row.time) if row is not None else None

    async def insert(self, conn: AsyncConnection, records: Sequence[Mapping[str, Any]],
                     checkpoint: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> None:
        """Insert records (seq, time, kind, body as canonical JSON text, prev_hash, hash) and their
        search rows, and maybe checkpoints (one or a list), in the caller's transaction."""
        rows, subjects, fields = [], [], []
        for rec in records:
            derived = rec.get("_derived") or derive(orjson.loads(rec["body"]))
            rows.append({**{k: v for k, v in rec.items() if not k.startswith("_")}, **derived.columns})
            subjects += [{"seq": rec["seq"], "subject_hmac": s} for s in derived.subjects]
            fields += [{"seq": rec["seq"], "dataset": d, "field": f, "disposition": p} for d, f, p in derived.fields]
        if rows:
            await conn.execute(record_table.insert(), rows)
        if subjects:
            await conn.execute(subject_table.insert(), subjects)
        if fields:
            await conn.execute(field_table.insert(), fields)
        checkpoints = [checkpoint] if isinstance(checkpoint, Mapping) else list(checkpoint or [])
        if checkpoints:
            await conn.execute(checkpoint_table.insert(), [{"every": None, **c} for c in checkpoints])

    # --- reading ------------------------------------------------------------------------------

    async def count(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(sa.func.count()).select_from(record_table))).scalar() or 0)

    async def bounds(self) -> tuple[int, int] | None:
        """The first and last seq of the records stored, None if there are none."""
        r = record_table.c
        async with self.engine.connect() as conn:
            lo, hi = (await conn.execute(sa.select(sa.func.min(r.seq), sa.func.max(r.seq)))).one()
        return None if lo is None else (int(lo), int(hi))

    async def record(self, seq: int) -> dict[str, Any] | None:
        """The record at ``seq`` as stored (body as text), None if there is none."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(record_table).where(record_table.c.seq == seq))).mappings().first()
        return dict(row) if row is not None else None

    async def last_head(self) -> Head:
        """What ``head`` gives, outside a write transaction."""
        async with self.engine.connect() as conn:
            return await self.head(conn)

    async def checkpoints(self, first: int | None = None, last: int | None = None) -> list[dict[str, Any]]:
        c = checkpoint_table.c
        q = sa.select(checkpoint_table).order_by(c.seq)
        if first is not None:
            q = q.where(c.seq >= first)
        if last is not None:
            q = q.where(c.seq <= last)
        async with self.engine.connect() as conn:
            return [dict(r) for r in (await conn.execute(q)).mappings()]

    async def records(self, first: int | None = None, last: int | None = None, *, chunk: int = 2000,
                      with_index: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Records in seq order, in chunks (keyset). ``with_index`` adds what the search tables hold
        for each (``_subjects``, ``_fields``) so that verify can compare them with the body."""
        r = record_table.c
        after = (first - 1) if first is not None else None
        while True:
            q = sa.select(record_table).order_by(r.seq).limit(chunk)
            if after is not None:
                q = q.where(r.seq > after)
            if last is not None:
                q = q.where(r.seq <= last)
            async with self.engine.connect() as conn:
                rows = [dict(x) for x in (await conn.execute(q)).mappings()]
                if not rows:
                    return
                if with_index:
                    lo, hi = rows[0]["seq"], rows[-1]["seq"]
                    subj: dict[int, set[str]] = {}
                    for s in (await conn.execute(sa.select(subject_table).where(
                            subject_table.c.seq.between(lo, hi)))).mappings():
                        subj.setdefault(s["seq"], set()).add(s["subject_hmac"])
                    flds: dict[int, set[tuple[str, str, str]]] = {}
                    for f in (await conn.execute(sa.select(field_table).where(
                            field_table.c.seq.between(lo, hi)))).mappings():
                        flds.setdefault(f["seq"], set()).add((f["dataset"], f["field"], f["disposition"]))
                    for row in rows:
                        row["_subjects"] = subj.get(row["seq"], set())
                        row["_fields"] = flds.get(row["seq"], set())
            for row in rows:
                yield row
            after = rows[-1]["seq"]

    async def seq_of_hash(self, hash_: str) -> int | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(record_table.c.seq).where(record_table.c.hash == hash_)
                                      .order_by(record_table.c.seq).limit(1))).first()
        return int(row.seq) if row else None

    async def seq_of_successor(self, hash_: str) -> int | None:
        """The seq of a record whose prev_hash is ``hash_`` (the one that links to it)."""
        async with self.engine.connect() as conn:
            row = (await conn.execute(sa.select(record_table.c.seq).where(record_table.c.prev_hash == hash_)
                                      .order_by(record_table.c.seq).limit(1))).first()
        return int(row.seq) if row else None

    async def seq_range(self, since: str | None = None, until: str | None = None) -> tuple[int, int] | None:
        """The first and last seq of the records with since <= time < until (times are
        non-decreasing along the chain, so this is one contiguous run)."""
        r = record_table.c
        q = sa.select(sa.func.min(r.seq), sa.func.max(r.seq))
        if since:
            q = q.where(r.time >= parse_time(since))
        if until:
            q = q.where(r.time < parse_time(until))
        async with self.engine.connect() as conn:
            lo, hi = (await conn.execute(q)).one()
        return None if lo is None else (int(lo), int(hi))

    def _where(self, filters: Mapping[str, Any]) -> list[Any]:
        unknown = sorted(set(filters) - set(SEARCH_FILTERS))
        if unknown:
            raise ValueError(f"unknown search filter(s) {', '.join(unknown)}; known: {', '.join(SEARCH_FILTERS)}")
        r = record_table.c
        conds: list[Any] = []
        for key, value in filters.items():
            if value is None or value == "":
                continue
            if key == "time_from":
                conds.append(r.time >= parse_time(value))
            elif key == "time_to":
                conds.append(r.time < parse_time(value))
            elif key == "subject_hmac":
                conds.append(sa.exists().where(subject_table.c.seq == r.seq, subject_table.c.subject_hmac == value))
            elif key in ("dataset", "field", "disposition"):
                pass  # below, in one EXISTS so that dataset and field match the same entry
            else:
                conds.append(getattr(r, key) == value)
        f = field_table.c
        field_conds = [getattr(f, k) == filters[k] for k in ("dataset", "field", "disposition") if filters.get(k)]
        if field_conds:
            conds.append(sa.exists().where(f.seq == r.seq, *field_conds))
        return conds

    async def newest_admin(self, event: str, match: Callable[[dict[str, Any]], bool] = lambda _body: True,
                           page: int = 500) -> dict[str, Any] | None:
        """The newest admin record of ``event`` whose body ``match``es, read back a page at a time
        (no totals: a start or a verify looks for one record, not a count)."""
        r = record_table.c
        after: int | None = None
        while True:
            query = sa.select(record_table).where(r.kind == "admin").order_by(r.seq.desc()).limit(page)
            if after is not None:
                query = query.where(r.seq < after)
            async with self.engine.connect() as conn:
                rows = [_public(dict(x)) for x in (await conn.execute(query)).mappings()]
            found = next((x for x in rows if x["body"].get("event") == event and match(x["body"])), None)
            if found is not None or len(rows) < page:
                return found
            after = rows[-1]["seq"]

    async def search(self, filters: Mapping[str, Any], limit: int = 50, after_seq: int | None = None
                     ) -> tuple[list[dict[str, Any]], int]:
        """Records matching every filter, newest first, at most ``limit``, older than ``after_seq``
        (the last seq of the previous page), and how many match in all."""
        if not 1 <= limit <= 10_000:
            raise ValueError("limit must be from 1 to 10000")
        conds = self._where(filters)
        r = record_table.c
        page = sa.select(record_table).where(*conds).order_by(r.seq.desc()).limit(limit)
        if after_seq is not None:
            page = page.where(r.seq < after_seq)
        total = sa.select(sa.func.count()).select_from(record_table).where(*conds)
        async with self.engine.connect() as conn:
            rows = [_public(dict(x)) for x in (await conn.execute(page)).mappings()]
            n = int((await conn.execute(total)).scalar() or 0)
        return rows, n

    async def bodies(self, filters: Mapping[str, Any], chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every matching record (oldest first), for reports."""
        conds = self._where(filters)
        r = record_table.c
        after = 0
        while True:
            q = sa.select(record_table).where(*conds, r.seq > after).order_by(r.seq).limit(chunk)
            async with self.engine.connect() as conn:
                rows = [_public(dict(x)) for x in (await conn.execute(q)).mappings()]
            if not rows:
                return
            for row in rows:
                yield row
            after = rows[-1]["seq"]

    # --- retention (database owner only) -------------------------------------------------------

    async def delete_through(self, conn: AsyncConnection, seq: int) -> int:
        """Delete the records up to ``seq`` and the checkpoints before it, in the caller's write
        transaction; the checkpoint at ``seq`` stays as the signed anchor the remaining chain starts
        from. Only ``gateway.audit.retention.prune`` calls this, after checking the archive and
        recording the prune. Needs DELETE: the owner's URL, never the gateway's."""
        await self.check_can_delete(conn)
        c = checkpoint_table.c
        if (await conn.execute(sa.select(c.seq).where(c.seq == seq))).first() is None:
            raise ValueError(f"no checkpoint at seq {seq}: the store can be cut only where a checkpoint signs "
                             "the head")
        n = (await conn.execute(record_table.delete().where(record_table.c.seq <= seq))).rowcount
        await conn.execute(subject_table.delete().where(subject_table.c.seq <= seq))
        await conn.execute(field_table.delete().where(field_table.c.seq <= seq))
        await conn.execute(checkpoint_table.delete().where(c.seq < seq))
        return int(n or 0)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {"seq": int(row["seq"]), "time": row["time"], "kind": row["kind"], "body": orjson.loads(row["body"]),
            "prev_hash": row["prev_hash"], "hash": row["hash"]}
