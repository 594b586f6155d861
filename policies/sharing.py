"""Conditional sharing requests (有条件共享申请): one department asks for fields of another's dataset.

A requesting department names a dataset, the fields it wants, the purpose and why; the providing
department's data owner answers within a deadline of working days (the regulation's default: 10).
Approval writes the policy lines that grant the fields (optionally until a date) through the
policy administration; refusal needs a reason; the requester may withdraw a request still pending.
Every request keeps its whole history, and every change is an audit event recorded in the same
transaction as the change.

```toml
[sharing]
url = "sqlite+aiosqlite:///run/sharing.sqlite"   # or postgresql+asyncpg://hutong:${PASSWORD}@host/db
answer_working_days = 10          # the provider answers by the end of the 10th working day after the request
holidays = [2026-10-01, 2026-10-02, 2026-10-05]   # public holidays on weekdays: not working days
working_weekends = [2026-09-27]   # weekend days worked instead (调休补班): working days
timezone = "Asia/Shanghai"        # whose calendar days count
max_grant_days = 365              # the longest time limit an approval may set
```

Tables ``share_request`` (the request, its status and decision) and ``share_request_event``
(one row per created / approved / refused / withdrawn, with who, through which client, when and
why). The store runs on SQLite or PostgreSQL; writes are serialised per request (``BEGIN
IMMEDIATE`` on SQLite, ``SELECT ... FOR UPDATE`` on PostgreSQL), so two approvals racing on one
request cannot both write policy lines.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from enum import StrEnum
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from catalog.loader import expand_env
from catalog.model import Catalog
from gateway.audit.admin import admin_event
from gateway.config import ConfigError, Settings
from gateway.sqlite_files import create_tables, store_engine, write_transaction
from policies.lines import PolicyLine, format_line
from policies.masks import MASKS, mask_for
from policies.validate import check_rule

__all__ = ["ACCESSES", "ApplyLines", "Recorder", "ShareEvent", "ShareInputError", "ShareRequest", "ShareService",
           "ShareStateError", "ShareStatus", "ShareStore", "SharingSettings", "WorkingCalendar", "check_request",
           "metadata"]

log = logging.getLogger("hutong.sharing")

ACCESSES = ("read", "read_masked")  # verify-only access needs no request: it reveals no value
MAX_JUSTIFICATION = 4000
MAX_WHO = 200  # officials and client ids, as in the consent store

# Writes the policy lines of an approval (lines, author, reason, expires_at) -> the new policy version
# number; raises (policies.validate.PolicyError, PolicyConflict ...) to refuse them.
ApplyLines = Callable[[list[PolicyLine], str, str, datetime | None], Awaitable[int]]
Recorder = Callable[[dict[str, Any]], Awaitable[Any]]  # appends an admin event to the audit log


def utcnow() -> datetime:
    return datetime.now(UTC)


# --- errors ----------------------------------------------------------------------------------------


class ShareInputError(ValueError):
    """A request that cannot be made as given; ``problems`` lists every reason at once."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class ShareStateError(ValueError):
    """A change the request's state does not allow (unknown id, answered already, raced ...)."""


# --- working days -----------------------------------------------------------------------------------


def _weekdays_through(day: date) -> int:
    """Mondays to Fridays from 0001-01-01 (a Monday) to ``day`` inclusive."""
    weeks, rest = divmod(day.toordinal(), 7)
    return weeks * 5 + min(rest, 5)


@dataclass(frozen=True)
class WorkingCalendar:
    """Working days: Monday to Friday, minus ``holidays``, plus ``working_weekends`` (调休补班),
    as calendar days in ``tz``."""

    holidays: frozenset[date] = frozenset()
    working_weekends: frozenset[date] = frozenset()
    # A factory, not a default value: a host without the time-zone database still imports this module.
    tz: tzinfo = dataclasses.field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))

    def is_working_day(self, day: date) -> bool:
        if day in self.working_weekends:
            return True
        return day.weekday() < 5 and day not in self.holidays

    def local_day(self, at: datetime) -> date:
        return at.astimezone(self.tz).date()

    def add_working_days(self, day: date, n: int) -> date:
        """The ``n``-th working day after ``day``: ``day`` itself never counts, working day or not."""
        if n < 1:
            raise ValueError("count at least one working day")
        left = n
        while left:
            day += timedelta(days=1)
            left -= self.is_working_day(day)
        return day

    def deadline(self, at: datetime, n: int) -> datetime:
        """The answer deadline of a request made at ``at``: the end (23:59:59.999999, local time) of
        the ``n``-th working day after the local calendar day of ``at``. The day of the request is
        not counted, whatever its hour; weekends and holidays are skipped, working weekends count.
        A request made on Friday 6 March 2026 with n = 10 is due by the end of Friday 20 March."""
        last = self.add_working_days(self.local_day(at), n)
        return datetime.combine(last, time.max, self.tz).astimezone(UTC)

    def working_days(self, after: date, through: date) -> int:
        """Working days ``d`` with ``after < d <= through`` (0 if ``through <= after``)."""
        if through <= after:
            return 0
        count = _weekdays_through(through) - _weekdays_through(after)
        count -= sum(1 for d in self.holidays if after < d <= through and d.weekday() < 5)
        return count + sum(1 for d in self.working_weekends if after < d <= through)

    def days_left(self, now: datetime, deadline: datetime) -> int:
        """Working days left to answer after today: n on the day of a request due in n working days,
        0 on the deadline day itself ("answer today"). Past the deadline day: minus the working days
        gone by since, today included (-1 on the Monday after a Friday deadline, 0 the weekend in
        between: :meth:`ShareRequest.overdue` tells those apart)."""
        today, last = self.local_day(now), self.local_day(deadline)
        if today <= last:
            return self.working_days(today, last)
        return -self.working_days(last, today)

    def end_of(self, day: date) -> datetime:
        """The last instant of a local calendar day, in UTC: a grant ``until`` a day lasts all of it."""
        return datetime.combine(day, time.max, self.tz).astimezone(UTC)


# --- settings ---------------------------------------------------------------------------------------

_KNOWN = {"url", "answer_working_days", "holidays", "working_weekends", "timezone", "max_grant_days"}


@dataclass(frozen=True)
class SharingSettings:
    url: str
    answer_working_days: int = 10
    max_grant_days: int = 365
    calendar: WorkingCalendar = dataclasses.field(default_factory=WorkingCalendar)

    @classmethod
    def from_settings(cls, settings: Settings) -> SharingSettings:
        from gateway.auth.settings import _store_url  # the same URL rules as every store

        at = f"{settings.path}: [sharing]"
        raw = settings.sharing
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))} "
                              "(see docs/sharing.md)")
        value = raw.get("url", "sqlite+aiosqlite:///run/sharing.sqlite")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{at}: url must be a SQLAlchemy URL")
        try:
            value = expand_env(value)
        except KeyError as exc:
            raise ConfigError(f"{at}: url: {exc.args[0]}") from None
        try:
            url = _store_url(value, settings.base_dir, f"{at} url")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("client store", "sharing-request store")
                              .replace("every client", "every request")) from None
        tz_name = raw.get("timezone", "Asia/Shanghai")
        try:
            tz = ZoneInfo(tz_name) if isinstance(tz_name, str) else None
        except (ZoneInfoNotFoundError, ValueError):
            tz = None
        if tz is None:
            raise ConfigError(f"{at}: timezone must be an IANA time zone name such as \"Asia/Shanghai\", "
                              f"got {tz_name!r}")
        holidays = _dates(raw, "holidays", at)
        weekends = _dates(raw, "working_weekends", at)
        if weekdays := sorted(d for d in weekends if d.weekday() < 5):
            raise ConfigError(f"{at}: working_weekends lists weekdays ({', '.join(map(str, weekdays))}): list only "
                              "the Saturdays and Sundays worked instead of a holiday (调休补班)")
        if both := sorted(holidays & weekends):
            raise ConfigError(f"{at}: {', '.join(map(str, both))} listed both as holiday and as working weekend")
        return cls(url=url, answer_working_days=_whole(raw, "answer_working_days", 10, 250, at),
                   max_grant_days=_whole(raw, "max_grant_days", 365, 3650, at),
                   calendar=WorkingCalendar(holidays, weekends, tz))


def _whole(raw: dict[str, Any], key: str, default: int, top: int, at: str) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ConfigError(f"{at}: {key} must be a whole number from 1 to {top}, got {value!r}")
    return value


def _dates(raw: dict[str, Any], key: str, at: str) -> frozenset[date]:
    """TOML dates (2026-10-01) or ISO strings ("2026-10-01")."""
    value = raw.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{at}: {key} must be a list of dates, e.g. [2026-10-01, 2026-10-02]")
    out: set[date] = set()
    for v in value:
        if isinstance(v, date) and not isinstance(v, datetime):
            out.add(v)
            continue
        try:
            out.add(date.fromisoformat(v))
        except (TypeError, ValueError):
            raise ConfigError(f"{at}: {key}: {v!r} is not a date (YYYY-MM-DD)") from None
    return frozenset(out)


# --- the model --------------------------------------------------------------------------------------


class ShareStatus(StrEnum):
    PENDING = "PENDING"
    APPROVED = "APPROVED"  # final: the policy lines were written (policy_version)
    REFUSED = "REFUSED"  # final, with the provider's reason
    WITHDRAWN = "WITHDRAWN"  # final: the requester no longer needs it


# What each action does: the history entry it writes and the status it leads to (all from PENDING).
ACTIONS = {"approve": ("approved", ShareStatus.APPROVED), "refuse": ("refused", ShareStatus.REFUSED),
           "withdraw": ("withdrawn", ShareStatus.WITHDRAWN)}


@dataclass(frozen=True, slots=True)
class ShareEvent:
    """One entry of a request's history."""

    seq: int
    at: datetime
    action: str  # created, approved, refused, withdrawn
    by: str  # the official (X-Acting-User, or --by at the command line)
    via: str  # the client id, or "cli"
    reason: str  # the justification for "created"


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareRequest:
    id: str
    requester: str  # the department asking
    provider: str  # the department whose dataset it is (the catalogue's provider)
    dataset: str
    fields: tuple[str, ...]  # field names of the dataset, sorted
    purpose: str
    access: str  # read | read_masked
    mask: str | None  # read_masked: the mask (None: each field's default mask)
    justification: str
    requested_by: str
    requested_via: str
    created_at: datetime
    deadline: datetime  # end of the last working day to answer (UTC)
    status: ShareStatus = ShareStatus.PENDING
    status_seq: int = 1  # the seq of the last history entry: concurrent changes are detected by it
    decided_by: str | None = None  # who approved, refused or withdrew it
    decided_at: datetime | None = None
    reason: str | None = None
    grant_until: date | None = None  # approved until the end of this local day (None: no time limit)
    expires_at: datetime | None = None  # grant_until's last instant, as given to the policy
    policy_version: int | None = None  # the policy version the approval created
    history: tuple[ShareEvent, ...] = ()

    @property
    def lines(self) -> list[PolicyLine]:
        """The policy lines an approval writes: one per field, for the requesting department."""
        return [("p", f"dept:{self.requester}", f"{self.dataset}.{f}", self.access, self.purpose, "allow",
                 self.mask or "default") for f in self.fields]

    def overdue(self, now: datetime) -> bool:
        return self.status is ShareStatus.PENDING and now > self.deadline

    def describe(self) -> dict[str, Any]:
        """Plain JSON for the audit log."""
        return {
            "id": self.id, "status": self.status.value, "requester": self.requester, "provider": self.provider,
            "dataset": self.dataset, "fields": list(self.fields), "purpose": self.purpose, "access": self.access,
            "mask": self.mask, "justification": self.justification, "requested_by": self.requested_by,
            "requested_via": self.requested_via, "created_at": _stamp(self.created_at),
            "deadline": _stamp(self.deadline), "decided_by": self.decided_by,
            "decided_at": _stamp(self.decided_at) if self.decided_at else None, "reason": self.reason,
            "grant_until": self.grant_until.isoformat() if self.grant_until else None,
            "expires_at": _stamp(self.expires_at) if self.expires_at else None,
            "policy_version": self.policy_version,
        }


def _stamp(t: datetime) -> str:
    # One fixed width, always UTC: stored stamps compare as text in SQL (deadline < now).
    return t.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _time(s: str) -> datetime:
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


# --- checking a request against the catalogue ---------------------------------------------------------


def check_request(catalog: Catalog, *, requester: str, dataset: str, fields: Sequence[str], purpose: str,
                  access: str, mask: str | None, justification: str, requested_by: str,
                  requested_via: str) -> tuple[tuple[str, ...], list[str]]:
    """The request's field names (sorted, ``dataset.`` prefixes dropped) and every problem with it."""
    problems: list[str] = []
    if requester not in catalog.departments:
        problems.append(f"unknown requesting department {requester!r}; known: {', '.join(sorted(catalog.departments))}")
    ds = catalog.datasets.get(dataset)
    if ds is None:
        close = difflib.get_close_matches(dataset, catalog.datasets, n=3)
        problems.append(f"unknown dataset {dataset!r}" + (f"; did you mean {', '.join(close)}?" if close else "")
                        + " (`hutong catalog export` lists the datasets)")
    elif ds.provider == requester:
        problems.append(f"{dataset} is {requester}'s own dataset: a department needs no request for its own data; "
                        "its data owner grants it in the policy")
    pur = catalog.purposes.get(purpose)
    if pur is None:
        problems.append(f"unknown purpose {purpose!r}; known: {', '.join(sorted(catalog.purposes))}")
    elif ds is not None and dataset not in pur.datasets:
        problems.append(f"purpose {purpose} does not cover {dataset} (it covers {', '.join(pur.datasets)}): "
                        "choose a purpose whose legal basis includes the dataset")
    names = sorted({f.removeprefix(f"{dataset}.") for f in fields})
    if not names:
        problems.append(f"name at least one field of {dataset}")
    elif ds is not None:
        known = [f.name for f in ds.fields]
        if unknown := [n for n in names if n not in known]:
            problems.append(f"{dataset} has no field {', '.join(map(repr, unknown))}; its fields: {', '.join(known)}")
    if access not in ACCESSES:
        problems.append(f"access must be {' or '.join(ACCESSES)}, not {access!r}")
    if mask is not None:
        if access != "read_masked":
            problems.append("a mask goes with access read_masked; read is in clear")
        elif mask_for(mask) is None:
            problems.append(f"unknown mask {mask!r}; known: {', '.join(sorted(MASKS))}, show_first_N, show_last_N")
    if not justification.strip():
        problems.append("give a justification: why the requesting department needs these fields for this purpose")
    elif len(justification) > MAX_JUSTIFICATION:
        problems.append(f"the justification is {len(justification)} characters long; keep it under "
                        f"{MAX_JUSTIFICATION} and refer to documents by their number")
    for what, who in (("requested_by (the official asking)", requested_by), ("requested_via", requested_via)):
        if not who.strip() or len(who) > MAX_WHO:
            problems.append(f"{what} must be 1 to {MAX_WHO} characters")
    if not problems:
        # The same rules the policy is held to (policies/validate.py): `none` fields only for a purpose
        # whose legal basis lists them, masks that apply to the fields' types; checked now rather than
        # failing at approval, days later.
        for name in names:
            line = [f"dept:{requester}", f"{dataset}.{name}", access, purpose, "allow", mask or "default"]
            problems += [p for p in check_rule(catalog, line) if p not in problems]
    return tuple(names), problems


# --- the store --------------------------------------------------------------------------------------

metadata = sa.MetaData()
request_table = sa.Table(
    "share_request", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("requester", sa.String(64), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    sa.Column("dataset", sa.String(64), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of field names
    sa.Column("purpose", sa.String(64), nullable=False),
    sa.Column("access", sa.String(16), nullable=False),
    sa.Column("mask", sa.String(64)),
    sa.Column("justification", sa.Text, nullable=False),
    sa.Column("requested_by", sa.String(MAX_WHO), nullable=False),
    sa.Column("requested_via", sa.String(MAX_WHO), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("deadline", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("status_seq", sa.Integer, nullable=False),
    sa.Column("decided_by", sa.String(MAX_WHO)),
    sa.Column("decided_at", sa.String(32)),
    sa.Column("reason", sa.Text),
    sa.Column("grant_until", sa.String(10)),
    sa.Column("expires_at", sa.String(32)),
    sa.Column("policy_version", sa.Integer),
    sa.Index("ix_share_request_requester", "requester", "created_at"),
    sa.Index("ix_share_request_provider", "provider", "created_at"),
    sa.Index("ix_share_request_status", "status", "deadline"),
)
event_table = sa.Table(
    "share_request_event", metadata,
    sa.Column("request_id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("by", sa.String(MAX_WHO), nullable=False),
    sa.Column("via", sa.String(MAX_WHO), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
)

Decide = Callable[[ShareRequest], Awaitable[ShareRequest]]  # PENDING request -> its decided state


class ShareStore:
    def __init__(self, url: str, *, engine: AsyncEngine | None = None) -> None:
        self.url = url
        self.backend = sa.engine.make_url(url).get_backend_name()
        self.engine = store_engine(url, engine)

    async def init(self) -> None:
        await create_tables(self.engine, metadata)

    async def close(self) -> None:
        await self.engine.dispose()

    async def add(self, req: ShareRequest, *, then: Callable[[ShareRequest], Awaitable[None]]) -> ShareRequest:
        """Store a new PENDING request with its first history entry; ``then`` (the audit event) runs
        inside the transaction: if it fails, nothing is stored. A pending request of the same
        department for the same dataset, purpose and any of the same fields is refused: one
        question gets one answer."""
        r = request_table.c
        async with write_transaction(self.engine) as conn:
            rows = (await conn.execute(sa.select(r.id, r.fields, r.created_at).where(
                r.requester == req.requester, r.dataset == req.dataset, r.purpose == req.purpose,
                r.status == ShareStatus.PENDING.value))).all()
            for other in rows:
                if same := sorted(set(orjson.loads(other.fields)) & set(req.fields)):
                    raise ShareInputError([
                        f"{other.id} (pending since {other.created_at[:10]}) already asks {req.provider} for "
                        f"{', '.join(f'{req.dataset}.{f}' for f in same)} for {req.purpose}: wait for its answer "
                        "or withdraw it first"])
            await conn.execute(request_table.insert().values(**self._row(req)))
            await conn.execute(event_table.insert().values(**self._event_row(req.id, req.history[0])))
            await then(req)
        return req

    async def decide(self, request_id: str, decide: Decide,
                     *, then: Callable[[ShareRequest, ShareRequest], Awaitable[None]]) -> ShareRequest:
        """Change a request under a lock: ``decide(before)`` checks and builds the new state (it may
        write the policy lines first); then the row and its new history entry are stored and
        ``then(before, after)`` (the audit event) runs, all in one transaction: if any step fails,
        the request is left as it was."""
        r = request_table.c
        async with write_transaction(self.engine) as conn:
            before = await self._get(conn, request_id, lock=True)
            if before is None:
                raise ShareStateError(f"no sharing request with id {request_id!r}")
            after = await decide(before)
            last = after.history[-1]
            done = await conn.execute(request_table.update().where(
                r.id == request_id, r.status_seq == before.status_seq).values(
                status=after.status.value, status_seq=last.seq, decided_by=after.decided_by,
                decided_at=_stamp(after.decided_at) if after.decided_at else None, reason=after.reason,
                grant_until=after.grant_until.isoformat() if after.grant_until else None,
                expires_at=_stamp(after.expires_at) if after.expires_at else None,
                policy_version=after.policy_version))
            if done.rowcount != 1:
                raise ShareStateError(f"{request_id} was changed by someone else meanwhile: look again and retry")
            await conn.execute(event_table.insert().values(**self._event_row(request_id, last)))
            await then(before, after)
        return after

    async def get(self, request_id: str) -> ShareRequest | None:
        async with self.engine.connect() as conn:
            return await self._get(conn, request_id, lock=False)

    async def _get(self, conn: AsyncConnection, request_id: str, *, lock: bool) -> ShareRequest | None:
        q = sa.select(request_table).where(request_table.c.id == request_id)
        if lock and self.backend == "postgresql":
            q = q.with_for_update()
        row = (await conn.execute(q)).mappings().first()
        if row is None:
            return None
        return self._request(row, (await self._histories(conn, [request_id])).get(request_id, ()))

    async def search(self, *, now: datetime, status: ShareStatus | None = None, overdue: bool | None = None,
                     department: str | None = None, limit: int = 50, after: str | None = None
                     ) -> list[ShareRequest]:
        """Requests matching every filter given, newest first, with their histories (one query for
        all of them); ``department``: as requester or provider; ``after``: the last id of the
        previous page."""
        r = request_table.c
        q = sa.select(request_table).order_by(r.created_at.desc(), r.id.desc()).limit(limit)
        if status is not None:
            q = q.where(r.status == status.value)
        if overdue is not None:
            late = sa.and_(r.status == ShareStatus.PENDING.value, r.deadline < _stamp(now))
            q = q.where(late if overdue else sa.not_(late))
        if department is not None:
            q = q.where(sa.or_(r.requester == department, r.provider == department))
        async with self.engine.connect() as conn:
            if after is not None:
                anchor = (await conn.execute(sa.select(r.created_at).where(r.id == after))).scalar()
                if anchor is None:
                    raise ShareStateError("after must be the id of the last request of the previous page")
                q = q.where(sa.or_(r.created_at < anchor, sa.and_(r.created_at == anchor, r.id < after)))
            rows = (await conn.execute(q)).mappings().all()
            histories = await self._histories(conn, [row["id"] for row in rows])
        return [self._request(row, histories.get(row["id"], ())) for row in rows]

    @staticmethod
    async def _histories(conn: AsyncConnection, ids: list[str]) -> dict[str, tuple[ShareEvent, ...]]:
        if not ids:
            return {}
        e = event_table.c
        rows = (await conn.execute(sa.select(event_table).where(e.request_id.in_(ids))
                                   .order_by(e.request_id, e.seq))).all()
        out: dict[str, list[ShareEvent]] = {}
        for x in rows:
            out.setdefault(x.request_id, []).append(ShareEvent(x.seq, _time(x.at), x.action, x.by, x.via, x.reason))
        return {k: tuple(v) for k, v in out.items()}

    @staticmethod
    def _event_row(request_id: str, e: ShareEvent) -> dict[str, Any]:
        return {"request_id": request_id, "seq": e.seq, "at": _stamp(e.at), "action": e.action, "by": e.by,
                "via": e.via, "reason": e.reason}

    @staticmethod
    def _row(q: ShareRequest) -> dict[str, Any]:
        return {
            "id": q.id, "requester": q.requester, "provider": q.provider, "dataset": q.dataset,
            "fields": orjson.dumps(list(q.fields)).decode(), "purpose": q.purpose, "access": q.access,
            "mask": q.mask, "justification": q.justification, "requested_by": q.requested_by,
            "requested_via": q.requested_via, "created_at": _stamp(q.created_at), "deadline": _stamp(q.deadline),
            "status": q.status.value, "status_seq": q.status_seq, "decided_by": q.decided_by,
            "decided_at": _stamp(q.decided_at) if q.decided_at else None, "reason": q.reason,
            "grant_until": q.grant_until.isoformat() if q.grant_until else None,
            "expires_at": _stamp(q.expires_at) if q.expires_at else None, "policy_version": q.policy_version,
        }

    @staticmethod
    def _request(r: Any, history: Iterable[ShareEvent]) -> ShareRequest:
        return ShareRequest(
            id=r["id"], requester=r["requester"], provider=r["provider"], dataset=r["dataset"],
            fields=tuple(orjson.loads(r["fields"])), purpose=r["purpose"], access=r["access"], mask=r["mask"],
            justification=r["justification"], requested_by=r["requested_by"], requested_via=r["requested_via"],
            created_at=_time(r["created_at"]), deadline=_time(r["deadline"]), status=ShareStatus(r["status"]),
            status_seq=r["status_seq"], decided_by=r["decided_by"],
            decided_at=_time(r["decided_at"]) if r["decided_at"] else None, reason=r["reason"],
            grant_until=date.fromisoformat(r["grant_until"]) if r["grant_until"] else None,
            expires_at=_time(r["expires_at"]) if r["expires_at"] else None, policy_version=r["policy_version"],
            history=tuple(history))


# --- the service ------------------------------------------------------------------------------------


class ShareService:
    """Sharing requests: checked against the catalogue, answered by the provider, each change audited.

    ``record`` appends an admin event to the audit log; ``apply_lines`` writes an approval's policy
    lines (None: approvals cannot be made by this process). ``clock`` gives "now" where a method is
    not given one (tests inject time through both).
    """

    def __init__(self, catalog: Catalog, store: ShareStore, settings: SharingSettings, record: Recorder, *,
                 apply_lines: ApplyLines | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self.catalog = catalog
        self.store = store
        self.settings = settings
        self.record = record
        self.apply_lines = apply_lines
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, catalog: Catalog, record: Recorder, *,
                      apply_lines: ApplyLines | None = None) -> ShareService:
        """The service over the configured store (``[sharing]``); call :meth:`start` before use."""
        sharing = SharingSettings.from_settings(settings)
        return cls(catalog, ShareStore(sharing.url), sharing, record, apply_lines=apply_lines)

    @property
    def calendar(self) -> WorkingCalendar:
        return self.settings.calendar

    async def start(self) -> None:
        await self.store.init()

    async def close(self) -> None:
        await self.store.close()

    def days_left(self, req: ShareRequest, now: datetime | None = None) -> int | None:
        """Working days left to answer a PENDING request after today (0: due today, or overdue since
        the last working day); None once answered."""
        if req.status is not ShareStatus.PENDING:
            return None
        return self.calendar.days_left(now or self.clock(), req.deadline)

    async def request(self, *, requester: str, dataset: str, fields: Sequence[str], purpose: str, justification: str,
                      requested_by: str, requested_via: str, access: str = "read", mask: str | None = None,
                      now: datetime | None = None) -> ShareRequest:
        """Ask the dataset's provider for ``fields``; ShareInputError lists every problem at once."""
        now = now or self.clock()
        names, problems = check_request(self.catalog, requester=requester, dataset=dataset, fields=fields,
                                        purpose=purpose, access=access, mask=mask, justification=justification,
                                        requested_by=requested_by, requested_via=requested_via)
        if problems:
            raise ShareInputError(problems)
        req = ShareRequest(
            id="sr-" + uuid.uuid4().hex[:20], requester=requester, provider=self.catalog.provider_of(dataset).code,
            dataset=dataset, fields=names, purpose=purpose, access=access, mask=mask,
            justification=justification.strip(), requested_by=requested_by, requested_via=requested_via,
            created_at=now, deadline=self.calendar.deadline(now, self.settings.answer_working_days),
            history=(ShareEvent(1, now, "created", requested_by, requested_via, justification.strip()),))

        async def audit(stored: ShareRequest) -> None:
            await self.record(admin_event("share.request", stored.id, by=requested_by, after=stored.describe(),
                                          detail={"via": requested_via}))

        return await self.store.add(req, then=audit)

    async def approve(self, request_id: str, *, by: str, via: str, reason: str | None = None,
                      grant_until: date | None = None, as_department: str | None = None,
                      now: datetime | None = None) -> ShareRequest:
        """Write the request's policy lines (until the end of ``grant_until``, local time, if given) and
        mark it APPROVED with the new policy version. If ``apply_lines`` refuses the lines (PolicyError,
        PolicyConflict ...), its exception propagates and the request stays PENDING.
        ``as_department``: the approver's department, which must be the provider."""
        now = now or self.clock()
        if self.apply_lines is None:
            raise ShareStateError("approvals cannot be made by this process: it has no policy administration open "
                                  "(approve through the gateway or `hutong share approve`)")
        apply_lines = self.apply_lines
        why = (reason or "").strip() or "approved"
        expires_at = None
        if grant_until is not None:
            today = self.calendar.local_day(now)
            if grant_until < today:
                raise ShareInputError([f"grant until {grant_until} is in the past (today is {today})"])
            if (grant_until - today).days > self.settings.max_grant_days:
                raise ShareInputError([f"grant until {grant_until} is more than {self.settings.max_grant_days} days "
                                       f"ahead (the longest time limit allowed, [sharing] max_grant_days): choose "
                                       f"{today + timedelta(days=self.settings.max_grant_days)} or earlier"])
            expires_at = self.calendar.end_of(grant_until)

        async def decide(before: ShareRequest) -> ShareRequest:
            after = self._closed(before, "approve", by=by, via=via, reason=why, as_department=as_department, now=now)
            version = await apply_lines(before.lines, by, f"sharing request {before.id}: {why}", expires_at)
            return dataclasses.replace(after, grant_until=grant_until, expires_at=expires_at, policy_version=version)

        async def audit(before: ShareRequest, after: ShareRequest) -> None:
            try:
                await self.record(admin_event("share.approve", request_id, by=by, before=before.describe(),
                                              after=after.describe(),
                                              detail={"via": via, "reason": why,
                                                      "policy_version": after.policy_version,
                                                      "lines": [format_line(x) for x in before.lines]}))
            except Exception:
                # The policy is another store: its version stands (audited as a policy change) while
                # the request stays PENDING. Say so, for the operator who has to reconcile them.
                log.error("sharing request %s: its lines are in force since policy version %s, but the approval "
                          "could not be recorded, so the request stays PENDING: remove those lines and approve "
                          "it again", request_id, after.policy_version)
                raise

        return await self.store.decide(request_id, decide, then=audit)

    async def refuse(self, request_id: str, *, by: str, via: str, reason: str, as_department: str | None = None,
                     now: datetime | None = None) -> ShareRequest:
        """Refuse a PENDING request; the reason is required (the requester is owed one)."""
        return await self._close(request_id, "refuse", by=by, via=via, reason=reason, as_department=as_department,
                                 now=now or self.clock())

    async def withdraw(self, request_id: str, *, by: str, via: str, reason: str, as_department: str | None = None,
                       now: datetime | None = None) -> ShareRequest:
        """Withdraw a PENDING request (the requester's side); ``as_department`` must be the requester."""
        return await self._close(request_id, "withdraw", by=by, via=via, reason=reason, as_department=as_department,
                                 now=now or self.clock())

    async def _close(self, request_id: str, action: str, *, by: str, via: str, reason: str,
                     as_department: str | None, now: datetime) -> ShareRequest:
        if not reason.strip():
            raise ShareInputError([f"give a reason to {action} {request_id}: it is kept in the request's history "
                                   "and sent back to the other department"])

        async def decide(before: ShareRequest) -> ShareRequest:
            return self._closed(before, action, by=by, via=via, reason=reason.strip(), as_department=as_department,
                                now=now)

        async def audit(before: ShareRequest, after: ShareRequest) -> None:
            await self.record(admin_event(f"share.{action}", request_id, by=by, before=before.describe(),
                                          after=after.describe(), detail={"via": via, "reason": reason.strip()}))

        return await self.store.decide(request_id, decide, then=audit)

    @staticmethod
    def _closed(before: ShareRequest, action: str, *, by: str, via: str, reason: str, as_department: str | None,
                now: datetime) -> ShareRequest:
        """The request answered (or withdrawn), after checking who may and that it is still PENDING."""
        side, party = ("requester", before.requester) if action == "withdraw" else ("provider", before.provider)
        if as_department is not None and as_department != party:
            raise PermissionError(f"{before.id} is {party}'s to {action} (its {side}), not {as_department}'s")
        if not by.strip() or len(by) > MAX_WHO:
            raise ShareInputError([f"name the official who does it (1 to {MAX_WHO} characters)"])
        if before.status is not ShareStatus.PENDING:
            when = before.decided_at.date().isoformat() if before.decided_at else "?"
            raise ShareStateError(f"{before.id} was already {before.status.value.lower()} on {when} by "
                                  f"{before.decided_by}: only a PENDING request can be {ACTIONS[action][0]}"
                                  + ("; ask again with a new request" if action != "withdraw" else ""))
        entry, status = ACTIONS[action]
        event = ShareEvent(before.status_seq + 1, now, entry, by, via, reason)
        return dataclasses.replace(before, status=status, status_seq=event.seq, decided_by=by, decided_at=now,
                                   reason=reason, history=(*before.history, event))

    async def get(self, request_id: str) -> ShareRequest | None:
        return await self.store.get(request_id)

    async def search(self, *, status: ShareStatus | None = None, overdue: bool | None = None,
                     department: str | None = None, limit: int = 50, after: str | None = None,
                     now: datetime | None = None) -> list[ShareRequest]:
        """Requests, newest first; ``overdue=True`` is the escalation list: PENDING past their deadline."""
        if not 1 <= limit <= 500:
            raise ShareInputError(["limit must be from 1 to 500"])
        return await self.store.search(now=now or self.clock(), status=status, overdue=overdue,
                                       department=department, limit=limit, after=after)
