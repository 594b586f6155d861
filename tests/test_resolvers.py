"""Source connectors on their own: parameterised SQL, REST failure classification."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from catalog.model import DataType
from demo.housing_service import create_app as housing_app
from demo.server_thread import ServerThread
from gateway.context import UNRESTRICTED
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import Condition, Op, SourceQuery
from resolvers.rest import RESTConnector, _decode
from resolvers.sql import SQLConnector

HOSTILE = "x' OR '1'='1'; DROP TABLE resident; --"

Q = SourceQuery(dataset="psb.resident", location="resident", columns=("id_number", "name"),
                types={"id_number": DataType.STRING, "name": DataType.STRING, "birth_date": DataType.DATE})


def test_sql_values_are_bound_parameters_only() -> None:
    conn = SQLConnector("s", "sqlite+aiosqlite:///:memory:")
    q = replace(Q, conditions=(Condition("name", Op.EQ, HOSTILE), Condition("name", Op.PREFIX, "50%_off")),
                key_column="id_number", limit_per_key=2, order_by="id_number")
    compiled = conn.select(q, [HOSTILE]).compile(dialect=conn.engine.dialect)
    sql = str(compiled)
    assert HOSTILE not in sql and "DROP" not in sql and "50%" not in sql
    assert HOSTILE in compiled.params.values()


async def test_hostile_values_reach_the_database_as_data(any_gateway: Any) -> None:
    # Through every argument that reaches a source: filters, IN lists, prefixes. Nothing matches,
    # nothing breaks, and the table is still there afterwards.
    for flt in ('{name: {eq: "%s"}}', '{name: {in: ["%s"]}}', '{name: {prefix: "%s"}}', '{address: {ne: "%s"}}'):
        query = "{ residents(limit: 1, filter: FILTER) { nodes { idNumber } } }".replace(
            "FILTER", flt % HOSTILE.replace('"', '\\"'))
        out = await any_gateway.run(query, context=UNRESTRICTED)
        assert out.status == 200 and "errors" not in out.body, out.body
    out = await any_gateway.run("query($v: String!) { properties(limit: 1, filter: {usage: {eq: $v}}) "
                                "{ nodes { propertyId } } }", None, {"v": HOSTILE}, context=UNRESTRICTED)
    assert out.body["data"]["properties"]["nodes"] == []
    out = await any_gateway.run("{ residents(limit: 1) { nodes { idNumber } } }", context=UNRESTRICTED)
    assert len(out.body["data"]["residents"]["nodes"]) == 1


def _app(handler: Any) -> Starlette:
    return Starlette(routes=[Route("/items", handler, methods=["GET"]), Route("/items/_query", handler,
                                                                              methods=["POST"])])


async def _slow(_: Request) -> Response:
    await asyncio.sleep(2)
    return JSONResponse({"items": []})


@pytest.mark.parametrize(("handler", "failure", "words"), [
    (lambda r: PlainTextResponse("<html>oops</html>"), SourceFailure.ERROR, "something other than"),
    (lambda r: JSONResponse({"rows": []}), SourceFailure.ERROR, "something other than"),
    (lambda r: JSONResponse({"items": [1, 2]}), SourceFailure.ERROR, "something other than"),
    (lambda r: JSONResponse({"error": "boom"}, status_code=500), SourceFailure.ERROR, "HTTP 500"),
    (lambda r: JSONResponse({"error": "no"}, status_code=400), SourceFailure.ERROR, "refused the request"),
    (lambda r: JSONResponse({"items": [{"id_number": "1", "birth_date": "not a date"}]}), SourceFailure.ERROR,
     "wrong type"),
    (lambda r: JSONResponse({"items": [{"id_number": 110105, "birth_date": None}]}), SourceFailure.ERROR,
     "wrong type for d.id_number (string expected)"),
    (lambda r: JSONResponse({"items": [{"id_number": "1", "birth_date": "2020-01-01T10:00"}]}), SourceFailure.ERROR,
     "wrong type for d.birth_date (date expected)"),
    (_slow, SourceFailure.TIMEOUT, "did not answer within 0.3 s"),
])
async def test_rest_failures_are_classified(handler: Any, failure: SourceFailure, words: str) -> None:
    async def endpoint(request: Request) -> Response:
        result = handler(request)
        return await result if asyncio.iscoroutine(result) else result

    q = SourceQuery(dataset="d", location="/items", columns=("id_number", "birth_date"), types=Q.types)
    with ServerThread(_app(endpoint)) as server:
        conn = RESTConnector("api", f"http://127.0.0.1:{server.port}", timeout=0.3)
        try:
            with pytest.raises(SourceError) as exc:
                await conn.fetch(q)
            with pytest.raises(SourceError):  # key batches (POST _query) fail the same way
                await conn.fetch(replace(q, key_column="id_number", keys=("1",)))
        finally:
            await conn.close()
    assert exc.value.failure is failure and words in exc.value.message


async def test_rest_unreachable_is_unavailable() -> None:
    conn = RESTConnector("api", "http://127.0.0.1:9", transport=httpx.AsyncHTTPTransport(retries=0))
    with pytest.raises(SourceError) as exc:
        await conn.fetch(SourceQuery(dataset="d", location="/items", columns=("id_number",), types=Q.types))
    await conn.close()
    assert exc.value.failure is SourceFailure.UNAVAILABLE


@pytest.mark.parametrize(("data_type", "value"), [
    (DataType.INTEGER, "12"), (DataType.INTEGER, 1.5), (DataType.INTEGER, True), (DataType.BOOLEAN, "false"),
    (DataType.BOOLEAN, 0), (DataType.STRING, {"x": 1}), (DataType.FLOAT, "abc"), (DataType.FLOAT, False),
    (DataType.DECIMAL, "ten"), (DataType.DATETIME, 20200101),
])
def test_rest_values_of_the_wrong_json_type_are_source_errors(data_type: DataType, value: Any) -> None:
    q = SourceQuery(dataset="d", location="/items", columns=("v",), types={"v": data_type})
    with pytest.raises(SourceError) as exc:
        _decode({"v": value}, q, "api")
    assert exc.value.failure is SourceFailure.ERROR
    assert str(value) not in exc.value.message  # the value itself is never quoted


async def test_rest_key_batches_return_every_row_beyond_the_service_page(tmp_path: Path) -> None:
    # 1,500 properties of three owners: more than the service's default page of 1,000.
    owners = ["11010519491231002X", "990111198009303439", "990102198208065908"]
    props = [{"property_id": f"P{i:05d}", "owner_id_number": owners[i % 3], "address": "a", "district": "d",
              "area_sqm": 50.0, "usage": "residential", "acquired_on": "2020-01-01", "mortgaged": False}
             for i in range(1500)]
    path = tmp_path / "housing.json"
    path.write_text(json.dumps({"properties": props}), encoding="utf-8")
    q = SourceQuery(dataset="housing.property", location="/properties", columns=("owner_id_number", "property_id"),
                    types={"owner_id_number": DataType.STRING, "property_id": DataType.STRING},
                    key_column="owner_id_number", keys=tuple(owners), order_by="property_id", limit=10_001)
    with ServerThread(housing_app(path)) as server:
        conn = RESTConnector("housing_api", f"http://127.0.0.1:{server.port}")
        try:
            rows = await conn.fetch(q)
        finally:
            await conn.close()
    assert len(rows) == 1500 and conn.statements == 1
