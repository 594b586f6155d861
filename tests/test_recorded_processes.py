"""Two gateway processes serving at once append to one audit chain: it verifies, and no record is lost."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.server_thread import free_port
from gateway.audit.keys import AuditKeys
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore
from gateway.audit.verify import verify_store
from gateway.config import REPO_ROOT
from tests.conftest import TEST_POLICY

REQUESTS_EACH = 60


def start(cfg: Path, port: int, log: Path, workers: int = 1) -> subprocess.Popen[bytes]:
    """``hutong serve`` in a process group of its own (so the whole group can be killed), its output
    appended to ``log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg), "--port", str(port),
                             "--workers", str(workers)], cwd=REPO_ROOT, env=env, stdout=log.open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:]


async def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient(base_url=base) as c:
        while time.monotonic() < deadline:
            assert proc.poll() is None, tail(log)
            try:
                if (await c.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
    raise AssertionError(f"gateway at {base} did not start: {tail(log)}")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def test_two_gateway_processes_keep_one_chain(make_settings: Any, tmp_path: Path, backend: str,
                                                    request: pytest.FixtureRequest) -> None:
    if backend == "postgresql":  # the production layout: replicas writing one PostgreSQL audit store
        url = request.getfixturevalue("pg_audit_url")
        settings = make_settings(policy=TEST_POLICY, extra=f'[audit]\nurl = "{url}"\n'
                                                           f'signing_key = "{tmp_path}/audit-signing-key.pem"\n')
    else:
        settings = make_settings(policy=TEST_POLICY)
    cfg = settings.path
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"gw{i}.log" for i in range(2)]
    procs = [start(cfg, p, log) for p, log in zip(ports, logs, strict=True)]
    audit = AuditSettings.from_settings(settings)
    store = AuditStore(audit.url)
    try:
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{p}", proc, log)
                               for p, proc, log in zip(ports, procs, logs, strict=True)))
        before = await store.count()

        async def load(port: int) -> list[int]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
                token = (await c.post("/oauth/token", data={"grant_type": "client_credentials",
                                                            "client_id": "street-office-app",
                                                            "client_secret": "street-office-demo-secret"})).json()
                headers = {"authorization": f"Bearer {token['access_token']}",
                           "x-purpose": "subsistence-allowance-review", "x-acting-user": f"official-{port}",
                           "x-case-id": "LOAD-1"}
                query = {"query": "{ residents(limit: 3) { nodes { name } } }"}
                statuses = []
                for _ in range(REQUESTS_EACH // 10):  # waves of 10 concurrent requests per process
                    rs = await asyncio.gather(*(c.post("/graphql", json=query, headers=headers) for _ in range(10)))
                    statuses += [r.status_code for r in rs]
                return statuses

        results = await asyncio.gather(*(load(p) for p in ports))
        assert all(s == 200 for statuses in results for s in statuses)
        per_official = {p: (await store.search({"acting_user": f"official-{p}"}, limit=1))[1] for p in ports}
        total = await store.count()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
    report = await verify_store(store, AuditKeys.load(audit.signing_key, audit.previous_keys))
    await store.close()
    assert report.ok, report.detail
    assert per_official == {p: REQUESTS_EACH for p in ports}  # every answered request has its record
    assert total >= before + 2 * REQUESTS_EACH


@pytest.mark.parametrize("trusted", [True, False], ids=["behind a trusted proxy", "forwarded header ignored"])
async def test_the_callers_address_comes_from_a_trusted_proxy_only(make_settings: Any, tmp_path: Path,
                                                                   trusted: bool) -> None:
    extra = {"trusted_proxies": ["127.0.0.1"]} if trusted else {}
    settings = make_settings(policy=TEST_POLICY, stores=tmp_path / "stores", **extra)
    port, log = free_port(), tmp_path / "gw.log"
    proc = start(settings.path, port, log)
    store = AuditStore(AuditSettings.from_settings(settings).url)
    try:
        await wait_ready(f"http://127.0.0.1:{port}", proc, log)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            r = await c.post("/graphql", json={"query": "{ __typename }"},
                             headers={"authorization": "Bearer junk", "x-forwarded-for": "203.0.113.7"})
        assert r.status_code == 401
        records, _ = await store.search({"outcome": "unauthenticated"}, limit=1)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        await store.close()
    assert records[0]["body"]["ip"] == ("203.0.113.7" if trusted else "127.0.0.1")
