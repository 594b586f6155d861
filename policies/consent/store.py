"""The consent store: grants, their status history and their uses, over SQLAlchemy async Core.

SQLite by default, PostgreSQL in production, like the client store and the audit log.
Nothing is cached between requests: every lookup reads the database, so a revocation takes
effect on the next request on every gateway worker that shares the store.

``consent_grant``  terms (signed), current status (signed), use count and last use
``consent_event``  status history: who changed what, when, why (each entry signed)
``consent_use``    one row per request that used a grant, for frequency limits and citizens

The gateway asks once per request (:meth:`ConsentStore.candidates`: one SELECT whatever the
number of subjects, their pseudonyms passed as a single array or JSON parameter) and records
the uses it made in one short transaction (:meth:`ConsentStore.record_uses`), which re-counts
frequency-limited grants under a lock, so that concurrent requests cannot overrun a limit.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, date, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gateway.sqlite_files import create_tables, store_engine, write_transaction
from policies.consent.model import Grant, Kind, Status, StatusEvent, Terms
from policies.consent.signing import ConsentSigner

__all__ = ["ConsentStateError", "ConsentStore", "metadata"]

log = logging.getLogger("hutong.consent")

DAY_US = 86_400_000_000

metadata = sa.MetaData()
grant_table = sa.Table(
    "consent_grant", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("subject_kind", sa.String(20)),
    sa.Column("subject_hash", sa.String(64)),  # NULL: a legal basis for every subject
    sa.Column("subject_hint", sa.String(40)),
    sa.Column("requester", sa.String(64), nullable=False),
    sa.Column("providers", sa.Text, nullable=False),  # JSON list
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of dataset.field
    sa.Column("valid_from", sa.String(32), nullable=False),
    sa.Column("valid_until", sa.String(32), nullable=False),
    sa.Column("data_from", sa.String(10)),
    sa.Column("data_to", sa.String(10)),
    sa.Column("max_uses", sa.Integer),
    sa.Column("per_days", sa.Integer),
    sa.Column("explicit_request", sa.Boolean),
    sa.Column("method", sa.String(16)),
    sa.Column("basis_type", sa.String(32)),
    sa.Column("reference", sa.Text),
    sa.Column("covert", sa.Boolean, nullable=False),
    sa.Column("disclose_after", sa.String(10)),
    sa.Column("recorded_by", sa.String(200), nullable=False),
    sa.Column("recorded_via", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_seq", sa.Integer, nullable=False),
    sa.Column("status_at", sa.String(32), nullable=False),
    sa.Column("status_by", sa.String(200), nullable=False),
    sa.Column("status_reason", sa.Text, nullable=False),
    sa.Column("prev_signature", sa.String(128), nullable=False),
    sa.Column("state_signature", sa.String(128), nullable=False),
    sa.Column("use_count", sa.Integer, nullable=False, default=0),
    sa.Column("last_used_at", sa.String(32)),
    sa.Index("ix_consent_grant_lookup", "requester", "purpose", "subject_hash"),
    sa.Index("ix_consent_grant_subject", "subject_hash"),
)
event_table = sa.Table(
    "consent_event", metadata,
    sa.Column("grant_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("by", sa.String(200), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("signature", sa.String(128), nullable=False),
)
use_table = sa.Table(
    "consent_use", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("grant_id", sa.String(40), nullable=False),
    sa.Column("at", sa.BigInteger, nullable=False),  # microseconds since the epoch: window arithmetic in SQL
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Index("ix_consent_use_grant_at", "grant_id", "at"),
)

# Allowed status changes: action -> (from statuses, to status).
TRANSITIONS = {
    "pause": ({Status.ACTIVE}, Status.PAUSED),
    "resume": ({Status.PAUSED}, Status.ACTIVE),
    "revoke": ({Status.ACTIVE, Status.PAUSED}, Status.REVOKED),
}


class ConsentStateError(ValueError):
    """A status change that cannot be made (unknown grant, revoked already, not paused ...)."""


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s.replace("Z", "+00:00"))


def _day(s: str | None) -> date | None:
    return None if s is None else date.fromisoformat(s)


def _us(t: datetime) -> int:
    return int(t.timestamp() * 1_000_000)


class ConsentStore:
    def __init__(self, url: str, signer: ConsentSigner, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.signer = signer
        self.backend = sa.engine.make_url(url).get_backend_name()
        self.engine = store_engine(url, engine)
        self._lookup = self._lookup_statement()

    async def init(self) -> None:
        await create_tables(self.engine, metadata)

    async def close(self) -> None:
        await self.engine.dispose()


    # --- recording and changing -------------------------------------------------------------------

    async def add(self, terms: Terms, *, by: str, reason: str = "recorded",
                  then: Callable[[Grant], Awaitable[None]] | None = None) -> Grant:
        """Sign and store new terms (status ACTIVE). ``then`` runs inside the transaction (the
        audit event): if it fails, nothing is stored."""
        first = StatusEvent(1, terms.created_at, Status.ACTIVE, by, reason)
        first = dataclasses.replace(first, signature=self.signer.sign_state(terms.id, first, ""))
        grant = Grant(terms=terms, key_id=self.signer.key_id, signature=self.signer.sign_terms(terms),
                      status=first.status, status_seq=first.seq, status_at=first.at, status_by=by,
                      status_reason=reason, prev_signature="", state_signature=first.signature, history=[first])
        async with write_transaction(self.engine) as conn:
            await conn.execute(grant_table.insert().values(**self._row(grant)))
            await conn.execute(event_table.insert().values(**self._event_row(terms.id, first)))
            if then is not None:
                await then(grant)
        return grant

    async def change(self, grant_id: str, action: str, *, by: str, reason: str, now: datetime,
                     then: Callable[[Grant, Grant], Awaitable[None]] | None = None) -> tuple[Grant, Grant]:
        """Pause, resume or revoke; returns (before, after). ``then(before, after)`` runs inside the
        transaction: if it fails (the audit log cannot record the change), the change is undone."""
        allowed, to = TRANSITIONS[action]
        if not reason.strip():
            raise ConsentStateError(f"give a reason to {action} {grant_id}")
        async with write_transaction(self.engine) as conn:
            before = await self._get(conn, grant_id, history=True)
            if before is None:
                raise ConsentStateError(f"no consent or legal basis with id {grant_id!r}")
            current = before.effective_status(now)
            if before.status is Status.REVOKED:
                raise ConsentStateError(f"{grant_id} was revoked on {before.status_at.date()}: revocation is final; "
                                        "record a new consent instead")
            if current is Status.EXPIRED and action != "revoke":
                raise ConsentStateError(f"{grant_id} expired on {before.terms.valid_until.date()}: it cannot be "
                                        f"{'paused' if action == 'pause' else 'resumed'}; record a new consent")
            if before.status not in allowed:
                raise ConsentStateError(f"{grant_id} is {before.status.value}: only "
                                        f"{' or '.join(sorted(s.value for s in allowed))} can be {action}d")
            event = StatusEvent(before.status_seq + 1, now, to, by, reason.strip())
            event = dataclasses.replace(event, signature=self.signer.sign_state(grant_id, event,
                                                                               before.state_signature))
            # Only the state read above may be changed: a concurrent change makes this a no-op.
            done = await conn.execute(grant_table.update().where(
                grant_table.c.id == grant_id, grant_table.c.status_seq == before.status_seq).values(
                status=to.value, status_seq=event.seq, status_at=_stamp(now), status_by=by,
                status_reason=event.reason, prev_signature=before.state_signature, state_signature=event.signature))
            if done.rowcount != 1:
                raise ConsentStateError(f"{grant_id} was changed by someone else meanwhile: look again and retry")
            try:
                await conn.execute(event_table.insert().values(**self._event_row(grant_id, event)))
            except IntegrityError:
                raise ConsentStateError(f"{grant_id} was changed by someone else meanwhile: look again and "
                                        "retry") from None
            after = dataclasses.replace(before, status=to, status_seq=event.seq, status_at=now, status_by=by,
                                        status_reason=event.reason, prev_signature=before.state_signature,
                                        state_signature=event.signature, history=[*before.history, event])
            if then is not None:
                await then(before, after)
        return before, after

    # --- reading ----------------------------------------------------------------------------------

    async def get(self, grant_id: str) -> Grant | None:
        async with self.engine.connect() as conn:
            return await self._get(conn, grant_id, history=True)

    async def _get(self, conn: AsyncConnection, grant_id: str, *, history: bool) -> Grant | None:
        row = (await conn.execute(sa.select(grant_table).where(grant_table.c.id == grant_id))).mappings().first()
        if row is None:
            return None
        grant = self._grant(row)
        if history:
            e = event_table.c
            rows = (await conn.execute(sa.select(event_table).where(e.grant_id == grant_id).order_by(e.seq))).all()
            grant.history = [StatusEvent(r.seq, _time(r.at) or datetime.min, Status(r.status), r.by, r.reason,
                                         r.signature) for r in rows]
        return grant

    async def search(self, *, subject_hash: str | None = None, requester: str | None = None,
                   purpose: str | None = None, kind: Kind | None = None, limit: int = 50,
                   after: str | None = None) -> list[Grant]:
        """Grants matching every filter given, newest first; ``after`` is the last id of the previous page."""
        g = grant_table.c
        q = sa.select(grant_table).order_by(g.created_at.desc(), g.id.desc()).limit(limit)
        if subject_hash is not None:
            q = q.where(g.subject_hash == subject_hash)
        if requester is not None:
            q = q.where(g.requester == requester)
        if purpose is not None:
            q = q.where(g.purpose == purpose)
        if kind is not None:
            q = q.where(g.kind == kind.value)
        async with self.engine.connect() as conn:
            if after is not None:
                anchor = (await conn.execute(sa.select(g.created_at).where(g.id == after))).scalar()
                if anchor is None:
                    raise ConsentStateError("after must be the id of the last grant of the previous page")
                q = q.where(sa.or_(g.created_at < anchor, sa.and_(g.created_at == anchor, g.id < after)))
            return [self._grant(r) for r in (await conn.execute(q)).mappings()]

    def _lookup_statement(self) -> sa.Select[Any]:
        g, u = grant_table.c, use_table.c
        in_window = (sa.select(sa.func.count()).select_from(use_table)
                     .where(u.grant_id == g.id, g.per_days.is_not(None),
                            u.at >= sa.bindparam("now_us", type_=sa.BigInteger)
                            - sa.cast(g.per_days, sa.BigInteger) * sa.literal(DAY_US, sa.BigInteger))
                     .scalar_subquery().label("uses_in_window"))
        if self.backend == "postgresql":
            subjects = g.subject_hash == sa.any_(sa.bindparam("hashes", type_=postgresql.ARRAY(sa.String)))
        else:  # SQLite: the pseudonyms travel as one JSON parameter, whatever their number
            subjects = g.subject_hash.in_(sa.select(sa.column("value")).select_from(
                sa.func.json_each(sa.bindparam("hashes"))))
        # The last event of the grant's history: a state older than it is a replayed one.
        e = event_table.c
        last_seq = (sa.select(sa.func.max(e.seq)).where(e.grant_id == g.id).scalar_subquery().label("last_seq"))
        return (sa.select(grant_table, in_window, last_seq)
                .where(g.requester == sa.bindparam("requester"), g.purpose == sa.bindparam("purpose"),
                       sa.or_(subjects, g.subject_hash.is_(None))))

    async def candidates(self, requester: str, purpose: str, subject_hashes: Collection[str],
                         now: datetime) -> list[tuple[Grant, int]]:
        """Every grant of ``requester`` for ``purpose`` naming one of the subjects (or every subject),
        with its uses in its frequency window: one query, whatever the number of subjects. Rows
        that cannot be read, or whose state is not the last of their history, are left out (logged)."""
        hashes: Any = sorted(subject_hashes)
        if self.backend != "postgresql":
            hashes = orjson.dumps(hashes).decode()
        async with self.engine.connect() as conn:
            rows = (await conn.execute(self._lookup, {"requester": requester, "purpose": purpose,
                                                      "hashes": hashes, "now_us": _us(now)})).mappings().all()
        out = []
        for r in rows:
            try:
                grant = self._grant(r)
            except (KeyError, ValueError, TypeError):
                log.error("consent %s cannot be read (edited outside hutong?): ignored", r["id"])
                continue
            if r["last_seq"] != grant.status_seq:
                log.error("consent %s is not in the last state of its history (rolled back?): ignored", grant.id)
                continue
            out.append((grant, int(r["uses_in_window"] or 0)))
        return out

    async def record_uses(self, grants: Collection[Grant], request_id: str, now: datetime) -> set[str]:
        """Count one use of each grant by this request. Frequency-limited grants are re-counted under
        a lock first; the ids of those found at their limit (by a concurrent request) are returned
        and not counted: the caller withholds what it meant to release under them."""
        if not grants:
            return set()
        limited = sorted((g for g in grants if g.terms.max_uses is not None), key=lambda g: g.id)
        refused: set[str] = set()
        now_us = _us(now)
        async with write_transaction(self.engine) as conn:
            if limited:
                if self.backend == "postgresql":
                    for g in limited:  # in id order: two requests never wait on each other in a cycle
                        await conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"), {"k": g.id})
                u = use_table.c
                counts = dict((await conn.execute(
                    sa.select(u.grant_id, sa.func.count()).where(
                        u.grant_id.in_([g.id for g in limited]),
                        u.at >= sa.case(*[(u.grant_id == g.id, now_us - (g.terms.per_days or 0) * DAY_US)
                                          for g in limited]))
                    .group_by(u.grant_id))).all())
                refused = {g.id for g in limited if counts.get(g.id, 0) >= (g.terms.max_uses or 0)}
            used = [g.id for g in grants if g.id not in refused]
            if used:
                await conn.execute(use_table.insert(), [{"grant_id": i, "at": now_us, "request_id": request_id}
                                                        for i in used])
                await conn.execute(grant_table.update().where(grant_table.c.id.in_(used)).values(
                    use_count=grant_table.c.use_count + 1, last_used_at=_stamp(now)))
        return refused

    async def use_counts(self) -> dict[str, int]:
        """Use rows per grant (for verification)."""
        u = use_table.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(u.grant_id, sa.func.count()).group_by(u.grant_id))).all()
        return {r[0]: int(r[1]) for r in rows}

    async def uses(self, grant_id: str, limit: int = 100) -> list[tuple[datetime, str]]:
        """The latest uses of a grant: (time, request id), newest first."""
        u = use_table.c
        async with self.engine.connect() as conn:
            rows = (await conn.execute(sa.select(u.at, u.request_id).where(u.grant_id == grant_id)
                                       .order_by(u.at.desc()).limit(limit))).all()
        return [(datetime.fromtimestamp(r.at / 1_000_000, UTC), r.request_id) for r in rows]

    # --- rows <-> grants ---------------------------------------------------------------------------

    @staticmethod
    def _event_row(grant_id: str, e: StatusEvent) -> dict[str, Any]:
        return {"grant_id": grant_id, "seq": e.seq, "at": _stamp(e.at), "status": e.status.value, "by": e.by,
                "reason": e.reason, "signature": e.signature}

    @staticmethod
    def _row(grant: Grant) -> dict[str, Any]:
        t = grant.terms
        return {
            "id": t.id, "kind": t.kind.value, "subject_kind": t.subject_kind, "subject_hash": t.subject_hash,
            "subject_hint": t.subject_hint, "requester": t.requester,
            "providers": orjson.dumps(list(t.providers)).decode(),
            "purpose": t.purpose, "fields": orjson.dumps(list(t.fields)).decode(),
            "valid_from": _stamp(t.valid_from), "valid_until": _stamp(t.valid_until),
            "data_from": t.data_from.isoformat() if t.data_from else None,
            "data_to": t.data_to.isoformat() if t.data_to else None,
            "max_uses": t.max_uses, "per_days": t.per_days, "explicit_request": t.explicit_request,
            "method": t.method, "basis_type": t.basis_type, "reference": t.reference, "covert": t.covert,
            "disclose_after": t.disclose_after.isoformat() if t.disclose_after else None,
            "recorded_by": t.recorded_by, "recorded_via": t.recorded_via, "created_at": _stamp(t.created_at),
            "key_id": grant.key_id, "signature": grant.signature, "status": grant.status.value,
            "status_seq": grant.status_seq, "status_at": _stamp(grant.status_at), "status_by": grant.status_by,
            "status_reason": grant.status_reason, "prev_signature": grant.prev_signature,
            "state_signature": grant.state_signature, "use_count": grant.use_count,
            "last_used_at": _stamp(grant.last_used_at) if grant.last_used_at else None,
        }

    @staticmethod
    def _grant(r: Any) -> Grant:
        terms = Terms(
            id=r["id"], kind=Kind(r["kind"]), subject_kind=r["subject_kind"], subject_hash=r["subject_hash"],
            subject_hint=r["subject_hint"], requester=r["requester"], providers=tuple(orjson.loads(r["providers"])),
            purpose=r["purpose"], fields=tuple(orjson.loads(r["fields"])),
            valid_from=_time(r["valid_from"]) or datetime.min, valid_until=_time(r["valid_until"]) or datetime.min,
            data_from=_day(r["data_from"]), data_to=_day(r["data_to"]), max_uses=r["max_uses"],
            per_days=r["per_days"], explicit_request=r["explicit_request"], method=r["method"],
            basis_type=r["basis_type"], reference=r["reference"], covert=bool(r["covert"]),
            disclose_after=_day(r["disclose_after"]), recorded_by=r["recorded_by"],
            recorded_via=r["recorded_via"], created_at=_time(r["created_at"]) or datetime.min,
        )
        return Grant(terms=terms, key_id=r["key_id"], signature=r["signature"], status=Status(r["status"]),
                     status_seq=r["status_seq"], status_at=_time(r["status_at"]) or datetime.min,
                     status_by=r["status_by"], status_reason=r["status_reason"], prev_signature=r["prev_signature"],
                     state_signature=r["state_signature"], use_count=r["use_count"],
                     last_used_at=_time(r["last_used_at"]))
