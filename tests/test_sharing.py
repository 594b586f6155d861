"""Sharing requests (有条件共享申请): working-day deadlines, the life cycle on SQLite and PostgreSQL with
time injected, checks against the catalogue, audit events in the change's transaction, the GraphQL
mutations and queries with their roles, and ``hutong share``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import graphene
import pytest
from typer.testing import CliRunner

from catalog.loader import load_catalog
from gateway.audit.errors import AuditUnavailable
from gateway.config import REPO_ROOT, ConfigError, Settings
from gateway.share_cli import share_app
from gateway.sharing_schema import SharingMutation, SharingQuery
from policies.decide import Subject
from policies.lines import PolicyLine
from policies.sharing import (
    ShareInputError,
    ShareService,
    ShareStateError,
    ShareStatus,
    ShareStore,
    SharingSettings,
    WorkingCalendar,
    check_request,
)
from policies.validate import PolicyError
from tests.conftest import throwaway_pg_database

CATALOG = load_catalog(REPO_ROOT / "demo" / "catalog")
SH = ZoneInfo("Asia/Shanghai")
REVIEW = "subsistence-allowance-review"
# Friday 6 March 2026, 15:00 in Beijing; Monday 16 March is made a holiday below.
T0 = datetime(2026, 3, 6, 15, 0, tzinfo=SH)
HOLIDAY = date(2026, 3, 16)
CALENDAR = WorkingCalendar(frozenset({HOLIDAY}), frozenset(), SH)


def at(day: date, hour: int = 10, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), SH)


# --- working days ------------------------------------------------------------------------------------


def test_the_deadline_is_the_end_of_the_nth_working_day_after_the_day_of_the_request() -> None:
    plain = WorkingCalendar(tz=SH)
    # Friday: the weekend is skipped and the Friday itself not counted: ten working days end on Friday 20.
    assert plain.deadline(T0, 10) == datetime(2026, 3, 20, 23, 59, 59, 999_999, tzinfo=SH)
    assert plain.add_working_days(date(2026, 3, 6), 1) == date(2026, 3, 9)
    # A request on a Saturday: the first working day after it is Monday.
    assert plain.add_working_days(date(2026, 3, 7), 1) == date(2026, 3, 9)
    # The holiday on Monday 16 pushes it to Monday 23.
    assert CALENDAR.deadline(T0, 10) == datetime(2026, 3, 23, 23, 59, 59, 999_999, tzinfo=SH)
    assert CALENDAR.deadline(T0, 10).tzinfo == UTC


def test_the_day_of_the_request_is_the_local_calendar_day() -> None:
    plain = WorkingCalendar(tz=SH)
    thursday_late = datetime(2026, 3, 5, 15, 30, tzinfo=UTC)  # Thursday 23:30 in Beijing
    friday_early = datetime(2026, 3, 5, 16, 30, tzinfo=UTC)  # Friday 00:30 in Beijing, still Thursday in UTC
    assert plain.deadline(thursday_late, 1).astimezone(SH).date() == date(2026, 3, 6)
    assert plain.deadline(friday_early, 1).astimezone(SH).date() == date(2026, 3, 9)


def test_holidays_and_working_weekends() -> None:
    golden_week = frozenset(date(2026, 10, d) for d in (1, 2, 5, 6, 7))
    cal = WorkingCalendar(golden_week, frozenset({date(2026, 10, 10)}), SH)  # Saturday 10 worked (调休)
    assert not cal.is_working_day(date(2026, 10, 1)) and cal.is_working_day(date(2026, 10, 10))
    assert not cal.is_working_day(date(2026, 10, 11))
    # From Wednesday 30 September: Thursday 8, Friday 9, Saturday 10.
    assert cal.add_working_days(date(2026, 9, 30), 3) == date(2026, 10, 10)
    assert cal.working_days(date(2026, 9, 30), date(2026, 10, 12)) == 4


def test_counting_working_days_agrees_with_walking_the_calendar() -> None:
    cal = WorkingCalendar(frozenset({date(2026, 1, 1), date(2026, 2, 17), date(2026, 2, 21)}),
                          frozenset({date(2026, 2, 14), date(2026, 2, 28)}), SH)
    start = date(2025, 12, 20)
    for a in range(0, 80, 3):
        for b in range(a, 90, 7):
            lo, hi = start + timedelta(days=a), start + timedelta(days=b)
            walked = sum(cal.is_working_day(lo + timedelta(days=i)) for i in range(1, (hi - lo).days + 1))
            assert cal.working_days(lo, hi) == walked, (lo, hi)


def test_days_left() -> None:
    deadline = CALENDAR.deadline(T0, 10)  # Monday 23 March
    assert CALENDAR.days_left(T0, deadline) == 10
    assert CALENDAR.days_left(at(date(2026, 3, 14)), deadline) == 5  # Saturday: Tue 17 .. Mon 23
    assert CALENDAR.days_left(at(date(2026, 3, 23), 23, 59), deadline) == 0  # answer today
    assert CALENDAR.days_left(at(date(2026, 3, 24)), deadline) == -1
    assert CALENDAR.days_left(at(date(2026, 3, 30)), deadline) == -5  # Tue 24 .. Mon 30


# --- settings ----------------------------------------------------------------------------------------


def settings_with(tmp_path: Path, sharing: dict[str, Any]) -> Settings:
    return Settings(path=tmp_path / "hutong.toml", catalog=(), sharing=sharing)


def test_settings_defaults_and_relative_store_paths(tmp_path: Path) -> None:
    s = SharingSettings.from_settings(settings_with(tmp_path, {}))
    assert s.answer_working_days == 10 and s.max_grant_days == 365
    assert s.url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/run/sharing.sqlite"
    assert s.calendar.tz == SH and s.calendar.holidays == frozenset()
    s = SharingSettings.from_settings(settings_with(tmp_path, {
        "answer_working_days": 15, "holidays": [date(2026, 10, 1), "2026-10-02"], "working_weekends": ["2026-10-10"],
        "timezone": "Asia/Urumqi", "max_grant_days": 90}))
    assert s.answer_working_days == 15 and s.max_grant_days == 90
    assert s.calendar == WorkingCalendar(frozenset({date(2026, 10, 1), date(2026, 10, 2)}),
                                         frozenset({date(2026, 10, 10)}), ZoneInfo("Asia/Urumqi"))


@pytest.mark.parametrize(("raw", "message"), [
    ({"answer_days": 10}, "unknown key(s) answer_days; known: answer_working_days"),
    ({"answer_working_days": 0}, "answer_working_days must be a whole number from 1 to 250, got 0"),
    ({"max_grant_days": True}, "max_grant_days must be a whole number"),
    ({"holidays": "2026-10-01"}, "holidays must be a list of dates"),
    ({"holidays": ["2026-13-01"]}, "holidays: '2026-13-01' is not a date"),
    ({"working_weekends": ["2026-10-09"]}, "working_weekends lists weekdays (2026-10-09)"),
    ({"holidays": ["2026-10-10"], "working_weekends": ["2026-10-10"]}, "2026-10-10 listed both"),
    ({"timezone": "Beijing"}, "timezone must be an IANA time zone name"),
    ({"url": "mysql+aiomysql://h/db"}, "the sharing-request store runs on SQLite or PostgreSQL"),
])
def test_settings_errors_name_what_is_wrong(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        SharingSettings.from_settings(settings_with(tmp_path, raw))
    assert message in str(exc.value) and "[sharing]" in str(exc.value)


# --- the service over a real store ---------------------------------------------------------------


@dataclass
class Policy:
    """A recording stand-in for the policy administration's change()."""

    calls: list[tuple[list[PolicyLine], str, str, datetime | None]] = field(default_factory=list)
    refuse: PolicyError | None = None
    version: int = 41

    async def __call__(self, lines: list[PolicyLine], author: str, reason: str, expires_at: datetime | None) -> int:
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((lines, author, reason, expires_at))
        self.version += 1
        return self.version


@dataclass
class Audit:
    events: list[dict[str, Any]] = field(default_factory=list)
    broken: bool = False

    async def __call__(self, body: dict[str, Any]) -> None:
        if self.broken:
            raise AuditUnavailable("the audit store is down")
        self.events.append(body)


@dataclass
class Clock:
    now: datetime = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def pg_share_url() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_sharing")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ShareStore]:
    url = (f"sqlite+aiosqlite:///{tmp_path}/sharing.sqlite" if request.param == "sqlite"
           else request.getfixturevalue("pg_share_url"))
    s = ShareStore(url)
    await s.init()
    if request.param == "postgresql":  # the module's database is shared: start empty
        async with s.engine.begin() as conn:
            for table in ("share_request_event", "share_request"):
                await conn.exec_driver_sql(f"DELETE FROM {table}")
    yield s
    await s.close()


@dataclass
class World:
    service: ShareService
    policy: Policy
    audit: Audit
    clock: Clock


@pytest.fixture
def world(store: ShareStore) -> World:
    policy, audit, clock = Policy(), Audit(), Clock()
    settings = SharingSettings(url=store.url, calendar=CALENDAR)
    return World(ShareService(CATALOG, store, settings, audit, apply_lines=policy, clock=clock), policy, audit, clock)


async def ask(service: ShareService, **kw: Any) -> Any:
    base: dict[str, Any] = {
        "requester": "civil", "dataset": "hrss.pension",
        "fields": ["monthly_amount", "hrss.pension.contribution_years"], "purpose": REVIEW, "access": "read_masked",
        "mask": "round_1000", "requested_by": "official-007", "requested_via": "street-office-app",
        "justification": "低保 review needs pension amounts of household members (民发〔2021〕57号 art. 9)"}
    base.update(kw)
    return await service.request(**base)


async def test_the_life_cycle_of_an_approved_request(world: World) -> None:
    service, policy, audit = world.service, world.policy, world.audit
    req = await ask(service, now=T0)
    assert req.id.startswith("sr-") and req.status is ShareStatus.PENDING
    assert (req.requester, req.provider, req.dataset, req.fields) == (
        "civil", "hrss", "hrss.pension", ("contribution_years", "monthly_amount"))
    assert req.deadline == datetime(2026, 3, 23, 23, 59, 59, 999_999, tzinfo=SH)
    assert [(e.action, e.by, e.via) for e in req.history] == [("created", "official-007", "street-office-app")]
    assert [(e["event"], e["target"], e["actor"], e["after"]["status"]) for e in audit.events] == [
        ("share.request", req.id, "official-007", "PENDING")]

    # Not overdue through the whole deadline day; overdue the minute after; listed for escalation.
    last_minute = datetime(2026, 3, 23, 23, 59, tzinfo=SH)
    assert not req.overdue(last_minute) and service.days_left(req, last_minute) == 0
    assert await service.search(overdue=True, now=last_minute) == []
    late = datetime(2026, 3, 24, 0, 0, 1, tzinfo=SH)
    assert req.overdue(late) and service.days_left(req, late) == -1
    assert [r.id for r in await service.search(overdue=True, now=late)] == [req.id]
    assert await service.search(overdue=False, now=late) == []

    # The requesting department cannot approve its own request; nothing was written or recorded.
    with pytest.raises(PermissionError, match=re.escape(f"{req.id} is hrss's to approve (its provider), not civil's")):
        await service.approve(req.id, by="official-007", via="street-office-app", as_department="civil", now=late)
    # Time limits: not in the past, not beyond max_grant_days.
    with pytest.raises(ShareInputError, match=r"2026-03-01 is in the past \(today is 2026-03-24\)"):
        await service.approve(req.id, by="owner-1", via="hrss-admin", grant_until=date(2026, 3, 1), now=late)
    with pytest.raises(ShareInputError, match=r"more than 365 days ahead .* choose 2027-03-24 or earlier"):
        await service.approve(req.id, by="owner-1", via="hrss-admin", grant_until=date(2027, 3, 25), now=late)
    # The policy refuses the lines: the approval is not made.
    policy.refuse = PolicyError(["version 42: hrss.pension.monthly_amount: no longer shared"])
    with pytest.raises(PolicyError):
        await service.approve(req.id, by="owner-1", via="hrss-admin", as_department="hrss", now=late)
    policy.refuse = None
    unchanged = await service.get(req.id)
    assert unchanged == req and policy.calls == [] and len(audit.events) == 1

    approved = await service.approve(req.id, by="owner-1", via="hrss-admin", reason="within the legal basis",
                                     grant_until=date(2026, 12, 31), as_department="hrss", now=late)
    end_of_year = datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=SH)
    lines = [("p", "dept:civil", "hrss.pension.contribution_years", "read_masked", REVIEW, "allow", "round_1000"),
             ("p", "dept:civil", "hrss.pension.monthly_amount", "read_masked", REVIEW, "allow", "round_1000")]
    assert policy.calls == [(lines, "owner-1", f"sharing request {req.id}: within the legal basis", end_of_year)]
    assert (approved.status, approved.policy_version, approved.grant_until, approved.expires_at) == (
        ShareStatus.APPROVED, 42, date(2026, 12, 31), end_of_year)
    assert (approved.decided_by, approved.decided_at, approved.reason) == ("owner-1", late, "within the legal basis")
    assert not approved.overdue(late) and service.days_left(approved, late) is None
    assert [(e.seq, e.action, e.by, e.via, e.reason) for e in approved.history] == [
        (1, "created", "official-007", "street-office-app", req.justification),
        (2, "approved", "owner-1", "hrss-admin", "within the legal basis")]
    assert await service.get(req.id) == approved  # everything survives the store
    event = audit.events[-1]
    assert (event["event"], event["before"]["status"], event["after"]["status"], event["policy_version"]) == (
        "share.approve", "PENDING", "APPROVED", 42)
    assert event["lines"] == [", ".join(x) for x in lines] and event["after"]["grant_until"] == "2026-12-31"

    # Answered once: every further change is refused, saying why; no second policy version.
    for change in (service.approve, service.refuse, service.withdraw):
        with pytest.raises(ShareStateError, match=f"{req.id} was already approved on 2026-03-23 by owner-1: only "
                                                  "a PENDING request can be"):
            await change(req.id, by="owner-1", via="hrss-admin", reason="again", now=late)
    assert len(policy.calls) == 1 and len(audit.events) == 2


async def test_refusal_needs_a_reason_and_withdrawal_is_the_requesters(world: World) -> None:
    service, audit = world.service, world.audit
    first = await ask(service, now=T0)
    with pytest.raises(ShareInputError, match=f"give a reason to refuse {first.id}"):
        await service.refuse(first.id, by="owner-1", via="hrss-admin", reason="  ", now=T0)
    with pytest.raises(PermissionError, match="hrss's to refuse"):
        await service.refuse(first.id, by="x", via="health-app", reason="no", as_department="health", now=T0)
    refused = await service.refuse(first.id, by="owner-1", via="hrss-admin", reason=" amounts are not needed for "
                                   "eligibility: ask for status ", as_department="hrss", now=T0 + timedelta(days=1))
    assert refused.status is ShareStatus.REFUSED and refused.reason.startswith("amounts are not needed")
    assert [e.action for e in refused.history] == ["created", "refused"]
    assert audit.events[-1]["event"] == "share.refuse" and audit.events[-1]["reason"] == refused.reason

    # Once refused, the same fields may be asked again; a second pending request for them may not.
    second = await ask(service, fields=["status"], access="read", mask=None, now=T0 + timedelta(days=2))
    with pytest.raises(ShareInputError, match=re.escape(f"{second.id} (pending since 2026-03-08) already asks hrss for "
                                                        "hrss.pension.status for")):
        await ask(service, fields=["status", "id"], access="read", mask=None, now=T0 + timedelta(days=2))
    with pytest.raises(PermissionError, match=re.escape("civil's to withdraw (its requester), not hrss's")):
        await service.withdraw(second.id, by="owner-1", via="hrss-admin", reason="x", as_department="hrss")
    withdrawn = await service.withdraw(second.id, by="official-007", via="street-office-app",
                                       reason="the case was closed", as_department="civil")
    assert withdrawn.status is ShareStatus.WITHDRAWN and withdrawn.decided_at == T0  # the service's clock
    assert audit.events[-1]["event"] == "share.withdraw"
    with pytest.raises(ShareStateError, match=r"was already withdrawn on .* only a PENDING request can be "
                                              r"withdrawn$"):
        await service.withdraw(second.id, by="official-007", via="street-office-app", reason="x")
    with pytest.raises(ShareStateError, match="no sharing request with id 'sr-nope'"):
        await service.refuse("sr-nope", by="owner-1", via="hrss-admin", reason="x")

    third = await ask(service, fields=["status"], access="read", mask=None, now=T0 + timedelta(days=3))
    assert [r.id for r in await service.search(now=T0)] == [third.id, second.id, first.id]
    assert [r.id for r in await service.search(status=ShareStatus.PENDING)] == [third.id]
    assert [r.id for r in await service.search(department="hrss", limit=2)] == [third.id, second.id]
    assert [r.id for r in await service.search(department="civil", after=second.id)] == [first.id]
    assert await service.search(department="health") == []
    with pytest.raises(ShareStateError, match="after must be the id of the last request"):
        await service.search(after="sr-unknown")


async def test_each_change_is_recorded_in_its_transaction(world: World, caplog: pytest.LogCaptureFixture) -> None:
    service, audit = world.service, world.audit
    audit.broken = True
    with pytest.raises(AuditUnavailable):
        await ask(service)
    assert await service.search() == []  # not stored
    audit.broken = False
    req = await ask(service)
    audit.broken = True
    with pytest.raises(AuditUnavailable):
        await service.refuse(req.id, by="owner-1", via="hrss-admin", reason="no")
    with pytest.raises(AuditUnavailable), caplog.at_level(logging.ERROR, "hutong.sharing"):
        await service.approve(req.id, by="owner-1", via="hrss-admin")
    # The request is left as it was. The policy is another store: the lines written stay, and the
    # operator is told so.
    after = await service.get(req.id)
    assert after is not None and after.status is ShareStatus.PENDING and len(after.history) == 1
    assert len(world.policy.calls) == 1
    assert f"{req.id}: its lines are in force since policy version 42" in caplog.text


async def test_concurrent_approvals_write_the_lines_once(world: World) -> None:
    service, policy = world.service, world.policy
    req = await ask(service)
    outcomes = await asyncio.gather(*(service.approve(req.id, by=f"owner-{i}", via="hrss-admin") for i in (1, 2)),
                                    return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["ShareRequest", "ShareStateError"]
    assert len(policy.calls) == 1


async def test_approval_needs_the_policy_administration(store: ShareStore) -> None:
    service = ShareService(CATALOG, store, SharingSettings(url=store.url), Audit())
    req = await ask(service)
    with pytest.raises(ShareStateError, match="approvals cannot be made by this process"):
        await service.approve(req.id, by="owner-1", via="cli")


# --- checks against the catalogue ------------------------------------------------------------------


def problems(**kw: Any) -> list[str]:
    base: dict[str, Any] = {"requester": "civil", "dataset": "hrss.pension", "fields": ["monthly_amount"],
                            "purpose": REVIEW, "access": "read", "mask": None, "justification": "needed",
                            "requested_by": "official-007", "requested_via": "street-office-app"}
    base.update(kw)
    return check_request(CATALOG, **base)[1]


def test_a_good_request_has_no_problem_and_its_fields_are_normalised() -> None:
    names, found = check_request(CATALOG, requester="civil", dataset="hrss.pension",
                                 fields=["hrss.pension.monthly_amount", "status", "status"], purpose=REVIEW,
                                 access="read", mask=None, justification="x", requested_by="a", requested_via="b")
    assert (names, found) == (("monthly_amount", "status"), [])
    # A `none` field, for a purpose whose legal basis lists it.
    assert problems(requester="civil", dataset="health.vaccination", fields=["site"],
                    purpose="public-health-followup") == []


@pytest.mark.parametrize(("kw", "expected"), [
    ({"dataset": "hrss.pensions"}, "unknown dataset 'hrss.pensions'; did you mean hrss.pension"),
    ({"fields": ["monthly_amount", "amount"]}, "hrss.pension has no field 'amount'; its fields: id, id_number"),
    ({"fields": []}, "name at least one field of hrss.pension"),
    ({"purpose": "welfare"}, "unknown purpose 'welfare'; known: benefit-fraud-investigation"),
    ({"purpose": "market-supervision"}, "purpose market-supervision does not cover hrss.pension"),
    ({"requester": "hrss"}, "hrss.pension is hrss's own dataset"),
    ({"requester": "tax"}, "unknown requesting department 'tax'"),
    ({"dataset": "health.vaccination", "fields": ["site"], "purpose": "citizen-self-service"},
     "health.vaccination.site has share type none (不予共享)"),
    ({"justification": " \n "}, "give a justification"),
    ({"access": "verify"}, "access must be read or read_masked, not 'verify'"),
    ({"mask": "round_1000"}, "a mask goes with access read_masked"),
    ({"access": "read_masked", "mask": "blur"}, "unknown mask 'blur'; known: date_year"),
    ({"access": "read_masked", "mask": "date_year"}, "mask 'date_year' does not apply to hrss.pension.monthly_amount"),
    ({"access": "read_masked", "mask": "none"}, "read_masked with mask none would be a clear read"),
    ({"requested_by": ""}, "requested_by (the official asking) must be 1 to 200 characters"),
])
def test_problems_name_what_is_wrong(kw: dict[str, Any], expected: str) -> None:
    found = problems(**kw)
    assert any(expected in p for p in found), found


async def test_every_problem_is_reported_at_once(world: World) -> None:
    with pytest.raises(ShareInputError) as exc:
        await ask(world.service, purpose="welfare", justification="", fields=["nope"], mask=None)
    assert len(exc.value.problems) == 3 and "unknown purpose" in str(exc.value)
    assert world.audit.events == [] and await world.service.search() == []


# --- GraphQL -----------------------------------------------------------------------------------------


class Query(SharingQuery, graphene.ObjectType):
    pass


class Mutation(SharingMutation, graphene.ObjectType):
    pass


SCHEMA = graphene.Schema(query=Query, mutation=Mutation)
STREET = Subject("street-office-app", "civil", frozenset({"share-requester"}))
HRSS_OWNER = Subject("hrss-admin", "hrss", frozenset({"data-owner"}))
HEALTH_OWNER = Subject("health-app", "health", frozenset({"data-owner", "share-requester"}))
POLICY_ADMIN = Subject("policy-console", "bigdata", frozenset({"policy-admin"}))
NOBODY = Subject("market-app", "mr", frozenset({"market-inspector"}))

FIELDS = ("id status overdue workingDaysLeft requester provider dataset fields purpose access mask justification "
          "requestedBy requestedVia createdAt deadline deadlineDay decidedBy reason grantUntil expiresAt "
          "policyVersion lines history { seq action by via reason }")
REQUEST = f"""mutation($input: ShareRequestInput!) {{ requestSharing(input: $input) {{ {FIELDS} }} }}"""
APPROVE = f"""mutation($id: ID!, $until: Date) {{
    approveShareRequest(id: $id, reason: "ok", grantUntil: $until) {{ {FIELDS} }} }}"""
REFUSE = "mutation($id: ID!, $reason: String!) { refuseShareRequest(id: $id, reason: $reason) { id status reason } }"
WITHDRAW = "mutation($id: ID!) { withdrawShareRequest(id: $id, reason: \"not needed\") { id status } }"
LIST = """query($status: String, $overdue: Boolean, $department: String, $limit: Int, $after: String) {
    shareRequests(status: $status, overdue: $overdue, department: $department, limit: $limit, after: $after) {
        requests { id status overdue workingDaysLeft } endCursor } }"""
ONE = f"query($id: ID!) {{ shareRequest(id: $id) {{ {FIELDS} }} }}"
INPUT = {"dataset": "hrss.pension", "fields": ["monthly_amount"], "purpose": REVIEW, "access": "read_masked",
         "justification": "低保 review"}


async def gql(world: World | None, query: str, subject: Subject | None, acting: str | None = "official-007",
              **variables: Any) -> Any:
    return await SCHEMA.execute_async(query, variable_values=variables, context_value={
        "subject": subject, "acting_user": acting, "share_service": world.service if world else None})


def refusal(result: Any) -> tuple[type, str]:
    assert result.errors, result.data
    return type(result.errors[0].original_error), result.errors[0].message


async def test_graphql_life_cycle(world: World) -> None:
    r = await gql(world, REQUEST, STREET, input=INPUT)
    assert r.errors is None, r.errors
    made = r.data["requestSharing"]
    assert (made["status"], made["requester"], made["provider"], made["requestedBy"], made["requestedVia"]) == (
        "PENDING", "civil", "hrss", "official-007", "street-office-app")
    assert (made["overdue"], made["workingDaysLeft"], made["deadlineDay"], made["mask"]) == (False, 10, "2026-03-23",
                                                                                           None)
    assert made["lines"] == [f"p, dept:civil, hrss.pension.monthly_amount, read_masked, {REVIEW}, allow, default"]
    assert made["history"] == [{"seq": 1, "action": "created", "by": "official-007", "via": "street-office-app",
                                "reason": "低保 review"}]
    rid = made["id"]

    # Who may see it: both departments and the policy admin; not a third department.
    for subject in (STREET, HRSS_OWNER, POLICY_ADMIN):
        r = await gql(world, ONE, subject, id=rid)
        assert r.data["shareRequest"]["id"] == rid
    assert (await gql(world, ONE, HEALTH_OWNER, id=rid)).data["shareRequest"] is None
    r = await gql(world, LIST, HEALTH_OWNER)
    assert r.data["shareRequests"] == {"requests": [], "endCursor": None}
    assert refusal(await gql(world, LIST, HEALTH_OWNER, department="hrss")) == (
        PermissionError, "a client of health lists only the requests health made or must answer; listing hrss's "
                         "needs the role 'policy-admin'")

    # The escalation view, once the deadline has passed.
    world.clock.now = datetime(2026, 3, 25, 9, 0, tzinfo=SH)
    r = await gql(world, LIST, POLICY_ADMIN, overdue=True)
    assert r.data["shareRequests"]["requests"] == [{"id": rid, "status": "PENDING", "overdue": True,
                                                    "workingDaysLeft": -2}]
    assert (await gql(world, LIST, STREET, overdue=True, department="civil")).data["shareRequests"]["requests"]

    # Answering: only the provider's data owner, with the acting official named.
    assert refusal(await gql(world, APPROVE, STREET, id=rid)) == (
        PermissionError, "this needs a client with the role 'data-owner'")
    kind, message = refusal(await gql(world, APPROVE, HEALTH_OWNER, id=rid))
    assert (kind, message) == (PermissionError, f"{rid} is hrss's to approve (its provider), not health's")
    kind, message = refusal(await gql(world, APPROVE, HRSS_OWNER, acting=None, id=rid))
    assert kind is ValueError and message.startswith("name the official who does this in the X-Acting-User header")
    world.policy.refuse = PolicyError(["version 42: p, dept:civil, hrss.pension.monthly_amount, ...: no longer "
                                       "shared"])
    kind, message = refusal(await gql(world, APPROVE, HRSS_OWNER, id=rid))
    assert kind is ValueError and message.startswith(f"{rid} stays PENDING: the policy refuses its lines: version 42")
    world.policy.refuse = None

    r = await gql(world, APPROVE, HRSS_OWNER, id=rid, until="2026-06-30")
    assert r.errors is None, r.errors
    done = r.data["approveShareRequest"]
    assert (done["status"], done["policyVersion"], done["grantUntil"], done["decidedBy"], done["reason"]) == (
        "APPROVED", 42, "2026-06-30", "official-007", "ok")
    assert done["expiresAt"] == "2026-06-30T15:59:59.999999+00:00" and done["workingDaysLeft"] is None
    assert [h["action"] for h in done["history"]] == ["created", "approved"]
    assert world.policy.calls[0][1:] == ("official-007", f"sharing request {rid}: ok",
                                         datetime(2026, 6, 30, 23, 59, 59, 999_999, tzinfo=SH))
    assert refusal(await gql(world, REFUSE, HRSS_OWNER, id=rid, reason="late")) == (
        ShareStateError, f"{rid} was already approved on 2026-03-25 by official-007: only a PENDING request can be "
                         "refused; ask again with a new request")


async def test_graphql_refuse_withdraw_and_guards(world: World) -> None:
    rid = (await gql(world, REQUEST, STREET, input=INPUT)).data["requestSharing"]["id"]
    kind, message = refusal(await gql(world, REQUEST, STREET, input={**INPUT, "justification": "", "mask": "blur"}))
    assert kind is ShareInputError and "give a justification" in message and "unknown mask 'blur'" in message
    assert refusal(await gql(world, REQUEST, NOBODY, input=INPUT)) == (
        PermissionError, "this needs a client with the role 'share-requester'")
    assert refusal(await gql(None, REQUEST, STREET, input=INPUT)) == (
        ValueError, "sharing requests are not available in this process")
    assert refusal(await gql(world, LIST, NOBODY))[0] is PermissionError
    assert refusal(await gql(world, LIST, POLICY_ADMIN, status="open")) == (
        ValueError, "status must be PENDING, APPROVED, REFUSED, WITHDRAWN, not 'open'")
    assert refusal(await gql(world, LIST, POLICY_ADMIN, limit=0)) == (ShareInputError, "limit must be from 1 to 500")

    r = await gql(world, REFUSE, HRSS_OWNER, id=rid, reason="use the status instead")
    assert r.data["refuseShareRequest"] == {"id": rid, "status": "REFUSED", "reason": "use the status instead"}
    world.clock.now = T0 + timedelta(hours=1)
    second = (await gql(world, REQUEST, STREET, input=INPUT)).data["requestSharing"]["id"]
    assert refusal(await gql(world, WITHDRAW, HEALTH_OWNER, id=second))[0] is PermissionError
    r = await gql(world, WITHDRAW, STREET, id=second)
    assert r.data["withdrawShareRequest"] == {"id": second, "status": "WITHDRAWN"}

    page = (await gql(world, LIST, STREET, limit=1)).data["shareRequests"]
    assert [x["id"] for x in page["requests"]] == [second] and page["endCursor"] == second
    page = (await gql(world, LIST, STREET, limit=1, after=second)).data["shareRequests"]
    assert [x["id"] for x in page["requests"]] == [rid]
    r = await gql(world, LIST, POLICY_ADMIN, status="refused")
    assert [x["id"] for x in r.data["shareRequests"]["requests"]] == [rid]
    assert [e["event"] for e in world.audit.events] == ["share.request", "share.refuse", "share.request",
                                                        "share.withdraw"]


# --- hutong share ------------------------------------------------------------------------------------


def test_the_command_line(tmp_path: Path) -> None:
    cfg = tmp_path / "hutong.toml"
    cfg.write_text("\n".join([
        "[gateway]", f'catalog = "{REPO_ROOT / "demo" / "catalog"}"',
        "[audit]", 'url = "sqlite+aiosqlite:///run/audit.sqlite"', 'signing_key = "run/audit-signing-key.pem"',
        "[sharing]", "answer_working_days = 5", "holidays = [2026-10-01]"]) + "\n", encoding="utf-8")
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(share_app, [*args, "--config", str(cfg)], env={"COLUMNS": "250"})

    r = run("request", "--requester", "civil", "--dataset", "hrss.pension", "-f", "monthly_amount", "--purpose",
            REVIEW, "--justification", "低保 review", "--by", "clerk-9")
    assert r.exit_code == 0, r.output
    rid = re.search(r"\bsr-[0-9a-f]{20}\b", r.output).group(0)  # type: ignore[union-attr]
    assert "PENDING" in r.output and "5 working day(s) left" in r.output
    assert f"p, dept:civil, hrss.pension.monthly_amount, read, {REVIEW}, allow, default" in r.output
    assert (tmp_path / "run" / "sharing.sqlite").exists()  # relative to the configuration file

    r = run("request", "--requester", "civil", "--dataset", "hrss.pension", "-f", "amount", "--purpose",
            "market-supervision", "--justification", " ")
    assert r.exit_code == 1
    assert "hrss.pension has no field 'amount'" in r.output and "give a justification" in r.output

    r = run("list", "--department", "hrss")
    assert r.exit_code == 0 and rid in r.output and "PENDING" in r.output
    assert "no overdue requests" in run("list", "--overdue").output
    assert run("list", "--status", "open").exit_code == 2

    assert run("refuse", rid, "--by", "owner-1").exit_code == 2  # --reason is required
    r = run("refuse", rid, "--reason", "ask for the status instead", "--by", "owner-1")
    assert r.exit_code == 0 and f"{rid} is REFUSED" in r.output
    r = run("withdraw", rid, "--reason", "x", "--by", "clerk-9")
    assert r.exit_code == 1 and "only a PENDING request can be withdrawn" in r.output
    r = run("show", rid)
    assert r.exit_code == 0 and "by owner-1 via cli" in r.output and "ask for the status instead" in r.output
    assert "1. " in r.output and "created by clerk-9 via cli: 低保 review" in r.output
    r = run("show", "sr-unknown")
    assert r.exit_code == 1 and "no sharing request with id 'sr-unknown'" in r.output
    assert run("list", "--status", "REFUSED").output.count(rid) == 1

    # Both changes are admin events in the audit log; the refused ones left none.
    from gateway.audit.settings import AuditSettings
    from gateway.audit.store import AuditStore
    from gateway.config import load_settings

    async def events() -> list[tuple[str, str, str]]:
        audit = AuditStore(AuditSettings.from_settings(load_settings(cfg, environ={})).url)
        try:
            records, _ = await audit.search({"kind": "admin"}, limit=20)
        finally:
            await audit.close()
        return [(x["body"]["event"], x["body"]["target"], x["body"]["actor"]) for x in records]

    assert sorted(asyncio.run(events())) == [("share.refuse", rid, "owner-1"), ("share.request", rid, "clerk-9")]


def test_the_command_line_approval_writes_the_policy(tmp_path: Path) -> None:
    demo_policy = REPO_ROOT / "demo" / "policies" / "policy.csv"
    head = ["[gateway]", f'catalog = "{REPO_ROOT / "demo" / "catalog"}"',
            "[audit]", 'url = "sqlite+aiosqlite:///run/audit.sqlite"', 'signing_key = "run/audit-signing-key.pem"']
    in_file = tmp_path / "file.toml"
    in_file.write_text("\n".join([*head, "[policies]", f'file = "{demo_policy}"', f'mask_key = "{"k" * 32}"']) + "\n",
                       encoding="utf-8")
    in_store = tmp_path / "store.toml"
    in_store.write_text("\n".join([*head, "[policies]", 'url = "sqlite+aiosqlite:///run/policy.sqlite"',
                                   f'seed = "{demo_policy}"', f'mask_key = "{"k" * 32}"']) + "\n", encoding="utf-8")
    runner = CliRunner()

    def run(cfg: Path, *args: str) -> Any:
        return runner.invoke(share_app, [*args, "--config", str(cfg)], env={"COLUMNS": "250"})

    r = run(in_store, "request", "--requester", "health", "--dataset", "hrss.pension", "-f", "status", "--purpose",
            "citizen-self-service", "--justification", "portal shows pension status", "--by", "clerk-9")
    assert r.exit_code == 0, r.output
    rid = re.search(r"\bsr-[0-9a-f]{20}\b", r.output).group(0)  # type: ignore[union-attr]
    # A policy kept in a file is not written by hutong: the approval is refused, the request stays PENDING.
    r = run(in_file, "approve", rid, "--by", "owner-1")
    assert r.exit_code == 1 and "which hutong does not write" in r.output
    until = date.today() + timedelta(days=30)
    assert run(in_store, "approve", rid, "--until", "2020-01-01").exit_code == 1
    r = run(in_store, "approve", rid, "--until", until.isoformat(), "--reason", "portal", "--by", "owner-1")
    assert r.exit_code == 0, r.output
    assert re.search(rf"{rid} is APPROVED: policy version \d+ grants health hrss.pension.status for "
                     rf"citizen-self-service until the end of {until}", r.output)

    from gateway.config import load_settings
    from policies.admin import open_policy_admin

    async def granted() -> list[tuple[PolicyLine, datetime | None]]:
        settings = load_settings(in_store, environ={})
        async with open_policy_admin(settings, CATALOG) as admin:
            return await admin.lines(department="health", dataset="hrss.pension")

    line = ("p", "dept:health", "hrss.pension.status", "read", "citizen-self-service", "allow", "default")
    assert asyncio.run(granted()) == [(line, datetime.combine(until, time.max, SH))]
    r = run(in_store, "show", rid)
    assert "lines written" in r.output and "by owner-1 via cli" in r.output
