"""Consent over HTTP: the mutations, who may call them, their audit events, the data tracker,
revocation reaching another gateway process, and the command line."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from demo.build import City
from demo.server_thread import free_port
from gateway.cli import app as cli
from tests.conftest import served
from tests.oracle import rows
from tests.test_recorded_http import token_for, trail
from tests.test_recorded_processes import start, wait_ready

ID = re.compile(r"\b99\d{15}[\dX]\b")
GQL = "application/graphql-response+json"
REVIEW = "subsistence-allowance-review"
GRANT = """mutation($input: ConsentInput!) { grantConsent(input: $input) {
    id status subjectHint requester purpose fields validUntil maxUses perDays method recordedBy recordedVia
    keyId history { seq status by reason } } }"""
REVOKE = ("mutation($id: ID!, $who: String) { revokeConsent(id: $id, reason: \"changed my mind\", idNumber: $who) "
          "{ id status history { status } } }")
PENSIONS = "query($ids: [String!]!) { persons(idNumbers: $ids) { pensions { monthlyAmount } } }"


def consent_input(subject: str, **kw: Any) -> dict[str, Any]:
    return {"idNumber": subject, "requester": "civil", "purpose": REVIEW, "fields": ["hrss.pension.monthly_amount"],
            "validUntil": (datetime.now(UTC) + timedelta(days=90)).isoformat(), "maxUses": 10, "perDays": 30,
            "explicitRequest": True, "method": "app", **kw}


class Gw:
    """The served app with demo clients' headers at hand."""

    def __init__(self, client: httpx.AsyncClient, gw: Any) -> None:
        self.client = client
        self.gw = gw
        self.headers: dict[str, dict[str, str]] = {}

    async def login(self, client_id: str, secret: str, purpose: str = REVIEW, acting: str | None = "clerk-7"
                    ) -> dict[str, str]:
        h = await token_for(self.client, client_id, secret)
        h.update({"x-purpose": purpose, "x-case-id": "CASE-C-1", "accept": GQL})
        if acting:
            h["x-acting-user"] = acting
        return h

    async def register(self, client_id: str, department: str, roles: list[str]) -> dict[str, str]:
        secret = f"{client_id}-secret-for-tests-0001"
        await self.client._transport.app.state.auth.store.add(client_id, department, roles,  # type: ignore[attr-defined]
                                                              secret=secret)
        return await self.login(client_id, secret)

    async def post(self, query: str, variables: dict[str, Any] | None, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(transport=self.client._transport, base_url="http://gw") as bare:
            return await bare.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)


@pytest.fixture
async def http(make_settings: Any, tmp_path: Path) -> AsyncIterator[Gw]:
    async with served(make_settings(stores=tmp_path / "stores")) as (client, gw):
        yield Gw(client, gw)


async def test_a_counter_records_consent_and_the_household_check_uses_it(http: Gw, city: City) -> None:
    pensions = rows(city, "hrss", "pension")
    mine, other = pensions[0]["id_number"], pensions[1]["id_number"]
    desk = await http.login("service-counter", "service-counter-demo-secret")
    counter = await http.login("street-office-app", "street-office-demo-secret")
    r = await http.post(GRANT, {"input": consent_input(mine, method="counter")}, desk)
    assert r.status_code == 200, r.text
    grant = r.json()["data"]["grantConsent"]
    assert grant is not None, r.text
    assert grant["status"] == "ACTIVE" and grant["recordedBy"] == "clerk-7" and grant["recordedVia"] == \
        "service-counter"
    assert grant["subjectHint"] == mine[:6] + "*" * 8 + mine[-4:] and grant["keyId"]
    assert grant["history"] == [{"seq": 1, "status": "ACTIVE", "by": "clerk-7", "reason": "recorded"}]

    r = await http.post(PENSIONS, {"ids": [mine, other]}, counter)
    people = r.json()["data"]["persons"]
    assert people[0]["pensions"][0]["monthlyAmount"] == (pensions[0]["monthly_amount"] // 1000) * 1000
    assert people[1]["pensions"][0]["monthlyAmount"] is None
    [err] = r.json()["errors"]
    assert err["path"] == ["persons", 1, "pensions", 0, "monthlyAmount"]
    assert err["extensions"]["code"] == "CONSENT_REQUIRED"

    records, _ = await trail(http.client).store.search({"kind": "admin"}, limit=50)
    event = next(rec["body"] for rec in records if rec["body"].get("event") == "consent.grant")
    assert event["target"] == grant["id"] and event["actor"] == "clerk-7" and event["before"] is None
    assert event["after"]["status"] == "ACTIVE" and event["after"]["fields"] == ["hrss.pension.monthly_amount"]
    request = next(rec["body"] for rec in (await trail(http.client).store.search(
        {"client_id": "street-office-app"}, limit=5))[0] if rec["body"].get("consents"))
    assert request["consents"] == [grant["id"]] and request["consent_withheld"] == {"CONSENT_REQUIRED": 1}
    text = json.dumps([rec["body"] for rec in records], ensure_ascii=False)
    assert not ID.search(text), "no raw ID number in the audit log"
    # Nor the masked form people see in consent lists (region and last four: 10 of its 18 digits).
    assert "subject_hint" not in event["after"] and mine[:6] + "********" not in text
    assert event["after"]["subject_hash"]


async def test_the_citizen_revokes_and_the_next_request_is_refused(http: Gw, city: City) -> None:
    mine = rows(city, "hrss", "pension")[2]["id_number"]
    portal = await http.login("citizen-portal", "citizen-portal-demo-secret", acting="citizen:self")
    counter = await http.login("street-office-app", "street-office-demo-secret")
    grant = (await http.post(GRANT, {"input": consent_input(mine)}, portal)).json()["data"]["grantConsent"]
    before = await http.post(PENSIONS, {"ids": [mine]}, counter)
    assert before.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] is not None
    someone_else = rows(city, "hrss", "pension")[3]["id_number"]
    r = await http.post(REVOKE, {"id": grant["id"], "who": someone_else}, portal)
    assert r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "is not a consent of the subject named" in r.json()["errors"][0]["message"]
    r = await http.post(REVOKE, {"id": grant["id"], "who": mine}, portal)
    assert r.json()["data"]["revokeConsent"]["status"] == "REVOKED"
    after = await http.post(PENSIONS, {"ids": [mine]}, counter)
    assert after.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] is None
    assert after.json()["errors"][0]["extensions"]["code"] == "CONSENT_REVOKED"
    assert grant["id"] in after.json()["errors"][0]["message"]
    again = await http.post(REVOKE, {"id": grant["id"], "who": mine}, portal)
    assert again.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    assert "revocation is final" in again.json()["errors"][0]["message"]
    listed = await http.post('query($id: String!) { consents(idNumber: $id) { grants { id status } } }',
                             {"id": mine}, portal)
    assert listed.json()["data"]["consents"]["grants"] == [{"id": grant["id"], "status": "REVOKED"}]


@pytest.mark.parametrize(("who", "acting", "change", "code", "words"), [
    ("market-app", "x", {}, "FORBIDDEN", "needs a client with the role 'consent-recorder'"),
    ("street-office-app", "x", {}, "FORBIDDEN", "needs a client with the role 'consent-recorder'"),
    ("service-counter", None, {}, "BAD_USER_INPUT", "X-Acting-User"),
    ("service-counter", "x", {"fields": ["hrss.pension.status", "hrss.pension.nope"]}, "BAD_USER_INPUT",
     "hrss.pension.status is shared unconditionally: it needs no consent; list only conditional fields; "
     "unknown field 'hrss.pension.nope'"),
    ("service-counter", "x", {"validUntil": "2020-01-01T00:00:00+00:00"}, "BAD_USER_INPUT", "is not after the start"),
    ("service-counter", "x", {"maxUses": 100}, "BAD_USER_INPUT", "over-broad: 100 uses per 30 days"),
    ("service-counter", "x", {"idNumber": "  "}, "BAD_USER_INPUT", "the subject is empty"),
])
async def test_bad_consent_requests_are_refused_with_their_code(http: Gw, city: City, who: str, acting: str | None,
                                                                change: dict[str, Any], code: str, words: str) -> None:
    secret = {"market-app": "market-demo-secret", "street-office-app": "street-office-demo-secret",
              "service-counter": "service-counter-demo-secret"}[who]
    h = await http.login(who, secret, purpose="market-supervision" if who == "market-app" else REVIEW,
                         acting=acting)
    r = await http.post(GRANT, {"input": consent_input(city.showcase["applicant_id_number"], **change)}, h)
    body = r.json()
    assert body["data"] is None or body["data"].get("grantConsent") is None
    assert body["errors"][0]["extensions"]["code"] == code, body
    assert words in body["errors"][0]["message"]
    assert "Traceback" not in r.text


async def test_a_department_does_not_record_consent_to_its_own_use(http: Gw, city: City) -> None:
    own = await http.register("civil-desk", "civil", ["consent-recorder"])
    r = await http.post(GRANT, {"input": consent_input(city.showcase["applicant_id_number"])}, own)
    err = r.json()["errors"][0]
    assert err["extensions"]["code"] == "FORBIDDEN" and "separation of duties" in err["message"]
    # ... while consent to another department's use is theirs to record.
    r = await http.post(GRANT, {"input": consent_input(city.showcase["applicant_id_number"], requester="health",
                                                       purpose="public-health-followup", maxUses=10, perDays=365,
                                                       fields=["health.medical_insurance.status"],
                                                       dataFrom="2020-01-01", dataTo="2026-01-01")}, own)
    assert r.json()["data"]["grantConsent"]["status"] == "ACTIVE", r.text


async def test_legal_bases_are_hidden_from_consent_recorders(http: Gw, city: City) -> None:
    legal = await http.login("legal-office", "legal-office-demo-secret", acting="legal-officer-2")
    portal = await http.login("citizen-portal", "citizen-portal-demo-secret", acting="citizen:self")
    suspect = rows(city, "hrss", "pension")[4]["id_number"]
    r = await http.post("""mutation($input: LegalBasisInput!) { recordLegalBasis(input: $input) { id } }""", {
        "input": {"idNumber": suspect, "requester": "civil", "purpose": "benefit-fraud-investigation",
                  "fields": ["hrss.pension.monthly_amount"], "basisType": "investigation", "reference": "R-1",
                  "validUntil": (datetime.now(UTC) + timedelta(days=30)).isoformat(), "covert": True,
                  "discloseAfter": (datetime.now(UTC) + timedelta(days=90)).date().isoformat()}}, legal)
    lb = r.json()["data"]["recordLegalBasis"]["id"]
    listed = await http.post('query($id: String!) { consents(idNumber: $id) { grants { id kind } } }',
                             {"id": suspect}, portal)
    assert listed.json()["data"]["consents"]["grants"] == []
    asked = await http.post('query($id: String!) { consents(idNumber: $id, kind: "legal_basis") { grants { id } } }',
                            {"id": suspect}, portal)
    assert asked.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    one = await http.post('query($id: ID!) { consent(id: $id) { id covert } }', {"id": lb}, portal)
    assert one.json()["data"]["consent"] is None
    seen = await http.post('query($id: ID!) { consent(id: $id) { id covert signatureValid } }', {"id": lb}, legal)
    assert seen.json()["data"]["consent"] == {"id": lb, "covert": True, "signatureValid": True}
    # A legal basis is not a consent: the consent mutations do not touch it.
    r = await http.post(REVOKE, {"id": lb, "who": suspect}, portal)
    assert r.json()["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
    # Blanket covert bases, and ones disclosed too late, are refused.
    for extra, words in (({"everySubject": True, "idNumber": None}, "must name its subject"),
                         ({"discloseAfter": "2099-01-01"}, "disclose_after may be at most 365 days")):
        r = await http.post("""mutation($input: LegalBasisInput!) { recordLegalBasis(input: $input) { id } }""", {
            "input": {"idNumber": suspect, "requester": "civil", "purpose": "benefit-fraud-investigation",
                      "fields": ["hrss.pension.monthly_amount"], "basisType": "investigation", "reference": "R-2",
                      "validUntil": (datetime.now(UTC) + timedelta(days=30)).isoformat(), "covert": True,
                      "discloseAfter": (datetime.now(UTC) + timedelta(days=90)).date().isoformat(), **extra}}, legal)
        assert words in r.json()["errors"][0]["message"], r.text


async def test_a_mutation_must_be_posted(http: Gw) -> None:
    h = await http.login("citizen-portal", "citizen-portal-demo-secret")
    async with httpx.AsyncClient(transport=http.client._transport, base_url="http://gw") as bare:
        r = await bare.get("/graphql", params={"query": REVOKE, "variables": json.dumps({"id": "cst-x"})}, headers=h)
    assert r.status_code == 405 and r.headers["allow"] == "POST"


async def test_the_data_tracker_shows_consented_accesses_and_hides_covert_ones(http: Gw, city: City) -> None:
    pensions = rows(city, "hrss", "pension")
    citizen, suspect = pensions[3]["id_number"], pensions[4]["id_number"]
    disclose = (datetime.now(UTC) + timedelta(days=200)).date().isoformat()
    portal = await http.login("citizen-portal", "citizen-portal-demo-secret", purpose="citizen-self-service",
                              acting="citizen:self")
    legal = await http.login("legal-office", "legal-office-demo-secret", acting="legal-officer-2")
    counter = await http.login("street-office-app", "street-office-demo-secret")
    investigator = await http.login("investigation-app", "investigation-demo-secret",
                                    purpose="benefit-fraud-investigation")
    grant = (await http.post(GRANT, {"input": consent_input(citizen)}, portal)).json()["data"]["grantConsent"]
    r = await http.post("""mutation($input: LegalBasisInput!) { recordLegalBasis(input: $input) { id covert
        discloseAfter basisType reference } }""", {"input": {
        "idNumber": suspect, "requester": "civil", "purpose": "benefit-fraud-investigation",
        "fields": ["hrss.pension.monthly_amount"], "validUntil": (datetime.now(UTC) + timedelta(days=60)).isoformat(),
        "basisType": "investigation", "reference": "云民调字〔2026〕17号", "covert": True,
        "discloseAfter": disclose}}, legal)
    lb = r.json()["data"]["recordLegalBasis"]
    assert lb is not None, r.text
    assert lb["covert"] is True and lb["discloseAfter"] == disclose
    # The counter may not record legal bases, the legal office may not record consents.
    denied = await http.post('mutation($id: ID!) { withdrawLegalBasis(id: $id, reason: "x") { id } }',
                             {"id": lb["id"]}, counter)
    assert denied.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    seen = await http.post(PENSIONS, {"ids": [citizen]}, counter)
    assert seen.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] is not None
    looked = await http.post(PENSIONS, {"ids": [suspect]}, investigator)
    assert looked.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] == pensions[4]["monthly_amount"]

    tracker = ("query($id: String!) { dataTracker(idNumber: $id) { accesses { department purpose consents "
               "legalBases } } }")
    mine = (await http.post(tracker, {"id": citizen}, portal)).json()["data"]["dataTracker"]["accesses"]
    assert {"department": "civil", "purpose": REVIEW, "consents": [grant["id"]],
            "legalBases": [http.gw.catalog.purposes[REVIEW].legal_basis]} in mine
    theirs = (await http.post(tracker, {"id": suspect}, portal)).json()["data"]["dataTracker"]["accesses"]
    assert all(a["purpose"] != "benefit-fraud-investigation" for a in theirs), "covert for 200 days"
    # An ordinary (not covert) legal basis: the person sees the access, and the basis it rested on.
    ordered = pensions[5]["id_number"]
    r = await http.post("""mutation($input: LegalBasisInput!) { recordLegalBasis(input: $input) { id } }""", {"input": {
        "idNumber": ordered, "requester": "civil", "purpose": REVIEW, "fields": ["hrss.pension"],
        "validUntil": (datetime.now(UTC) + timedelta(days=30)).isoformat(), "basisType": "court_order",
        "reference": "(2026)云0106执123号"}}, legal)
    court = r.json()["data"]["recordLegalBasis"]["id"]
    assert (await http.post(PENSIONS, {"ids": [ordered]}, counter)).json()["data"]["persons"][0]["pensions"][0][
        "monthlyAmount"] is not None
    shown = (await http.post(tracker, {"id": ordered}, portal)).json()["data"]["dataTracker"]["accesses"]
    assert any(f"{court}: (2026)云0106执123号" in (a["legalBases"] or []) and a["consents"] == [] for a in shown)
    # The auditor sees the covert access, with the legal basis it used.
    auditor = await http.login("auditor", "auditor-demo-secret")
    log = await http.post('query($id: String!) { auditLog(filter: {idNumber: $id, purpose: '
                          '"benefit-fraud-investigation"}) { records { legalBases discloseAfter } } }',
                          {"id": suspect}, auditor)
    [record] = log.json()["data"]["auditLog"]["records"]
    assert json.loads(record["discloseAfter"]) == {http.gw.subjects(suspect): disclose}
    assert f"{lb['id']}: 云民调字〔2026〕17号" in record["legalBases"]


async def test_revocation_reaches_another_gateway_process(make_settings: Any, tmp_path: Path, city: City) -> None:
    settings = make_settings(stores=tmp_path / "stores")
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"gw{i}.log" for i in range(2)]
    procs = [start(settings.path, p, log) for p, log in zip(ports, logs, strict=True)]
    subject = rows(city, "hrss", "pension")[0]["id_number"]
    try:
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{p}", proc, log)
                               for p, proc, log in zip(ports, procs, logs, strict=True)))

        async def headers(c: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
            r = await c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                   "client_secret": secret})
            return {"authorization": f"Bearer {r.json()['access_token']}", "x-purpose": REVIEW,
                    "x-acting-user": "someone", "x-case-id": "CASE-P-1"}

        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", timeout=30) as one, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[1]}", timeout=30) as two:
            portal = await headers(one, "citizen-portal", "citizen-portal-demo-secret")
            counter = await headers(two, "street-office-app", "street-office-demo-secret")
            grant = (await one.post("/graphql", json={"query": GRANT, "variables": {"input": consent_input(subject)}},
                                    headers=portal)).json()["data"]["grantConsent"]
            query = {"query": PENSIONS, "variables": {"ids": [subject]}}
            r = await two.post("/graphql", json=query, headers=counter)
            assert r.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] is not None
            r = await one.post("/graphql", json={"query": REVOKE, "variables": {"id": grant["id"], "who": subject}},
                               headers=portal)
            assert r.json()["data"]["revokeConsent"]["status"] == "REVOKED"
            r = await two.post("/graphql", json=query, headers=counter)  # the very next request, the other process
            assert r.json()["data"]["persons"][0]["pensions"][0]["monthlyAmount"] is None
            assert r.json()["errors"][0]["extensions"]["code"] == "CONSENT_REVOKED"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def test_the_command_line_grants_lists_and_revokes(make_settings: Any, tmp_path: Path, city: City) -> None:
    settings = make_settings(stores=tmp_path / "stores")
    subject = city.showcase["applicant_id_number"]
    runner = CliRunner()
    cfg = ["--config", str(settings.path)]
    r = runner.invoke(cli, ["consent", "grant", "--subject", subject, "--requester", "civil", "--purpose", REVIEW,
                            "-f", "hrss.pension.monthly_amount", "--until", "2027-06-30", "--max-uses", "5",
                            "--per-days", "30", "--method", "paper", "--explicit", "--by", "clerk-9", *cfg],
                      env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    grant_id = re.search(r"\bcst-[0-9a-f]{20}\b", r.output).group(0)  # type: ignore[union-attr]
    assert "ACTIVE" in r.output and subject not in r.output  # only the masked hint is shown
    r = runner.invoke(cli, ["consent", "list", "--subject", subject, *cfg], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and grant_id in r.output
    r = runner.invoke(cli, ["consent", "revoke", grant_id, "--reason", "asked at the counter", "--by", "clerk-9",
                            *cfg])
    assert r.exit_code == 0 and "REVOKED" in r.output
    r = runner.invoke(cli, ["consent", "show", grant_id, *cfg], env={"COLUMNS": "200"})
    assert r.exit_code == 0 and "asked at the counter" in r.output
    r = runner.invoke(cli, ["consent", "grant", "--subject", subject, "--requester", "civil", "--purpose", REVIEW,
                            "-f", "hrss.pension.status", "--until", "2027-06-30", *cfg])
    assert r.exit_code == 1 and "shared unconditionally" in r.output
    # Both changes are admin events in the audit log, naming the clerk; the refused grant left none.
    from gateway.audit.settings import AuditSettings
    from gateway.audit.store import AuditStore

    async def events() -> list[tuple[str, str, str]]:
        store = AuditStore(AuditSettings.from_settings(settings).url)
        try:
            records, _ = await store.search({"kind": "admin"}, limit=20)
        finally:
            await store.close()
        return [(r["body"]["event"], r["body"]["target"], r["body"]["actor"], r["body"]["via"]) for r in records
                if r["body"]["event"].startswith("consent.")]

    # The official is the operator's word (--by); who ran the tool is recorded beside it.
    import getpass

    via = f"cli (os:{getpass.getuser()})"
    assert sorted(asyncio.run(events())) == [("consent.grant", grant_id, "clerk-9", via),
                                             ("consent.revoke", grant_id, "clerk-9", via)]
    r = runner.invoke(cli, ["consent", "verify", *cfg])
    assert r.exit_code == 0 and "in agreement with the audit log" in r.output, r.output
    # Roll the revocation back whole (history cut, an older signed state put back): the audit log tells.
    import sqlite3

    con = sqlite3.connect(tmp_path / "stores" / "consent.sqlite")
    con.execute("DELETE FROM consent_event WHERE grant_id = ? AND seq > 1", (grant_id,))
    con.execute("UPDATE consent_grant SET status = 'ACTIVE', status_seq = 1, status_at = e.at, status_by = e.by, "
                "status_reason = e.reason, prev_signature = '', state_signature = e.signature FROM (SELECT at, by, "
                "reason, signature FROM consent_event WHERE grant_id = ?) AS e WHERE id = ?", (grant_id, grant_id))
    con.commit()
    con.close()
    r = runner.invoke(cli, ["consent", "verify", *cfg], env={"COLUMNS": "200"})
    assert r.exit_code == 1 and "1 changes in the store but 2 in the audit log" in r.output, r.output
