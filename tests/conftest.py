"""Shared fixtures: a small demo city on disk, its Housing REST service on a real port, gateways
over it, and throwaway PostgreSQL / MariaDB databases on this machine.

Tests of real services skip when a service is unreachable, with the reason, unless
``HUTONG_REQUIRE_SERVICES=1`` (set by ``.ci/run``): then they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from catalog.loader import load_catalog
from demo.build import City, build_demo
from demo.housing_service import create_app as housing_app
from demo.server_thread import ServerThread
from gateway.config import REPO_ROOT, Settings, load_settings
from gateway.pipeline import Gateway
from policies.decide import Subject

DEMO_CATALOG = REPO_ROOT / "demo" / "catalog"
TEST_RESIDENTS = 1_500
REQUIRE_SERVICES = os.environ.get("HUTONG_REQUIRE_SERVICES") == "1"


def arun(coro: Any) -> Any:
    """Run a coroutine to completion from sync code, even when called inside a running loop
    (session fixtures may be first requested from an async test)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def service_unavailable(what: str, exc: BaseException) -> None:
    reason = f"{what} is unreachable ({type(exc).__name__}: {exc})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and HUTONG_REQUIRE_SERVICES=1 requires it")
    pytest.skip(f"{reason}; start it, or set HUTONG_REQUIRE_SERVICES=1 to make this a failure")


@pytest.fixture(scope="session")
def built_city(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, City]:
    root = tmp_path_factory.mktemp("city")
    return root, arun(build_demo(root / "data", residents=TEST_RESIDENTS))


@pytest.fixture(scope="session")
def city_dir(built_city: tuple[Path, City]) -> Path:
    """A deployment folder: data/ with the demo sources (small city) and room for hutong.toml."""
    return built_city[0]


@pytest.fixture(scope="session")
def city(built_city: tuple[Path, City]) -> City:
    """The same city as Python rows: what the tests expect the gateway to return."""
    return built_city[1]


@pytest.fixture(scope="session")
def housing_url(city_dir: Path) -> Iterator[str]:
    with ServerThread(housing_app(city_dir / "data" / "housing.json")) as server:
        yield f"http://127.0.0.1:{server.port}"


DEMO_POLICY = REPO_ROOT / "demo" / "policies" / "policy.csv"
TEST_POLICY = Path(__file__).resolve().parent / "policy-tester.csv"
TESTER_SECRET = "tester-secret-for-tests-only-0001"


@contextlib.asynccontextmanager
async def served(settings: Settings, purpose: str = "citizen-self-service"
                 ) -> AsyncIterator[tuple[httpx.AsyncClient, Gateway]]:
    """The gateway's HTTP app over ``settings``, with a client holding a real access token for the
    `tester` client (see tests/policy-tester.csv) and the context headers of a data request."""
    from gateway.app import create_app
    from gateway.audit.settings import AuditSettings
    from gateway.audit.writer import AuditWriter
    from gateway.auth.service import AuthService

    gw = Gateway(load_catalog(*settings.catalog), settings)
    auth = AuthService.from_settings(settings)
    trail = AuditWriter.from_settings(AuditSettings.from_settings(settings))
    await gw.start()
    await auth.start()
    await trail.start()
    if await auth.store.get("tester") is None:
        await auth.store.add("tester", "civil", ["tester"], secret=TESTER_SECRET)
    app = create_app(settings, gw, auth, trail)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as client:
            r = await client.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "tester",
                                                        "client_secret": TESTER_SECRET})
            assert r.status_code == 200, r.text
            client.headers.update({"Authorization": f"Bearer {r.json()['access_token']}", "X-Purpose": purpose,
                                   "X-Acting-User": "official-007", "X-Case-Id": "CASE-TEST-1"})
            yield client, gw
    finally:
        await trail.close()
        await auth.close()
        await gw.close()


def write_config(folder: Path, sources: dict[str, str] | None = None, *, policy: Path = DEMO_POLICY,
                 stores: Path | None = None, extra: str = "", **gateway: Any) -> Path:
    """A configuration over the built city. ``stores``: a folder for this configuration's own audit log,
    signing key and consent store (by default they are shared, under the city's run/). ``extra``:
    TOML appended as it is (other sections, such as [limits])."""
    lines = ["[gateway]", f'catalog = "{DEMO_CATALOG}"', "demo = true"]
    lines += [f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {str(v).lower()}"
              for k, v in gateway.items()]
    for code, url in (sources or {}).items():
        lines += [f"[sources.{code}]", f'url = "{url}"']
    lines += ["[policies]", f'file = "{policy}"', 'mask_key = "hutong-demo-mask-key-NOT-A-SECRET"']
    if stores is not None:
        lines += ["[audit]", f'url = "sqlite+aiosqlite:///{stores}/audit.sqlite"',
                  f'signing_key = "{stores}/audit-signing-key.pem"',
                  "[consent]", f'url = "sqlite+aiosqlite:///{stores}/consent.sqlite"',
                  "[sharing]", f'url = "sqlite+aiosqlite:///{stores}/sharing.sqlite"']
    path = folder / f"hutong-{uuid.uuid4().hex[:8]}.toml"
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


@pytest.fixture
def make_settings(city_dir: Path, housing_url: str) -> Any:
    def make(sources: dict[str, str] | None = None, *, stores: Path | None = None, extra: str = "",
             **gateway: Any) -> Settings:
        urls = {"housing_api": housing_url, **(sources or {})}
        return load_settings(write_config(city_dir, urls, stores=stores, extra=extra, **gateway), environ={})

    return make


@pytest.fixture
async def gateway(make_settings: Any) -> AsyncIterator[Gateway]:
    settings = make_settings(debug=False)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    yield gw
    await gw.close()


@pytest.fixture
async def own_gateway(make_settings: Any, tmp_path: Path) -> AsyncIterator[Gateway]:
    """A gateway with its own audit key and consent store, for tests that record consents."""
    settings = make_settings(debug=False, stores=tmp_path / "stores")
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    yield gw
    await gw.close()


def consent_admin(gw: Gateway, events: list[dict[str, Any]] | None = None) -> Any:
    """The gateway's consent service, its audit events collected in ``events`` (the audit log itself
    is exercised over HTTP in tests/test_consent_http.py)."""
    from gateway.consent_admin import ConsentAdmin

    async def record(body: dict[str, Any]) -> None:
        if events is not None:
            events.append(body)

    assert gw.consents is not None
    return ConsentAdmin(gw.catalog, gw.consents, gw.subjects, record)


SQL_SOURCES = ("psb_registry", "hrss_db", "mr_register", "health_db", "civil_db")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
async def any_gateway(request: pytest.FixtureRequest, make_settings: Any) -> AsyncIterator[Gateway]:
    """The same catalogue over SQLite files, or with every SQL department moved to a real server."""
    overrides: dict[str, str] = {}
    if request.param != "sqlite":
        url = request.getfixturevalue("pg_url" if request.param == "postgresql" else "mariadb_url")
        overrides = dict.fromkeys(SQL_SOURCES, url)
    settings = make_settings(overrides)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    yield gw
    await gw.close()


# --- real database services ---------------------------------------------------------------


def throwaway_pg_database(prefix: str = "hutong_test") -> Iterator[str]:
    """A new PostgreSQL database on this machine, dropped afterwards; skips (or fails with
    HUTONG_REQUIRE_SERVICES=1) when the server is unreachable."""
    import asyncpg

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        arun(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        service_unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        arun(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def load_sql_departments(city: City, url: str) -> None:
    from demo.build import write_department

    for dept in ("psb", "hrss", "mr", "health", "civil"):
        await write_department(city, dept, url)


@pytest.fixture(scope="session")
def pg_url(city: City) -> Iterator[str]:
    """A throwaway PostgreSQL database holding every SQL department's demo tables."""
    for url in throwaway_pg_database():
        arun(load_sql_departments(city, url))
        yield url


@pytest.fixture(scope="session")
def mariadb_url(city: City) -> Iterator[str]:
    """A throwaway MariaDB database holding every SQL department's demo tables."""
    import aiomysql

    name = f"hutong_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await aiomysql.connect(host="127.0.0.1", port=3306, user="root", password="", connect_timeout=5)
        try:
            async with conn.cursor() as cur:
                await cur.execute(sql)
        finally:
            conn.close()

    try:
        arun(admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))
    except Exception as exc:  # aiomysql raises several kinds when the server is away
        service_unavailable("MariaDB at 127.0.0.1:3306", exc)
    url = f"mysql+aiomysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"

    try:
        arun(load_sql_departments(city, url))
        yield url
    finally:
        arun(admin(f"DROP DATABASE IF EXISTS `{name}`"))


def demo_subject(client_id: str) -> Subject:
    """A demo client as its access token presents it: department, roles and attributes."""
    from gateway.auth.demo import DEMO_CLIENTS

    c = next(c for c in DEMO_CLIENTS if c.client_id == client_id)
    return Subject.of_client(c)


# --- audit stores on each backend (tests/test_audit_*.py) ----------------------------------------


@pytest.fixture
def pg_audit_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for an audit store."""
    from tests.test_audit_support import pg_database

    yield from pg_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An audit store's URL on SQLite, then on PostgreSQL."""
    from tests.test_audit_support import sqlite_url

    return request.getfixturevalue("pg_audit_url") if request.param == "postgresql" else sqlite_url(tmp_path)
