"""Streamed pages (gateway/stream.py): the same answer as a whole one, every part audited before it
is sent, and the answer cut (never completed) when a part cannot be recorded or read."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import sqlalchemy as sa

from catalog.loader import load_catalog
from catalog.model import DataType
from demo.build import City
from demo.server_thread import ServerThread
from gateway.audit.errors import AuditUnavailable
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.writer import AuditWriter
from gateway.auth.service import AuthService
from gateway.config import Settings
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.decide import Subject
from tests.conftest import SQL_SOURCES, TESTER_SECRET, load_sql_departments, throwaway_pg_database

POLICY = Path(__file__).parent / "policy-tester.csv"
PURPOSE = "subsistence-allowance-review"
PAGE = ("query Page($n: Int!) { kind: __typename residents(limit: $n) { __typename "
        "nodes { idNumber name birthDate district } pageInfo { hasNextPage endCursor } } }")
SERVED: list[Gateway] = []  # the gateway inside the server thread, to look at its pools
HEADERS = {"X-Purpose": PURPOSE, "X-Acting-User": "official-007", "X-Case-Id": "CASE-STREAM-1"}


class FailingWriter:
    """The app's audit writer, refusing ``request-part`` records from the ``fail_at``-th on (the
    store going away in the middle of a stream), or taking ``delay`` seconds over each (a slow one)."""

    def __init__(self, writer: AuditWriter, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.writer, self.fail_at, self.delay, self.parts = writer, fail_at, delay, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)

    async def append(self, kind: str, body: dict[str, Any]) -> Any:
        if kind == "request-part" and not body.get("final"):
            self.parts += 1
            if self.fail_at is not None and self.parts >= self.fail_at:
                raise AuditUnavailable("the audit store is away (test)")
            await asyncio.sleep(self.delay)
        return await self.writer.append(kind, body)


@contextlib.asynccontextmanager
async def server(settings: Settings, fail_at: int | None = None, delay: float = 0.0
                 ) -> AsyncIterator[tuple[str, str, Gateway]]:
    """The gateway's app on a real port, in a thread with its own event loop (a stream cut short is
    seen as a client sees it): its URL, a token for the tester client, and a Gateway of this loop
    over the same settings (same data, same keys) to compare with and to compute pseudonyms."""
    from gateway.app import create_app

    auth = AuthService.from_settings(settings)
    await auth.start()
    if await auth.store.get("tester") is None:
        await auth.store.add("tester", "civil", ["tester"], secret=TESTER_SECRET)
    await auth.close()
    trail = AuditWriter.from_settings(AuditSettings.from_settings(settings))
    served = Gateway(load_catalog(*settings.catalog), settings)
    app = create_app(settings, served, AuthService.from_settings(settings),
                     FailingWriter(trail, fail_at, delay) if fail_at or delay else trail)  # type: ignore[arg-type]
    SERVED.append(served)
    here = Gateway(load_catalog(*settings.catalog), settings)
    await here.start()
    thread = ServerThread(app)
    await asyncio.to_thread(thread.__enter__)
    try:
        async with httpx.AsyncClient(base_url=thread.url) as c:
            r = await c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "tester",
                                                   "client_secret": TESTER_SECRET})
            yield thread.url, r.json()["access_token"], here
    finally:
        await asyncio.to_thread(thread.__exit__)
        await here.close()


def stream_settings(make_settings: Any, tmp_path: Path, sources: dict[str, str] | None = None) -> Settings:
    return make_settings(sources, stores=tmp_path / "stores", policy=POLICY, max_limit=5000,
                         stream_from=500, stream_chunk=300)


async def records(settings: Settings) -> list[dict[str, Any]]:
    store = AuditStore(AuditSettings.from_settings(settings).url)
    try:
        return [r async for r in store.bodies({}) if r["kind"] in ("request", "request-part")]
    finally:
        await store.close()


def opened(gw: Gateway, body: dict[str, Any]) -> dict[str, Any]:
    """The answer with its cursor opened (cursors are sealed with a fresh nonce each time)."""
    page = body["data"]["residents"]
    cursor = page["pageInfo"]["endCursor"]
    page["pageInfo"]["endCursor"] = gw.cursors.decode(cursor, "psb.resident", DataType.STRING) if cursor else None
    return body


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])
async def test_a_streamed_page_is_the_whole_answer_and_each_part_is_recorded(
        backend: str, make_settings: Any, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    database = {"postgresql": "pg_url", "mariadb": "mariadb_url"}.get(backend)
    sources = dict.fromkeys(SQL_SOURCES, request.getfixturevalue(database)) if database else None
    settings = stream_settings(make_settings, tmp_path, sources)
    async with server(settings) as (url, token, gw):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}", **HEADERS}) as c:
            r = await c.post("/graphql", json={"query": PAGE, "variables": {"n": 1200}})
            small = await c.post("/graphql", json={"query": PAGE, "variables": {"n": 400}})
        assert r.status_code == 200 and "content-length" not in r.headers, r.text  # sent in parts (chunked)
        assert "content-length" in small.headers  # a small page is answered whole
        whole = await gw.run(PAGE, None, {"n": 1200}, context=RequestContext(
            Subject("tester", "civil", frozenset({"tester"})), PURPOSE, "official-007", "CASE-STREAM-1"))
        streamed = orjson.loads(r.content)
        assert list(streamed) == list(whole.body) == ["data"]
        assert opened(gw, streamed) == opened(gw, whole.body)
        assert list(streamed["data"]) == ["kind", "residents"]
        assert list(streamed["data"]["residents"]) == ["__typename", "nodes", "pageInfo"]
        ids = [n["idNumber"] for n in streamed["data"]["residents"]["nodes"]]
        assert len(ids) == 1200 and streamed["data"]["residents"]["pageInfo"]["hasNextPage"] is True

        # The request's record (part 1), request-part records 2..4, the final one: every person named.
        recs = [b for b in await records(settings) if b["body"]["request_id"] == r.headers["x-request-id"]]
        kinds = [(b["kind"], b["body"].get("part"), b["body"].get("final")) for b in recs]
        assert kinds == [("request", 1, False), *(("request-part", p, False) for p in range(2, 5)),
                         ("request-part", 5, True)]
        assert [sum(b["body"]["rows"].values()) for b in recs] == [300, 300, 300, 300, 0]
        named = set().union(*(b["body"]["subjects"] for b in recs))
        assert named == {gw.subjects.of_stored("id_number", i) for i in ids}
        assert recs[-1]["body"]["outcome"] == recs[0]["body"]["outcome"] == "ok" and recs[0]["body"]["fields"]
        # Parts are always recorded before they are sent: records are in chain order, part by part.
        assert [b["seq"] for b in recs] == sorted(b["seq"] for b in recs)


async def test_an_audit_failure_mid_stream_cuts_the_answer_after_the_recorded_parts(
        make_settings: Any, tmp_path: Path) -> None:
    settings = stream_settings(make_settings, tmp_path)
    async with server(settings, fail_at=2) as (url, token, gw):  # part 2 is recorded, part 3 is not
        received = b""
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}", **HEADERS}) as c:
            with pytest.raises(httpx.HTTPError):
                async with c.stream("POST", "/graphql", json={"query": PAGE, "variables": {"n": 1200}}) as r:
                    assert r.status_code == 200
                    async for chunk in r.aiter_raw():
                        received += chunk
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(received)  # never a complete document: no one can take it for the whole page
        recs = await records(settings)
        named = set().union(*(b["body"]["subjects"] for b in recs))
        sent = {gw.subjects.of_stored("id_number", i.decode()) for i in _id_numbers(received)}
        assert sent and sent <= named  # every person whose record left is in a durable record
        assert len(sent) == 600  # parts 1 and 2; part 3 was never sent


async def test_a_source_failure_mid_stream_cuts_the_answer_and_is_recorded(
        make_settings: Any, tmp_path: Path, city: City) -> None:
    for db in throwaway_pg_database("hutong_stream"):  # its own database: its table goes away below
        await load_sql_departments(city, db)
        settings = stream_settings(make_settings, tmp_path, dict.fromkeys(SQL_SOURCES, db))
        async with server(settings, delay=0.3) as (url, token, _gw):  # each part takes 0.3 s to record
            received = b""
            auth = {"Authorization": f"Bearer {token}", **HEADERS}
            async with httpx.AsyncClient(base_url=url, headers=auth) as c:
                with pytest.raises(httpx.HTTPError):
                    async with c.stream("POST", "/graphql", json={"query": PAGE, "variables": {"n": 1200}}) as r:
                        async for chunk in r.aiter_raw():
                            if b'"idNumber"' in chunk and b'"idNumber"' not in received:
                                await _drop_table(db)  # the first part is out: the department's table goes
                            received += chunk
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(received)
            recs = [b["body"] for b in await records(settings)]
            final = [b for b in recs if b.get("final")]
            assert len(final) == 1 and final[0]["outcome"] == "failed" and final[0]["codes"] == ["SOURCE_ERROR"]
            assert recs[-1] is final[0]  # the final record closes the request's records


async def test_a_client_leaving_mid_stream_gives_the_connection_back_and_is_recorded(
        make_settings: Any, tmp_path: Path, pg_url: str) -> None:
    settings = stream_settings(make_settings, tmp_path, dict.fromkeys(SQL_SOURCES, pg_url))
    async with server(settings, delay=0.5) as (url, token, _gw):
        served = SERVED[-1]
        auth = {"Authorization": f"Bearer {token}", **HEADERS}
        async with httpx.AsyncClient(base_url=url, headers=auth) as c, c.stream(
                "POST", "/graphql", json={"query": PAGE, "variables": {"n": 1200}}) as r:
            received = b""
            async for chunk in r.aiter_raw():
                received += chunk
                if b'"idNumber"' in received:
                    break  # the first part is here: the client hangs up in the middle of the page
        pool = served.sources.get("psb_registry").engine.pool  # type: ignore[attr-defined]
        for _ in range(100):
            final = [b["body"] for b in await records(settings) if b["body"].get("final")]
            if final and pool.checkedout() == 0:
                break
            await asyncio.sleep(0.05)
        assert pool.checkedout() == 0  # the part being read when the client left gave its connection back
        assert len(final) == 1 and final[0]["codes"] == ["CLIENT_DISCONNECTED"]


async def test_a_page_beyond_max_nodes_is_refused_before_anything_is_sent(make_settings: Any, tmp_path: Path
                                                                         ) -> None:
    settings = make_settings(None, stores=tmp_path / "stores", policy=POLICY, max_limit=5000, stream_from=500,
                             stream_chunk=300, max_nodes=700)
    async with server(settings) as (url, token, _gw):
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}", **HEADERS}) as c:
            r = await c.post("/graphql", json={"query": PAGE, "variables": {"n": 1200}})
        assert r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "QUERY_TOO_COSTLY"
        assert b'"idNumber"' not in r.content
        assert not [b for b in await records(settings) if b["kind"] == "request-part"]


async def _drop_table(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            await conn.execute(sa.text("ALTER TABLE resident RENAME TO resident_gone"))
    finally:
        await engine.dispose()


def _id_numbers(received: bytes) -> list[bytes]:
    import re

    return re.findall(rb'"idNumber":"([0-9X]{18})"', received)
