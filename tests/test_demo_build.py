"""Tests of the demo city generator (demo.build) and the Housing REST service (demo.housing_service)."""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog.keys import normalise_credit_code, normalise_id_number
from demo.build import (
    DISTRICTS,
    REFERENCE_DATE,
    RETIREMENT_AGE,
    City,
    build_city,
    build_demo,
    write_department,
    write_housing,
)
from demo.housing_service import create_app
from demo.schema import (
    BUSINESS_STATUSES,
    BUSINESS_TYPES,
    CASE_STATUSES,
    DEPARTMENT_TABLES,
    GENDERS,
    HOUSING_FIELDS,
    HOUSING_USAGES,
    MEDICAL_SCHEMES,
    MEDICAL_STATUSES,
    PENSION_STATUSES,
    RELATIONS,
    UNEMPLOYMENT_STATUSES,
)

SMALL = 500  # residents: enough for every kind of record, fast enough for every test run


@pytest.fixture(scope="module")
def city() -> City:
    return build_city(SMALL)


@pytest.fixture(scope="module")
def big_city() -> City:
    # Rates are only meaningful on a few thousand people; still well under a second to build.
    return build_city(3_000, seed=7)


def _age(birth: date) -> int:
    return (
        REFERENCE_DATE.year
        - birth.year
        - ((REFERENCE_DATE.month, REFERENCE_DATE.day) < (birth.month, birth.day))
    )


def _residents(city: City) -> dict[str, dict[str, Any]]:
    return {row["id_number"]: row for row in city.tables["psb"]["resident"]}


# --- determinism ------------------------------------------------------------------------------


def test_same_seed_gives_identical_city() -> None:
    assert build_city(300, seed=11) == build_city(300, seed=11)


def test_different_seed_gives_different_city() -> None:
    a, b = build_city(300, seed=11), build_city(300, seed=12)
    assert a.tables["psb"]["resident"] != b.tables["psb"]["resident"]
    assert a.housing != b.housing


def test_default_seed_is_stable_across_calls(city: City) -> None:
    # The README quotes the showcase keys, so they must not drift between runs.
    assert build_city(SMALL).showcase == city.showcase


def test_exact_resident_count_and_minimum() -> None:
    assert len(build_city(37, seed=3).tables["psb"]["resident"]) == 37
    with pytest.raises(ValueError, match="at least"):
        build_city(5)


# --- shape ----------------------------------------------------------------------------------


def test_tables_match_schema_columns(city: City) -> None:
    assert list(city.tables) == list(DEPARTMENT_TABLES)
    for department, metadata in DEPARTMENT_TABLES.items():
        assert set(city.tables[department]) == set(metadata.tables)
        for name, table in metadata.tables.items():
            rows = city.tables[department][name]
            assert rows, f"{department}.{name} is empty"
            columns = [c.name for c in table.columns]
            for row in rows:
                assert list(row) == columns
                for column in table.columns:
                    if not column.nullable:
                        assert row[column.name] is not None, f"{department}.{name}.{column.name}"
                    length = getattr(column.type, "length", None)
                    if length is not None and row[column.name] is not None:
                        assert len(row[column.name]) <= length, f"{department}.{name}.{column.name}"


def test_primary_keys_unique(city: City) -> None:
    for department, metadata in DEPARTMENT_TABLES.items():
        for name, table in metadata.tables.items():
            (pk,) = [c.name for c in table.primary_key.columns]
            keys = [row[pk] for row in city.tables[department][name]]
            assert len(keys) == len(set(keys)), f"{department}.{name}"
    property_ids = [p["property_id"] for p in city.housing]
    assert len(property_ids) == len(set(property_ids))


def test_code_lists_respected(city: City) -> None:
    t = city.tables
    assert {r["gender"] for r in t["psb"]["resident"]} <= set(GENDERS)
    assert {r["relation"] for r in t["psb"]["resident"]} <= set(RELATIONS)
    assert {r["status"] for r in t["hrss"]["pension"]} <= set(PENSION_STATUSES)
    assert {r["status"] for r in t["hrss"]["unemployment_insurance"]} <= set(UNEMPLOYMENT_STATUSES)
    assert {r["type"] for r in t["mr"]["business"]} <= set(BUSINESS_TYPES)
    assert {r["status"] for r in t["mr"]["business"]} <= set(BUSINESS_STATUSES)
    assert {r["scheme"] for r in t["health"]["medical_insurance"]} <= set(MEDICAL_SCHEMES)
    assert {r["status"] for r in t["health"]["medical_insurance"]} <= set(MEDICAL_STATUSES)
    assert {r["status"] for r in t["civil"]["subsistence_case"]} <= set(CASE_STATUSES)
    assert {p["usage"] for p in city.housing} <= set(HOUSING_USAGES)


def test_housing_records_are_json_ready(city: City) -> None:
    for record in city.housing:
        assert list(record) == list(HOUSING_FIELDS)
        assert isinstance(record["area_sqm"], float)
        assert isinstance(record["mortgaged"], bool)
        assert date.fromisoformat(record["acquired_on"]) <= REFERENCE_DATE
    json.dumps(city.housing)  # raises on a stray date object


# --- keys -----------------------------------------------------------------------------------


def test_id_numbers_valid_and_consistent(city: City) -> None:
    region_codes = {d.code for d in DISTRICTS}
    for row in city.tables["psb"]["resident"]:
        number = row["id_number"]
        assert normalise_id_number(number) == number
        assert number[:6] in region_codes
        assert number[6:14] == row["birth_date"].strftime("%Y%m%d")
        assert int(number[16]) % 2 == (1 if row["gender"] == "M" else 0)
    sequences = [r["id_number"][:17] for r in city.tables["psb"]["resident"]]
    assert len(sequences) == len(set(sequences))


def test_credit_codes_valid(city: City) -> None:
    codes = [b["credit_code"] for b in city.tables["mr"]["business"]]
    for code in codes:
        assert normalise_credit_code(code) == code
        assert code.startswith("91")
    business_codes = set(codes)
    for job in city.tables["hrss"]["employment"]:
        assert normalise_credit_code(job["employer_credit_code"]) == job["employer_credit_code"]
        assert job["employer_credit_code"] in business_codes


# --- referential sanity -------------------------------------------------------------------------


def test_person_references_exist(city: City) -> None:
    residents = _residents(city)
    t = city.tables
    for table in ("employment", "pension", "unemployment_insurance"):
        assert {r["id_number"] for r in t["hrss"][table]} <= residents.keys(), table
    for table in ("medical_insurance", "vaccination"):
        assert {r["id_number"] for r in t["health"][table]} <= residents.keys(), table
    assert {b["legal_rep_id_number"] for b in t["mr"]["business"]} <= residents.keys()
    assert {p["owner_id_number"] for p in city.housing} <= residents.keys()
    for row in t["mr"]["business"]:
        assert _age(residents[row["legal_rep_id_number"]]["birth_date"]) >= 18


def test_employment_matches_employer_and_person(city: City) -> None:
    residents = _residents(city)
    businesses = {b["credit_code"]: b for b in city.tables["mr"]["business"]}
    current = Counter(j["id_number"] for j in city.tables["hrss"]["employment"] if j["end_date"] is None)
    assert max(current.values()) == 1  # at most one current job each
    for job in city.tables["hrss"]["employment"]:
        employer = businesses[job["employer_credit_code"]]
        person = residents[job["id_number"]]
        assert job["employer_name"] == employer["name"]
        assert job["start_date"] >= employer["established_on"]
        assert _age(person["birth_date"]) >= 18
        if job["end_date"] is None:
            assert employer["status"] == "active"
        else:
            assert job["start_date"] < job["end_date"] <= REFERENCE_DATE


def test_households_are_families(city: City) -> None:
    households: dict[str, list[dict[str, Any]]] = {}
    for row in city.tables["psb"]["resident"]:
        households.setdefault(row["household_id"], []).append(row)
    for members in households.values():
        assert 1 <= len(members) <= 6
        heads = [m for m in members if m["relation"] == "head"]
        assert len(heads) == 1
        head_age = _age(heads[0]["birth_date"])
        assert head_age >= 18
        assert len({m["address"] for m in members}) == 1
        assert len({m["name"] for m in members}) == len(members)
        for m in members:
            if m["relation"] == "child":
                assert _age(m["birth_date"]) <= head_age - 18
            if m["relation"] == "parent":
                assert _age(m["birth_date"]) >= head_age + 18
            if m["relation"] == "spouse":
                assert m["gender"] != heads[0]["gender"]


def test_pensions_follow_ages(city: City) -> None:
    residents = _residents(city)
    for row in city.tables["hrss"]["pension"]:
        person = residents[row["id_number"]]
        retired = _age(person["birth_date"]) >= RETIREMENT_AGE[person["gender"]]
        assert (row["status"] == "receiving") == retired


def test_subsistence_applicants_head_their_household(city: City) -> None:
    residents = _residents(city)
    for case in city.tables["civil"]["subsistence_case"]:
        applicant = residents[case["applicant_id_number"]]
        assert applicant["household_id"] == case["household_id"]
        assert applicant["relation"] == "head"
        decided = case["status"] != "applied"
        assert (case["decided_on"] is not None) == decided
        assert (case["monthly_allowance"] is not None) == (case["status"] in ("approved", "terminated"))


def test_rates_are_roughly_realistic(big_city: City) -> None:
    residents = list(_residents(big_city).values())
    households = {r["household_id"] for r in residents}
    working_age = [r for r in residents if 18 <= _age(r["birth_date"]) < RETIREMENT_AGE[r["gender"]]]
    employed = {j["id_number"] for j in big_city.tables["hrss"]["employment"] if j["end_date"] is None}
    assert 0.45 <= sum(r["id_number"] in employed for r in working_age) / len(working_age) <= 0.65
    owner_households = {_residents(big_city)[p["owner_id_number"]]["household_id"] for p in big_city.housing}
    assert 0.18 <= len(owner_households) / len(households) <= 0.32
    assert len(big_city.housing) > len(owner_households)  # some own several
    adults = sum(_age(r["birth_date"]) >= 18 for r in residents)
    reps = {b["legal_rep_id_number"] for b in big_city.tables["mr"]["business"]}
    assert 0.04 <= len(reps) / adults <= 0.06
    cases = big_city.tables["civil"]["subsistence_case"]
    assert 0.02 <= len(cases) / len(households) <= 0.04
    insured = {m["id_number"] for m in big_city.tables["health"]["medical_insurance"]}
    assert len(insured) / len(residents) > 0.9


# --- showcase -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [20261130, 1, 99])
def test_showcase_guarantees(seed: int) -> None:
    city = build_city(SMALL, seed=seed)
    show = city.showcase
    assert set(show) == {"applicant_id_number", "household_id", "case_id", "credit_code", "district"}
    cases = {c["case_id"]: c for c in city.tables["civil"]["subsistence_case"]}
    case = cases[show["case_id"]]
    assert case["status"] == "applied"
    assert case["applicant_id_number"] == show["applicant_id_number"]
    assert case["household_id"] == show["household_id"]
    members = [r for r in city.tables["psb"]["resident"] if r["household_id"] == show["household_id"]]
    ids = {m["id_number"] for m in members}
    assert len(members) >= 3
    assert {m["district"] for m in members} == {show["district"]}
    t = city.tables
    assert any(j["id_number"] in ids and j["end_date"] is None for j in t["hrss"]["employment"])
    assert any(p["id_number"] in ids for p in t["hrss"]["pension"])
    assert any(p["owner_id_number"] in ids for p in city.housing)
    business = next(b for b in t["mr"]["business"] if b["credit_code"] == show["credit_code"])
    assert business["legal_rep_id_number"] in ids


# --- writing ----------------------------------------------------------------------------------


def _count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


async def test_build_demo_writes_readable_files(tmp_path: Path) -> None:
    out = tmp_path / "data"
    city = await build_demo(out, residents=SMALL)
    assert city == build_city(SMALL)
    for department, metadata in DEPARTMENT_TABLES.items():
        path = out / f"{department}.sqlite"
        for name in metadata.tables:
            assert _count(path, name) == len(city.tables[department][name]), f"{department}.{name}"
    with sqlite3.connect(out / "psb.sqlite") as conn:
        first = city.tables["psb"]["resident"][0]
        name, birth = conn.execute(
            "SELECT name, birth_date FROM resident WHERE id_number = ?", (first["id_number"],)
        ).fetchone()
        assert name == first["name"]
        assert birth == first["birth_date"].isoformat()
        indexes = {row[1] for row in conn.execute("PRAGMA index_list('resident')")}
        assert "ix_resident_household_id" in indexes
    housing = json.loads((out / "housing.json").read_text(encoding="utf-8"))
    assert housing == {"properties": city.housing}
    assert json.loads((out / "showcase.json").read_text(encoding="utf-8")) == city.showcase
    assert not list(out.glob("*.tmp"))


async def test_build_demo_replaces_old_files(tmp_path: Path) -> None:
    await build_demo(tmp_path, residents=200, seed=5)
    city = await build_demo(tmp_path, residents=SMALL, seed=6)
    assert _count(tmp_path / "psb.sqlite", "resident") == SMALL
    assert _count(tmp_path / "civil.sqlite", "subsistence_case") == len(
        city.tables["civil"]["subsistence_case"]
    )


async def test_write_department_is_repeatable_and_checks_name(tmp_path: Path, city: City) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'mr.sqlite'}"
    await write_department(city, "mr", url)
    await write_department(city, "mr", url)  # drops and recreates rather than duplicating
    assert _count(tmp_path / "mr.sqlite", "business") == len(city.tables["mr"]["business"])
    with pytest.raises(ValueError, match="unknown department"):
        await write_department(city, "housing", url)


# --- housing service --------------------------------------------------------------------------


@pytest.fixture
async def client(tmp_path: Path, city: City) -> AsyncIterator[httpx.AsyncClient]:
    path = tmp_path / "housing.json"
    write_housing(city, path)
    transport = httpx.ASGITransport(app=create_app(path))
    async with httpx.AsyncClient(transport=transport, base_url="http://h") as client:
        yield client


async def _items(client: httpx.AsyncClient, params: Any) -> list[dict[str, Any]]:
    response = await client.get("/properties", params=params)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_default_listing_is_ordered_by_property_id(client: httpx.AsyncClient, city: City) -> None:
    items = await _items(client, {})
    assert items == sorted(city.housing, key=lambda p: p["property_id"])[:1000]


async def test_fields_projection(client: httpx.AsyncClient, city: City) -> None:
    items = await _items(client, {"fields": "property_id,area_sqm"})
    assert len(items) == len(city.housing)
    assert all(list(item) == ["property_id", "area_sqm"] for item in items)


async def test_in_filter_with_repeated_params(client: httpx.AsyncClient, city: City) -> None:
    owners = sorted({p["owner_id_number"] for p in city.housing})[:2]
    expected = sorted(p["property_id"] for p in city.housing if p["owner_id_number"] in owners)
    items = await _items(client, [("owner_id_number__in", owners[0]), ("owner_id_number__in", owners[1])])
    assert [i["property_id"] for i in items] == expected
    assert {i["owner_id_number"] for i in items} == set(owners)


async def test_keyset_pagination_pages_are_disjoint_and_consecutive(
    client: httpx.AsyncClient, city: City
) -> None:
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        params = {"limit": "40", "fields": "property_id"} | ({"after": after} if after else {})
        page = [i["property_id"] for i in await _items(client, params)]
        if not page:
            break
        pages.append(page)
        after = page[-1]
    assert len(pages) > 1
    flat = [pid for page in pages for pid in page]
    assert flat == sorted(p["property_id"] for p in city.housing)  # disjoint, complete, in order
    for previous, following in itertools.pairwise(pages):
        assert previous[-1] < following[0]


async def test_typed_filters(client: httpx.AsyncClient, city: City) -> None:
    def ids(pred: Any) -> list[str]:
        return sorted(p["property_id"] for p in city.housing if pred(p))

    cases: list[tuple[dict[str, str], Any]] = [
        ({"area_sqm__gte": "100", "mortgaged": "true"}, lambda p: p["area_sqm"] >= 100 and p["mortgaged"]),
        ({"usage__ne": "residential"}, lambda p: p["usage"] != "residential"),
        ({"acquired_on__lt": "2010-01-01"}, lambda p: p["acquired_on"] < "2010-01-01"),
        ({"acquired_on__prefix": "2015"}, lambda p: p["acquired_on"].startswith("2015")),
        ({"district": DISTRICTS[0].name}, lambda p: p["district"] == DISTRICTS[0].name),
        ({"address__isnull": "false"}, lambda p: True),
        ({"address__isnull": "true"}, lambda p: False),
        ({"area_sqm__lt": "60", "area_sqm__gt": "40"}, lambda p: 40 < p["area_sqm"] < 60),
    ]
    for params, pred in cases:
        items = await _items(client, params | {"limit": "10000"})
        assert [i["property_id"] for i in items] == ids(pred), params


async def test_order_by_other_field(client: httpx.AsyncClient, city: City) -> None:
    items = await _items(client, {"order_by": "area_sqm", "after": "100", "limit": "5"})
    expected = sorted(
        (p for p in city.housing if p["area_sqm"] > 100), key=lambda p: (p["area_sqm"], p["property_id"])
    )[:5]
    assert [i["area_sqm"] for i in items] == [p["area_sqm"] for p in expected]


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"colour": "red"}, "colour"),
        ({"area_sqm__like": "1"}, "area_sqm__like"),
        ({"area_sqm__gt": "big"}, "area_sqm__gt"),
        ({"area_sqm": "nan"}, "area_sqm"),
        ({"mortgaged": "maybe"}, "mortgaged"),
        ({"mortgaged__gt": "true"}, "mortgaged__gt"),
        ({"area_sqm__prefix": "1"}, "area_sqm__prefix"),
        ({"address__isnull": "yes"}, "address__isnull"),
        ({"acquired_on__gte": "2020-1-1"}, "acquired_on__gte"),
        ({"fields": "property_id,owner"}, "fields"),
        ({"fields": ""}, "fields"),
        ({"order_by": "price"}, "order_by"),
        ({"order_by": "area_sqm", "after": "x"}, "after"),
        ({"limit": "0"}, "limit"),
        ({"limit": "100001"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ([("district", "a"), ("district", "b")], "district"),
        ([("limit", "5"), ("limit", "6")], "limit"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    client: httpx.AsyncClient, params: Any, named: str
) -> None:
    response = await client.get("/properties", params=params)
    assert response.status_code == 400
    message = response.json()["error"]
    assert f"'{named}'" in message


async def test_error_does_not_echo_values(client: httpx.AsyncClient) -> None:
    response = await client.get("/properties", params={"area_sqm__gt": "11010119900307451X"})
    assert response.status_code == 400
    assert "11010119900307451X" not in response.text


async def test_only_get(client: httpx.AsyncClient) -> None:
    assert (await client.post("/properties")).status_code == 405


def test_malformed_data_file_fails_at_startup(tmp_path: Path) -> None:
    path = tmp_path / "housing.json"
    path.write_text(json.dumps({"properties": [{"property_id": "P1", "area_sqm": "big"}]}), encoding="utf-8")
    with pytest.raises(ValueError, match="area_sqm"):
        create_app(path)
    path.write_text(json.dumps({"items": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="properties"):
        create_app(path)


# --- Housing as its own process ---------------------------------------------------------------------------


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z, ...), None once it is gone (Linux /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


def _ppid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture(scope="module")
def housing_file(tmp_path_factory: pytest.TempPathFactory, city: City) -> Path:
    path = tmp_path_factory.mktemp("housing") / "housing.json"
    write_housing(city, path)
    return path


def test_housing_process_serves_its_own_file_from_a_child_process(housing_file: Path, city: City) -> None:
    import os

    from demo.housing_process import HousingProcess
    from demo.server_thread import free_port

    with HousingProcess(housing_file, free_port()) as housing:
        assert housing.pid is not None and housing.pid != os.getpid()
        assert _ppid(housing.pid) == os.getpid()
        cmdline = Path(f"/proc/{housing.pid}/cmdline").read_bytes().split(b"\0")
        assert [b"-m", b"demo.housing_service", b"--data", str(housing_file).encode()] == cmdline[1:5]
        items = httpx.get(f"{housing.url}/properties", params={"limit": 2}).json()["items"]
        assert [i["property_id"] for i in items] == sorted(h["property_id"] for h in city.housing)[:2]
        pid, url = housing.pid, housing.url
    assert not _answers(f"{url}/healthz")
    assert _state(pid) is None  # stopped and reaped


def test_housing_process_says_why_it_cannot_start(housing_file: Path, tmp_path: Path) -> None:
    import socket

    from demo.housing_process import HousingProcess, HousingStartError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(HousingStartError, match=f"port {port} is in use.*HOUSING_PORT=.*--housing-port"):
            HousingProcess(housing_file, port).start()
    with pytest.raises(HousingStartError, match="does not exist: run `hutong demo build`"):
        HousingProcess(tmp_path / "none.json", port).start()


def test_housing_service_exits_when_the_process_that_started_it_dies(housing_file: Path, tmp_path: Path) -> None:
    """`kill -9` of the gateway leaves no Housing service holding the port: it watches its parent."""
    import signal
    import subprocess
    import sys
    import time

    from demo.server_thread import free_port

    port = free_port()
    script = ("import sys, time; from pathlib import Path; from demo.housing_process import HousingProcess\n"
              f"h = HousingProcess(Path({str(housing_file)!r}), {port}); h.start()\n"
              "print(h.pid, flush=True); time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert _answers(f"http://127.0.0.1:{port}/healthz")
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _state(child) in (None, "Z"), "the Housing service outlived the process that started it"
        assert not _answers(f"http://127.0.0.1:{port}/healthz")
    finally:
        parent.kill()
        parent.wait()


# --- the Makefile rebuilds the city when RESIDENTS changes ------------------------------------------------


def test_make_demo_data_rebuilds_when_residents_changes(tmp_path: Path) -> None:
    """`make demo RESIDENTS=2000` after a default build must build (and so serve) a city of 2,000,
    and a repeated `make` with the same size must not rebuild. Run on a copy of the Makefile with a
    stand-in `hutong` that records each build."""
    import os
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    repo = Path(__file__).resolve().parent.parent
    shutil.copy(repo / "Makefile", tmp_path / "Makefile")
    for name in ("pyproject.toml", "demo/build.py", "demo/schema.py"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("#\n")
    fake = tmp_path / ".venv" / "bin" / "hutong"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$@" >> builds.log\nmkdir -p demo/data\necho {} > demo/data/showcase.json\n')
    fake.chmod(0o755)
    past = fake.stat().st_mtime - 60
    for name in ("pyproject.toml", "demo/build.py", "demo/schema.py"):
        os.utime(tmp_path / name, (past, past))

    def make(*args: str) -> list[str]:
        subprocess.run(["make", "--no-print-directory", "-C", str(tmp_path), "demo-data", *args], check=True,
                       capture_output=True, text=True)
        log = tmp_path / "builds.log"
        return log.read_text().splitlines() if log.exists() else []

    assert make() == ["demo build --residents 10000"]
    assert make() == ["demo build --residents 10000"]  # up to date: not rebuilt
    assert make("RESIDENTS=2000") == ["demo build --residents 10000", "demo build --residents 2000"]
    assert len(make("RESIDENTS=2000")) == 2
    assert make()[-1] == "demo build --residents 10000"  # back to the default size
    assert len(make()) == 3  # and up to date again
    assert sorted(p.name for p in (tmp_path / "demo" / "data").glob(".residents-*")) == [".residents-10000"]
