"""Policy administration: validated, versioned, audited changes; history, diff and rollback; time
limits; the GraphQL API for policy-admin only; dry runs; refusing data when the policy cannot be
confirmed current; and a change through one gateway process governing the next request on another."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from catalog.loader import load_catalog
from demo.server_thread import free_port
from gateway.cli import app as cli
from gateway.config import REPO_ROOT, load_settings
from gateway.context import RequestContext
from gateway.pipeline import Gateway
from policies.admin import PolicyAdmin, matches
from policies.decide import Access, Decider, Subject
from policies.lines import format_line, parse_csv
from policies.repository import PolicyConflict, PolicyRepository
from policies.store import PolicyStore, RepositorySource
from policies.validate import PolicyError
from tests.conftest import demo_subject, served, throwaway_pg_database
from tests.test_recorded_http import token_for
from tests.test_recorded_processes import start, wait_ready

CATALOG = load_catalog(REPO_ROOT / "demo" / "catalog")
DEMO_LINES = parse_csv((REPO_ROOT / "demo" / "policies" / "policy.csv").read_text(encoding="utf-8"))
STREET = demo_subject("street-office-app")
REVIEW = "subsistence-allowance-review"
GRANT = ("p", "role:street-office", "psb.resident.*", "read", REVIEW, "allow", "default")


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[tuple[PolicyAdmin, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []

    async def record(body: dict[str, Any]) -> None:
        events.append(body)

    repo = PolicyRepository(f"sqlite+aiosqlite:///{tmp_path}/policy.sqlite")
    await repo.init()
    a = PolicyAdmin(repo, CATALOG, record)
    await a.replace_all(DEMO_LINES, author="seed", reason="demo policy", source="seed")
    yield a, events
    await repo.close()


async def decide(repo: PolicyRepository, obj: str, subject: Subject = STREET, purpose: str = REVIEW) -> Access:
    store = PolicyStore(RepositorySource(PolicyRepository(repo.url)), CATALOG, reload_interval=0)
    await store.refresh()
    try:
        return Decider(store, CATALOG).decide(subject, purpose, obj).access
    finally:
        await store.close()


@pytest.mark.parametrize(("line", "words"), [
    (("p", "dept:tax", "psb.resident.name", "read", REVIEW, "allow", "default"), "unknown department 'tax'"),
    (("p", "role:x", "psb.citizen.name", "read", REVIEW, "allow", "default"), "unknown field 'psb.citizen.name'"),
    (("p", "role:x", "psb.resident.shoe_size", "read", REVIEW, "allow", "default"), "unknown field"),
    (("p", "role:x", "psb.resident.name", "read", "curiosity", "allow", "default"), "unknown purpose 'curiosity'"),
    (("p", "role:x", "psb.resident.name", "write", REVIEW, "allow", "default"), "unknown action 'write'"),
    (("p", "role:x", "health.vaccination.site", "read", "market-supervision", "allow", "default"),
     "has share type none"),
    (("p2", "role:x", "psb.resident", REVIEW, "district", "like", "x"), "unknown operator 'like'"),
])
async def test_invalid_changes_are_refused_before_they_are_stored(admin: Any, line: tuple[str, ...],
                                                                  words: str) -> None:
    a, events = admin
    with pytest.raises(PolicyError) as info:
        await a.change(add=[line], author="admin-1", reason="try")
    assert any(words in p for p in info.value.problems), info.value.problems
    assert await a.repo.head() == 1 and len(events) == 1  # only the seed


async def test_changes_that_do_not_apply_are_refused(admin: Any) -> None:
    a, _ = admin
    absent = ("p", "role:nobody", "psb.resident.name", "read", REVIEW, "allow", "default")
    with pytest.raises(PolicyConflict, match="not in force, cannot be removed"):
        await a.change(remove=[absent], author="admin-1", reason="tidy")
    with pytest.raises(PolicyConflict, match="already in force"):
        await a.change(add=[GRANT], author="admin-1", reason="again")
    with pytest.raises(PolicyConflict, match="give a reason"):
        await a.change(add=[absent], author="admin-1", reason=" ")
    await a.change(remove=[GRANT], author="admin-1", reason="one", base_version=1)
    with pytest.raises(PolicyConflict, match="the policy changed meanwhile"):  # a second admin started from 1
        await a.change(add=[absent], author="admin-2", reason="two", base_version=1)


async def test_history_diff_and_rollback_round_trip(admin: Any) -> None:
    a, events = admin
    assert await decide(a.repo, "psb.resident.name") is Access.CLEAR
    v2 = await a.change(remove=[GRANT], author="admin-1", reason="the street office no longer needs names")
    assert await decide(a.repo, "psb.resident.name") is Access.DENIED
    extra = ("p", "role:street-office", "psb.resident.name", "read_masked", REVIEW, "allow", "name")
    v3 = await a.change(add=[extra], author="admin-2", reason="names, masked")
    assert await decide(a.repo, "psb.resident.name") is Access.MASKED
    assert await a.repo.diff(1, 3) == ([extra], [GRANT])
    v4 = await a.rollback(1, author="admin-3", reason="the review was wrong")
    assert sorted(x for x, _ in await a.repo.lines_at(4)) == sorted(x for x, _ in await a.repo.lines_at(1)) == sorted(
        DEMO_LINES)
    assert await decide(a.repo, "psb.resident.name") is Access.CLEAR
    assert [(v.number, v.author, v.source) for v in await a.repo.versions()] == [
        (4, "admin-3", "rollback"), (3, "admin-2", "api"), (2, "admin-1", "api"), (1, "seed", "seed")]
    assert v4.digest == (await a.repo.versions(limit=1, before=2))[0].digest  # the same lines as version 1
    assert [v2.number, v3.number] == [2, 3]
    # Every change is an audit event naming its author, reason and diff.
    assert [(e["actor"], e["after"]["version"]) for e in events] == [("seed", 1), ("admin-1", 2), ("admin-2", 3),
                                                                     ("admin-3", 4)]
    assert events[1]["removed"] == [format_line(GRANT)] and events[1]["reason"].startswith("the street office")
    assert events[3]["added"] == [format_line(GRANT)] and events[3]["removed"] == [format_line(extra)]


async def test_import_export_and_filters(admin: Any) -> None:
    a, _ = admin
    text = await a.export_csv()
    assert sorted(parse_csv(text)) == sorted(DEMO_LINES)
    pension = await a.lines(dataset="hrss.pension")
    assert pension and all(matches(x, dataset="hrss.pension") for x, _ in pension)
    assert all(x[4] in (REVIEW, "*") for x, _ in await a.lines(purpose=REVIEW) if x[0] == "p")
    assert [x for x, _ in await a.lines(department="health")] == [x for x in DEMO_LINES if "dept:health" in x[1:3]]
    smaller = "\n".join(format_line(x) for x in DEMO_LINES if x != GRANT)
    v = await a.import_csv(smaller, author="admin-1", reason="import")
    assert (v.added, v.removed) == (0, 1)
    with pytest.raises(PolicyError, match="a policy line starts with p, p2 or g"):
        await a.import_csv("q, nonsense", author="admin-1", reason="bad")


async def test_a_time_limited_grant_lapses_by_itself(admin: Any) -> None:
    a, _ = admin
    limited = ("p", "dept:health", "psb.resident.name", "read", "public-health-followup", "allow", "default")
    health = Subject("health-app", "health", frozenset({"clinician"}))
    v2 = await a.change(add=[limited], author="data-owner", reason="share request", source="share-request",
                        expires_at=datetime.now(UTC) + timedelta(seconds=1.2))
    store = PolicyStore(RepositorySource(PolicyRepository(a.repo.url)), CATALOG, reload_interval=0)
    await store.refresh()
    decider = Decider(store, CATALOG)
    assert decider.decide(health, "public-health-followup", "psb.resident.name").access is Access.CLEAR
    loaded = store.snapshot.version
    for _ in range(5):  # an unchanged policy with a live time limit is not reloaded on every check
        await store.refresh(force=True)
    assert store.snapshot.version == loaded
    await asyncio.sleep(1.3)
    await store.refresh()  # no new version was recorded: the lapse alone reloads the policy
    assert store.snapshot.version == loaded + 1
    assert decider.decide(health, "public-health-followup", "psb.resident.name").access is Access.MASKED
    assert limited not in [x for x, _ in await a.repo.live()]
    # A rollback to the version that granted it does not bring the lapsed grant back ...
    other = ("p", "dept:health", "psb.resident.gender", "read", "public-health-followup", "allow", "default")
    await a.change(add=[other], author="admin-1", reason="something else")
    await a.rollback(v2.number, author="admin-1", reason="undo")
    assert limited not in [x for x, _ in await a.repo.live()] and other not in [x for x, _ in await a.repo.live()]
    # ... and it can be granted again, time-limited as before.
    again = await a.change(add=[limited], author="data-owner", reason="renewed", source="share-request",
                           expires_at=datetime.now(UTC) + timedelta(days=30))
    assert dict(await a.repo.live())[limited] is not None and again.added == 1
    await store.close()


async def test_a_version_refused_here_is_not_confirmed_current(admin: Any) -> None:
    a, _ = admin
    store = PolicyStore(RepositorySource(PolicyRepository(a.repo.url)), CATALOG, reload_interval=0,
                        max_staleness=0.2)
    await store.refresh()
    assert not store.stale()
    # Another replica, with a newer catalogue, records a line this gateway's catalogue does not know.
    async with a.repo.engine.begin() as conn:
        await conn.exec_driver_sql("INSERT INTO policy_line (ptype, v0, v1, v2, v3, v4, v5, version_from) VALUES "
                                   "('p', 'role:r', 'tax.record.income', 'read', '*', 'allow', 'default', 2)")
        await conn.exec_driver_sql("INSERT INTO policy_version (number, at, author, reason, source, added, removed, "
                                   "digest) VALUES (2, '2026-11-30T00:00:00.000000Z', 'x', 'x', 'api', 1, 0, 'x')")
    await store.refresh(force=True)  # refused: the version in force stays ...
    await asyncio.sleep(0.3)
    await store.refresh(force=True)
    assert store.stale(), "... but it is not the current one: data requests must stop"
    await store.close()


# --- through the gateway ---------------------------------------------------------------------------


def name_of(body: dict[str, Any]) -> str | None:
    """The first resident's name, or None when it (or the whole dataset) was withheld."""
    residents = (body.get("data") or {}).get("residents")
    return residents["nodes"][0]["name"] if residents else None


def policy_settings(make_settings: Any, tmp_path: Path, url: str | None = None, **policies: Any) -> Any:
    """A configuration whose policy lives in a store (SQLite by default), seeded from the demo policy."""
    settings = make_settings(stores=tmp_path / "stores")
    text = settings.path.read_text(encoding="utf-8")
    store = url or f"sqlite+aiosqlite:///{tmp_path}/stores/policy.sqlite"
    extra = "".join(f"{k} = {v}\n" for k, v in policies.items())
    text = text.replace(f'file = "{REPO_ROOT / "demo" / "policies" / "policy.csv"}"',
                        f'url = "{store}"\nseed = "{REPO_ROOT / "demo" / "policies" / "policy.csv"}"\n{extra}')
    settings.path.write_text(text, encoding="utf-8")
    return load_settings(settings.path, environ={})


async def test_the_admin_api_is_for_policy_admin_only_and_applies_at_once(make_settings: Any,
                                                                          tmp_path: Path) -> None:
    settings = policy_settings(make_settings, tmp_path)
    async with served(settings, REVIEW) as (client, _):
        admin = await token_for(client, "policy-admin", "policy-admin-demo-secret")
        street = await token_for(client, "street-office-app", "street-office-demo-secret")
        headers = {"x-purpose": REVIEW, "x-acting-user": "admin-zhang", "x-case-id": "POL-1"}

        async def post(q: str, h: dict[str, str], **variables: Any) -> Any:
            async with httpx.AsyncClient(transport=client._transport, base_url="http://gw") as bare:
                r = await bare.post("/graphql", json={"query": q, "variables": variables}, headers={**headers, **h})
            return r.json()

        remove = "mutation($l: [String!]!) { removePolicyRules(lines: $l, reason: \"names no longer needed\") " \
                 "{ number author source } }"
        denied = await post(remove, street, l=[format_line(GRANT)])
        assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        names = "{ residents(limit: 2) { nodes { name } } }"
        assert name_of(await post(names, street))
        done = await post(remove, admin, l=[format_line(GRANT)])
        assert done["data"]["removePolicyRules"] == {"number": 2, "author": "admin-zhang (via policy-admin)",
                                                     "source": "api"}
        after = await post(names, street)  # the very next request on this gateway
        assert name_of(after) is None and after["errors"][0]["extensions"]["code"] == "FORBIDDEN_FIELD"
        bad = await post('mutation { addPolicyRules(lines: ["p, dept:tax, psb.resident.name, read, *, allow, '
                         'default"], reason: "x") { number } }', admin)
        assert bad["errors"][0]["extensions"]["code"] == "BAD_USER_INPUT"
        assert "unknown department 'tax'" in bad["errors"][0]["message"] and bad["errors"][0]["extensions"]["problems"]
        history = await post("{ policyVersions { number source } policyDiff(from: 1, to: 2) { added removed } }",
                             admin)
        assert history["data"]["policyVersions"] == [{"number": 2, "source": "api"}, {"number": 1, "source": "seed"}]
        assert history["data"]["policyDiff"] == {"added": [], "removed": [format_line(GRANT)]}
        rules = await post('{ policyRules(dataset: "psb.resident", department: null) { line } }', admin)
        assert format_line(GRANT) not in {r["line"] for r in rules["data"]["policyRules"]}
        rolled = await post('mutation { rollbackPolicy(version: 1, reason: "undo") { number source } }', admin)
        assert rolled["data"]["rollbackPolicy"] == {"number": 3, "source": "rollback"}
        assert name_of(await post(names, street))
        audit, _ = await client._transport.app.state.audit.store.search({"kind": "admin"}, limit=20)  # type: ignore
        changes = [r["body"] for r in audit if r["body"].get("event") == "policy.change"]
        assert [c["after"]["version"] for c in changes] == [3, 2, 1]


async def test_a_policy_file_cannot_be_administered_here(make_settings: Any, tmp_path: Path) -> None:
    async with served(make_settings(stores=tmp_path / "stores"), REVIEW) as (client, _):
        admin = await token_for(client, "policy-admin", "policy-admin-demo-secret")
        async with httpx.AsyncClient(transport=client._transport, base_url="http://gw") as bare:
            r = await bare.post("/graphql", json={"query": "{ policyExport }"}, headers=admin)
        err = r.json()["errors"][0]
        assert err["extensions"]["code"] == "BAD_USER_INPUT" and "reads its policy from a file" in err["message"]


async def test_a_dry_run_records_what_the_proposal_would_change_without_enforcing_it(
        make_settings: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = policy_settings(make_settings, tmp_path)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    try:
        admin = gw.policy_admin
        assert admin is not None
        proposed = [x for x in DEMO_LINES if x != GRANT]
        await admin.dry_run(proposed, by="admin-zhang", reason="try removing names")
        await gw.store.refresh(force=True)
        ctx = RequestContext(STREET, REVIEW, "official-1", "C-1", False, "req-dry")
        with caplog.at_level(logging.WARNING, logger="hutong.pipeline"):
            out = await gw.run("{ residents(limit: 1) { nodes { name district } } }", context=ctx)
        assert out.body["data"]["residents"]["nodes"][0]["name"]  # still enforced: the policy in force
        assert {"field": "psb.resident.name", "now": "CLEAR", "now_mask": None, "proposed": "DENIED",
                "proposed_mask": None} in out.audit["dry_run"]
        assert "dry run: the proposed policy would decide" in caplog.text
        await admin.dry_run(None, by="admin-zhang", reason="enough")
        await gw.store.refresh(force=True)
        out = await gw.run("{ residents(limit: 1) { nodes { name } } }", context=ctx)
        assert "dry_run" not in out.audit
    finally:
        await gw.close()


async def test_data_is_refused_while_the_policy_cannot_be_confirmed(make_settings: Any, tmp_path: Path) -> None:
    settings = policy_settings(make_settings, tmp_path, poll_interval=0.1, max_staleness=0.5)
    gw = Gateway(load_catalog(*settings.catalog), settings)
    await gw.start()
    ctx = RequestContext(STREET, REVIEW, "official-1", "C-1", False, "req-stale")
    db = tmp_path / "stores" / "policy.sqlite"
    try:
        assert (await gw.run("{ residents(limit: 1) { nodes { district } } }", context=ctx)).status == 200
        await gw.store.source.repo.engine.dispose()  # type: ignore[attr-defined]
        os.rename(db, db.with_suffix(".away"))
        (tmp_path / "stores").chmod(0o500)  # ... and it cannot be recreated: the store is gone
        await asyncio.sleep(0.8)
        out = await gw.run("{ residents(limit: 1) { nodes { district } } }", context=ctx)
        assert out.status == 503 and out.body["errors"][0]["extensions"]["code"] == "POLICY_UNAVAILABLE"
        meta = await gw.run("{ catalog { departments { code } } }", context=ctx)
        assert meta.status == 200  # metadata is not a grant
        (tmp_path / "stores").chmod(0o700)
        os.rename(db.with_suffix(".away"), db)
        await gw.store.source.repo.engine.dispose()  # type: ignore[attr-defined]
        await asyncio.sleep(0.5)
        assert (await gw.run("{ residents(limit: 1) { nodes { district } } }", context=ctx)).status == 200
    finally:
        (tmp_path / "stores").chmod(0o700)
        await gw.close()


@pytest.fixture
def policy_pg() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_policy_watch")


async def test_a_change_through_one_gateway_governs_the_next_request_on_another(
        make_settings: Any, tmp_path: Path, policy_pg: str) -> None:
    settings = policy_settings(make_settings, tmp_path, url=policy_pg, reload_interval=60)
    ports = [free_port(), free_port()]
    logs = [tmp_path / f"gw{i}.log" for i in range(2)]
    procs = [start(settings.path, p, log) for p, log in zip(ports, logs, strict=True)]
    try:
        await asyncio.gather(*(wait_ready(f"http://127.0.0.1:{p}", proc, log)
                               for p, proc, log in zip(ports, procs, logs, strict=True)))

        async def login(c: httpx.AsyncClient, client_id: str, secret: str) -> dict[str, str]:
            r = await c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                   "client_secret": secret})
            return {"authorization": f"Bearer {r.json()['access_token']}", "x-purpose": REVIEW,
                    "x-acting-user": "admin-li", "x-case-id": "PROP-1"}

        names = {"query": "{ residents(limit: 1) { nodes { name } } }"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", timeout=30) as one, \
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[1]}", timeout=30) as two:
            admin = await login(one, "policy-admin", "policy-admin-demo-secret")
            street = await login(two, "street-office-app", "street-office-demo-secret")
            assert name_of((await two.post("/graphql", json=names, headers=street)).json())
            # Revoke through gateway one; gateway two (reload_interval 60 s) must hear of it at once.
            r = await one.post("/graphql", json={"query": "mutation($l: [String!]!) { removePolicyRules(lines: $l, "
                                                          "reason: \"revoked\") { number } }",
                                                 "variables": {"l": [format_line(GRANT)]}}, headers=admin)
            assert r.json()["data"]["removePolicyRules"]["number"] == 2, r.text
            changed = time.monotonic()
            while True:
                body = (await two.post("/graphql", json=names, headers=street)).json()
                if name_of(body) is None:
                    break
                assert time.monotonic() - changed < 1.0, "the revocation did not reach the other gateway in 1 s"
                await asyncio.sleep(0.02)
            elapsed = time.monotonic() - changed
            print(f"revocation reached the other gateway in {elapsed * 1000:.0f} ms")
            assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN_FIELD"
            # ... and a grant, the same way.
            r = await one.post("/graphql", json={"query": "mutation($l: [String!]!) { addPolicyRules(lines: $l, "
                                                          "reason: \"granted again\") { number } }",
                                                 "variables": {"l": [format_line(GRANT)]}}, headers=admin)
            assert r.json()["data"]["addPolicyRules"]["number"] == 3
            await asyncio.sleep(1.0)
            assert name_of((await two.post("/graphql", json=names, headers=street)).json())
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=15)


def test_the_command_line_changes_lists_and_rolls_back(make_settings: Any, tmp_path: Path) -> None:
    settings = policy_settings(make_settings, tmp_path)
    cfg = ["--config", str(settings.path)]
    runner = CliRunner()
    r = runner.invoke(cli, ["policy", "remove", format_line(GRANT), "--reason", "names not needed", "--by", "li",
                            *cfg])
    assert r.exit_code == 0 and "version 2: +0 -1 by li" in r.output, r.output
    r = runner.invoke(cli, ["policy", "add", "p, dept:tax, psb.resident.name, read, *, allow, default", "--reason",
                            "x", *cfg])
    assert r.exit_code == 1 and "unknown department 'tax'" in r.output
    r = runner.invoke(cli, ["policy", "diff", "1", "2", *cfg])
    assert r.exit_code == 0 and f"- {format_line(GRANT)}" in r.output
    r = runner.invoke(cli, ["policy", "rollback", "1", "--reason", "undo", "--by", "li", *cfg])
    assert r.exit_code == 0 and "version 3" in r.output
    r = runner.invoke(cli, ["policy", "export", *cfg])
    assert sorted(parse_csv(r.output)) == sorted(DEMO_LINES)
    r = runner.invoke(cli, ["policy", "history", *cfg], env={"COLUMNS": "200"})
    assert "rollback" in r.output and "names not needed" in r.output


def test_explain_and_simulate_on_the_command_line(make_settings: Any, tmp_path: Path) -> None:
    from gateway.auth.clients import ClientStore
    from gateway.auth.demo import ensure_demo_clients
    from gateway.auth.settings import AuthSettings

    settings = policy_settings(make_settings, tmp_path)

    async def register() -> None:
        store = ClientStore(AuthSettings.from_settings(settings).client_store)
        await store.init()
        await ensure_demo_clients(store)
        await store.close()

    asyncio.run(register())
    cfg = ["--config", str(settings.path)]
    runner = CliRunner()
    r = runner.invoke(cli, ["policy", "explain", "--client", "street-office-app", "--purpose", REVIEW, "--field",
                            "hrss.pension.monthly_amount", "--json", *cfg])
    assert r.exit_code == 0, r.output
    [e] = json.loads(r.output)
    assert (e["access"], e["mask"]) == ("MASKED", "round_1000"), e["summary"]
    r = runner.invoke(cli, ["policy", "explain", "--client", "street-office-app", "--purpose", REVIEW, "--query",
                            "{ residents(limit: 1) { nodes { name address } } }", *cfg])
    assert r.exit_code == 0 and "psb.resident.name: CLEAR" in r.output and "psb.resident.address" in r.output
    before = runner.invoke(cli, ["policy", "export", *cfg]).output
    r = runner.invoke(cli, ["policy", "simulate", "--remove", format_line(GRANT), "--json", *cfg])
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["changed"] > 0 and all(c["client_id"] == "street-office-app" and c["after"]["access"] == "DENIED"
                                         for c in result["changes"])
    assert runner.invoke(cli, ["policy", "export", *cfg]).output == before  # nothing applied
    r = runner.invoke(cli, ["policy", "simulate", "--add", "p, dept:tax, psb.resident.name, read, *, allow, default",
                            *cfg])
    assert r.exit_code == 1 and "unknown department 'tax'" in r.output


async def test_an_approved_sharing_request_governs_the_next_request(make_settings: Any, tmp_path: Path) -> None:
    settings = policy_settings(make_settings, tmp_path)
    async with served(settings, "citizen-self-service") as (client, _):
        requester = await token_for(client, "civil-data-office", "civil-data-office-demo-secret")
        owner = await token_for(client, "hrss-data-office", "hrss-data-office-demo-secret")
        acting = {"x-acting-user": "data-officer-wang"}

        async def post(q: str, h: dict[str, str], **variables: Any) -> Any:
            async with httpx.AsyncClient(transport=client._transport, base_url="http://gw") as bare:
                r = await bare.post("/graphql", json={"query": q, "variables": variables}, headers={**acting, **h})
            return r.json()

        statuses = "{ pensions(limit: 1) { nodes { status } } }"
        before = (await client.post("/graphql", json={"query": statuses})).json()  # the tester client, dept civil
        assert before["data"]["pensions"] is None and before["errors"][0]["extensions"]["code"] == "FORBIDDEN_FIELD"
        asked = await post("""mutation($i: ShareRequestInput!) { requestSharing(input: $i) { id status deadline } }""",
                           requester, i={"dataset": "hrss.pension", "fields": ["status"],
                                         "purpose": "citizen-self-service",
                                         "justification": "citizens ask the portal whether they draw a pension"})
        request = asked["data"]["requestSharing"]
        assert request["status"] == "PENDING", asked
        until = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
        approved = await post("""mutation($id: ID!, $until: Date) { approveShareRequest(id: $id, grantUntil: $until,
                                 reason: "lawful, proportionate") { status policyVersion } }""", owner,
                              id=request["id"], until=until)
        assert approved["data"]["approveShareRequest"]["status"] == "APPROVED", approved
        after = (await client.post("/graphql", json={"query": statuses})).json()
        assert after["data"]["pensions"]["nodes"][0]["status"], after  # the very next request
        rules = await post('{ policyRules(dataset: "hrss.pension", department: "civil") { line expiresAt } }',
                           await token_for(client, "policy-admin", "policy-admin-demo-secret"))
        [rule] = rules["data"]["policyRules"]
        assert rule["line"] == "p, dept:civil, hrss.pension.status, read, citizen-self-service, allow, default"
        assert rule["expiresAt"].startswith(until) or rule["expiresAt"] > until
