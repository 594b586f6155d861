"""The ``hutong`` command line.

Without ``HUTONG_CONFIG`` (or ``--config``) every command acts on the demo in this
repository, so ``hutong catalog check`` works right after ``make demo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.text import Text

from catalog.loader import CatalogError, load_catalog
from gateway.audit.cli import audit_app
from gateway.auth.cli import client_app
from gateway.cli_support import ConfigOpt, err, error, out
from gateway.config import REPO_ROOT, ConfigError, Settings, load_settings
from gateway.consent_cli import consent_app, legal_basis_app
from gateway.console.cli import console_app
from gateway.logs import LOG_CONFIG
from gateway.policy_cli import policy_app
from gateway.share_cli import share_app

app = typer.Typer(help="hutong: federated data catalogue and GraphQL gateway.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
catalog_app = typer.Typer(help="Check, discover and export the catalogue.", no_args_is_help=True)
demo_app = typer.Typer(help="The demo city: build its department sources and serve it.", no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")
app.add_typer(demo_app, name="demo")
app.add_typer(client_app, name="client")
app.add_typer(audit_app, name="audit")
app.add_typer(consent_app, name="consent")
app.add_typer(policy_app, name="policy")
app.add_typer(share_app, name="share")
app.add_typer(console_app, name="console")
app.add_typer(legal_basis_app, name="legal-basis")



DEMO_DATA = REPO_ROOT / "demo" / "data"

SHOWCASE_QUERY = """query SubsistenceCheck($applicant: String!) {
  person(idNumber: $applicant) {
    idNumber
    subsistenceCases { caseId status appliedOn }
    resident {
      name district
      householdMembers {
        name relation birthDate
        person {
          employments(filter: {endDate: {isNull: true}}) { employerName position startDate }
          pensions { status contributionYears monthlyAmount }
          properties { propertyId district areaSqm usage }
          businesses { name status }
        }
      }
    }
  }
}"""


def _settings(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except ConfigError as exc:
        error(f"{exc}")
        raise typer.Exit(2) from None


def _catalog(settings: Settings) -> Any:
    try:
        return load_catalog(*settings.catalog)
    except CatalogError as exc:
        err.print(str(exc), style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _gateway(settings: Settings, cat: Any) -> Any:
    """The gateway over ``cat``: builds the schema and checks the URL overrides, or exits with why."""
    from gateway.pipeline import Gateway

    try:
        return Gateway(cat, settings)
    except ConfigError as exc:
        error(str(exc))
        raise typer.Exit(2) from None
    except Exception as exc:  # graphene/graphql-core name errors: shown without a traceback
        error(f"the catalogue does not make a valid GraphQL schema: {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None


def _startable(settings: Settings, gw: Any) -> None:
    """Start and stop what the server's lifespan will start: the audit writer, the policy and the identity
    service, so that a bad configuration stops `serve` before it binds."""
    from gateway.auth.service import AuthService

    async def check() -> None:
        from gateway.audit.settings import AuditSettings
        from gateway.audit.writer import AuditWriter

        try:
            auth = AuthService.from_settings(settings)
            trail = AuditWriter.from_settings(AuditSettings.from_settings(settings))
            try:
                await gw.start()
                await auth.start()
                await trail.start()
            finally:
                await trail.close()
                await auth.close()
                await gw.close()
        except ConfigError as exc:
            error(str(exc))
            raise typer.Exit(2) from None

    asyncio.run(check())


def _live_check(settings: Settings, cat: Any) -> Any:
    """The catalogue against the live sources (catalog/discover.py ``check_sources``)."""
    from catalog.discover import check_sources
    from resolvers.registry import resolve_url

    try:
        urls = {code: resolve_url(src, settings.base_dir, settings.source_urls.get(code))
                for code, src in cat.sources.items()}
    except KeyError as exc:
        error(f"{exc.args[0]}")
        raise typer.Exit(1) from None
    return asyncio.run(check_sources(cat, urls))


def _print_live(live: Any) -> None:
    """The live check's problems, then the sources it could not reach, on standard error."""
    for p in live.problems:
        err.print(Text("- ", style="red") + Text(p))
    for w in live.not_checked:
        err.print(Text("warning: ", style="yellow") + Text(w))


@app.command()
def serve(config: ConfigOpt = None,
          host: Annotated[str | None, typer.Option(help="Address to bind (default from config).")] = None,
          port: Annotated[int | None, typer.Option(help="Port (default from config or $HUTONG_PORT).")] = None,
          workers: Annotated[int, typer.Option(help="Worker processes.")] = 1,
          check_sources: Annotated[bool, typer.Option(help="Compare the catalogue with the reachable sources "
                                                          "before serving (as `hutong catalog check`).")] = True
          ) -> None:
    """Serve the gateway (uvicorn; several workers share the port through SO_REUSEPORT on Linux).

    Before binding it checks the configuration and, unless --no-check-sources, that every source it
    can reach has the tables, columns and types the catalogue declares: a mismatch stops it (exit 1),
    a source it cannot reach is a warning (the others' data is served meanwhile)."""
    from gateway.serve import serve as run_server

    settings = _settings(config)
    cat = _catalog(settings)
    _startable(settings, _gateway(settings, cat))  # fail fast, with the reason, before binding
    if check_sources:
        live = _live_check(settings, cat)
        _print_live(live)
        if live.problems:
            error(f"the catalogue does not match {len(live.problems)} thing(s) in the live sources: fix the "
                  "catalogue or the source (`hutong catalog check` lists them), or serve with --no-check-sources")
            raise typer.Exit(1)
    os.environ["HUTONG_CONFIG"] = str(settings.path)
    run_server("gateway.app:create_app", host=host or settings.host, port=port or settings.port, workers=workers,
               log_config=LOG_CONFIG, access_log=False, **_proxy_options(settings))


def _proxy_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's forwarded-header handling: only for [gateway] trusted_proxies (uvicorn's own default
    would believe X-Forwarded-For from any local caller, who could then pick the address recorded)."""
    return {"proxy_headers": bool(settings.trusted_proxies),
            "forwarded_allow_ips": ",".join(settings.trusted_proxies) or None}


@catalog_app.command("check")
def catalog_check(config: ConfigOpt = None,
                  offline: Annotated[bool, typer.Option(help="Only the files: do not connect to sources.")] = False,
                  strict: Annotated[bool, typer.Option(help="Fail (exit 1) when a source cannot be reached, too; "
                                                            "by default that is a warning.")] = False
                  ) -> None:
    """Validate the catalogue files, then (unless --offline) compare them with the live sources.

    Exit status: 0 when the catalogue is valid and every reachable source matches it (a source
    that cannot be reached is reported as "not checked", a warning, unless --strict); 1 when the
    catalogue is invalid or a reachable source does not match it; 2 for a bad configuration."""

    settings = _settings(config)
    cat = _catalog(settings)
    _gateway(settings, cat)
    out.print(f"catalogue ok: {len(cat.departments)} departments, {len(cat.sources)} sources, "
              f"{len(cat.datasets)} datasets, {sum(len(d.fields) for d in cat.datasets.values())} fields")
    if offline:
        return
    live = _live_check(settings, cat)
    _print_live(live)
    if live.problems:
        err.print(f"{len(live.problems)} problem(s) with the live sources", style="red")
        raise typer.Exit(1)
    if live.not_checked:
        n = len(live.not_checked)
        err.print(Text(f"{n} source(s) not checked because unreachable; {len(live.checked)} reachable source(s) "
                       f"match the catalogue" + ("" if strict else " (--strict makes this an error)"),
                       style="red" if strict else "yellow"))
        if strict:
            raise typer.Exit(1)
        return
    out.print("live sources match the catalogue")


@catalog_app.command("discover")
def catalog_discover(source: Annotated[str, typer.Argument(help="A catalogue source code, or a SQLAlchemy async URL.")],
                     config: ConfigOpt = None,
                     table: Annotated[list[str] | None, typer.Option(
                         help="Only this table or view (repeatable): NAME, or SCHEMA.NAME for one outside the "
                              "default schema.")] = None,
                     schema: Annotated[str | None, typer.Option(
                         help="Reflect this database schema (e.g. reg) instead of the connection's default "
                              "(public on PostgreSQL).")] = None,
                     output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here.")] = None) -> None:
    """Reflect a SQL source's tables and views into a draft catalogue entry (YAML).

    Tables outside the default schema are drafted as `table: schema.name`. When there is nothing
    to draft, it says which schemas exist and exits 1."""
    from catalog.discover import DiscoveryError, discover_sql, draft_yaml
    from resolvers.registry import resolve_url

    if "://" in source:
        url, code = source, "TODO"
    else:
        settings = _settings(config)
        cat = _catalog(settings)
        if source not in cat.sources:
            error(f"unknown source {source!r}; known: {', '.join(sorted(cat.sources))}")
            raise typer.Exit(2)
        if cat.sources[source].kind != "sql":
            error(f"source {source!r} is REST; discovery reflects SQL sources")
            raise typer.Exit(2)
        try:
            url = resolve_url(cat.sources[source], settings.base_dir, settings.source_urls.get(source))
        except KeyError as exc:
            error(f"{exc.args[0]}")
            raise typer.Exit(1) from None
        code = source
    notes: dict[str, list[str]] = {}
    try:
        drafts = asyncio.run(discover_sql(url, table or None, schema=schema, notes=notes))
    except DiscoveryError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except Exception as exc:  # shown by kind, never with the URL's secrets
        error(f"cannot reflect the source: {type(exc).__name__}")
        raise typer.Exit(1) from None
    text = draft_yaml(code, drafts, notes)
    if output:
        output.write_text(text, encoding="utf-8")
        out.print(f"draft with {len(drafts)} dataset(s) written to {output}")
    else:
        sys.stdout.write(text)


@catalog_app.command("export")
def catalog_export(config: ConfigOpt = None,
                   fmt: Annotated[str, typer.Option("--format", help="json or dcat (DCAT-AP JSON-LD).")] = "json"
                   ) -> None:
    """Print the catalogue as JSON or DCAT-AP JSON-LD (no deployment details)."""
    from catalog.export import to_dcat, to_json

    cat = _catalog(_settings(config))
    if fmt not in ("json", "dcat"):
        error(f"unknown format {fmt!r}; use json or dcat")
        raise typer.Exit(2)
    doc = to_json(cat) if fmt == "json" else to_dcat(cat)
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


@app.command()
def plan(query: Annotated[str, typer.Argument(
             help="The GraphQL query; @FILE to read it from a file; - to read it from standard input "
                  "(e.g. `hutong plan - < query.graphql`).")],
         config: ConfigOpt = None,
         variables: Annotated[str | None, typer.Option(help="Variables as a JSON object.")] = None,
         operation: Annotated[str | None, typer.Option(help="Operation name.")] = None,
         sql: Annotated[bool, typer.Option(help="Also show the SQL each SQL fetch runs.")] = True) -> None:
    """Show the plan of a query: its fetches per level, columns, filters and joins.

    The query is the argument itself, @FILE (read from a file) or - (read from standard input)."""
    from gateway.errors import RequestError

    if query == "-":
        text = sys.stdin.read()
        if not text.strip():
            error("no query on standard input (hutong plan - reads it from there, e.g. < query.graphql)")
            raise typer.Exit(2)
    else:
        try:
            text = Path(query[1:]).read_text(encoding="utf-8") if query.startswith("@") else query
        except OSError as exc:
            error(f"cannot read the query file {query[1:]}: {exc.strerror}")
            raise typer.Exit(2) from None
    try:
        vars_ = json.loads(variables) if variables else None
    except json.JSONDecodeError as exc:
        error(f"--variables is not valid JSON: {exc}")
        raise typer.Exit(2) from None
    settings = _settings(config)
    gw = _gateway(settings, _catalog(settings))
    try:
        p = gw.plan(text, operation, vars_)
    except RequestError as exc:
        for e in exc.errors:
            err.print(Text(f"{e.code.value}: ", style="red") + Text(e.message))
        raise typer.Exit(1) from None
    doc = p.describe()
    if sql:
        from resolvers.sql import SQLConnector

        for level in doc["levels"]:
            for f in level:
                fetch = p.fetches[f["fetch"]]
                if gw.catalog.sources[fetch.source].kind == "sql":
                    conn = gw.sources.get(fetch.source)
                    assert isinstance(conn, SQLConnector)
                    keys = ("?",) if fetch.query.key_column else None
                    stmt = conn.select(fetch.query, keys)
                    f["sql"] = " ".join(str(stmt.compile(dialect=conn.engine.dialect)).split())
    sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


@demo_app.command("build")
def demo_build(residents: Annotated[int, typer.Option(help="Number of residents.")] = 10_000,
               seed: Annotated[int, typer.Option(help="Random seed (same seed, same city).")] = 20261130,
               out_dir: Annotated[Path, typer.Option("--out", help="Where the sources are written.")] = DEMO_DATA
               ) -> None:
    """Generate the demo city: each department's own store (SQLite files, a JSON file for Housing)."""
    from demo.build import build_demo

    started = time.perf_counter()
    city = asyncio.run(build_demo(out_dir, residents=residents, seed=seed))
    counts = ", ".join(f"{t}={len(rows)}" for tables in city.tables.values() for t, rows in tables.items())
    out.print(f"demo city built in {out_dir} ({time.perf_counter() - started:.1f} s): {counts}, "
              f"property={len(city.housing)}")
    if out_dir.resolve() == DEMO_DATA.resolve():  # the demo's own consent store goes with the demo's sources
        _seed_consents(_settings(None), DEMO_DATA)


def _seed_consents(settings: Settings, data: Path) -> None:
    from demo.consents import seed_consents

    done = asyncio.run(seed_consents(settings, _catalog(settings), data))
    out.print(f"demo consents: {done['granted']} recorded" if "granted" in done else f"demo consents: {done['kept']}")


@demo_app.command("serve")
def demo_serve(port: Annotated[int | None, typer.Option(help="Gateway port (default $HUTONG_PORT or 8000).")] = None,
               housing_port: Annotated[int, typer.Option(envvar="HUTONG_HOUSING_PORT",
                                                         help="Housing REST service port.")] = 8001,
               data: Annotated[Path, typer.Option("--data", help="The built demo city's folder.")] = DEMO_DATA
               ) -> None:
    """Start the Housing department's REST service (a separate process over its own data file) and
    serve the gateway over the demo city. Stopping the gateway (Ctrl-C, SIGTERM) stops Housing too;
    if the gateway is killed outright, Housing notices and exits by itself."""
    import signal

    import uvicorn

    from demo.housing_process import HousingProcess, HousingStartError

    showcase_file = data / "showcase.json"
    if not showcase_file.exists():
        error("the demo city is not built: run `make demo` or `hutong demo build`")
        raise typer.Exit(2)
    os.environ["HUTONG_HOUSING_PORT"] = str(housing_port)
    settings = _settings(None)
    gw_port = port or settings.port
    showcase = json.loads(showcase_file.read_text(encoding="utf-8"))
    # uvicorn re-raises the SIGTERM it handled once it has shut down; with the default action that
    # would end this process on the spot, before Housing is stopped. As an exception it unwinds.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with HousingProcess(data / "housing.json", housing_port) as housing:
            _seed_consents(settings, data)  # once: a store that holds consents is left as it is
            _startable(settings, _gateway(settings, _catalog(settings)))
            _banner(settings.host, gw_port, housing_port, showcase, housing_pid=housing.pid,
                    residents=_residents(data))
            os.environ["HUTONG_CONFIG"] = str(settings.path)
            uvicorn.run("gateway.app:create_app", factory=True, host=settings.host, port=gw_port,
                        log_config=LOG_CONFIG, access_log=False, **_proxy_options(settings))
    except HousingStartError as exc:
        error(str(exc))
        raise typer.Exit(1) from None
    except (_Terminated, KeyboardInterrupt):
        out.print("demo stopped (gateway and Housing service)")
        raise typer.Exit(0) from None


class _Terminated(Exception):
    pass


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _residents(data: Path) -> int | None:
    """How many residents the built city has (None if the registry cannot be read)."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"file:{data / 'psb.sqlite'}?mode=ro", uri=True)) as con:
            return int(con.execute("SELECT count(*) FROM resident").fetchone()[0])
    except sqlite3.Error:
        return None


def _banner(host: str, port: int, housing_port: int, showcase: dict[str, str], *, housing_pid: int | None = None,
            residents: int | None = None) -> None:
    from gateway.auth.demo import DEMO_CLIENTS

    base = f"http://{host}:{port}"
    compact = json.dumps({"query": " ".join(SHOWCASE_QUERY.split()),
                          "variables": {"applicant": showcase["applicant_id_number"]}}, ensure_ascii=False)
    out.rule("[bold]hutong demo city")
    out.print(f"GraphQL endpoint   {base}/graphql   (open it in a browser for the explorer)")
    out.print(f"Token endpoint     {base}/oauth/token   (OAuth 2.0 client credentials)")
    out.print(f"Health             {base}/healthz   readiness: {base}/readyz")
    out.print(f"Web console        {base}/console   (people: policy administrators, auditors, data owners)")
    out.print(f"Housing REST       http://127.0.0.1:{housing_port}/properties (the Housing bureau's own service, "
              f"process {housing_pid})")
    if residents is not None:
        out.print(f"Demo city          {residents:,} residents (`make demo RESIDENTS=2000` for another size)")
    out.print("\nDemo client credentials (published demo secrets: accepted only in demo mode):")
    for c in DEMO_CLIENTS:
        out.print(f"  {c.client_id:<18} {c.secret:<28} {c.purpose}")
    from gateway.console.accounts import DEMO_ACCOUNTS

    out.print("\nDemo console accounts (published demo passwords: demo mode only):")
    for username, display, password, _, _ in DEMO_ACCOUNTS:
        out.print(f"  {username:<18} {password:<28} {display}")
    out.print(f"\nShowcase applicant {showcase['applicant_id_number']} (subsistence case {showcase['case_id']}). "
              "The street office's subsistence check, one request across five departments:\n")
    print(f"TOKEN=$(curl -s -u street-office-app:street-office-demo-secret -d grant_type=client_credentials "
          f"{base}/oauth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")
    print(f"curl -s {base}/graphql -H \"Authorization: Bearer $TOKEN\" "
          f"-H 'X-Purpose: subsistence-allowance-review' -H 'X-Acting-User: official-007' "
          f"-H 'X-Case-Id: {showcase['case_id']}' -H 'Content-Type: application/json' -d '{compact}'\n")
    out.rule()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
