"""Catalogue loading and validation: every error names the file, the entry and what is wrong."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from catalog.discover import DiscoveryError, check_sources, discover_sql, draft_yaml
from catalog.loader import CatalogError, expand_env, load_catalog
from gateway.config import REPO_ROOT
from tests.conftest import arun, throwaway_pg_database

BASE: dict[str, Any] = {
    "department": {"code": "psb", "name": "Registry", "contact": {"name": "Desk"}},
    "sources": [{"code": "reg", "kind": "sql", "url": "sqlite+aiosqlite:///data/psb.sqlite"}],
    "datasets": [{
        "code": "psb.resident", "name": "Residents", "description": "Registered residents.", "source": "reg",
        "table": "resident", "update_cycle": "daily", "primary_key": "id_number",
        "graphql": {"type": "Resident", "list": "residents"},
        "fields": [
            {"name": "id_number", "type": "string", "key": "id_number", "share": "unconditional", "mask": "id_number"},
            {"name": "name", "type": "string", "share": "unconditional"},
            {"name": "household_id", "type": "string", "share": "unconditional"},
        ],
    }],
}


def write(tmp_path: Path, doc: dict[str, Any], name: str = "psb.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


def problems(tmp_path: Path, doc: dict[str, Any]) -> list[str]:
    write(tmp_path, doc)
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    return exc.value.problems


def mutated(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    for path, value in changes.items():
        node: Any = doc
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[int(last) if last.isdigit() else last]
        elif last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return doc


_DELETE = object()


def test_the_base_catalogue_is_valid(tmp_path: Path) -> None:
    write(tmp_path, BASE)
    cat = load_catalog(tmp_path)
    assert cat.datasets["psb.resident"].provider == "psb"  # defaulted from the file's department
    assert cat.sources["reg"].department == "psb"
    assert [(lk.entity, lk.entity_field, lk.back_field) for lk in cat.links] == [("person", "resident", "person")]


def test_the_demo_catalogue_is_valid() -> None:
    cat = load_catalog(REPO_ROOT / "demo" / "catalog")
    assert len(cat.departments) == 7 and len(cat.datasets) == 9


@pytest.mark.parametrize(("changes", "expected"), [
    ({"datasets__0__provider": "nope"}, "datasets[psb.resident]: unknown provider department 'nope'; known: psb"),
    ({"datasets__0__source": "elsewhere"}, "datasets[psb.resident]: unknown source 'elsewhere'; known: reg"),
    ({"sources__0__department": "ghost"}, "sources[reg]: unknown department 'ghost'"),
    ({"datasets__0__fields__1__name": "id_number"}, "fields[id_number]: duplicate field name 'id_number'"),
    ({"datasets__0__fields__1__graphql": "idNumber"}, "duplicate GraphQL field name 'idNumber'"),
    ({"datasets__0__fields__1__type": "text"}, "fields[2:name].type: Input should be 'string', 'integer'"),
    ({"datasets__0__primary_key": "pk"}, "primary key 'pk' is not one of its fields"),
    ({"datasets__0__fields__0__key": "passport"}, "unknown key kind 'passport'; known: id_number, credit_code"),
    ({"datasets__0__fields__1__mask": "scramble"}, "unknown mask 'scramble'; known:"),
    ({"datasets__0__fields__1__type": "integer", "datasets__0__fields__1__mask": "redact"},
     "mask 'redact' does not apply to type 'integer'"),
    ({"datasets__0__fields__1__link": {"as": "x"}}, "'link' needs 'key'"),
    ({"datasets__0__table": _DELETE}, "source 'reg' is SQL: set 'table'"),
    ({"datasets__0__table": "resident; drop table x"}, "is not a plain [schema.]table name"),
    ({"datasets__0__fields__1__sharetype": "none"}, "unknown key fields[2:name].sharetype"),
    ({"datasets__0__fields__1__share": _DELETE}, "missing required key fields[2:name].share"),
    ({"datasets__0__graphql__type": "Query"}, "GraphQL type 'Query' is reserved"),
    ({"datasets__0__graphql__type": "Person"}, "GraphQL type 'Person' is already used"),
    ({"datasets__0__graphql__type": "String"}, "GraphQL type 'String' is reserved"),
    ({"datasets__0__graphql__type": "StringFilter"}, "GraphQL type 'StringFilter' is reserved"),
    ({"datasets__0__graphql__type": "CatalogField"}, "GraphQL type 'CatalogField' is reserved"),
    ({"datasets__0__graphql__list": "person"}, "root field 'person' is already used"),
    ({"sources__0__url": "postgresql+asyncpg://app:hunter2@db/x"}, "url contains a literal password"),
    ({"sources__0__kind": "rest", "datasets__0__table": _DELETE, "datasets__0__endpoint": "/r",
      "sources__0__url": "ftp://x"}, "REST url must start with http:// or https://"),
    ({"sources__0__kind": "rest", "sources__0__url": "http://x"}, "is REST: set 'endpoint'"),
    ({"datasets__0__relations": [{"name": "members", "target": "psb.nothing", "join": {"household_id": "x"}}]},
     "relations[members]: unknown target dataset 'psb.nothing'"),
    ({"datasets__0__relations": [{"name": "members", "target": "psb.resident", "join": {"hh": "household_id"}}]},
     "relations[members]: column 'hh' is not a field of psb.resident"),
    ({"datasets__0__relations": [{"name": "name", "target": "psb.resident", "join": {"household_id": "household_id"}}]},
     "relation name 'name' clashes with a field"),
    ({"datasets__0__relations": [{"name": "m", "target": "psb.resident",
                                  "join": {"household_id": "household_id", "name": "name"}}]},
     "'join' must map exactly one column"),
    ({"datasets__0__fields__0__type": "integer", "datasets__0__fields__0__mask": "none"},
     "key fields must have type 'string'"),
    ({"datasets__0__fields__0__share": "none"}, "primary key 'id_number' cannot have share type 'none'"),
])
def test_each_problem_is_named(tmp_path: Path, changes: dict[str, Any], expected: str) -> None:
    found = problems(tmp_path, mutated(**changes))
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "psb.yaml")) for p in found), found


def test_duplicate_codes_across_files_name_both(tmp_path: Path) -> None:
    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, {"datasets": [copy.deepcopy(BASE["datasets"][0]) | {"provider": "psb"}]}, "b.yaml")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    assert any("b.yaml" in p and "duplicate dataset code 'psb.resident'" in p and "a.yaml" in p
               for p in exc.value.problems), exc.value.problems


def test_two_person_keys_need_distinct_link_names(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["datasets"][0]["fields"].append({"name": "spouse_id", "type": "string", "key": "id_number",
                                         "share": "unconditional", "mask": "id_number"})
    found = problems(tmp_path, doc)
    assert any("Resident.person is already taken; set 'link.back'" in p for p in found), found
    doc["datasets"][0]["fields"][-1]["link"] = {"as": "spouseOf", "back": "spouse"}
    write(tmp_path, doc)
    assert {lk.entity_field for lk in load_catalog(tmp_path).links} == {"resident", "spouseOf"}


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, mutated(datasets__0__source="x", datasets__0__primary_key="y"))
    assert len(found) == 2


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("datasets: [unclosed\n", encoding="utf-8")
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (tmp_path / "odd.yaml").write_text("tables: []\n", encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    text = "\n".join(exc.value.problems)
    assert "broken.yaml: not valid YAML" in text
    assert "list.yaml: expected a mapping of sections" in text
    assert "odd.yaml: unknown section(s) tables" in text
    with pytest.raises(CatalogError, match="no catalogue files"):
        load_catalog(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


def test_toml_catalogue_files_load(tmp_path: Path) -> None:
    toml = '''
[department]
code = "mr"
name = "Market"
contact = { name = "Desk" }

[[sources]]
code = "mr_db"
kind = "sql"
url = "sqlite+aiosqlite:///mr.sqlite"

[[datasets]]
code = "mr.business"
name = "Businesses"
description = "Registered businesses."
source = "mr_db"
table = "business"
update_cycle = "daily"
primary_key = "credit_code"
graphql = { type = "Business", list = "businesses" }
fields = [
  { name = "credit_code", type = "string", key = "credit_code", share = "unconditional", mask = "none" },
]
'''
    (tmp_path / "mr.toml").write_text(toml, encoding="utf-8")
    cat = load_catalog(tmp_path)
    assert cat.links[0].entity == "organisation" and cat.links[0].entity_field == "business"


def test_env_expansion() -> None:
    assert expand_env("x${A}y${B:-dflt}", {"A": "1"}) == "x1ydflt"
    with pytest.raises(KeyError, match="environment variable NOPE is not set"):
        expand_env("${NOPE}", {})


async def test_live_check_finds_missing_tables_columns_and_types(tmp_path: Path) -> None:
    db = tmp_path / "data" / "psb.sqlite"
    db.parent.mkdir()
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE resident (id_number VARCHAR(18) PRIMARY KEY, name INTEGER)")
    con.commit()
    con.close()
    write(tmp_path, BASE)
    file = tmp_path / "psb.yaml"
    cat = load_catalog(file)
    found = await check_sources(cat, {"reg": f"sqlite+aiosqlite:///{db}"})
    assert found.not_checked == [] and found.checked == ["reg"]
    # Each message names the catalogue file, the entry and what is wrong, like the offline ones.
    assert f"{file}: datasets[psb.resident].fields[household_id]: no such column in resident" in found.problems
    assert f"{file}: datasets[psb.resident].fields[name]: declared 'string' but the source column is INTEGER; " \
           "declare 'integer'" in found.problems, found.problems
    cat2 = load_catalog(write(tmp_path, mutated(datasets__0__table="people")))
    assert (await check_sources(cat2, {"reg": f"sqlite+aiosqlite:///{db}"})).problems == [
        f"{file}: datasets[psb.resident]: table 'people' does not exist in source reg; "
        "the default schema (main) has: resident"]
    cat3 = load_catalog(write(tmp_path, mutated(datasets__0__table="Resident")))
    assert (await check_sources(cat3, {"reg": f"sqlite+aiosqlite:///{db}"})).problems == [
        f"{file}: datasets[psb.resident]: table 'Resident' does not exist in source reg "
        "(did you mean 'resident'? names are case-sensitive)"]


async def test_live_check_reports_unreachable_sources_as_not_checked(tmp_path: Path) -> None:
    """A source that cannot be reached is not a mismatch: it is reported apart, as not checked,
    naming the catalogue file and the source."""
    doc = copy.deepcopy(BASE)
    doc["sources"].append({"code": "housing_api", "kind": "rest", "url": "http://127.0.0.1:9"})
    doc["datasets"].append({
        "code": "psb.flat", "name": "Flats", "description": "Flats.", "source": "housing_api", "endpoint": "/flats",
        "update_cycle": "daily", "primary_key": "flat_id", "graphql": {"type": "Flat", "list": "flats"},
        "fields": [{"name": "flat_id", "type": "string", "share": "unconditional"}]})
    file = write(tmp_path, doc)
    cat = load_catalog(file)
    missing = tmp_path / "gone.sqlite"
    found = await check_sources(cat, {"reg": f"sqlite+aiosqlite:///file:{missing}?mode=ro&uri=true",
                                      "housing_api": "http://127.0.0.1:9"})
    assert found.problems == [] and found.checked == []
    assert len(found.not_checked) == 2, found.not_checked
    rest = next(w for w in found.not_checked if "housing_api" in w)
    assert rest.startswith(f"{file}: sources[housing_api]: not checked: source housing_api unreachable (ConnectError")
    sql = next(w for w in found.not_checked if "sources[reg]" in w)
    assert sql == f"{file}: sources[reg]: not checked: source reg unreachable (no such SQLite file: {missing})", sql
    found = await check_sources(cat, {"reg": "postgresql+asyncpg://u:hunter2@127.0.0.1:1/x",
                                      "housing_api": "http://127.0.0.1:9"})
    sql = next(w for w in found.not_checked if "sources[reg]" in w)
    assert sql.startswith(f"{file}: sources[reg]: not checked: source reg unreachable (ConnectionRefusedError"), sql
    assert "hunter2" not in sql


async def _pg_schema_database(url: str) -> None:
    """A department database whose tables live in a named schema (reg), plus a decoy table of the
    same name in the default schema (public) without the declared columns."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("CREATE SCHEMA reg")
            await conn.exec_driver_sql(
                "CREATE TABLE reg.resident (id_number VARCHAR(18) PRIMARY KEY, name TEXT, household_id TEXT)")
            await conn.exec_driver_sql("INSERT INTO reg.resident VALUES ('990111198009303439', 'A', 'H1'), "
                                       "('11010519491231002X', 'B', 'H1')")
            await conn.exec_driver_sql("CREATE TABLE reg.district (code TEXT PRIMARY KEY, name TEXT, budget NUMERIC)")
            await conn.exec_driver_sql("INSERT INTO reg.district VALUES ('d1', 'East', 1.5)")
    finally:
        await engine.dispose()


@pytest.fixture
def pg_schema_url() -> Any:
    """A throwaway PostgreSQL database with a named schema (dropped afterwards)."""
    for url in throwaway_pg_database("hutong_schema"):
        arun(_pg_schema_database(url))
        yield url


async def test_live_check_reads_the_schema_named_in_the_table(tmp_path: Path, pg_schema_url: str) -> None:
    """`table: reg.resident` is read by the planner as FROM reg.resident: the live check must look
    in schema reg (not in the default schema, where a decoy `resident` lacks the columns)."""
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(pg_schema_url)
    async with engine.begin() as conn:
        await conn.exec_driver_sql("CREATE TABLE public.resident (id_number VARCHAR(18) PRIMARY KEY)")
    await engine.dispose()
    file = write(tmp_path, mutated(datasets__0__table="reg.resident"))
    found = await check_sources(load_catalog(file), {"reg": pg_schema_url})
    assert found.problems == [] and found.not_checked == [], found

    wrong_type = mutated(datasets__0__table="reg.resident", datasets__0__fields__1__type="integer",
                         datasets__0__fields__1__mask="null")
    found = await check_sources(load_catalog(write(tmp_path, wrong_type)), {"reg": pg_schema_url})
    assert found.problems == [f"{file}: datasets[psb.resident].fields[name]: declared 'integer' but the source "
                              "column is TEXT; declare 'string'"]

    found = await check_sources(load_catalog(write(tmp_path, mutated(datasets__0__table="reg.people"))),
                                {"reg": pg_schema_url})
    assert len(found.problems) == 1
    assert found.problems[0].startswith(f"{file}: datasets[psb.resident]: table 'reg.people' does not exist in "
                                        "source reg; schema 'reg' has: district, resident"), found.problems

    found = await check_sources(load_catalog(write(tmp_path, mutated(datasets__0__table="census.resident"))),
                                {"reg": pg_schema_url})
    assert found.problems == [f"{file}: datasets[psb.resident]: schema 'census' (of table 'census.resident') does "
                              "not exist in source reg; its schemas: public, reg"], found.problems


async def test_discover_reads_a_named_schema_and_its_draft_passes_the_live_check(tmp_path: Path,
                                                                               pg_schema_url: str) -> None:
    with pytest.raises(DiscoveryError) as exc:  # nothing in the default schema: say where tables are
        await discover_sql(pg_schema_url)
    assert str(exc.value).startswith("no tables or views in the default schema (public) of the source; its "
                                     "schemas: public (default), reg. Name one with --schema NAME")
    drafts = await discover_sql(pg_schema_url, schema="reg")
    assert [d["table"] for d in drafts] == ["reg.district", "reg.resident"]
    district, resident = drafts
    assert {f["name"]: f.get("key") for f in resident["fields"]}["id_number"] == "id_number"
    assert {f["name"]: f["share"] for f in district["fields"]} == {
        "code": "unconditional", "name": "none", "budget": "none"}
    assert [d["table"] for d in await discover_sql(pg_schema_url, ["reg.resident"])] == ["reg.resident"]
    assert [d["table"] for d in await discover_sql(pg_schema_url, ["resident"], schema="reg")] == ["reg.resident"]
    with pytest.raises(DiscoveryError, match=r"no such table or view: reg.people \(not in schema 'reg', which "
                                             r"has: district, resident\)"):
        await discover_sql(pg_schema_url, ["reg.people"])
    with pytest.raises(DiscoveryError, match="schema 'census' does not exist in the source; its schemas: "
                                             r"public \(default\), reg"):
        await discover_sql(pg_schema_url, schema="census")
    # Both drafts, TODOs filled in, load and match the live source.
    doc = copy.deepcopy(BASE)
    doc["datasets"] = [_filled(d, "reg") for d in drafts]
    file = write(tmp_path, doc)
    cat = load_catalog(file)
    assert {d.table for d in cat.datasets.values()} == {"reg.district", "reg.resident"}
    found = await check_sources(cat, {"reg": pg_schema_url})
    assert found.problems == [] and found.not_checked == [], found


def _filled(draft: dict[str, Any], source: str) -> dict[str, Any]:
    """What a reviewer must do at least: give the draft a code, its source and a description."""
    table = draft["table"].rpartition(".")[2]
    return {**draft, "code": f"psb.{table}", "source": source, "description": f"The {table} table."}


async def test_discover_drafts_a_loadable_entry_and_finds_keys(city_dir: Path, tmp_path: Path) -> None:
    drafts = await discover_sql(f"sqlite+aiosqlite:///{city_dir / 'data' / 'mr.sqlite'}")
    business = next(d for d in drafts if d["table"] == "business")
    fields = {f["name"]: f for f in business["fields"]}
    assert business["primary_key"] == "credit_code"
    assert fields["credit_code"]["key"] == "credit_code"
    assert fields["legal_rep_id_number"]["key"] == "id_number"
    assert fields["registered_capital"]["type"] == "float" and fields["established_on"]["type"] == "date"
    assert "key" not in fields["name"]
    # A keyed table: the fields other than the primary key and the subject are conditional.
    assert fields["status"]["share"] == "conditional" and fields["credit_code"]["share"] == "unconditional"
    # With its TODOs filled in, the draft loads.
    business.update(code="mr.business", source="reg", description="Businesses.")
    doc = copy.deepcopy(BASE)
    doc["datasets"] = [business]
    write(tmp_path, doc)
    assert "mr.business" in load_catalog(tmp_path).datasets


async def test_a_discovered_keyless_table_loads_once_its_todos_are_filled(tmp_path: Path) -> None:
    """Without a person or organisation key there is no data subject, so a conditional field could
    never load: a keyless table's fields are drafted `none` (the primary key unconditional), and
    the YAML says so to the reviewer. Columns no catalogue type reads are left out, and listed."""
    db = tmp_path / "budget.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE district_budget (code TEXT PRIMARY KEY, name TEXT, amount REAL, year INTEGER, "
                "meta JSON)")
    con.execute("INSERT INTO district_budget VALUES ('d1', 'East', 1.5, 2024, '{}')")
    con.commit()
    con.close()
    notes: dict[str, list[str]] = {}
    drafts = await discover_sql(f"sqlite+aiosqlite:///{db}", notes=notes)
    (budget,) = drafts
    assert {f["name"]: f["share"] for f in budget["fields"]} == {
        "code": "unconditional", "name": "none", "amount": "none", "year": "none"}
    assert notes == {"district_budget": ["Left out (no catalogue type reads them): meta (JSON)."]}
    text = draft_yaml("reg", copy.deepcopy(drafts), notes)
    assert "# district_budget:\n#   No person or organisation key was found" in text
    assert "drafted share: none (not shared), the safe default" in text
    assert "Left out (no catalogue type reads them): meta (JSON)." in text
    # The YAML itself is the draft: with its TODOs filled in, it loads.
    draft = yaml.safe_load(text)["datasets"][0]
    doc = copy.deepcopy(BASE)
    doc["datasets"] = [_filled(draft, "reg")]
    write(tmp_path, doc)
    assert load_catalog(tmp_path).datasets["psb.district_budget"].fields[1].share.value == "none"


async def test_a_discovered_keyed_table_loads_from_its_yaml(city_dir: Path, tmp_path: Path) -> None:
    drafts = await discover_sql(f"sqlite+aiosqlite:///{city_dir / 'data' / 'civil.sqlite'}")
    text = draft_yaml("reg", drafts)
    assert "#   Key column(s): applicant_id_number." in text
    doc = copy.deepcopy(BASE)
    doc["datasets"] = [_filled(d, "reg") for d in yaml.safe_load(text)["datasets"]]
    write(tmp_path, doc)
    case = load_catalog(tmp_path).datasets["psb.subsistence_case"]
    assert case.subject_field is not None and case.subject_field.name == "applicant_id_number"
    assert case.conditional_fields


def test_a_type_may_not_take_another_datasets_page_name(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    second = copy.deepcopy(doc["datasets"][0])
    second.update(code="psb.extra", graphql={"type": "ResidentPage", "list": "extras"})
    doc["datasets"].append(second)
    found = problems(tmp_path, doc)
    assert any("datasets[psb.extra]: GraphQL type 'ResidentPage' is already used" in p for p in found), found


def test_every_fixed_schema_type_and_root_is_reserved() -> None:
    """A dataset or entity named like one of the gateway's own types or roots would clash with it:
    the validator's reserved names must cover everything the gateway adds to the schema."""
    from catalog.validate import RESERVED_ROOTS, RESERVED_TYPES
    from gateway.schema import build_schema

    cat = load_catalog(REPO_ROOT / "demo" / "catalog")
    built = build_schema(cat)
    generated = set(built.index.types) | {f"{ds.graphql.type}Filter" for ds in cat.datasets.values()}
    fixed = {name for name in built.graphql.type_map if not name.startswith("__")} - generated
    assert fixed <= RESERVED_TYPES, sorted(fixed - RESERVED_TYPES)
    query = built.graphql.query_type
    assert query is not None
    generated_roots = set(built.index.roots)
    assert set(query.fields) - generated_roots <= RESERVED_ROOTS | {"verify"}, sorted(
        set(query.fields) - generated_roots - RESERVED_ROOTS)


# --- every validation error path: the message names the file, the entry and what is wrong -------------


def _without_department(doc: dict[str, Any]) -> dict[str, Any]:
    """The same entries in a file that names no department of its own."""
    dept = doc.pop("department")
    doc["departments"] = [dept]
    return doc


def _no_department_for_source() -> dict[str, Any]:
    doc = _without_department(copy.deepcopy(BASE))
    doc["datasets"][0]["provider"] = "psb"
    return doc


def _no_provider_for_dataset() -> dict[str, Any]:
    doc = _without_department(copy.deepcopy(BASE))
    doc["sources"][0]["department"] = "psb"
    return doc


def _with_field(doc: dict[str, Any], **spec: Any) -> dict[str, Any]:
    doc["datasets"][0]["fields"].append(spec)
    return doc


def _entity(**graphql: str) -> dict[str, Any]:
    names = {"type": "Vehicle", "one": "vehicle", "many": "vehicles", "argument": "plate"} | graphql
    return {"code": "vehicle", "key": "id_number", "description": "A vehicle.", "graphql": names}


def _purpose(**changes: Any) -> dict[str, Any]:
    return {"code": "check", "description": "A check.", "legal_basis": "Art. 1", "datasets": ["psb.resident"]} | changes


def _doc(**sections: Any) -> dict[str, Any]:
    return copy.deepcopy(BASE) | sections


R = "datasets[psb.resident]"
CASES: list[tuple[str, Any, str, str]] = [
    ("source without department", _no_department_for_source, "sources[reg]",
     "no department: set 'department' or put the source in a file with a 'department'"),
    ("dataset without provider", _no_provider_for_dataset, R,
     "no provider: set 'provider' or put the dataset in a file with a 'department'"),
    ("GraphQL name starting with __", lambda: _with_field(copy.deepcopy(BASE), name="___x", type="string",
                                                          share="unconditional"),
     f"{R}.fields[___x]", "GraphQL names may not start with '__'"),
    ("subject not a field", lambda: mutated(datasets__0__subject="nope"), R, "subject 'nope' is not one of its fields"),
    ("subject not a key", lambda: mutated(datasets__0__subject="name"), R,
     "subject 'name' must be a key field (give it key: id_number or credit_code)"),
    ("dated_by not a field", lambda: mutated(datasets__0__dated_by="nope"), R,
     "dated_by 'nope' is not one of its fields"),
    ("dated_by not a date", lambda: mutated(datasets__0__dated_by="name"), R,
     "dated_by 'name' must be a date or datetime field, not 'string'"),
    ("conditional without any key", lambda: mutated(datasets__0__fields__0__key=_DELETE,
                                                    datasets__0__fields__1__share="conditional"), R,
     "conditional field(s) name need a data subject to ask consent of: give the field naming the person or "
     "organisation key: id_number or credit_code"),
    ("conditional with several keys and no subject",
     lambda: _with_field(mutated(datasets__0__fields__1__share="conditional"), name="spouse_id", type="string",
                         key="id_number", share="unconditional", mask="id_number",
                         link={"as": "spouseOf", "back": "spouse"}), R,
     "conditional field(s) name need a data subject to ask consent of: set subject to one of its key fields "
     "(id_number, spouse_id)"),
    ("conditional primary key", lambda: mutated(datasets__0__primary_key="household_id",
                                                datasets__0__fields__2__share="conditional"), R,
     "primary key 'household_id' cannot be conditional: the gateway reads it for every record"),
    ("conditional subject", lambda: mutated(datasets__0__primary_key="household_id",
                                            datasets__0__fields__0__share="conditional"), R,
     "subject 'id_number' cannot be conditional: the gateway reads it for every record"),
    ("conditional dated_by", lambda: _with_field(mutated(datasets__0__dated_by="born"), name="born", type="date",
                                                 share="conditional", mask="date_year"), R,
     "dated_by 'born' cannot be conditional"),
    ("link to an entity of another key", lambda: mutated(datasets__0__fields__0__link={"entity": "organisation"}),
     f"{R}.fields[id_number].link",
     "entity 'organisation' is keyed by 'credit_code', but the field carries 'id_number'"),
    ("link to no such entity", lambda: mutated(datasets__0__fields__0__link={"entity": "ghost"}),
     f"{R}.fields[id_number].link", "no entity named 'ghost'; known: organisation, person"),
    ("no entity has the key", lambda: _doc(entities=[{"code": "person", "key": "credit_code", "description": "x",
                                                      "graphql": {"type": "Firm", "one": "firm", "many": "firms",
                                                                  "argument": "creditCode"}}]),
     f"{R}.fields[id_number].link", "no entity has key 'id_number'; known: organisation, person"),
    ("entity link name taken by the key argument", lambda: mutated(datasets__0__fields__0__link={"as": "idNumber"}),
     f"{R}.fields[id_number].link", "Person.idNumber is already taken (the key field); set 'link.as'"),
    ("entity with an unknown key kind", lambda: _doc(entities=[_entity() | {"key": "plate"}]), "entities[vehicle]",
     "unknown key kind 'plate'; known: id_number, credit_code"),
    ("entity type reserved", lambda: _doc(entities=[_entity(type="Query")]), "entities[vehicle]",
     "GraphQL type 'Query' is reserved by the gateway; choose another"),
    ("entity root reserved", lambda: _doc(entities=[_entity(one="catalog")]), "entities[vehicle]",
     "root field 'catalog' is reserved by the gateway; choose another"),
    ("entity type taken", lambda: _doc(entities=[_entity(type="Person")]), "entities[vehicle]",
     "GraphQL type 'Person' is already used by built-in: entities[person]"),
    ("relation to a missing target column",
     lambda: mutated(datasets__0__relations=[{"name": "m", "target": "psb.resident", "join": {"household_id": "x"}}]),
     f"{R}.relations[m]", "column 'x' is not a field of psb.resident"),
    ("purpose consent bounds", lambda: _doc(purposes=[_purpose(consent={"max_uses": 3})]), "purposes[check]",
     "consent: give max_uses and per_days together"),
    ("purpose with an unknown dataset", lambda: _doc(purposes=[_purpose(datasets=["psb.ghost"])]), "purposes[check]",
     "unknown dataset 'psb.ghost'; known: psb.resident"),
    ("purpose none_fields not a field", lambda: _doc(purposes=[_purpose(none_fields=["psb.resident.ghost"])]),
     "purposes[check]", "none_fields: 'psb.resident.ghost' is not a dataset.field of the catalogue"),
    ("purpose none_fields not none", lambda: _doc(purposes=[_purpose(none_fields=["psb.resident.name"])]),
     "purposes[check]", "none_fields: 'psb.resident.name' has share type 'unconditional'; list only 'none' fields"),
    ("purpose none_fields outside its datasets",
     lambda: _doc(datasets=[mutated(datasets__0__fields__1__share="none")["datasets"][0],
                            mutated(datasets__0__code="psb.other",
                                    datasets__0__graphql={"type": "Other", "list": "others"})["datasets"][0]],
                  purposes=[_purpose(datasets=["psb.other"], none_fields=["psb.resident.name"])]),
     "purposes[check]", "none_fields: 'psb.resident.name' is outside the purpose's datasets"),
    ("section not a list", lambda: _doc(datasets={"code": "psb.resident"}), "datasets",
     "expected a list of entries (- code: ...), not a mapping"),
    ("department not a mapping", lambda: _doc(department="psb"), "department",
     "expected one department (a mapping with code, name, contact); use 'departments' for a list"),
    ("a value out of range", lambda: mutated(sources__0__pool_size=0), "sources[reg]",
     "pool_size: Input should be greater than or equal to 1"),
    ("an entry without a code", lambda: mutated(sources__0__code=_DELETE), "sources[#1]", "missing required key code"),
    ("a wrong type of value", lambda: mutated(datasets__0__fields="id_number"), R,
     "fields: Input should be a valid list"),
]


@pytest.mark.parametrize(("doc", "entry", "what"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_validation_error_names_file_entry_and_problem(tmp_path: Path, doc: Any, entry: str,
                                                             what: str) -> None:
    found = problems(tmp_path, doc())
    file = tmp_path / "psb.yaml"
    assert any(p.startswith(f"{file}: {entry}: ") and what in p for p in found), found


def _two_files(tmp_path: Path, second: dict[str, Any]) -> list[str]:
    write(tmp_path, BASE, "a.yaml")
    write(tmp_path, second, "b.yaml")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    return exc.value.problems


def test_duplicate_source_and_department_codes_name_both_files(tmp_path: Path) -> None:
    found = _two_files(tmp_path, {"department": BASE["department"], "sources": BASE["sources"]})
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert f"{b}: department[psb]: duplicate department code 'psb' (first defined in {a}): codes must be unique " \
           "across the catalogue" in found, found
    assert f"{b}: sources[reg]: duplicate source code 'reg' (first defined in {a}): codes must be unique across " \
           "the catalogue" in found, found
    assert len(found) == 2, found


def test_unreadable_files_name_the_file_and_why(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(CatalogError) as exc:
        load_catalog(missing)
    assert exc.value.problems == [f"{missing}: file not found (check the catalog setting of the configuration)"]
    (tmp_path / "bad.toml").write_text("[department\ncode = 1\n", encoding="utf-8")
    (tmp_path / "bad.yaml").write_text("department: {code: psb\n", encoding="utf-8")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    found = exc.value.problems
    assert any(p.startswith(f"{tmp_path / 'bad.toml'}: not valid TOML: ") for p in found), found
    assert any(p.startswith(f"{tmp_path / 'bad.yaml'}: not valid YAML: ") for p in found), found
    assert len(found) == 2, found  # nothing else: what those files declare is not known, so not "unknown"


# --- credentials never in the catalogue ---------------------------------------------------------------


SECRET = "s3cr3t-VALUE"


@pytest.mark.parametrize(("source", "what"), [
    ({"kind": "rest", "url": "http://h", "headers": {"Authorization": f"Bearer {SECRET}"}},
     "header 'Authorization' has a literal value, a credential in the catalogue: write Authorization: "
     '"Bearer ${REG_TOKEN}"'),
    ({"kind": "rest", "url": "http://h", "headers": {"Proxy-Authorization": f"Basic {SECRET}"}},
     "header 'Proxy-Authorization' has a literal value"),
    ({"kind": "rest", "url": "http://h", "headers": {"Cookie": f"session={SECRET}"}}, "header 'Cookie'"),
    ({"kind": "rest", "url": "http://h", "headers": {"X-Api-Key": SECRET}},
     'header \'X-Api-Key\' has a literal value, a credential in the catalogue: write X-Api-Key: "${REG_X_API_KEY}"'),
    ({"kind": "rest", "url": "http://h", "headers": {"X-Auth-Token": SECRET}}, "header 'X-Auth-Token'"),
    ({"kind": "rest", "url": "http://h", "headers": {"X-Client-Secret": SECRET}}, "header 'X-Client-Secret'"),
    ({"kind": "rest", "url": "http://h", "headers": {"X-Signature": SECRET}}, "header 'X-Signature'"),
    ({"kind": "rest", "url": "http://h", "headers": {"X-Token": f"${{TOKEN:-{SECRET}}}"}}, "header 'X-Token'"),
    ({"kind": "rest", "url": f"http://h/?api_key={SECRET}"},
     "url query parameter 'api_key' has a literal value, a credential in the catalogue: write "
     "api_key=${REG_API_KEY} and set REG_API_KEY where the gateway runs"),
    ({"kind": "rest", "url": f"http://h/v1?format=json&access_token={SECRET}"}, "url query parameter 'access_token'"),
    ({"kind": "rest", "url": f"http://h/?apikey={SECRET}"}, "url query parameter 'apikey'"),
    ({"kind": "rest", "url": f"http://h/?sig={SECRET}"}, "url query parameter 'sig'"),
    ({"kind": "rest", "url": f"http://h/?token={SECRET}"}, "url query parameter 'token'"),
    ({"kind": "rest", "url": f"http://h/?key={SECRET}"}, "url query parameter 'key'"),
    ({"kind": "sql", "url": f"postgresql+asyncpg://u@h/db?password={SECRET}"},
     "url query parameter 'password' has a literal value, a credential in the catalogue: write "
     "password=${REG_PASSWORD}"),
    ({"kind": "sql", "url": f"postgresql+asyncpg://u@h/db?sslmode=require&pwd={SECRET}"}, "url query parameter 'pwd'"),
    ({"kind": "sql", "url": f"postgresql+asyncpg://u:{SECRET}@h/db"},
     "url contains a literal password: write ${REG_PASSWORD} in its place"),
])
def test_literal_credentials_are_refused_without_repeating_them(tmp_path: Path, source: dict[str, Any],
                                                                what: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["sources"][0].update(source)
    if source["kind"] == "rest":
        doc["datasets"][0].pop("table")
        doc["datasets"][0]["endpoint"] = "/residents"
    found = problems(tmp_path, doc)
    assert any(p.startswith(f"{tmp_path / 'psb.yaml'}: sources[reg]: ") and what in p for p in found), found
    assert not any(SECRET in p for p in found), found  # the secret never reaches logs or CI output


@pytest.mark.parametrize("source", [
    {"kind": "rest", "url": "http://h", "headers": {"Authorization": "Bearer ${HOUSING_TOKEN}"}},
    {"kind": "rest", "url": "http://h", "headers": {"X-Api-Key": "${HOUSING_KEY}", "Accept": "application/json"}},
    {"kind": "rest", "url": "http://h", "headers": {"Cookie": "a=${A}; b=${B}", "X-Token": "${T:-}"}},
    {"kind": "rest", "url": "http://h/?api_key=${HOUSING_KEY}&format=json&keyword=x"},
    {"kind": "rest", "url": "${HOUSING_URL}"},
    {"kind": "sql", "url": "postgresql+asyncpg://u:${PW}@h/db?sslmode=require&sslkey=/etc/k.pem&password=${PW}"},
])
def test_credentials_from_the_environment_are_accepted(tmp_path: Path, source: dict[str, Any]) -> None:
    doc = copy.deepcopy(BASE)
    doc["sources"][0].update(source)
    if source["kind"] == "rest":
        doc["datasets"][0].pop("table")
        doc["datasets"][0]["endpoint"] = "/residents"
    write(tmp_path, doc)
    assert load_catalog(tmp_path).sources["reg"].kind == source["kind"]


# --- every problem at once, without cascades ------------------------------------------------------------


def test_cross_references_are_checked_even_when_an_entry_does_not_parse(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    second = copy.deepcopy(doc["datasets"][0]) | {"code": "psb.extra", "graphql": {"type": "X", "list": "xs"},
                                                  "source": "elsewhere"}
    doc["datasets"][0]["update_cycle"] = "hourly"  # a parse error in one entry ...
    doc["datasets"].append(second)  # ... and a cross-reference error in another
    found = problems(tmp_path, doc)
    file = tmp_path / "psb.yaml"
    assert any(p.startswith(f"{file}: datasets[psb.resident]: update_cycle: Input should be") for p in found), found
    assert f"{file}: datasets[psb.extra]: unknown source 'elsewhere'; known: reg" in found, found
    assert len(found) == 2, found


def test_references_to_entries_that_did_not_parse_are_not_reported_again(tmp_path: Path) -> None:
    """One mistake, one message: the dataset, source and department with errors of their own are
    not also "unknown" wherever they are referenced."""
    doc = copy.deepcopy(BASE)
    doc["department"] = {"code": "psb", "name": "Registry"}  # no contact
    doc["sources"].append({"code": "api", "kind": "rest", "url": "http://h", "timeout": -1})
    other = copy.deepcopy(doc["datasets"][0]) | {"code": "psb.flat", "graphql": {"type": "Flat", "list": "flats"},
                                                 "source": "api", "endpoint": "/flats"}
    other.pop("table")
    doc["datasets"][0]["fields"][1]["share"] = "sometimes"  # psb.resident does not parse
    other["relations"] = [{"name": "owner", "target": "psb.resident", "join": {"id_number": "id_number"}}]
    doc["datasets"].append(other)
    doc["purposes"] = [_purpose(none_fields=["psb.resident.name"])]
    found = problems(tmp_path, doc)
    file = tmp_path / "psb.yaml"
    assert found == [
        f"{file}: department[psb]: missing required key contact",
        f"{file}: sources[api]: timeout: Input should be greater than 0",
        f"{file}: datasets[psb.resident]: fields[2:name].share: Input should be 'unconditional', 'conditional' or "
        "'none'",
    ], found


def test_a_department_without_a_code_does_not_make_its_entries_departmentless(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    del doc["department"]["code"]
    found = problems(tmp_path, doc)
    assert found == [f"{tmp_path / 'psb.yaml'}: department[#1]: missing required key code"], found


def test_unknown_references_are_still_reported_next_to_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("department: {code: x\n", encoding="utf-8")  # unreadable
    write(tmp_path, mutated(datasets__0__fields__1__type="text"), "b.yaml")
    with pytest.raises(CatalogError) as exc:
        load_catalog(tmp_path)
    found = exc.value.problems
    assert len(found) == 2 and "a.yaml: not valid YAML" in found[0] and "fields[2:name].type" in found[1], found


async def test_discover_notes_a_guessed_or_composite_primary_key(tmp_path: Path) -> None:
    db = tmp_path / "x.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE stay (person TEXT, night TEXT, room TEXT, PRIMARY KEY (person, night))")
    con.execute("CREATE VIEW rooms AS SELECT room, night FROM stay")
    con.commit()
    con.close()
    notes: dict[str, list[str]] = {}
    drafts = await discover_sql(f"sqlite+aiosqlite:///{db}", notes=notes)
    assert [d["table"] for d in drafts] == ["rooms", "stay"]  # views are drafted too
    assert notes == {
        "rooms": ["primary_key 'room' is a guess (no usable primary key is declared): it must identify each record."],
        "stay": ["The primary key is composite (person, night): primary_key 'person' alone may not identify each "
                 "record, as it must (pages are ordered by it)."]}
    assert "#   primary_key 'room' is a guess" in draft_yaml("x", drafts, notes)
