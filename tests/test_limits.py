"""Limits (gateway/limits.py, cost.py, rate_limit.py): each refusal with its own code, the limit and
its value; per-client overrides of the server's defaults; rate limits in memory and in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from catalog.loader import load_catalog
from demo.server_thread import ServerThread
from gateway.config import ConfigError, Settings
from gateway.context import UNRESTRICTED, RequestContext
from gateway.cost import DEFAULT_PER_KEY, estimate
from gateway.limits import Limits, LimitSettings
from gateway.pipeline import Gateway
from gateway.rate_limit import MemoryRateLimiter, RedisRateLimiter
from policies.decide import Subject
from tests.conftest import served, service_unavailable

POLICY = Path(__file__).parent / "policy-tester.csv"
PURPOSE = "subsistence-allowance-review"
TESTER = Subject("tester", "civil", frozenset({"tester"}))
REDIS = "redis://127.0.0.1:6379/15"


def settings_with(make_settings: Any, tmp_path: Path, limits: str, sources: dict[str, str] | None = None,
                  **gateway: Any) -> Settings:
    """A configuration over the test city with the tester's policy, its own stores, and ``limits``
    (TOML text) appended."""
    return make_settings(sources, stores=tmp_path / "stores", policy=POLICY, extra=limits, **gateway)


def code(r: httpx.Response) -> str:
    return str(r.json()["errors"][0]["extensions"]["code"])


@contextlib.asynccontextmanager
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.close()


# --- configuration ------------------------------------------------------------------------------


def test_limits_parse_with_per_client_overrides(make_settings: Any, tmp_path: Path) -> None:
    s = settings_with(make_settings, tmp_path, '[limits]\nrate = 5\nburst = 7\nmax_cost = 900\n'
                      '[limits.clients."street-office-app"]\nrate = 100\nintrospection = false\nmax_depth = 3\n',
                      max_depth=9)
    ls = LimitSettings.from_settings(s)
    assert ls.defaults == Limits(max_depth=9, max_cost=900, rate=5.0, burst=7)
    street = ls.of("street-office-app")
    assert (street.rate, street.burst, street.max_cost, street.introspection, street.max_depth) == \
        (100.0, 7, 900, False, 3)
    assert ls.of("someone-else") is ls.defaults and ls.rate_store == "memory"


@pytest.mark.parametrize(("text", "words"), [
    ("[limits]\nrates = 5\n", "unknown key(s) rates"),
    ("[limits]\ncost_mode = \"warn\"\n", "cost_mode must be one of enforce, measure"),
    ("[limits]\nmax_cost = -1\n", "max_cost must be positive"),
    ("[limits]\nrequest_timeout = \"soon\"\n", "request_timeout must be a finite number"),
    ("[limits]\nintrospection = 1\n", "introspection must be true or false"),
    ("[limits]\nrequest_timeout = nan\n", "request_timeout must be a finite number"),
    ("[limits]\nmax_cost = inf\n", "max_cost must be a finite number"),
    ("[limits]\nfailed_auth_burst = -3\n", "failed_auth_burst must be positive"),
    ("[limits]\nrate_store = \"memcached://x\"\n", "rate_store must be"),
    ("[limits.clients.a]\nrate_store = \"memory\"\n", "[limits.clients.'a'] has unknown key(s) rate_store"),
])
def test_bad_limits_are_refused_naming_the_key(make_settings: Any, tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=None) as err:
        LimitSettings.from_settings(settings_with(make_settings, tmp_path, "\n" + text))
    assert words in str(err.value)


# --- cost -------------------------------------------------------------------------------------------


async def test_cost_is_estimated_from_limits_keys_and_hints(make_settings: Any, tmp_path: Path, city: Any) -> None:
    async with gateway(settings_with(make_settings, tmp_path, "")) as gw:
        assert estimate(gw.plan("{ residents(limit: 300) { nodes { idNumber } } }"), gw.catalog) == 300
        # A nested list without a limit: DEFAULT_PER_KEY per parent; with one: its limit.
        nested = "{ residents(limit: 40) { nodes { person { employments%s { id } } } } }"
        assert estimate(gw.plan(nested % ""), gw.catalog) == 40 + 40 * DEFAULT_PER_KEY
        assert estimate(gw.plan(nested % "(limit: 2)"), gw.catalog) == 40 + 40 * 2
        # Keyed by the dataset's primary key: one record per key.
        ids = [r["id_number"] for r in city.tables["psb"]["resident"][:2]]
        q = "query($ids: [String!]!) { persons(idNumbers: $ids) { resident { name } } }"
        assert estimate(gw.plan(q, None, {"ids": ids}), gw.catalog) == 2


async def test_a_costly_query_is_refused_before_it_runs_unless_measured(make_settings: Any, tmp_path: Path) -> None:
    query = "{ residents(limit: 500) { nodes { idNumber person { employments { id } } } } }"
    enforce = settings_with(make_settings, tmp_path, "\n[limits]\nmax_cost = 1000\n")
    async with gateway(enforce) as gw:
        before = sum(gw.sources.statements().values())
        out = await gw.run(query, context=UNRESTRICTED)
        assert out.status == 400
        err = out.body["errors"][0]
        # 500 residents, and their jobs: 10 each, at most the catalogue's rows_hint for employments.
        cost = 500 + min(500 * DEFAULT_PER_KEY, gw.catalog.datasets["hrss.employment"].rows_hint or 10**9)
        assert err["extensions"]["code"] == "QUERY_TOO_COSTLY" and f"about {cost} records" in err["message"] \
            and "max_cost (1000)" in err["message"]
        assert sum(gw.sources.statements().values()) == before  # nothing ran
        assert out.audit["cost"] == cost
    measure = settings_with(make_settings, tmp_path, '\n[limits]\nmax_cost = 1000\ncost_mode = "measure"\n')
    async with gateway(measure) as gw:
        out = await gw.run(query, context=UNRESTRICTED)
        assert out.status == 200 and "errors" not in out.body and out.audit["cost"] == cost


async def test_depth_and_introspection_follow_the_clients_own_limits(make_settings: Any, tmp_path: Path) -> None:
    s = settings_with(make_settings, tmp_path, '\n[limits.clients.tester]\nintrospection = false\nmax_depth = 2\n')
    async with gateway(s) as gw:
        ctx = RequestContext(TESTER, PURPOSE, "official-1", "CASE-1")
        mine = gw.limits.of("tester")
        out = await gw.run("{ __schema { queryType { name } } }", context=ctx, limits=mine)
        assert out.status == 403 and out.body["errors"][0]["extensions"]["code"] == "INTROSPECTION_DISABLED"
        assert (await gw.run("{ __schema { queryType { name } } }", context=ctx)).status == 200  # others may
        deep = "{ residents(limit: 1) { nodes { person { resident { name } } } } }"
        out = await gw.run(deep, context=ctx, limits=mine)
        assert out.body["errors"][0]["extensions"]["code"] == "QUERY_TOO_DEEP" and "at most 2" in \
            out.body["errors"][0]["message"]
        assert (await gw.run(deep, context=ctx)).status == 200


# --- over HTTP: rate, body, deadline -------------------------------------------------------------


async def test_a_client_over_its_rate_gets_429_with_retry_after_and_is_recorded(make_settings: Any,
                                                                                tmp_path: Path) -> None:
    s = settings_with(make_settings, tmp_path, "\n[limits]\nrate = 1\nburst = 3\n")
    async with served(s, PURPOSE) as (client, gw):
        codes = []
        for _ in range(5):
            r = await client.post("/graphql", json={"query": "{ __typename }"})
            codes.append(r.status_code)
        assert codes == [200, 200, 200, 429, 429]
        assert r.headers["retry-after"] == "1" and code(r) == "RATE_LIMITED"
        assert "1 requests per second (burst 3)" in r.json()["errors"][0]["message"]
        await asyncio.sleep(1.1)  # a token is back
        assert (await client.post("/graphql", json={"query": "{ __typename }"})).status_code == 200
        assert gw.audit_store is not None
        _, refused = await gw.audit_store.search({"kind": "request", "client_id": "tester", "outcome": "rejected"})
        assert refused >= 2


async def test_body_size_and_deadline_are_the_clients_own(make_settings: Any, tmp_path: Path) -> None:
    async def slow(_: Request) -> Response:  # a Housing service that takes its time
        await asyncio.sleep(3)
        return JSONResponse({"items": []})

    app = Starlette(routes=[Route("/properties", slow), Route("/properties/_query", slow, methods=["POST"])])
    with ServerThread(app) as housing:
        s = settings_with(make_settings, tmp_path, "[limits.clients.tester]\nmax_body = 200\nrequest_timeout = 0.5\n",
                          {"housing_api": housing.url})
        async with served(s, PURPOSE) as (client, gw):
            r = await client.post("/graphql", json={"query": "{ __typename }", "pad": "x" * 300})
            assert r.status_code == 413 and code(r) == "REQUEST_TOO_LARGE" and "200 bytes (max_body)" in r.text
            r = await client.post("/graphql", json={"query": "{ properties(limit: 5) { nodes { propertyId } } }"})
            assert r.status_code == 504 and code(r) == "REQUEST_TIMEOUT" and "0.5 s (request_timeout)" in r.text
            assert gw.audit_store is not None
            records, _ = await gw.audit_store.search({"kind": "request", "client_id": "tester"}, 1)
            assert records[0]["body"]["status"] == 504 and records[0]["body"]["codes"] == ["REQUEST_TIMEOUT"]
            # What was asked is recorded even though the deadline stopped the request.
            assert records[0]["body"]["query"] and records[0]["body"]["datasets"] == ["housing.property"]


async def test_a_batch_is_answered_operation_by_operation_each_recorded(make_settings: Any, tmp_path: Path) -> None:
    s = settings_with(make_settings, tmp_path, "[limits.clients.tester]\nmax_operations = 3\n")
    async with served(s, PURPOSE) as (client, gw):
        batch = [{"query": "{ residents(limit: 2) { nodes { idNumber } } }"},
                 {"query": "query Q($n: Int) { residents(limit: $n) { nodes { name } } }", "variables": {"n": 1}},
                 {"query": "{ nope }"}]
        r = await client.post("/graphql", json=batch, headers={"x-request-id": "batch-1"})
        assert r.status_code == 200
        answers = r.json()
        assert len(answers[0]["data"]["residents"]["nodes"]) == 2 and len(answers[1]["data"]["residents"]["nodes"]) == 1
        assert answers[2]["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert gw.audit_store is not None
        records, _ = await gw.audit_store.search({"kind": "request", "client_id": "tester"}, 10)
        assert sorted(r["body"]["request_id"] for r in records[:3]) == ["batch-1-1", "batch-1-2", "batch-1-3"]
        r = await client.post("/graphql", json=batch + batch[:1])
        assert r.status_code == 400 and code(r) == "TOO_MANY_OPERATIONS" and "1 to 3 operations" in r.text


async def test_a_batch_withheld_for_a_later_record_says_so_for_the_earlier_ones(make_settings: Any,
                                                                                  tmp_path: Path) -> None:
    from gateway.audit.errors import AuditUnavailable

    s = settings_with(make_settings, tmp_path, "[limits.clients.tester]\nmax_operations = 3\n")
    async with served(s, PURPOSE) as (client, gw):
        trail = client._transport.app.state.audit  # type: ignore[attr-defined]
        append, calls = trail.append, []

        async def second_fails(kind: str, body: dict[str, Any]) -> Any:
            calls.append(kind)
            if kind == "request" and calls.count("request") == 2:
                raise AuditUnavailable("the store is gone for a moment")
            return await append(kind, body)
        trail.append = second_fails
        batch = [{"query": "{ residents(limit: 1) { nodes { idNumber } } }"}] * 2
        r = await client.post("/graphql", json=batch, headers={"x-request-id": "batch-7"})
        assert r.status_code == 503 and r.json()["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
        assert "data" not in r.text
        assert gw.audit_store is not None
        admin, _ = await gw.audit_store.search({"kind": "admin"}, 5)
    withheld = [a["body"] for a in admin if a["body"].get("event") == "audit.answer_withheld"]
    assert [w["target"] for w in withheld] == ["batch-7-1"] and withheld[0]["status"] == 503


async def test_a_flood_of_bad_tokens_is_refused_before_it_is_checked_and_recorded_as_a_count(
        make_settings: Any, tmp_path: Path) -> None:
    s = settings_with(make_settings, tmp_path, "[limits]\nfailed_auth_rate = 0.5\nfailed_auth_burst = 4\n")
    async with served(s, PURPOSE) as (client, gw):
        assert gw.audit_store is not None
        _, before = await gw.audit_store.search({"kind": "request"}, 1)
        statuses = [(await client.post("/graphql", json={"query": "{ __typename }"},
                                       headers={"authorization": "Bearer junk"})).status_code for _ in range(3)]
        # Junk of other kinds spends the same bucket: a method no endpoint answers, an impossible Accept.
        statuses.append((await client.put("/graphql")).status_code)
        statuses += [(await client.post("/graphql", json={"query": "{ __typename }"},
                                        headers={"authorization": "Bearer junk"})).status_code for _ in range(5)]
        # A valid token from a cut-off address is refused too, before it is checked: counted with the rest.
        statuses.append((await client.post("/graphql", json={"query": "{ __typename }"})).status_code)
        assert statuses == [401, 401, 401, 405, *[429] * 6], statuses
        records, after = await gw.audit_store.search({"kind": "request"}, 50)
        # 4 requests recorded one by one, then the first refusal's record; the other 5 wait for the next.
        assert after - before == 5
        assert [r["body"]["status"] for r in records[:5]][::-1] == [401, 401, 401, 405, 429]
        assert records[0]["body"]["refused"] == 1 and records[0]["body"]["outcome"] == "rejected"
        # Once the bucket has a token again the address is served, and what was pending is recorded first.
        await asyncio.sleep(2.1)
        r = await client.post("/graphql", json={"query": "{ __typename }"})
        assert r.status_code == 200
        records, total = await gw.audit_store.search({"kind": "request"}, 50)
        assert total - before == 7 and records[1]["body"]["refused"] == 5 and records[1]["body"]["status"] == 429
        assert sum(r["body"].get("refused", 1) for r in records[:7]) == 11  # every request of the flood, and this


# --- the limiters on their own ---------------------------------------------------------------------


async def test_memory_buckets_refill_at_the_rate() -> None:
    now = [0.0]
    limiter = MemoryRateLimiter(clock=lambda: now[0])
    assert [await limiter.take("a", 2.0, 2) for _ in range(3)] == [0.0, 0.0, 0.5]
    assert await limiter.take("b", 2.0, 2) == 0.0  # buckets are per client
    now[0] = 0.5
    assert await limiter.take("a", 2.0, 2) == 0.0 and await limiter.take("a", 2.0, 2) == pytest.approx(0.5)


async def test_redis_shares_one_bucket_between_workers_and_fails_open() -> None:
    client_id = f"c-{uuid.uuid4().hex[:8]}"
    a, b = RedisRateLimiter(REDIS), RedisRateLimiter(REDIS)
    try:
        try:
            await a.client.ping()
        except Exception as exc:
            service_unavailable("Redis at 127.0.0.1:6379", exc)
        waits = [await (a if i % 2 else b).take(client_id, 1.0, 4) for i in range(6)]
        assert waits[:4] == [0.0] * 4 and all(w > 0 for w in waits[4:])  # one bucket for both "workers"
        assert a.status() == {"store": "redis", "status": "ok"}
    finally:
        await a.close()
        await b.close()
    down = RedisRateLimiter("redis://127.0.0.1:9/0", timeout=0.2)  # nothing listens there
    try:
        waits = [await down.take("x", 1.0, 2) for _ in range(3)]
        assert waits[:2] == [0.0, 0.0] and waits[2] > 0  # limited per worker instead
        assert down.status() == {"store": "redis", "status": "degraded"}
        assert down.attempts == 1  # and Redis is left alone for a while, not asked (and waited for) every time
    finally:
        await down.close()


async def test_a_redis_clock_stepping_back_does_not_lock_a_client_out() -> None:
    limiter = RedisRateLimiter(REDIS)
    key = f"c-{uuid.uuid4().hex[:8]}"
    try:
        try:
            await limiter.client.ping()
        except Exception as exc:
            service_unavailable("Redis at 127.0.0.1:6379", exc)
        assert await limiter.take(key, 1.0, 3) == 0.0
        seconds, micros = await limiter.client.time()
        await limiter.client.hset(limiter.prefix + key, mapping={"at": str(seconds + micros / 1e6 + 60)})
        assert await limiter.take(key, 1.0, 3) == 0.0  # two tokens were left; none were taken away
    finally:
        await limiter.client.delete(limiter.prefix + key)
        await limiter.close()


async def test_buckets_of_different_rates_share_a_store_and_a_spent_verify_budget_is_never_dropped() -> None:
    now = [0.0]
    budgets = MemoryRateLimiter(clock=lambda: now[0], max_clients=3, fail_closed=True)
    slow = (10 / 86400, 10)  # a verify budget: 10 a day
    for _ in range(10):
        assert budgets.take_now("spent", *slow) == 0.0
    assert budgets.take_now("spent", *slow) > 3600
    # New keys at another rate fill the store; judged by its own rate, the spent budget is not "full".
    assert budgets.take_now("a", 50.0, 100) == 0.0 and budgets.take_now("b", 50.0, 100) == 0.0
    now[0] = 2.0  # a and b have refilled; "spent" has not
    assert budgets.take_now("c", 50.0, 100) == 0.0  # room made by dropping the refilled ones
    assert budgets.take_now("spent", *slow) > 3600  # still spent
    assert budgets.take_now("d", *slow) == 0.0 and budgets.take_now("e", *slow) > 0  # full of spent budgets
    # A request-rate store fails open instead: the longest unused bucket makes room.
    rates = MemoryRateLimiter(clock=lambda: now[0], max_clients=2)
    assert [rates.take_now(k, *slow) for k in ("x", "y", "z")] == [0.0, 0.0, 0.0]


async def test_a_slow_audit_neither_doubles_nor_relabels_a_count_of_refusals(tmp_path: Path) -> None:
    from gateway.audit.errors import AuditTimeout, AuditUnavailable
    from gateway.cutoffs import Cutoffs

    written: list[dict[str, Any]] = []
    outcomes = iter([AuditTimeout(), None, AuditUnavailable(), None])

    async def append(kind: str, body: dict[str, Any]) -> None:
        outcome = next(outcomes)
        if isinstance(outcome, AuditTimeout):
            written.append(body)  # slow: written after all, once the caller gave up
            raise outcome
        if outcome is not None:
            raise outcome  # refused: not written
        written.append(body)

    now = [0.0]
    cut = Cutoffs(append, clock=lambda: now[0])
    await cut.refused("address:10.0.0.9")  # recorded slowly: 1
    await cut.refused("address:10.0.0.9")  # pending
    now[0] = 11.0
    await cut.refused("address:10.0.0.9")  # recorded: 2
    await cut.refused("address:10.0.0.9")  # pending
    now[0] = 22.0
    await cut.refused("address:10.0.0.9")  # refused by the store: 2 kept for the next record
    await cut.let_through("address:10.0.0.9")  # recorded: 2
    assert [b["refused"] for b in written] == [1, 2, 2]  # 5 requests, each counted once
    assert all(b["status"] == 429 and b["codes"] == ["RATE_LIMITED"] for b in written)
