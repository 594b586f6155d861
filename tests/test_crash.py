"""A gateway killed under load, or asked to stop: no answered request without its record, a chain
that verifies, and in-flight requests finished before a graceful exit."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from demo.server_thread import ServerThread, free_port
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_store
from gateway.config import Settings
from tests.test_recorded_processes import start, tail, wait_ready

HEADERS = {"x-purpose": "subsistence-allowance-review", "x-acting-user": "official-1", "x-case-id": "CRASH-1"}
QUERY = {"query": "{ residents(limit: 3) { nodes { idNumber name } } }"}


def config(make_settings: Any, tmp_path: Path, sources: dict[str, str] | None = None) -> Settings:
    # The demo's policy and clients; no rate limit: the test floods on purpose.
    return make_settings(sources, stores=tmp_path / "stores", extra="[limits]\nrate = 0\n")


async def token(c: httpx.AsyncClient) -> str:
    r = await c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "street-office-app",
                                           "client_secret": "street-office-demo-secret"})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def chain(settings: Settings) -> tuple[bool, str, set[str]]:
    """Whether the store's chain verifies, its report, and the request ids it holds."""
    audit = AuditSettings.from_settings(settings)
    store = AuditStore(audit.url)
    try:
        report = await verify_store(store, AuditKeys.load(audit.signing_key, audit.previous_keys))
        ids = {r["body"].get("request_id") async for r in store.bodies({"kind": "request"})}
    finally:
        await store.close()
    return report.ok, str(report.detail), {i for i in ids if i}


async def test_kill_9_under_load_loses_no_record_of_an_answered_request(make_settings: Any, tmp_path: Path) -> None:
    settings = config(make_settings, tmp_path)
    port, log = free_port(), tmp_path / "gateway.log"
    proc = start(settings.path, port, log, workers=2)
    answered: set[str] = set()
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            headers = {**HEADERS, "authorization": f"Bearer {await token(c)}"}

            async def client() -> None:
                while True:
                    rid = uuid.uuid4().hex
                    try:
                        r = await c.post("/graphql", json=QUERY, headers={**headers, "x-request-id": rid})
                    except httpx.HTTPError:
                        return  # the gateway is gone
                    if r.status_code == 200 and r.json().get("data", {}).get("residents"):
                        answered.add(rid)  # this client received data: its record must exist

            load = [asyncio.create_task(client()) for _ in range(8)]
            await asyncio.sleep(2.0)
            os.killpg(proc.pid, signal.SIGKILL)  # no shutdown, no flush: the whole process group at once
            await asyncio.wait_for(asyncio.gather(*load), timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(answered) > 20, tail(log)
    ok, detail, recorded = await chain(settings)
    assert ok, detail
    assert answered <= recorded, f"{len(answered - recorded)} answered requests have no record"
    # Restarted, the gateway continues the same chain.
    proc = start(settings.path, port, log)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            r = await c.post("/graphql", json=QUERY, headers={**HEADERS, "authorization": f"Bearer {await token(c)}",
                                                               "x-request-id": "after-restart"})
            assert r.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    ok, detail, recorded = await chain(settings)
    assert ok and "after-restart" in recorded, detail


async def test_sigterm_finishes_in_flight_requests_and_flushes_the_audit(make_settings: Any, tmp_path: Path) -> None:
    async def slow(_: Request) -> Response:  # a Housing service that takes a second to answer
        await asyncio.sleep(1.0)
        return JSONResponse({"items": []})

    housing = Starlette(routes=[Route("/properties", slow), Route("/properties/_query", slow, methods=["POST"])])
    with ServerThread(housing) as slow_housing:
        settings = config(make_settings, tmp_path, {"housing_api": slow_housing.url})
        port, log = free_port(), tmp_path / "gateway.log"
        proc = start(settings.path, port, log)
        try:
            await wait_ready(f"http://127.0.0.1:{port}", proc, log)
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
                headers = {**HEADERS, "authorization": f"Bearer {await token(c)}", "x-request-id": "in-flight"}
                in_flight = asyncio.create_task(c.post(
                    "/graphql", json={"query": "{ properties(limit: 3) { nodes { propertyId } } }"}, headers=headers))
                await asyncio.sleep(0.4)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as fresh:
                    try:
                        refused = (await fresh.get("/healthz")).status_code != 200
                    except httpx.TransportError:
                        refused = True
                assert refused, "a new connection was accepted after SIGTERM"
                r = await in_flight
                assert r.status_code == 200 and r.json() == {"data": {"properties": {"nodes": []}}}
            # uvicorn re-raises the signal once shut down, so the exit status still says SIGTERM.
            assert proc.wait(timeout=20) in (0, -signal.SIGTERM), tail(log)
            assert "Application shutdown complete" in tail(log)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    ok, detail, recorded = await chain(settings)
    assert ok and "in-flight" in recorded, detail
