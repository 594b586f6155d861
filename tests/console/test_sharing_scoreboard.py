"""The sharing-requests page and the scoreboard: in a real browser, and the scoreboard's arithmetic alone."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from starlette.testclient import TestClient

from catalog.loader import load_catalog
from catalog.model import Catalog
from demo.build import City
from gateway.app import create_app
from gateway.audit.entry import SubjectHasher, request_record, returned
from gateway.cli import SHOWCASE_QUERY
from gateway.console.pages.scoreboard import Period, bar_chart, scoreboard
from gateway.executor import execute
from gateway.pipeline import Gateway
from gateway.plan import Fetch
from policies.sharing import ShareRequest, ShareStatus
from resolvers.errors import SourceError, SourceFailure
from resolvers.query import SourceQuery
from tests.conftest import DEMO_CATALOG, arun
from tests.console.conftest import console_settings, http_sign_in, shot, sign_in

REQUEST = """mutation($input: ShareRequestInput!) { requestSharing(input: $input) {
    id status provider deadlineDay workingDaysLeft } }"""
STATUS = "query($id: ID!) { shareRequest(id: $id) { status decidedBy reason grantUntil } }"


# --- helpers: the gateway's own API, as the departments' clients use it ---------------------------


def token(base: str, client_id: str, secret: str) -> str:
    r = httpx.post(f"{base}/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                                "client_secret": secret})
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def graphql(base: str, bearer: str, query: str, variables: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{base}/graphql", json={"query": query, "variables": variables},
                      headers={"Authorization": f"Bearer {bearer}", "Accept": "application/json", **headers},
                      timeout=30)


def civil_office(base: str) -> str:
    return token(base, "civil-data-office", "civil-data-office-demo-secret")


def ask_hrss(base: str, bearer: str, why: str) -> dict[str, Any]:
    """civil asks hrss for hrss.pension.status (a sharing request made through GraphQL)."""
    r = graphql(base, bearer, REQUEST, {"input": {"dataset": "hrss.pension", "fields": ["status"],
                                                  "purpose": "citizen-self-service", "justification": why}},
                **{"X-Acting-User": "clerk-12"})
    body = r.json()
    assert "errors" not in body, body
    made: dict[str, Any] = body["data"]["requestSharing"]
    assert (made["status"], made["provider"]) == ("PENDING", "hrss")
    return made


def status_of(base: str, bearer: str, rid: str) -> dict[str, Any]:
    body = graphql(base, bearer, STATUS, {"id": rid}, **{"X-Acting-User": "clerk-12"}).json()
    assert "errors" not in body, body
    return dict(body["data"]["shareRequest"])


def csrf_of(page: Any) -> str:
    return str(page.get_attribute("meta[name=csrf-token]", "content"))


def sign_out(page: Any) -> None:
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")


# --- the sharing page ---------------------------------------------------------------------------------


def test_data_owner_answers_requests_to_its_department(console: str, page: Any) -> None:
    civil = civil_office(console)
    first = ask_hrss(console, civil, "the portal shows citizens their pension status <b>now</b>")
    rid = first["id"]

    sign_in(page, console, "hrss-owner")
    page.click("header nav >> text=Sharing requests")
    page.wait_for_url("**/console/sharing")
    card = page.locator(f"article.share-card[data-id='{rid}']")
    assert card.count() == 1
    text = card.inner_text()
    assert f"Answer by {first['deadlineDay']}" in text and "from civil" in text
    assert f"working days left: {first['workingDaysLeft']}" in text and "overdue" not in text.lower()
    assert "<b>now</b>" in text  # the justification is shown as typed: escaped, not markup
    assert card.locator("label:has-text('Grant until') input[type=date]").count() == 1
    assert card.locator("label:has-text('Reason') textarea[name=reason]").count() == 1
    shot(page, "sharing-inbox")

    # Approve it with a time limit: the request is APPROVED, the limit and policy version shown.
    until = (date.today() + timedelta(days=60)).isoformat()
    card.locator("input[name=grant_until]").fill(until)
    card.locator("form.share-approve input[name=reason]").fill("within the legal basis")
    card.locator("form.share-approve button[type=submit]").click()
    page.wait_for_url(re.compile(rf".*/console/sharing/{rid}\?done=approved$"))
    assert page.inner_text("#status").strip() == "APPROVED"
    assert f"{rid} approved" in page.inner_text("p.flash")
    facts = page.inner_text("table.share-facts-table")
    assert until in facts and "hrss-owner (console)" in facts and "within the legal basis" in facts
    assert "p, dept:civil, hrss.pension.status, read, citizen-self-service, allow, default" in page.inner_text("pre")
    history = page.inner_text("table.share-history")
    assert "created" in history and "approved" in history and "console" in history
    assert page.locator("form.share-approve").count() == 0  # answered: nothing more to do
    shot(page, "sharing-approved")
    state = status_of(console, civil, rid)
    assert (state["status"], state["decidedBy"], state["grantUntil"]) == ("APPROVED", "hrss-owner (console)", until)

    # Another request: refusing it without a reason is refused, with a message; then with one.
    rid2 = ask_hrss(console, civil, "again, for the counters")["id"]
    page.goto(f"{console}/console/sharing")
    assert "APPROVED" in page.inner_text(f"table.share-list tr[data-id='{rid}']")
    card = page.locator(f"article.share-card[data-id='{rid2}']")
    card.locator("form.share-refuse button[type=submit]").click()
    page.wait_for_load_state()
    assert "give a reason to refuse" in page.inner_text("p.flash.error")
    assert page.inner_text("#status").strip() == "PENDING"
    shot(page, "sharing-refuse-without-reason")
    page.fill("form.share-refuse textarea[name=reason]", "the portal already shows it from hrss's own service")
    page.click("form.share-refuse button[type=submit]")
    page.wait_for_url(re.compile(rf".*/console/sharing/{rid2}\?done=refused$"))
    assert page.inner_text("#status").strip() == "REFUSED"
    assert "the portal already shows it from hrss's own service" in page.inner_text("table.share-history")
    assert status_of(console, civil, rid2)["status"] == "REFUSED"
    shot(page, "sharing-refused")

    # civil's data owner sees the request its department made, but cannot answer it for hrss.
    rid3 = ask_hrss(console, civil, "a third time")["id"]
    sign_out(page)
    sign_in(page, console, "civil-owner")
    page.goto(f"{console}/console/sharing")
    assert page.locator(f"article.share-card[data-id='{rid3}']").count() == 0  # not in civil's inbox
    assert "PENDING" in page.inner_text(f"table.share-list tr[data-id='{rid3}']")  # among those civil made
    page.goto(f"{console}/console/sharing/{rid3}")
    assert page.locator("form.share-approve").count() == 0
    for action, form in (("approve", {"grant_until": until}), ("refuse", {"reason": "not ours"})):
        r = page.request.post(f"{console}/console/sharing/{rid3}/{action}",
                              form={"csrf_token": csrf_of(page), **form}, max_redirects=0)
        assert r.status == 403, r.status
        assert f"{rid3} is hrss&#39;s to {action}" in r.text() or f"{rid3} is hrss's to {action}" in r.text()
    forged = page.request.post(f"{console}/console/sharing/{rid3}/approve", form={"csrf_token": "x"},
                               max_redirects=0)
    assert forged.status == 403 and "did not come from this console" in forged.text()
    assert status_of(console, civil, rid3)["status"] == "PENDING"
    page.reload()
    assert page.inner_text("#status").strip() == "PENDING"
    shot(page, "sharing-detail-other-department")

    # The policy administrator sees every request, and the (empty) escalation list; it answers none.
    sign_out(page)
    sign_in(page, console, "admin")
    page.goto(f"{console}/console/sharing")
    listed = page.inner_text("table.share-list")
    assert rid in listed and rid2 in listed and rid3 in listed
    page.check("input[name=overdue]")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/console/sharing?*overdue=1*")
    assert "No request is overdue." in page.inner_text("table.share-list")
    shot(page, "sharing-escalation")
    r = page.request.post(f"{console}/console/sharing/{rid3}/approve", form={"csrf_token": csrf_of(page)},
                          max_redirects=0)
    assert r.status == 403 and "data-owner" in r.text()


def test_sharing_pages_need_their_roles(console: str, page: Any) -> None:
    sign_in(page, console, "auditor")
    r = page.goto(f"{console}/console/sharing")
    assert r is not None and r.status == 403
    r = page.goto(f"{console}/console/sharing/sr-doesnotexist")
    assert r is not None and r.status == 403
    sign_out(page)
    sign_in(page, console, "hrss-owner")
    r = page.goto(f"{console}/console/sharing/sr-doesnotexist")
    assert r is not None and r.status == 404


def test_overdue_requests_are_tagged_and_escalated(make_settings: Any, tmp_path: Any) -> None:
    """Past its deadline (the service's clock moved on): tagged overdue in the inbox, on the escalation list."""
    settings = console_settings(make_settings, tmp_path)
    app = create_app(settings, Gateway(load_catalog(*settings.catalog), settings))
    with TestClient(app) as client:
        service = app.state.gateway.sharing
        made = at(6)  # Friday 6 March 2026: due by the end of Friday 20 March
        assert client.portal is not None
        req = client.portal.call(lambda: service.request(
            requester="civil", dataset="hrss.pension", fields=["status"], purpose="citizen-self-service",
            justification="for the portal", requested_by="clerk-12", requested_via="cli", now=made))
        service.clock = lambda: datetime(2026, 3, 24, 4, tzinfo=UTC)  # Tuesday 24 March, Beijing noon

        def signed_in(username: str) -> None:
            client.cookies.clear()
            http_sign_in(client, username)

        signed_in("hrss-owner")
        page = client.get("/console/sharing").text
        card = page[page.index(f'data-id="{req.id}"'):]
        card = card[:card.index("</article>")]
        assert '<span class="tag overdue">overdue</span>' in card and "Answer by <strong>2026-03-20</strong>" in card
        assert "2 working days late" in card  # Monday 23 and Tuesday 24 March
        signed_in("admin")
        listed = client.get("/console/sharing?overdue=1").text
        assert f'<tr data-id="{req.id}" class="overdue">' in listed and "2 working days late" in listed
        assert req.id not in client.get("/console/sharing?status=APPROVED").text
        scores = client.get("/console/scoreboard?from=2026-03-01&to=2026-03-31").text
        row = scores[scores.index('data-department="hrss"'):]
        assert '<td class="n" data-col="share-overdue"><span class="tag overdue">1</span></td>' in row[:row.index(
            "</tr>")]


# --- the scoreboard -----------------------------------------------------------------------------------


def test_scoreboard_counts_the_requests_made(console: str, page: Any, city: City) -> None:
    street = token(console, "street-office-app", "street-office-demo-secret")
    context = {"X-Purpose": "subsistence-allowance-review", "X-Acting-User": "official-007", "X-Case-Id": "CASE-1"}
    applicant = city.showcase["applicant_id_number"]
    for _ in range(3):
        r = graphql(console, street, SHOWCASE_QUERY, {"applicant": applicant}, **context)
        assert r.status_code == 200 and r.json()["data"]["person"], r.text
    # A dataset the purpose does not cover: withheld (a denial for civil; health served nothing).
    r = graphql(console, street, "{ vaccinations(limit: 1) { nodes { site } } }", {}, **context)
    assert r.status_code == 200 and r.json()["data"]["vaccinations"] is None, r.text
    ask_hrss(console, civil_office(console), "for the scoreboard")

    sign_in(page, console, "auditor")
    page.click("header nav >> text=Scoreboard")
    page.wait_for_url("**/console/scoreboard")

    def cell(dept: str, col: str) -> str:
        return str(page.inner_text(f"table.scores tr[data-department='{dept}'] td[data-col='{col}']")).strip()

    assert cell("civil", "made") == "4" and cell("civil", "denials") == "1"  # three answered, one withheld
    for provider in ("psb", "hrss", "housing", "mr", "civil"):
        assert cell(provider, "served") == "3", provider
        assert cell(provider, "latency").endswith(" ms"), provider
        assert cell(provider, "availability").startswith("100.0 %"), provider
    assert cell("health", "served") == "0" and cell("health", "latency") == "—"
    # Per request: psb's name, district, relation, birth_date; hrss's employer, position, start, end (the
    # filter tests it), pension status and years; the pension amounts (conditional) withheld for want of consent.
    assert (cell("psb", "shared-unconditional"), cell("hrss", "shared-unconditional")) == ("12", "18")
    assert (cell("hrss", "shared-conditional"), cell("civil", "consent-withheld")) == ("0", "3")
    assert (cell("civil", "share-made"), cell("hrss", "share-answered"), cell("hrss", "share-overdue")) == ("1", "0",
                                                                                                            "0")
    charts = page.locator("figure.score-chart svg[role=img]")
    assert charts.count() == 2
    assert "Requests served and made" in charts.first.locator("title").first.text_content()
    served = page.locator("svg rect.bar-served title").all_text_contents()
    assert "psb: served 3" in served and "civil: served 3" in served
    assert page.locator("svg rect.bar-made title").all_text_contents().count("civil: made 4") == 1
    shot(page, "scoreboard")

    # Another period: nothing in it; a period that is no period: said so.
    page.fill("input[name=from]", "2020-01-01")
    page.fill("input[name=to]", "2020-01-31")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/console/scoreboard?from=2020-01-01&to=2020-01-31")
    assert cell("civil", "made") == "0" and cell("psb", "served") == "0"
    assert "nothing in this period" in page.inner_text("figure.score-chart figcaption")
    r = page.goto(f"{console}/console/scoreboard?from=2026-02-30&to=2026-03-01")
    assert r is not None and r.status == 400
    assert "must be dates" in page.inner_text("p.flash.error")
    r = page.goto(f"{console}/console/scoreboard?from=2026-03-02&to=2026-03-01")
    assert r is not None and r.status == 400 and "starts (2026-03-02) after it ends" in page.inner_text("p.flash")
    sign_out(page)
    sign_in(page, console, "hrss-owner")  # data owners see the scoreboard too
    r = page.goto(f"{console}/console/scoreboard")
    assert r is not None and r.status == 200 and cell("hrss", "served") == "3"


# --- the scoreboard's arithmetic, without a browser ---------------------------------------------------


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return load_catalog(DEMO_CATALOG)


def f(dataset: str, name: str, disposition: str, path: str = "p") -> dict[str, str]:
    return {"path": path, "dataset": dataset, "field": name, "disposition": disposition}


def src(ms: float, fetches: int, *errors: str) -> dict[str, Any]:
    return {"ms": ms, "fetches": fetches, "errors": list(errors)}


BODIES: list[dict[str, Any]] = [
    # civil's street office: names (asked along two paths: one field), a pension, an address withheld.
    {"department": "civil", "outcome": "partial", "datasets": ["psb.resident", "hrss.pension"],
     "fields": [f("psb.resident", "name", "clear", "a"), f("psb.resident", "name", "clear", "b"),
                f("psb.resident", "address", "consent_required"), f("hrss.pension", "status", "clear"),
                f("hrss.pension", "monthly_amount", "masked")],
     "consent_withheld": {"CONSENT_REQUIRED": 1},
     "sources": {"psb_registry": src(10.0, 2), "hrss_db": src(30.0, 1)}},
    # health: an address denied (psb served nothing: nothing of it was read), the vaccination site (share
    # type none) under its legal basis; a timeout.
    {"department": "health", "outcome": "partial", "datasets": ["psb.resident", "health.vaccination"],
     "fields": [f("psb.resident", "address", "denied"), f("health.vaccination", "site", "clear")],
     "sources": {"psb_registry": src(7.0, 1), "health_db": src(20.0, 2, "SOURCE_TIMEOUT")}},
    # Market Regulation refused as a whole: not served, a denial for mr.
    {"department": "mr", "outcome": "denied", "datasets": ["hrss.employment"],
     "fields": [f("hrss.employment", "monthly_wage", "denied")]},
    # civil again: a row-limit refusal is the request's doing, not the source's; verify-only counts as shared.
    {"department": "civil", "outcome": "ok", "datasets": ["psb.resident"],
     "fields": [f("psb.resident", "name", "clear"), f("psb.resident", "birth_date", "verify")],
     "sources": {"psb_registry": src(100.0, 1, "ROW_LIMIT_EXCEEDED")}},
    # Not data requests: metadata (no datasets), an administrative event body.
    {"department": "civil", "outcome": "ok", "datasets": [], "fields": []},
    {"event": "policy.change", "target": "x"},
    # A department outside the catalogue (the audit office's client) reading the registry; records of
    # sources and datasets no longer in the catalogue are skipped.
    {"department": "audit", "outcome": "ok", "datasets": ["psb.resident", "gone.dataset"],
     "fields": [f("gone.dataset", "x", "clear"), f("psb.resident", "gone_field", "clear")],
     "sources": {"gone_db": src(5.0, 1), "psb_registry": src(0.0, 0)}},
]


def test_scoreboard_from_records(catalog: Catalog) -> None:
    period = Period(date(2026, 3, 1), date(2026, 3, 31))
    scores = {s.code: s for s in scoreboard(BODIES, catalog, period)}
    assert list(scores) == ["civil", "health", "housing", "hrss", "mr", "psb", "service", "audit"]
    got = {code: (s.served, s.made, s.shared, s.denials, s.consent_withheld) for code, s in scores.items()}
    none = {"unconditional": 0, "conditional": 0, "none": 0}
    assert got == {
        "civil": (0, 2, none, 0, 1),
        "health": (1, 1, {**none, "none": 1}, 1, 0),
        "housing": (0, 0, none, 0, 0),
        "hrss": (1, 0, {**none, "unconditional": 1, "conditional": 1}, 0, 0),
        "mr": (0, 1, none, 1, 0),
        "psb": (3, 0, {**none, "unconditional": 3}, 0, 0),  # name; name + birth_date; (a field gone since)
        "service": (0, 0, none, 0, 0),
        "audit": (0, 1, none, 0, 0),
    }
    psb, health, hrss = scores["psb"], scores["health"], scores["hrss"]
    assert (psb.latency_ms, psb.fetches, psb.failures, psb.availability) == (7.0, 4, 0, 1.0)  # samples 5, 7, 100
    assert (health.latency_ms, health.fetches, health.failures, health.availability) == (10.0, 2, 1, 0.5)
    assert (hrss.latency_ms, hrss.availability) == (30.0, 1.0)
    assert (scores["civil"].latency_ms, scores["civil"].availability) == (None, None)
    assert scores["psb"].fields_shared == 3


def request(rid: str, requester: str, provider: str, created: datetime, deadline: datetime,
            status: ShareStatus = ShareStatus.PENDING, decided: datetime | None = None) -> ShareRequest:
    return ShareRequest(id=rid, requester=requester, provider=provider, dataset="hrss.pension", fields=("status",),
                        purpose="citizen-self-service", access="read", mask=None, justification="why",
                        requested_by="clerk", requested_via="cli", created_at=created, deadline=deadline,
                        status=status, decided_at=decided, decided_by="owner" if decided else None)


def at(day: int, month: int = 3, hour: int = 12) -> datetime:
    return datetime(2026, month, day, hour, tzinfo=UTC)


def test_scoreboard_of_sharing_requests(catalog: Catalog) -> None:
    period = Period(date(2026, 3, 1), date(2026, 3, 31))
    requests = [
        request("sr-1", "civil", "hrss", at(2), at(16), ShareStatus.APPROVED, at(10)),  # answered in time
        request("sr-2", "civil", "hrss", at(20, 2), at(6), ShareStatus.REFUSED, at(9)),  # made before; answered late
        request("sr-3", "health", "psb", at(25), at(8, 4)),  # due after the period
        request("sr-4", "mr", "hrss", at(5), at(19)),  # still pending, past its deadline
        request("sr-5", "civil", "psb", at(3), at(17), ShareStatus.WITHDRAWN, at(4)),  # withdrawn in time
        request("sr-6", "civil", "psb", at(4), at(18), ShareStatus.WITHDRAWN, at(20)),  # withdrawn once overdue
        request("sr-7", "mr", "hrss", at(10, 4), at(24, 4)),  # after the period
        request("sr-8", "service", "hrss", at(28, 2), at(14), ShareStatus.APPROVED, at(1, 4)),  # answered after
    ]
    scores = {s.code: s for s in scoreboard([], catalog, period, requests, now=at(10, 4))}
    got = {code: (s.share_made, s.share_answered, s.share_overdue) for code, s in scores.items()
           if (s.share_made, s.share_answered, s.share_overdue) != (0, 0, 0)}
    assert got == {"civil": (3, 0, 0), "health": (1, 0, 0), "hrss": (0, 2, 3), "mr": (1, 0, 0), "psb": (0, 0, 1)}
    # Before a deadline has passed, nothing is overdue yet.
    early = {s.code: s.share_overdue for s in scoreboard([], catalog, period, requests, now=at(10))}
    assert early["hrss"] == 1  # sr-2 only


def test_period_is_local_calendar_days() -> None:
    beijing = Period(date(2026, 3, 1), date(2026, 3, 2), ZoneInfo("Asia/Shanghai"))
    assert beijing.start == datetime(2026, 2, 28, 16, tzinfo=UTC)
    assert beijing.end == datetime(2026, 3, 2, 16, tzinfo=UTC)
    assert beijing.days == 2
    assert datetime(2026, 2, 28, 16, tzinfo=UTC) in beijing and datetime(2026, 3, 2, 16, tzinfo=UTC) not in beijing
    assert None not in beijing


def test_bar_chart_geometry() -> None:
    grouped = bar_chart("t", ["a", "b"], [("served", "bar-served", [4, 2]), ("made", "bar-made", [0, 1])],
                        label_width=100, bar_width=400, bar=10)
    assert [(b["cls"], b["x"], b["width"]) for b in grouped.bars] == [
        ("bar-served", 100.0, 400.0), ("bar-made", 100.0, 0.0), ("bar-served", 100.0, 200.0),
        ("bar-made", 100.0, 100.0)]
    assert [b["title"] for b in grouped.bars] == ["a: served 4", "a: made 0", "b: served 2", "b: made 1"]
    assert grouped.legend == [{"name": "served", "cls": "bar-served"}, {"name": "made", "cls": "bar-made"}]
    assert not grouped.empty and grouped.width == 560
    stacked = bar_chart("t", ["a", "b"], [("x", "bar-x", [1, 0]), ("y", "bar-y", [3, 2])], stacked=True,
                        label_width=100, bar_width=400)
    assert [(b["x"], b["width"]) for b in stacked.bars] == [(100.0, 100.0), (200.0, 300.0), (100.0, 0.0),
                                                            (100.0, 200.0)]
    assert {t["text"] for t in stacked.labels if t["cls"] == "value"} == {"4", "2"}
    assert bar_chart("t", ["a"], [("x", "bar-x", [0])]).empty


# --- the per-source timing the scoreboard reads (gateway/executor.py, gateway/audit/entry.py) ----------


def test_each_source_query_is_timed_and_its_failures_recorded(catalog: Catalog) -> None:
    # Synchronous, the loop in a thread of its own (arun): the browser tests' Playwright holds this thread's loop.
    class Source:
        def __init__(self, code: str, fail: SourceFailure | None = None) -> None:
            self.code, self.fail = code, fail

        async def fetch(self, query: SourceQuery) -> list[dict[str, Any]]:
            await asyncio.sleep(0.02)
            if self.fail is not None:
                raise SourceError(self.code, self.fail, "no answer from 990111198009303439's record")
            return [{"id_number": "990111198009303439", "household_id": "H1"}]

    def fetch(i: int, dataset: str, source: str, parent: int | None = None) -> Fetch:
        query = SourceQuery(dataset, "t", ("id_number", "household_id"), {})
        return Fetch(i, dataset, source, 0 if parent is None else 1, query, f"p{i}", parent=parent,
                     parent_column="id_number" if parent is not None else None)

    sources = {"psb_registry": Source("psb_registry"), "hrss_db": Source("hrss_db", SourceFailure.TIMEOUT),
               "mr_register": Source("mr_register")}
    plan = SimpleNamespace(fetches=[
        fetch(1, "psb.resident", "psb_registry"), fetch(2, "psb.resident", "psb_registry", parent=1),
        fetch(3, "hrss.pension", "hrss_db", parent=1),
        fetch(4, "mr.business", "mr_register", parent=3),  # its parent failed: never asked
    ])
    results = arun(execute(plan, SimpleNamespace(fetch=lambda code, q: sources[code].fetch(q))))  # type: ignore[arg-type]
    assert results[1].ms is not None and results[1].ms >= 15 and results[3].ms is not None and results[4].ms is None
    audit = returned(results, catalog, SubjectHasher(b"k"))
    assert audit["rows"] == {"psb_registry": 2}  # unchanged: rows of the fetches that answered
    assert set(audit["sources"]) == {"psb_registry", "hrss_db"}
    psb, hrss = audit["sources"]["psb_registry"], audit["sources"]["hrss_db"]
    assert (psb["fetches"], psb["errors"], hrss["fetches"], hrss["errors"]) == (2, [], 1, ["SOURCE_TIMEOUT"])
    assert psb["ms"] == round(results[1].ms + results[2].ms, 3) and psb["ms"] >= 30
    record = request_record(request_id="r", ip=None, client_id="c", department="civil", acting_user=None,
                            case_id=None, purpose=None, legal_basis=None, status=200, body={"data": {}},
                            audit=audit, latency_ms=1.0)
    assert record["sources"] == audit["sources"] and "990111198009303439" not in str(record["sources"])
    assert request_record(request_id="r", ip=None, client_id=None, department=None, acting_user=None, case_id=None,
                          purpose=None, legal_basis=None, status=401, body={"errors": []}, audit={},
                          latency_ms=1.0)["sources"] == {}
