"""The hutong command line, run as a user would (typer's runner, real files and sources)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from tests.conftest import DEMO_CATALOG, arun, throwaway_pg_database, write_config

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


def test_catalog_check_reports_unreachable_sources_as_warnings(city_dir: Path) -> None:
    """A department service that is down (say Housing, after `make demo` stopped) is not a catalogue
    error: it is reported as not checked, and the check passes unless --strict."""
    cfg = write_config(city_dir, {"housing_api": "http://127.0.0.1:9"})
    r = run("catalog", "check", "--config", str(cfg))
    assert r.exit_code == 0, r.output
    housing = DEMO_CATALOG / "housing.yaml"
    assert f"warning: {housing}: sources[housing_api]: not checked: source housing_api unreachable " \
           "(ConnectError on /properties)" in r.stderr, r.stderr
    assert "1 source(s) not checked because unreachable; 5 reachable source(s) match the catalogue " \
           "(--strict makes this an error)" in r.stderr
    assert "live sources match the catalogue" not in r.output
    r = run("catalog", "check", "--strict", "--config", str(cfg))
    assert r.exit_code == 1, r.output
    assert "not checked: source housing_api unreachable" in r.stderr


def test_catalog_check_fails_when_a_reachable_source_does_not_match(city_dir: Path, housing_url: str) -> None:
    # The registry's URL pointed at Civil Affairs' file: reachable, but without the registry's tables.
    cfg = write_config(city_dir, {"housing_api": housing_url, "psb_registry": "sqlite+aiosqlite:///data/civil.sqlite"})
    r = run("catalog", "check", "--config", str(cfg))
    assert r.exit_code == 1, r.output
    assert f"- {DEMO_CATALOG / 'psb.yaml'}: datasets[psb.resident]: table 'resident' does not exist in source " \
           "psb_registry; the default schema (main) has: subsistence_case" in r.stderr, r.stderr
    assert "1 problem(s) with the live sources" in r.stderr


def test_serve_refuses_to_start_on_a_catalogue_the_sources_contradict(city_dir: Path, housing_url: str) -> None:
    """The same live check runs before `hutong serve` binds: a mismatch stops it, naming the problem."""
    cfg = write_config(city_dir, {"housing_api": housing_url, "psb_registry": "sqlite+aiosqlite:///data/civil.sqlite"})
    r = run("serve", "--config", str(cfg), "--port", "9")  # never bound: the check stops it first
    assert r.exit_code == 1, r.output
    assert "datasets[psb.resident]: table 'resident' does not exist in source psb_registry" in r.stderr
    assert "the catalogue does not match 1 thing(s) in the live sources" in r.stderr
    assert "--no-check-sources" in r.stderr


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


def test_discover_a_named_schema(tmp_path: Path) -> None:
    """Tables outside the default schema: found with --schema or --table schema.table and drafted
    schema-qualified; when nothing is found, it says so (naming the schemas there) and fails."""
    from tests.test_catalog import _pg_schema_database

    for url in throwaway_pg_database("hutong_discover"):
        arun(_pg_schema_database(url))
        r = run("catalog", "discover", url)
        assert r.exit_code == 1, r.output
        assert "datasets" not in r.stdout
        assert "error: no tables or views in the default schema (public) of the source; its schemas: public " \
               "(default), reg. Name one with --schema NAME, or tables with --table SCHEMA.TABLE" in r.stderr, r.stderr
        r = run("catalog", "discover", url, "--schema", "reg")
        assert r.exit_code == 0, r.output
        drafts = yaml.safe_load(r.stdout)["datasets"]
        assert [d["table"] for d in drafts] == ["reg.district", "reg.resident"]
        r = run("catalog", "discover", url, "--table", "reg.resident")
        assert r.exit_code == 0, r.output
        assert [d["table"] for d in yaml.safe_load(r.stdout)["datasets"]] == ["reg.resident"]
        r = run("catalog", "discover", url, "--table", "resident")
        assert r.exit_code == 1
        assert "error: no such table or view: resident (not in the default schema (public), which has: (none))" \
            in r.stderr, r.stderr
        r = run("catalog", "discover", url, "--schema", "census")
        assert r.exit_code == 1 and "schema 'census' does not exist in the source; its schemas: public (default), " \
            "reg" in r.stderr, r.stderr


def test_plan_reads_the_query_from_stdin(city_dir: Path, housing_url: str) -> None:
    cfg = write_config(city_dir, {"housing_api": housing_url})
    r = runner.invoke(app, ["plan", "--config", str(cfg), "-"], input="{ residents(limit: 2) { nodes { name } } }\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["levels"][0][0]["dataset"] == "psb.resident"
    r = runner.invoke(app, ["plan", "--config", str(cfg), "-"], input="")
    assert r.exit_code == 2 and "no query on standard input" in r.stderr
    r = run("plan", "--help", env={"COLUMNS": "240"})
    assert "- (read from standard input)" in r.output
    assert "- to read it from standard input (e.g. `hutong plan - < query.graphql`)" in r.output


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


# --- hutong demo serve: the gateway and, as its own process, the Housing service ---------------------------


class _DemoServe:
    """`hutong demo serve` over the test city, in its own process group, its output collected."""

    def __init__(self, city_dir: Path, tmp_path: Path) -> None:
        import os
        import subprocess
        import sys
        import threading

        from demo.server_thread import free_port

        self.port, self.housing_port = free_port(), free_port()
        cfg = write_config(city_dir, stores=tmp_path / "stores")
        env = {**os.environ, "HUTONG_CONFIG": str(cfg), "COLUMNS": "200"}
        env.pop("HUTONG_HOUSING_PORT", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "demo", "serve", "--port", str(self.port), "--housing-port",
             str(self.housing_port), "--data", str(city_dir / "data")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
            cwd=Path(__file__).resolve().parent.parent)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def ready(self, timeout: float = 90) -> dict[str, Any]:
        import time

        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "".join(self.lines)
            try:
                r = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("the demo did not become ready:\n" + "".join(self.lines))

    def housing_pid(self) -> int:
        line = next(li for li in self.lines if li.startswith("Housing REST"))
        return int(line.rsplit("process ", 1)[1].rstrip(")\n"))

    def close(self) -> None:
        import os
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def _gone(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def _answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def _wait(condition: Any, timeout: float = 15) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)
    return bool(condition())


def test_demo_serve_runs_housing_as_a_separate_process_and_stops_it(city_dir: Path, tmp_path: Path) -> None:
    import os
    import signal

    demo = _DemoServe(city_dir, tmp_path)
    try:
        ready = demo.ready()
        assert ready["sources"]["housing_api"]["status"] == "ok"
        pid = demo.housing_pid()
        assert pid != demo.proc.pid
        status = Path(f"/proc/{pid}/status").read_text()
        assert f"\nPPid:\t{demo.proc.pid}\n" in status  # a child of the gateway, not a thread of it
        assert _answers(f"http://127.0.0.1:{demo.housing_port}/healthz")
        os.kill(demo.proc.pid, signal.SIGTERM)
        assert demo.proc.wait(30) == 0, "".join(demo.lines)
        assert _wait(lambda: _gone(pid)), "the Housing service outlived the gateway"
        assert not _answers(f"http://127.0.0.1:{demo.housing_port}/healthz")
        assert "demo stopped (gateway and Housing service)" in "".join(demo.lines)
    finally:
        demo.close()


def test_housing_stops_when_the_demo_gateway_is_killed(city_dir: Path, tmp_path: Path) -> None:
    import os
    import signal

    demo = _DemoServe(city_dir, tmp_path)
    try:
        demo.ready()
        pid = demo.housing_pid()
        os.kill(demo.proc.pid, signal.SIGKILL)  # no chance to clean up
        demo.proc.wait(10)
        assert _wait(lambda: _gone(pid)), "the Housing service outlived the gateway"
        assert _wait(lambda: not _answers(f"http://127.0.0.1:{demo.housing_port}/healthz"))
    finally:
        demo.close()


def test_catalog_check_compares_rest_values_with_the_declared_types(city_dir: Path, housing_url: str) -> None:
    """Housing sends area_sqm as a JSON number: declared a date, the check says so (never the values)."""
    import dataclasses

    from catalog.discover import check_sources
    from catalog.loader import load_catalog
    from catalog.model import DataType
    from gateway.config import load_settings
    from resolvers.registry import resolve_url

    settings = load_settings(write_config(city_dir, {"housing_api": housing_url}), environ={})
    cat = load_catalog(*settings.catalog)
    ds = cat.datasets["housing.property"]
    fields = [f.model_copy(update={"type": DataType.DATE}) if f.name == "area_sqm" else f for f in ds.fields]
    wrong = dataclasses.replace(cat, datasets={**cat.datasets, ds.code: ds.model_copy(update={"fields": fields})})
    urls = {code: resolve_url(src, settings.base_dir, settings.source_urls.get(code))
            for code, src in cat.sources.items()}
    assert arun(check_sources(cat, urls)).problems == []
    live = arun(check_sources(wrong, urls))
    assert live.problems == [f"{DEMO_CATALOG / 'housing.yaml'}: datasets[housing.property]: field 'area_sqm' is "
                             "declared 'date', but /properties sends values of another JSON type "
                             "(docs/rest-sources.md lists what each type reads)"]
