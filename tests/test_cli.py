"""The hutong command line, run as a user would (typer's runner, real files and sources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from tests.conftest import DEMO_CATALOG, write_config

runner = CliRunner()


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return runner.invoke(app, list(args), env=env)


def test_catalog_check_offline_and_live(city_dir: Path, housing_url: str) -> None:
    cfg = write_config(city_dir, {"housing_api": housing_url})
    r = run("catalog", "check", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    assert "catalogue ok: 7 departments, 6 sources, 9 datasets" in r.output
    assert "live sources match the catalogue" in r.output
    r = run("catalog", "check", "--offline", "--config", str(cfg))
    assert r.exit_code == 0 and "live sources" not in r.output


def test_catalog_check_reports_unreachable_sources(city_dir: Path) -> None:
    cfg = write_config(city_dir, {"housing_api": "http://127.0.0.1:9"})
    r = run("catalog", "check", "--config", str(cfg))
    assert r.exit_code == 1
    assert "source housing_api: cannot reach /properties" in r.output


def test_invalid_catalogue_exits_1_with_the_problems(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "x.yaml").write_text("datasets: [{code: a.b}]\n", encoding="utf-8")
    cfg = tmp_path / "h.toml"
    cfg.write_text('[gateway]\ncatalog = "cat"\n', encoding="utf-8")
    r = run("catalog", "check", "--config", str(cfg))
    assert r.exit_code == 1
    assert "x.yaml: datasets[a.b]: missing required key name" in r.output


def test_missing_config_says_what_to_do(tmp_path: Path) -> None:
    r = run("catalog", "check", "--config", str(tmp_path / "none.toml"))
    assert r.exit_code == 2 and "not found" in r.output and "HUTONG_CONFIG" in r.output


def test_plan_shows_levels_and_parameterised_sql(city_dir: Path, housing_url: str) -> None:
    cfg = write_config(city_dir, {"housing_api": housing_url})
    r = run("plan", "--config", str(cfg),
            '{ residents(limit: 3, filter: {district: {eq: "X"}}) { nodes { name person { pensions { status } } } } }')
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    top, nested = doc["levels"]
    assert top[0]["sql"].startswith(
        "SELECT resident.id_number, resident.name FROM resident WHERE resident.district = ?")
    assert '"X"' not in r.output  # values never appear: only placeholders
    assert nested[0]["dataset"] == "hrss.pension" and "IN (" in nested[0]["sql"]


def test_plan_reports_query_errors(city_dir: Path) -> None:
    r = run("plan", "--config", str(write_config(city_dir)), "{ nope }")
    assert r.exit_code == 1 and "GRAPHQL_VALIDATION_FAILED" in r.output


def test_export_json_has_no_deployment_details_and_dcat_has_fields(city_dir: Path) -> None:
    cfg = str(write_config(city_dir))
    r = run("catalog", "export", "--config", cfg)
    assert r.exit_code == 0
    doc = json.loads(r.output)
    assert "sqlite" not in r.output and "url" not in json.dumps(doc["datasets"])
    r = run("catalog", "export", "--format", "dcat", "--config", cfg)
    graph = json.loads(r.output)["@graph"]
    resident = next(d for d in graph if d["dct:identifier"] == "psb.resident")
    assert resident["dct:accessRights"]["@id"].endswith("RESTRICTED")
    assert {f["name"] for f in resident["hutong:fields"]} >= {"id_number", "address"}


def test_discover_from_a_url(city_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "draft.yaml"
    r = run("catalog", "discover", f"sqlite+aiosqlite:///{city_dir / 'data' / 'civil.sqlite'}", "-o", str(out))
    assert r.exit_code == 0, r.output
    text = out.read_text(encoding="utf-8")
    assert "table: subsistence_case" in text and "key: id_number" in text and "TODO" in text


@pytest.mark.parametrize(("toml", "words"), [
    ('[gateway]\ncatalog = "CAT"\n[source.psb_registry]\nurl = "x"\n', "unknown section(s) source"),
    ('[gateway]\ncatalog = "CAT"\n[sources.hrss]\nurl = "sqlite+aiosqlite:///x"\n',
     "URL overrides for unknown source(s) hrss"),
    ('[gateway]\ncatalog = "CAT"\n[sources.hrss_db]\nurll = "x"\n', "[sources.hrss_db] takes exactly one key, url"),
    ('[gateway]\ncatalog = "CAT"\ndefault_limit = 500\nmax_limit = 50\n', "default_limit (500) exceeds max_limit"),
    ('[gateway]\ncatalog = "CAT"\nmax_lmit = 5\n', "[gateway] has unknown key(s) max_lmit"),
])
def test_configuration_typos_are_refused(tmp_path: Path, toml: str, words: str) -> None:
    cfg = tmp_path / "h.toml"
    cfg.write_text(toml.replace("CAT", str(DEMO_CATALOG)), encoding="utf-8")
    r = run("catalog", "check", "--offline", "--config", str(cfg))
    assert r.exit_code == 2, r.output
    assert words in r.output
