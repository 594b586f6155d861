"""Catalogue loading and validation: every error names the file, the entry and what is wrong."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from catalog.discover import check_sources, discover_sql
from catalog.loader import CatalogError, expand_env, load_catalog
from gateway.config import REPO_ROOT

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
    cat = load_catalog(tmp_path / "psb.yaml")
    found = await check_sources(cat, {"reg": f"sqlite+aiosqlite:///{db}"})
    assert "dataset psb.resident: field 'household_id': no such column in resident" in found
    assert any("field 'name' is declared 'string' but the source column is INTEGER; declare 'integer'" in p
               for p in found), found
    cat2 = load_catalog(write(tmp_path, mutated(datasets__0__table="people")))
    assert await check_sources(cat2, {"reg": f"sqlite+aiosqlite:///{db}"}) == [
        "dataset psb.resident: table 'people' does not exist in source reg"]


async def test_discover_drafts_a_loadable_entry_and_finds_keys(city_dir: Path, tmp_path: Path) -> None:
    drafts = await discover_sql(f"sqlite+aiosqlite:///{city_dir / 'data' / 'mr.sqlite'}")
    business = next(d for d in drafts if d["table"] == "business")
    fields = {f["name"]: f for f in business["fields"]}
    assert business["primary_key"] == "credit_code"
    assert fields["credit_code"]["key"] == "credit_code"
    assert fields["legal_rep_id_number"]["key"] == "id_number"
    assert fields["registered_capital"]["type"] == "float" and fields["established_on"]["type"] == "date"
    assert "key" not in fields["name"]
    # With its TODOs filled in, the draft loads.
    business.update(code="mr.business", source="reg", description="Businesses.")
    doc = copy.deepcopy(BASE)
    doc["datasets"] = [business]
    write(tmp_path, doc)
    assert "mr.business" in load_catalog(tmp_path).datasets


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
