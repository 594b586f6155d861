"""Every request over HTTP leaves an audit record before its answer; no record, no answer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from demo.build import City
from gateway.audit.verify import verify_store
from tests.conftest import TEST_POLICY, served

ID = re.compile(r"\b99\d{15}[\dX]\b")
GQL = "application/graphql-response+json"


def trail(client: httpx.AsyncClient) -> Any:
    return client._transport.app.state.audit  # type: ignore[attr-defined]


async def test_requests_are_recorded_and_the_chain_verifies(make_settings: Any, city: City, tmp_path: Path) -> None:
    settings = make_settings(policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    async with served(settings) as (c, gw):
        writer = trail(c)
        before = await writer.store.count()
        ok = await c.post("/graphql", json={"query": "query($id: String!) { person(idNumber: $id) { resident { name "
                                                     "address } } }", "variables": {"id": applicant}})
        bad = await c.post("/graphql", json={"query": "{ nope }"})
        anon = await httpx.AsyncClient(transport=c._transport, base_url="http://gw").post(
            "/graphql", json={"query": "{ __typename }"})
        records, total = await writer.store.search({"client_id": "tester"}, limit=10)
        anonymous, _ = await writer.store.search({"outcome": "unauthenticated"}, limit=1)
        assert total >= 2
        report = await verify_store(writer.store, writer.keys)
        assert await writer.store.count() == before + 3
    assert (ok.status_code, bad.status_code, anon.status_code) == (200, 400, 401)
    assert report.ok, report.detail
    newest = {r["body"]["request_id"]: r["body"] for r in records}
    rec = newest[ok.headers["x-request-id"]]
    assert rec["outcome"] == "partial" and rec["purpose"] == "citizen-self-service"  # address withheld
    assert rec["acting_user"] == "official-007" and rec["case_id"] == "CASE-TEST-1"
    assert {(f["field"], f["disposition"]) for f in rec["fields"]} == {("name", "clear"),
                                                                        ("address", "consent_required")}
    assert rec["subjects"] == [gw.subjects(applicant)] and rec["rows"] == {"psb_registry": 1}
    assert newest[bad.headers["x-request-id"]]["outcome"] == "rejected"
    # A query refused before it is normalised still has a hash: of its text as sent.
    assert newest[bad.headers["x-request-id"]]["query_hash"] == hashlib.sha256(b"{ nope }").hexdigest()
    assert anonymous[0]["body"]["client_id"] is None
    text = json.dumps([r["body"] for r in records], ensure_ascii=False)
    assert not ID.search(text) and "Bearer" not in text and "secret" not in text


async def test_keys_hidden_in_free_text_are_kept_only_as_pseudonyms(make_settings: Any, city: City) -> None:
    """Aliases, operation and variable names and the context headers are the caller's text: an ID
    number put there is recorded as its pseudonym, never raw nor masked (10 of its 18 digits)."""
    settings = make_settings(policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    query = (f"query P{applicant}($v{applicant}: String!) {{ _{applicant}: person(idNumber: $v{applicant}) "
             "{ resident { name } } }")
    async with served(settings) as (c, gw):
        spaced = " ".join(applicant[i:i + 4] for i in range(0, 18, 4))  # 9901 1119 8009 3034 39
        r = await c.post("/graphql", json={"query": query, "variables": {f"v{applicant}": applicant}},
                         headers={"x-case-id": applicant, "x-acting-user": f"clerk {spaced.lower()}",
                                  "x-request-id": applicant})
        assert r.headers["x-request-id"] != applicant  # a key is neither echoed nor kept as the request id
        assert r.status_code == 200 and r.json()["data"][f"_{applicant}"]["person" if False else "resident"]
        records, _ = await trail(c).store.search({"client_id": "tester"}, limit=1)
    rec = records[0]["body"]
    text = json.dumps(rec, ensure_ascii=False)
    assert applicant not in text and applicant[-4:] + '"' not in text and applicant[:10] not in text
    assert applicant[:4] + " " + applicant[4:8] not in text
    tag = f"[id_number:{gw.subjects(applicant)[:16]}]"
    assert rec["case_id"] == tag and rec["acting_user"] == f"clerk {tag}"
    assert rec["operation"] == f"P{tag}" and text.count(tag) >= 5  # case, official, operation, alias, variable
    assert rec["subjects"] == [gw.subjects(applicant)]
    assert rec["token_id"]  # which access token asked (its jti)


async def test_reject_unauthorized_is_true_or_false_or_refused(make_settings: Any) -> None:
    async with served(make_settings(policy=TEST_POLICY)) as (c, _):
        r = await c.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"},
                         headers={"x-reject-unauthorized": "yes"})
    assert r.status_code == 400 and r.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"
    assert "must be true or false" in r.json()["errors"][0]["message"]


async def test_no_record_no_answer(make_settings: Any, city_dir: Path) -> None:
    settings = make_settings(policy=TEST_POLICY)
    async with served(settings) as (c, _):
        writer = trail(c)
        db = Path(str(writer.store.engine.url.database))
        con = sqlite3.connect(db)
        con.execute("CREATE TRIGGER refuse BEFORE INSERT ON audit_record BEGIN SELECT RAISE(ABORT, 'no'); END")
        con.commit()
        try:
            r = await c.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"},
                             headers={"accept": GQL})
        finally:
            con.execute("DROP TRIGGER refuse")
            con.commit()
            con.close()
        assert r.status_code == 503
        body = r.json()
        assert "data" not in body and body["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
        r = await c.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"})
        assert r.status_code == 200 and r.json()["data"]["residents"]["nodes"]  # recovered by itself


async def test_a_store_that_becomes_unwritable_under_load_lets_no_data_out_unrecorded(make_settings: Any) -> None:
    """Eight clients keep asking while the audit store refuses writes for a while: every answer with
    data has its record, every other answer is 503 AUDIT_UNAVAILABLE without data, and the chain verifies."""
    import uuid

    settings = make_settings(policy=TEST_POLICY, extra="[limits]\nrate = 0\n")  # flooding on purpose
    answered: set[str] = set()
    refused: list[dict[str, Any]] = []
    async with served(settings) as (c, _):
        writer = trail(c)
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                rid = uuid.uuid4().hex
                r = await c.post("/graphql", json={"query": "{ residents(limit: 2) { nodes { name } } }"},
                                 headers={"x-request-id": rid})
                if r.status_code == 200:
                    assert r.json()["data"]["residents"]["nodes"]
                    answered.add(rid)
                else:
                    refused.append({"status": r.status_code, **r.json()})

        load = [asyncio.create_task(client()) for _ in range(8)]
        await asyncio.sleep(0.5)
        # Through the store's own write lock: between two of the writer's batches, as an operator's change would.
        async with writer.store.write_transaction() as conn:
            await conn.execute(sa.text("CREATE TRIGGER refuse BEFORE INSERT ON audit_record "
                                       "BEGIN SELECT RAISE(ABORT, 'no'); END"))
        await asyncio.sleep(0.5)
        async with writer.store.write_transaction() as conn:
            await conn.execute(sa.text("DROP TRIGGER refuse"))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*load)
        recorded = {r["body"].get("request_id") async for r in writer.store.bodies({"kind": "request"})}
        report = await verify_store(writer.store, writer.keys)
    assert refused and answered, (len(refused), len(answered))
    assert all(r["status"] == 503 and "data" not in r and r["errors"][0]["extensions"]["code"] == "AUDIT_UNAVAILABLE"
               for r in refused)
    assert answered <= recorded, f"{len(answered - recorded)} answers with data have no record"
    assert report.ok, report.detail


async def token_for(c: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
    async with httpx.AsyncClient(transport=c._transport, base_url="http://gw") as bare:  # no Bearer header
        r = await bare.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                  "client_secret": secret})
    assert r.status_code == 200, r.text
    return {"authorization": f"Bearer {r.json()['access_token']}"}


async def test_auditors_search_and_citizens_see_who_looked(make_settings: Any, city: City) -> None:
    settings = make_settings(policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    async with served(settings) as (c, gw):
        r = await c.post("/graphql", json={"query": "query($id: String!) { person(idNumber: $id) { resident { name } "
                                                    "} }", "variables": {"id": applicant}})
        assert r.status_code == 200
        looked = r.headers["x-request-id"]
        auditor = await token_for(c, "auditor", "auditor-demo-secret")
        portal = await token_for(c, "citizen-portal", "citizen-portal-demo-secret")
        bare = httpx.AsyncClient(transport=c._transport, base_url="http://gw")
        async with bare:
            q = ('query($id: String!) { auditLog(filter: {idNumber: $id, clientId: "tester"}, limit: 5) '
                 "{ total records { requestId actingUser purpose outcome fields { dataset field disposition } } } }")
            found = (await bare.post("/graphql", json={"query": q, "variables": {"id": applicant}},
                                     headers=auditor)).json()
            tracked = (await bare.post("/graphql", json={"query": 'query($id: String!) { dataTracker(idNumber: $id) '
                                                         "{ total accesses { department actingUser purpose "
                                                         "legalBasis datasets } } }", "variables": {"id": applicant}},
                                       headers=portal)).json()
            refused = (await bare.post("/graphql", json={"query": '{ auditLog { total } }'},
                                       headers=portal)).json()
            data = (await bare.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"},
                                    headers={**auditor, "x-purpose": "citizen-self-service",
                                             "x-acting-user": "auditor-1", "x-case-id": "AUDIT-1"})).json()
            # Reading the log about someone leaves a trace of whom: the auditor's search, the portal's tracker.
            lookups, _ = await trail(c).store.search({"client_id": "auditor"}, limit=5)
            tracker, _ = await trail(c).store.search({"client_id": "citizen-portal"}, limit=5)
    pseudonym = gw.subjects(applicant)
    assert any(rec["body"].get("looked_up") == [pseudonym] for rec in lookups)
    assert any(rec["body"].get("looked_up") == [pseudonym] for rec in tracker)
    assert applicant not in json.dumps([rec["body"] for rec in lookups + tracker])
    records = found["data"]["auditLog"]["records"]
    assert found["data"]["auditLog"]["total"] >= 1
    assert any(rec["requestId"] == looked and rec["actingUser"] == "official-007" for rec in records)
    accesses = tracked["data"]["dataTracker"]["accesses"]
    assert any(a["department"] == "civil" and a["purpose"] == "citizen-self-service" and "psb.resident" in a["datasets"]
               for a in accesses)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"  # only auditors search the log
    assert data["data"]["residents"] is None  # auditors read the log, never department data


async def test_startup_and_policy_changes_are_admin_events(make_settings: Any, tmp_path: Path) -> None:
    import os
    import shutil

    from demo.server_thread import ServerThread
    from gateway.app import create_app
    from gateway.audit.keys import AuditKeys
    from gateway.audit.settings import AuditSettings
    from gateway.audit.store import AuditStore

    policy = tmp_path / "policy.csv"
    shutil.copy(TEST_POLICY, policy)
    settings = make_settings(policy=policy)
    with ServerThread(create_app(settings)) as server:  # the real lifespan: audit, policy, identity
        base = f"http://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/healthz")).status_code == 200
            policy.write_text(TEST_POLICY.read_text(encoding="utf-8") + "p, role:tester, psb.resident.name, read, *, "
                              "deny, default\n", encoding="utf-8")
            os.utime(policy, ns=(1, 2 * 10**18))
            await asyncio.sleep(1.1)  # the store looks for a change at most once per reload_interval (1 s)
            token = (await c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "auditor",
                                                        "client_secret": "auditor-demo-secret"})).json()
            r = await c.post("/graphql", json={"query": "{ auditLog(limit: 50) { records { kind event } } }"},
                             headers={"authorization": f"Bearer {token['access_token']}"})
    events = [json.loads(rec["event"]) for rec in r.json()["data"]["auditLog"]["records"] if rec["kind"] == "admin"]
    started = next(e for e in events if e["event"] == "gateway.start")
    assert len(started["after"]["catalogue_digest"]) == 64 and started["after"]["policy"]["version"] == 1
    loaded = [e for e in events if e["event"] == "policy.loaded"]
    assert any(e["before"] and e["before"]["version"] == 1 and e["after"]["version"] == 2 for e in loaded)
    audit = AuditSettings.from_settings(settings)
    store = AuditStore(audit.url)
    try:
        from gateway.audit.verify import verify_store

        assert (await verify_store(store, AuditKeys.load(audit.signing_key, audit.previous_keys))).ok
    finally:
        await store.close()


async def test_cli_search_by_id_number(make_settings: Any, city: City) -> None:
    from typer.testing import CliRunner

    from gateway.audit.cli import audit_app

    settings = make_settings(policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    async with served(settings) as (c, _):
        r = await c.post("/graphql", json={"query": "query($id: String!) { person(idNumber: $id) { resident { name } "
                                                    "} }", "variables": {"id": applicant}})
    result = await asyncio.to_thread(CliRunner().invoke, audit_app, [
        "search", "--id-number", applicant, "--limit", "50", "--json", "--config", str(settings.path)])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)
    assert r.headers["x-request-id"] in {rec["body"]["request_id"] for rec in found["records"]}
    assert applicant not in result.output  # the records hold only its HMAC
    bad = await asyncio.to_thread(CliRunner().invoke, audit_app, [
        "search", "--id-number", "123", "--config", str(settings.path)])
    assert bad.exit_code == 2 and "invalid ID number" in bad.output


async def test_covert_accesses_stay_hidden_from_the_tracker_until_disclosure(make_settings: Any, city: City) -> None:
    settings = make_settings(policy=TEST_POLICY)
    applicant = city.showcase["applicant_id_number"]
    async with served(settings) as (c, _):
        for purpose in ("benefit-fraud-investigation", "subsistence-allowance-review"):
            r = await c.post("/graphql", json={"query": "query($id: String!) { person(idNumber: $id) { resident { "
                                                        "name } } }", "variables": {"id": applicant}},
                             headers={"x-purpose": purpose, "x-case-id": f"CASE-{purpose}"})
            assert r.status_code == 200
        portal = await token_for(c, "citizen-portal", "citizen-portal-demo-secret")
        async with httpx.AsyncClient(transport=c._transport, base_url="http://gw", headers=portal) as bare:
            tracked = (await bare.post("/graphql", json={"query": 'query($id: String!) { dataTracker(idNumber: $id, '
                                                         "limit: 500) { accesses { purpose caseId } } }",
                                                         "variables": {"id": applicant}})).json()
    cases = {a["caseId"] for a in tracked["data"]["dataTracker"]["accesses"]}
    assert "CASE-subsistence-allowance-review" in cases
    assert "CASE-benefit-fraud-investigation" not in cases  # covert for 180 days
