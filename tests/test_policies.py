"""Policy lines: validation against the catalogue, reload without restart, the SQL store, masks."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest

from catalog.loader import load_catalog
from catalog.model import Catalog
from gateway.config import REPO_ROOT
from policies.decide import Access, Decider, RowRule, Subject
from policies.masks import Masker, hmac_hex
from policies.store import FilePolicySource, PolicyStore, RepositorySource
from policies.validate import PolicyError
from tests.conftest import throwaway_pg_database

CATALOG: Catalog = load_catalog(REPO_ROOT / "demo" / "catalog")
HEADER = "# test policy\n"
CLIENT = Subject("app", "civil", frozenset({"r"}))


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "policy.csv"
    path.write_text(HEADER + "\n".join(lines) + "\n", encoding="utf-8")
    return path


async def load(path: Path) -> PolicyStore:
    store = PolicyStore(FilePolicySource(path), CATALOG, reload_interval=0)
    await store.refresh()
    return store


@pytest.mark.parametrize(("line", "words"), [
    ("p, app, psb.nothing.name, read, *, allow, default", "unknown field 'psb.nothing.name'"),
    ("p, app, psb.resident.shoe_size, read, *, allow, default", "unknown field 'psb.resident.shoe_size'"),
    ("p, app, zzz*, read, *, allow, default", "'zzz*' matches no field"),
    ("p, app, psb.resident.name, write, *, allow, default", "unknown action 'write'"),
    ("p, app, psb.resident.name, read, fishing, allow, default", "unknown purpose 'fishing'"),
    ("p, app, psb.resident.name, read, *, maybe, default", "effect must be allow or deny"),
    ("p, app, psb.resident.name, read_masked, *, allow, scramble", "unknown mask 'scramble'"),
    ("p, app, psb.resident.birth_date, read_masked, *, allow, name", "mask 'name' does not apply to "
                                                                      "psb.resident.birth_date"),
    ("p, dept:nowhere, psb.resident.name, read, *, allow, default", "unknown department 'nowhere'"),
    ("p, app, health.vaccination.site, read, market-supervision, allow, default",
     "has share type none (不予共享): it can be granted only for a purpose whose legal basis lists it"),
    ("p, app, health.vaccination.site, read, *, allow, default", "has share type none"),
    ("p2, app, psb.resident, *, shoe_size, eq, 1", "unknown column 'shoe_size'"),
    ("p2, app, psb.resident, *, district, like, x", "unknown operator 'like'"),
    ("p2, app, psb.people, *, district, eq, x", "unknown dataset 'psb.people'"),
    ("g, app, dept:nowhere", "unknown department 'nowhere'"),
])
async def test_invalid_lines_are_named(tmp_path: Path, line: str, words: str) -> None:
    with pytest.raises(PolicyError) as exc:
        await load(write(tmp_path, line))
    assert any(words in p and line.split(",")[0] in p for p in exc.value.problems), exc.value.problems


async def test_a_none_field_with_its_legal_basis_is_accepted(tmp_path: Path) -> None:
    store = await load(write(tmp_path, "p, app, health.vaccination.site, read, public-health-followup, allow, default"))
    decider = Decider(store, CATALOG)
    assert decider.decide(CLIENT, "public-health-followup", "health.vaccination.site").access is Access.CLEAR


async def test_policy_reloads_without_restart_and_bad_versions_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "p, role:r, psb.resident.*, read, *, allow, default")
    store = await load(path)
    decider = Decider(store, CATALOG)
    purpose = "subsistence-allowance-review"
    assert decider.decide(CLIENT, purpose, "psb.resident.name").access is Access.CLEAR

    write(tmp_path, "p, role:r, psb.resident.*, read, *, allow, default",
          "p, app, psb.resident.name, read, *, deny, default",
          "p, app, psb.resident.name, read_masked, *, allow, default")
    os.utime(path, ns=(1, 10**18))  # a new mtime even within the filesystem's clock resolution
    await store.refresh()
    assert store.snapshot.version == 2
    assert decider.decide(CLIENT, purpose, "psb.resident.name") == \
        decider.decide(CLIENT, purpose, "psb.resident.name")  # cached per version
    assert decider.decide(CLIENT, purpose, "psb.resident.name").access is Access.MASKED

    write(tmp_path, "p, role:r, psb.resident.*, read, nonsense-purpose, allow, default")
    os.utime(path, ns=(1, 2 * 10**18))
    await store.refresh()
    assert store.snapshot.version == 2  # refused: the version in force stays
    assert decider.decide(CLIENT, purpose, "psb.resident.name").access is Access.MASKED


@pytest.fixture(scope="module")
def policy_pg_url() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_policy")


async def test_the_policy_repository_on_postgresql(policy_pg_url: str) -> None:
    from policies.admin import PolicyAdmin
    from policies.repository import PolicyRepository

    repo = PolicyRepository(policy_pg_url)
    store = PolicyStore(RepositorySource(repo), CATALOG, reload_interval=0)
    await store.refresh()  # creates the tables; an empty policy allows nothing
    decider = Decider(store, CATALOG)
    purpose = "market-supervision"
    assert decider.decide(CLIENT, purpose, "mr.business.name").access is Access.DENIED

    events: list[dict[str, object]] = []

    async def record(body: dict[str, object]) -> None:
        events.append(body)

    admin = PolicyAdmin(PolicyRepository(policy_pg_url), CATALOG, record)
    await admin.change(add=[("p", "role:r", "mr.business.*", "read", purpose, "allow", "default"),
                            ("p2", "app", "mr.business", purpose, "status", "eq", "active")],
                       author="admin-1", reason="market inspections")
    await store.refresh()
    assert store.snapshot.version == 2 and store.snapshot.policy_version == 1
    assert decider.decide(CLIENT, purpose, "mr.business.name").access is Access.CLEAR
    assert [(r.column, r.op, r.value) for r in decider.row_rules(CLIENT, purpose, "mr.business")] == [
        ("status", "eq", "active")]
    with pytest.raises(PolicyError):  # an invalid line is refused before it is stored
        await admin.change(add=[("p", "app", "mr.business.nope", "read", purpose, "allow", "default")],
                           author="admin-1", reason="typo")
    assert await admin.repo.head() == 1 and [e["event"] for e in events] == ["policy.change"]
    await admin.repo.close()
    await store.close()


def test_masks_keep_types_and_hash_with_the_key() -> None:
    m = Masker(b"k" * 32)
    assert m.apply("id_number", "11010519491231002X") == "110105********002X"
    assert m.apply("name", "欧阳娜娜") == "欧阳**" and m.apply("name", "梁志晨") == "梁**"
    assert m.apply("phone", "13812345678") == "138****5678"
    assert m.apply("show_last_2", "abcdef") == "****ef" and m.apply("show_first_3", "abcdef") == "abc***"
    assert m.apply("date_year", date(1980, 9, 30)) == date(1980, 1, 1)
    assert m.apply("round_1000", 2749.5) == 2000.0 and m.apply("round_1000", 999) == 0
    assert m.apply("redact", "Ab1-中") == "Xx0-*"
    assert m.apply("null", "x") is None and m.apply("none", "x") == "x"
    h = m.apply("hash", "11010519491231002X")
    assert h == m.apply("hash", "11010519491231002X") != Masker(b"j" * 32).apply("hash", "11010519491231002X")
    assert "11010519491231002X" not in h
    # RFC 2104 HMAC-SHA256, whatever the key's length (hmac_hex precomputes the keyed states).
    assert h == hmac.new(b"k" * 32, b"11010519491231002X", hashlib.sha256).hexdigest()[:24]
    for key in (b"k" * 16, b"k" * 64, b"k" * 65, bytes(range(200))):
        assert hmac_hex(key)(b"msg") == hmac.new(key, b"msg", hashlib.sha256).hexdigest()


async def decide_with(tmp_path: Path, *lines: str, obj: str = "psb.resident.name") -> tuple[Access, str | None]:
    store = await load(write(tmp_path, *lines))
    d = Decider(store, CATALOG).decide(CLIENT, "subsistence-allowance-review", obj)
    return d.access, d.mask


async def test_a_deny_on_a_weaker_action_denies_the_stronger_ones(tmp_path: Path) -> None:
    allow_all = "p, app, psb.resident.*, *, *, allow, default"
    assert await decide_with(tmp_path, allow_all) == (Access.CLEAR, None)
    assert await decide_with(tmp_path, allow_all, "p, app, psb.resident.name, read, *, deny, default") == \
        (Access.MASKED, "name")
    assert await decide_with(tmp_path, allow_all, "p, app, psb.resident.name, read_masked, *, deny, default") == \
        (Access.VERIFY, None)
    assert await decide_with(tmp_path, allow_all, "p, app, psb.resident.name, verify, *, deny, default") == \
        (Access.DENIED, None)


async def test_the_strictest_mask_wins_whatever_the_line_order(tmp_path: Path) -> None:
    a = "p, app, psb.resident.id_number, read_masked, *, allow, show_last_4"
    b = "p, role:r, psb.resident.id_number, read_masked, *, allow, hash"
    assert await decide_with(tmp_path, a, b, obj="psb.resident.id_number") == (Access.MASKED, "hash")
    assert await decide_with(tmp_path, b, a, obj="psb.resident.id_number") == (Access.MASKED, "hash")


@pytest.mark.parametrize(("looser", "stricter"), [
    ("id_number", "show_last_4"),  # 10 characters kept against 4
    ("phone", "show_last_1"),  # 7 against 1
    ("show_first_2", "name"),  # a surname is about one character
    ("show_last_4", "redact"),
])
async def test_the_mask_that_shows_less_is_the_stricter(tmp_path: Path, looser: str, stricter: str) -> None:
    a = f"p, app, psb.resident.id_number, read_masked, *, allow, {looser}"
    b = f"p, role:r, psb.resident.id_number, read_masked, *, allow, {stricter}"
    for lines in ((a, b), (b, a)):
        assert await decide_with(tmp_path, *lines, obj="psb.resident.id_number") == (Access.MASKED, stricter)


@pytest.mark.parametrize(("line", "words"), [
    ("p, app, psb.resident.name, read_masked, *, allow, none", "read_masked with mask none would be a clear read"),
    ("p2, app, psb.resident, *, birth_date, lt, not-a-date", "'not-a-date' is not a date"),
    ("p2, app, psb.resident, *, birth_date, in, 1990-01-01|never", "is not a date"),
    ("p2, app, hrss.employment, *, id, eq, ${client_id}",
     "placeholders (${client_id}, ${department}, ${claim.NAME}) bind text"),
    ("p2, app, hrss.employment, *, employer_name, eq, ${claims.x}", "unknown placeholder '${claims.x}'"),
    ("p, app, health.vaccination.*, read, market-supervision, allow, default",
     "purpose 'market-supervision' does not cover health.vaccination.*"),
    # A bare group name would hand its grants to a client later registered under that name.
    ("g, dept:civil, street-offices", "'street-offices' is a bare name, which policies read as a client id"),
    ("p, team:x, psb.resident.name, read, *, allow, default", "a name is a client id, or dept:NAME"),
])
async def test_more_invalid_lines(tmp_path: Path, line: str, words: str) -> None:
    with pytest.raises(PolicyError) as exc:
        await load(write(tmp_path, line))
    assert any(words in p for p in exc.value.problems), exc.value.problems


async def test_row_rule_placeholders_are_bound_per_client(tmp_path: Path) -> None:
    store = await load(write(tmp_path, "p2, app, civil.subsistence_case, *, street_office, eq, ${department}"))
    (rule,) = Decider(store, CATALOG).row_rules(CLIENT, "subsistence-allowance-review", "civil.subsistence_case")
    assert rule.bind(CLIENT) == "civil"


def test_an_attribute_holding_a_bar_stays_one_value_of_an_in_rule() -> None:
    rule = RowRule("district", "in", "${claim.district}|东湖区")
    sneaky = Subject.of("app", "civil", (), {"district": "北苑区|西山区|鼓楼区"})
    assert rule.bind_each(sneaky) == ["北苑区|西山区|鼓楼区", "东湖区"]  # never three districts more


def test_enforcer_of_holds_what_casbin_add_policy_would_hold() -> None:
    """enforcer_of appends straight into the model (pycasbin's add_policy scans a list per line, which
    is quadratic); the result must be the same lines, in the same order, duplicates dropped, with the
    same decisions."""
    import random

    from policies.lines import enforcer_of, lines_of
    from policies.store import new_enforcer

    rng = random.Random(7)
    lines = [("p", f"c{rng.randrange(9)}", f"psb.resident.{rng.choice(['name', 'address', '*'])}",
              rng.choice(["read", "read_masked", "verify", "*"]), "*", rng.choice(["allow", "deny"]), "default")
             for _ in range(400)]
    lines += [("g", f"c{i}", f"role:r{i % 3}") for i in range(9)] + [("p2", "role:r1", "psb.resident", "*",
                                                                       "district", "eq", "x")]
    lines += lines[:30]  # listed twice
    fast = enforcer_of(lines)
    slow = new_enforcer()
    for line in lines:
        slow.get_model().add_policy("g" if line[0] == "g" else "p", line[0], list(line[1:]))
    slow.build_role_links()
    assert lines_of(fast) == lines_of(slow) and len(lines_of(fast)) == len(set(lines))
    requests = [(f"c{i}", f"psb.resident.{f}", a, "p") for i in range(9) for f in ("name", "address", "gender")
                for a in ("read", "read_masked", "verify")]
    assert [fast.enforce(*r) for r in requests] == [slow.enforce(*r) for r in requests]
