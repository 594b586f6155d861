"""The policy in force lives in Casbin's standard ``casbin_rule`` table, loaded through the maintained
``casbin-async-sqlalchemy-adapter``: on SQLite and on PostgreSQL, casbin_rule equals the version's
lines after every change, rollback and lapse; a plain pycasbin enforcer on the table decides as
hutong does; a direct edit of the table is refused until adopted or restored; existing stores are
backfilled."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import casbin
import pytest
from casbin_async_sqlalchemy_adapter import Adapter
from sqlalchemy.ext.asyncio import create_async_engine

from catalog.loader import load_catalog
from gateway.config import REPO_ROOT
from policies.admin import PolicyAdmin, ensure_seeded
from policies.casbin_rule import TABLE
from policies.decide import Access, Decider, Subject
from policies.lines import PolicyLine, format_line, lines_of, parse_csv
from policies.repository import PolicyConflict, PolicyRepository
from policies.store import MODEL_PATH, PolicyStore, RepositorySource
from policies.validate import PolicyError
from policies.watcher import PolicyWatcher
from tests.conftest import throwaway_pg_database

CATALOG = load_catalog(REPO_ROOT / "demo" / "catalog")
DEMO_LINES = parse_csv((REPO_ROOT / "demo" / "policies" / "policy.csv").read_text(encoding="utf-8"))
REVIEW = "subsistence-allowance-review"
FOLLOWUP = "public-health-followup"
GRANT = ("p", "role:street-office", "psb.resident.*", "read", REVIEW, "allow", "default")
HEALTH = Subject("health-app", "health", frozenset({"clinician"}))
LIMITED = ("p", "dept:health", "psb.resident.name", "read", FOLLOWUP, "allow", "default")


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_policy_adapter")


@pytest.fixture(params=["sqlite", "postgresql"])
async def admin(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[PolicyAdmin, list[Any]]]:
    """A seeded policy store on SQLite or on a fresh PostgreSQL schema, and the audit events it records."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/policy.sqlite"
    else:
        url = request.getfixturevalue("pg_url")
        await _reset_pg(url)
    events: list[dict[str, Any]] = []

    async def record(body: dict[str, Any]) -> None:
        events.append(body)

    repo = PolicyRepository(url)
    await repo.init()
    a = PolicyAdmin(repo, CATALOG, record)
    await a.replace_all(DEMO_LINES, author="seed", reason="demo policy", source="seed")
    yield a, events
    await repo.close()


async def _reset_pg(url: str) -> None:
    """An empty public schema: each test starts from a store that never existed."""
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("DROP SCHEMA public CASCADE")
        await conn.exec_driver_sql("CREATE SCHEMA public")
    await engine.dispose()


async def table(repo: PolicyRepository) -> list[PolicyLine | None]:
    return sorted(await repo.casbin_rule_lines(), key=repr)


async def in_force(repo: PolicyRepository) -> list[PolicyLine]:
    return sorted((x for x, _ in await repo.live()), key=repr)


async def outside(repo: PolicyRepository, sql: str) -> None:
    """Another tool's write to the same database."""
    engine = create_async_engine(repo.url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql(sql)
    await engine.dispose()


async def plain_enforcer(repo: PolicyRepository) -> casbin.AsyncEnforcer:
    """pycasbin's own enforcer on the maintained adapter, knowing nothing of hutong."""
    engine = create_async_engine(repo.url)
    enforcer = casbin.AsyncEnforcer(str(MODEL_PATH), Adapter(engine))
    await enforcer.load_policy()
    await engine.dispose()
    return enforcer


def store_of(repo: PolicyRepository, **kw: Any) -> PolicyStore:
    return PolicyStore(RepositorySource(PolicyRepository(repo.url)), CATALOG, reload_interval=0, **kw)


# --- casbin_rule is the version in force ------------------------------------------------------------


async def test_casbin_rule_holds_the_version_in_force_after_every_change_rollback_and_lapse(admin: Any) -> None:
    a, _ = admin
    repo: PolicyRepository = a.repo
    assert await table(repo) == await in_force(repo) == sorted(DEMO_LINES, key=repr)
    # Exactly as the adapter writes a line: values up to the line's length, NULL after.
    async with repo.engine.connect() as conn:
        g = (await conn.exec_driver_sql(f"SELECT * FROM {TABLE} WHERE ptype = 'g'")).mappings().first()
    assert g is not None and g["v0"] and g["v1"] and [g[f"v{i}"] for i in range(2, 6)] == [None] * 4

    extra = ("p", "role:street-office", "psb.resident.name", "read_masked", REVIEW, "allow", "name")
    await a.change(remove=[GRANT], author="admin-1", reason="no names")
    assert await table(repo) == await in_force(repo)
    await a.change(add=[extra], author="admin-2", reason="masked names")
    assert await table(repo) == await in_force(repo)
    await a.rollback(1, author="admin-3", reason="undo")
    assert await table(repo) == await in_force(repo) == sorted(DEMO_LINES, key=repr)
    await a.import_csv("\n".join(format_line(x) for x in DEMO_LINES[:5]), author="admin-1", reason="smaller")
    assert await table(repo) == await in_force(repo) == sorted(DEMO_LINES[:5], key=repr)
    await a.import_csv("\n".join(format_line(x) for x in DEMO_LINES), author="admin-1", reason="whole again")

    # A time-limited grant: in casbin_rule while it lasts, out of it when it lapses, with no new version.
    store = store_of(repo)
    await store.refresh()
    head = await repo.head()
    await a.change(add=[LIMITED], author="data-owner", reason="share request", source="share-request",
                   expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    assert LIMITED in await table(repo) and await table(repo) == await in_force(repo)
    await store.refresh()
    decider = Decider(store, CATALOG)
    assert decider.decide(HEALTH, FOLLOWUP, "psb.resident.name").access is Access.CLEAR
    await asyncio.sleep(1.6)
    await store.refresh()  # the lapse alone reloads, and removes the line from casbin_rule
    assert decider.decide(HEALTH, FOLLOWUP, "psb.resident.name").access is Access.MASKED
    assert await repo.head() == head + 1 and not store.refused
    assert LIMITED not in await table(repo) and await table(repo) == await in_force(repo)
    other = ("p", "dept:health", "psb.resident.gender", "read", FOLLOWUP, "allow", "default")
    await a.change(add=[other], author="admin-1", reason="next version closes the lapsed line")
    assert await table(repo) == await in_force(repo)
    await a.rollback(head + 1, author="admin-1", reason="does not bring the lapsed grant back")
    assert LIMITED not in await table(repo) and await table(repo) == await in_force(repo)
    assert await repo.casbin_rule_problems() == []
    await store.close()


async def test_a_lapsed_line_left_in_casbin_rule_is_not_applied(admin: Any) -> None:
    """Where no gateway could remove it (a read-only store, all gateways down), a lapsed line still in
    casbin_rule is not enforced, and the next version removes it."""
    a, _ = admin
    await a.change(add=[LIMITED], author="data-owner", reason="short", source="share-request",
                   expires_at=datetime.now(UTC) + timedelta(seconds=0.5))
    await asyncio.sleep(0.6)
    assert LIMITED in await table(a.repo)
    found = await a.repo.load(datetime.now(UTC))
    assert found.problems == [] and found.lapsed == 1
    assert tuple(LIMITED[1:]) not in [tuple(x) for x in found.enforcer.get_named_policy("p")]
    await a.change(remove=[GRANT], author="admin-1", reason="any change")
    assert LIMITED not in await table(a.repo) and await table(a.repo) == await in_force(a.repo)


async def test_a_plain_pycasbin_enforcer_on_casbin_rule_decides_as_the_gateway(admin: Any) -> None:
    a, _ = admin
    await a.change(add=[("p", "dept:health", "psb.resident.name", "read", FOLLOWUP, "allow", "default"),
                        ("p", "group:street-offices", "hrss.pension.monthly_amount", "read", REVIEW, "deny",
                         "default")],
                   remove=[DEMO_LINES[-1]], author="admin-1", reason="a few more")
    store = store_of(a.repo)
    await store.refresh()
    plain = await plain_enforcer(a.repo)
    ours = store.snapshot.enforcer
    assert sorted(map(tuple, lines_of(plain))) == sorted(map(tuple, lines_of(ours))) == await in_force(a.repo)

    names = sorted({x[1] for x in DEMO_LINES} | {x[2] for x in DEMO_LINES if x[0] == "g"}
                   | {"street-office-app", "health-app", "market-app", "citizen-portal", "nobody"})
    fields = sorted(f"{d.code}.{f.name}" for d in CATALOG.datasets.values() for f in d.fields)
    purposes = sorted(CATALOG.purposes)
    rng = random.Random(3)
    requests = [(rng.choice(names), rng.choice(fields), rng.choice(("read", "read_masked", "verify")),
                 rng.choice(purposes)) for _ in range(600)]
    decisions = [plain.enforce(*r) for r in requests]
    assert decisions == [ours.enforce(*r) for r in requests]
    assert any(decisions) and not all(decisions)
    # hutong's decider, which answers as enforce does (tests/test_decide.py), on the same table:
    street = Subject.of("street-office-app", "civil", ["street-office"], {"district": "x"})
    assert plain.enforce("street-office-app", "psb.resident.name", "read", REVIEW) is (
        Decider(store, CATALOG).decide(street, REVIEW, "psb.resident.name").access is Access.CLEAR)
    await store.close()


# --- a direct edit ----------------------------------------------------------------------------------


async def test_a_line_added_outside_hutong_is_refused_until_adopted(admin: Any) -> None:
    a, events = admin
    store = store_of(a.repo, max_staleness=0.3)
    told: list[tuple[str, dict[str, Any]]] = []

    async def tell(event: str, details: dict[str, Any]) -> None:
        told.append((event, details))

    store.on_change = tell
    await store.refresh()
    decider = Decider(store, CATALOG)
    assert decider.decide(HEALTH, FOLLOWUP, "psb.resident.name").access is Access.MASKED
    loaded = store.snapshot.version

    # Another Casbin tool adds a grant through the same adapter (auto-save).
    engine = create_async_engine(a.repo.url)
    tool = casbin.AsyncEnforcer(str(MODEL_PATH), Adapter(engine))
    await tool.load_policy()
    assert await tool.add_policy(*LIMITED[1:])
    await engine.dispose()

    await store.refresh()  # noticed at the next check (the table's write count is in the stamp) ...
    assert store.refused and store.snapshot.version == loaded  # ... and refused: the version in force stays
    assert decider.decide(HEALTH, FOLLOWUP, "psb.resident.name").access is Access.MASKED
    event, details = told[-1]
    assert event == "policy.refused"
    assert any("was changed outside hutong" in p for p in details["problems"])  # type: ignore[union-attr]
    assert any(format_line(LIMITED) in p and "added outside hutong" in p
               for p in details["problems"])  # type: ignore[union-attr]
    await asyncio.sleep(0.4)
    assert store.stale(), "a gateway that does not enforce what casbin_rule says stops serving data"
    starting = store_of(a.repo)
    with pytest.raises(PolicyError, match="changed outside hutong"):  # a gateway starting now does not start
        await starting.refresh()
    await starting.close()
    # Changes of a few lines are refused; nothing is overwritten silently.
    with pytest.raises(PolicyConflict, match="changed outside hutong") as info:
        await a.change(remove=[GRANT], author="admin-1", reason="tidy")
    assert format_line(LIMITED) in str(info.value)
    assert GRANT in await table(a.repo)

    # An administrator adopts the edit: a validated, audited version of its own.
    v = await a.adopt_casbin_rule(author="admin-1", reason="the health commission's grant, agreed by phone")
    assert (v.source, v.added, v.removed) == ("casbin_rule", 1, 0)
    assert events[-1]["added"] == [format_line(LIMITED)] and events[-1]["actor"] == "admin-1"
    assert await table(a.repo) == await in_force(a.repo) and LIMITED in await in_force(a.repo)
    await store.refresh()
    assert not store.refused and not store.stale()
    assert decider.decide(HEALTH, FOLLOWUP, "psb.resident.name").access is Access.CLEAR
    await store.close()


async def test_a_line_removed_or_changed_outside_hutong_is_refused_until_restored(admin: Any) -> None:
    a, events = admin
    store = store_of(a.repo)
    await store.refresh()
    head = await a.repo.head()
    await outside(a.repo, f"DELETE FROM {TABLE} WHERE ptype = 'p' AND v0 = '{GRANT[1]}' AND v1 = '{GRANT[2]}'")
    await store.refresh()
    assert store.refused
    problems = await a.repo.casbin_rule_problems()
    assert any("removed outside hutong" in p and format_line(GRANT) in p for p in problems), problems

    v = await a.restore_casbin_rule(author="admin-1", reason="nobody agreed to that")
    assert (v.number, v.added, v.removed, v.source) == (head + 1, 0, 0, "restore")
    assert "rewritten" in v.reason and events[-1]["casbin_rule_overwritten"]
    assert await table(a.repo) == await in_force(a.repo) and GRANT in await table(a.repo)
    await store.refresh()
    assert not store.refused
    with pytest.raises(PolicyConflict, match="nothing to restore"):
        await a.restore_casbin_rule(author="admin-1", reason="again")

    # An in-place update (the adapter's update_policy, or SQL) changes no count but is noticed all the same.
    stamp = await a.repo.stamp()
    await outside(a.repo, f"UPDATE {TABLE} SET v2 = 'verify' WHERE ptype = 'p' AND v0 = '{GRANT[1]}' "
                          f"AND v1 = '{GRANT[2]}'")
    assert await a.repo.stamp() != stamp
    await store.refresh()
    assert store.refused
    # A row of a type hutong's model does not have, or a duplicate, is a change too.
    await outside(a.repo, f"INSERT INTO {TABLE} (ptype, v0, v1) VALUES ('g2', 'a', 'b')")
    problems = await a.repo.casbin_rule_problems()
    assert any("not policy lines of hutong's model" in p for p in problems) and any("verify" in p for p in problems)
    # A rollback (which states the whole policy) restores it too, and says so.
    v = await a.rollback(head + 1, author="admin-2", reason="back to the agreed rules")
    assert (v.added, v.removed) == (0, 0) and events[-1]["casbin_rule_overwritten"]
    assert await table(a.repo) == await in_force(a.repo)
    await outside(a.repo, f"INSERT INTO {TABLE} (ptype, v0, v1, v2, v3, v4, v5) VALUES "
                          f"('{GRANT[0]}', '{GRANT[1]}', '{GRANT[2]}', '{GRANT[3]}', '{GRANT[4]}', '{GRANT[5]}', "
                          f"'{GRANT[6]}')")
    assert any("2 times" in p for p in await a.repo.casbin_rule_problems())
    await store.close()


async def test_a_seed_never_overwrites_an_edited_casbin_rule(tmp_path: Path) -> None:
    repo = PolicyRepository(f"sqlite+aiosqlite:///{tmp_path}/policy.sqlite")
    await repo.init()
    await outside(repo, f"INSERT INTO {TABLE} (ptype, v0, v1) VALUES ('g', 'dept:civil', 'group:x')")
    seed = tmp_path / "seed.csv"
    seed.write_text("\n".join(format_line(x) for x in DEMO_LINES), encoding="utf-8")

    async def record(body: dict[str, Any]) -> None:
        return None

    assert await ensure_seeded(PolicyAdmin(repo, CATALOG, record), seed) is None
    assert await repo.head() == 0 and await repo.casbin_rule_lines() == [("g", "dept:civil", "group:x")]
    store = store_of(repo)
    with pytest.raises(PolicyError, match="changed outside hutong"):
        await store.refresh()
    await store.close()
    await repo.close()


async def test_lines_casbin_cannot_read_back_are_refused(admin: Any) -> None:
    a, _ = admin
    long = ("p2", "app", "mr.business", "market-supervision", "status", "eq", "x" * 300)
    commas = ("p2", "app", "mr.business", "market-supervision", "status", "eq", "a, b")
    for line, words in ((long, "longer than 255"), (commas, "read it back differently")):
        with pytest.raises(PolicyError, match=words):
            await a.change(add=[line], author="admin-1", reason="try")
    assert await a.repo.head() == 1


# --- existing stores ---------------------------------------------------------------------------------


async def test_an_existing_store_gets_casbin_rule_filled_once(admin: Any) -> None:
    a, _ = admin
    repo: PolicyRepository = a.repo
    soon = ("p", "dept:health", "psb.resident.gender", "read", FOLLOWUP, "allow", "default")
    await a.change(add=[LIMITED], author="o", reason="lapses", expires_at=datetime.now(UTC) + timedelta(seconds=0.4))
    await a.change(add=[soon], author="o", reason="lasts", expires_at=datetime.now(UTC) + timedelta(days=3))
    await asyncio.sleep(0.5)
    # A store from before casbin_rule: its versions only.
    await outside(repo, f"DROP TABLE {TABLE}")
    await outside(repo, "DROP TABLE policy_rule_writes")
    fresh = PolicyRepository(repo.url)
    await fresh.init()
    assert await table(fresh) == await in_force(fresh) and soon in await table(fresh)
    assert LIMITED not in await table(fresh)  # lapsed: not brought back
    store = store_of(fresh)
    await store.refresh()
    assert not store.refused and store.snapshot.policy_version == await fresh.head()
    await fresh.init()  # once: a second start changes nothing
    assert await table(fresh) == await in_force(fresh)
    await store.close()

    # A casbin_rule that holds someone else's rules is not taken over.
    await outside(repo, f"INSERT INTO {TABLE} (ptype, v0, v1) VALUES ('g', 'alice', 'admin')")
    await outside(repo, "DROP TABLE policy_rule_writes")
    other = PolicyRepository(repo.url)
    with pytest.raises(PolicyError, match="already holds rules that are not this store's policy"):
        await other.init()
    await other.close()
    await fresh.close()


async def test_a_direct_edit_wakes_the_postgresql_watcher(pg_url: str) -> None:
    await _reset_pg(pg_url)
    repo = PolicyRepository(pg_url)
    await repo.init()
    store = PolicyStore(RepositorySource(PolicyRepository(pg_url)), CATALOG, reload_interval=60)
    await store.refresh()
    watcher = PolicyWatcher(store, poll_interval=30)
    await watcher.start()
    try:
        for _ in range(100):
            if watcher.listening:
                break
            await asyncio.sleep(0.05)
        await outside(repo, f"INSERT INTO {TABLE} (ptype, v0, v1) VALUES ('g', 'dept:civil', 'group:x')")
        for _ in range(100):
            if store.refused:
                break
            await asyncio.sleep(0.05)
        assert watcher.notifications >= 1 and store.refused
    finally:
        await watcher.close()
        await store.close()
        await repo.close()


async def test_an_import_does_not_bring_a_lapsed_grant_back_for_good(admin: Any) -> None:
    a, _ = admin
    repo: PolicyRepository = a.repo
    await a.change(add=[LIMITED], author="data-owner", reason="share request", source="share-request",
                   expires_at=datetime.now(UTC) + timedelta(seconds=0.3))
    exported = "\n".join(format_line(x) for x in await in_force(repo))  # saved while the grant lasted
    await asyncio.sleep(0.4)
    with pytest.raises(PolicyError) as exc:
        await a.import_csv(exported, author="admin-1", reason="restore from a backup")
    assert any("was granted for a limited time, which has passed" in p for p in exc.value.problems)
    assert LIMITED not in await in_force(repo)
