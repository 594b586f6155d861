"""The limit over HTTP: the direct lookup behind the same web server, with nothing of the gateway.

``POST /lookup`` takes the GraphQL request body the gateway gets (``{"variables": {"id": ...}}``),
runs :func:`bench.direct.lookup` (the six source queries at once, the answer built by hand, orjson)
and returns it. It runs under the same uvicorn (uvloop, httptools, no access log, SO_REUSEPORT per
worker through gateway/serve.py) with the same number of workers as ``hutong serve`` in the
throughput measurement, against the same sources. What it cannot do per second on this machine,
no gateway could: the difference between the two is everything hutong adds (token check, parsing,
planning, authorisation, masking, consent, audit, access log).

Configuration comes from ``HUTONG_BENCH_DIRECT`` (JSON: ``{"sql_urls": {...}, "housing_url": ...}``),
set by bench/lookup.py, because uvicorn's workers import the app by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from bench import direct
from bench.harness import Baseline

__all__ = ["ENV", "create_app"]

ENV = "HUTONG_BENCH_DIRECT"


def create_app() -> Starlette:
    config = json.loads(os.environ[ENV])

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.baseline = Baseline(config["sql_urls"], config["housing_url"])
        try:
            yield
        finally:
            await app.state.baseline.close()

    async def lookup(request: Request) -> Response:
        body = orjson.loads(await request.body())
        answer = await direct.lookup(request.app.state.baseline, body["variables"]["id"])
        return Response(answer, media_type="application/json")

    async def healthz(_: Request) -> Response:
        return Response(b"ok")

    return Starlette(routes=[Route("/lookup", lookup, methods=["POST"]), Route("/healthz", healthz)],
                     lifespan=lifespan)
