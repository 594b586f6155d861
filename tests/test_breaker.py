"""The circuit breaker per source (resolvers/breaker.py): a failing source is not asked again for a
while, the rest of the answer stands, and the source is probed back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from catalog.loader import load_catalog
from demo.housing_service import create_app as housing_app
from demo.server_thread import ServerThread, free_port
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway
from resolvers.breaker import Breaker, CircuitState
from resolvers.errors import SourceError, SourceFailure


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_the_circuit_opens_fails_fast_probes_and_closes() -> None:
    clock = Clock()
    b = Breaker("s", failures=3, open_seconds=10, clock=clock)
    calls = 0

    async def down() -> None:
        nonlocal calls
        calls += 1
        raise SourceError("s", SourceFailure.UNAVAILABLE, "down")

    async def up() -> str:
        nonlocal calls
        calls += 1
        return "rows"

    for _ in range(3):
        with pytest.raises(SourceError):
            await b.call(down)
    assert b.state is CircuitState.OPEN and calls == 3
    with pytest.raises(SourceError, match="not asked for 10 s more"):
        await b.call(up)  # open: refused without asking
    assert calls == 3
    clock.now = 10
    with pytest.raises(SourceError):
        await b.call(down)  # the probe fails: open again, twice as long
    assert b.state is CircuitState.OPEN and b.status()["retry_in_s"] == 20
    clock.now = 30
    started = asyncio.Event()

    async def slow_up() -> str:
        started.set()
        await asyncio.sleep(0.05)
        return "rows"

    probe = asyncio.create_task(b.call(slow_up))
    await started.wait()
    with pytest.raises(SourceError):
        await b.call(up)  # one probe at a time: the others still fail at once
    assert await probe == "rows" and b.state is CircuitState.CLOSED and b.consecutive == 0


async def test_late_answers_of_earlier_queries_do_not_change_the_circuit() -> None:
    clock = Clock()
    b = Breaker("s", failures=2, open_seconds=10, clock=clock)
    release = asyncio.Event()

    async def slow_ok() -> str:
        await release.wait()
        return "rows"

    async def down() -> None:
        raise SourceError("s", SourceFailure.UNAVAILABLE, "down")

    old = asyncio.create_task(b.call(slow_ok))  # admitted while closed, answers much later
    await asyncio.sleep(0)
    for _ in range(2):
        with pytest.raises(SourceError):
            await b.call(down)
    clock.now = 10
    probe_release = asyncio.Event()

    async def probe() -> None:
        await probe_release.wait()
        raise SourceError("s", SourceFailure.TIMEOUT, "still down")

    probing = asyncio.create_task(b.call(probe))
    await asyncio.sleep(0)
    release.set()
    assert await old == "rows"
    assert b.state is CircuitState.HALF_OPEN  # the old success did not close it under the probe
    probe_release.set()
    with pytest.raises(SourceError):
        await probing
    assert b.state is CircuitState.OPEN and b.wait == 20  # the back-off doubles, it is not lost


async def test_errors_that_show_the_source_is_up_do_not_count() -> None:
    b = Breaker("s", failures=2)

    async def refused() -> None:
        raise SourceError("s", SourceFailure.ERROR, "HTTP 400")

    for _ in range(5):
        with pytest.raises(SourceError):
            await b.call(refused)
    assert b.state is CircuitState.CLOSED


async def test_a_dead_source_is_cut_off_and_probed_back_while_the_rest_answers(make_settings: Any, city: Any,
                                                                              city_dir: Path) -> None:
    port = free_port()  # nothing listens there yet: the Housing department is down
    settings = make_settings({"housing_api": f"http://127.0.0.1:{port}"}, circuit_failures=2,
                             circuit_open_seconds=1)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    query = "{ properties(limit: 2) { nodes { propertyId } } residents(limit: 2) { nodes { idNumber } } }"
    try:
        for _ in range(2):
            out = await gw.run(query, context=UNRESTRICTED)
            assert out.body["data"]["properties"] is None and len(out.body["data"]["residents"]["nodes"]) == 2
            assert out.body["errors"][0]["extensions"]["code"] == "SOURCE_UNAVAILABLE"
        sent = gw.sources.get("housing_api").statements
        out = await gw.run(query, context=UNRESTRICTED)
        assert "circuit open" in out.body["errors"][0]["message"] and len(out.body["data"]["residents"]["nodes"]) == 2
        assert gw.sources.get("housing_api").statements == sent  # not asked at all
        ready = await gw.sources.readiness()
        assert ready["housing_api"]["circuit"] == "open" and ready["psb_registry"]["circuit"] == "closed"
        with ServerThread(housing_app(city_dir / "data" / "housing.json"), port):  # the department is back
            await asyncio.sleep(1.1)
            out = await gw.run(query, context=UNRESTRICTED)  # the probe goes through and closes the circuit
            assert "errors" not in out.body and len(out.body["data"]["properties"]["nodes"]) == 2
            assert gw.sources.breakers["housing_api"].state is CircuitState.CLOSED
    finally:
        await gw.close()
