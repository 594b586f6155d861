"""The console's audit pages, in a real browser: search, a record in full, verifying the chain.

Data requests are made over GraphQL first (the demo client street-office-app), then the auditor
finds them by official and by subject, opens one, verifies the chain, and sees the damage once a
record's body is edited in the audit store (the ``console`` fixture's stores are under this
test's ``tmp_path``).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.console.conftest import PASSWORDS, shot, sign_in

SHOWCASE_ID = "990111198009303439"  # a demo resident with records in several departments
BAD_ID = "990111198009303430"  # the same number with a wrong check digit
PURPOSE = "subsistence-allowance-review"
DATA_HEADERS = {"X-Purpose": PURPOSE, "X-Acting-User": "official-42", "X-Case-Id": "CASE-1"}


def graphql(console: str, query: str, *, client_id: str = "street-office-app",
            secret: str = "street-office-demo-secret", headers: dict[str, str] | None = None) -> dict[str, Any]:
    """One GraphQL request as a demo client (a client_credentials token first)."""
    with httpx.Client(base_url=console, timeout=30) as c:
        token = c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": client_id,
                                             "client_secret": secret})
        assert token.status_code == 200, token.text
        r = c.post("/graphql", json={"query": query}, headers={
            "Authorization": f"Bearer {token.json()['access_token']}", **(headers or DATA_HEADERS)})
        result: dict[str, Any] = r.json()
        return result


@contextlib.contextmanager
def console_session(console: str, username: str) -> Iterator[httpx.Client]:
    """An httpx client signed in to the console (the session cookie kept by the client)."""
    with httpx.Client(base_url=console, timeout=30) as c:
        r = c.post("/console/login", data={"username": username, "password": PASSWORDS[username],
                                           "csrf_token": csrf_of(c.get("/console/login").text)})
        assert r.status_code == 303, r.text
        yield c


def csrf_of(html: str) -> str:
    """The CSRF token a console page carries (``<meta name="csrf-token">``)."""
    found = re.search(r'<meta name="csrf-token" content="([^"]*)">', html)
    assert found and found.group(1), "a CSRF token in the page"
    return found.group(1)


def audit_db(tmp_path: Path) -> sqlite3.Connection:
    """The console fixture's audit store (see console_settings in conftest.py)."""
    path = tmp_path / "stores" / "audit.sqlite"
    assert path.exists(), path
    db = sqlite3.connect(path, timeout=30)
    db.execute("PRAGMA busy_timeout = 30000")
    return db


def bodies(tmp_path: Path) -> list[tuple[int, str, str]]:
    with audit_db(tmp_path) as db:
        return [(int(s), k, b) for s, k, b in db.execute("SELECT seq, kind, body FROM audit_record ORDER BY seq")]


def table_rows(page: Any) -> list[str]:
    return [r.inner_text() for r in page.query_selector_all("table.audit-table tbody tr")]


def search(page: Any, **fields: str) -> None:
    """Fill the filter form (by its labels) and submit it."""
    labels = {"official": "Official", "subject": "Subject ID number", "client": "Client"}
    for name, value in fields.items():
        page.get_by_label(labels[name], exact=True).fill(value)
    page.get_by_role("button", name="Search").click()
    page.wait_for_load_state()


def test_auditor_searches_opens_and_verifies_the_trail(console: str, page: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    for _ in range(2):
        assert graphql(console, "{ residents(limit: 2) { nodes { name } } }")["data"]["residents"]["nodes"]
    person = graphql(console, f'{{ person(idNumber: "{SHOWCASE_ID}") {{ resident {{ name idNumber }} }} }}')
    assert person["data"]["person"]["resident"]["name"], person
    assert graphql(console, "{ residents(limit: 1) { nodes { name } } }",
                   headers={**DATA_HEADERS, "X-Acting-User": "official-7"})["data"]

    sign_in(page, console, "auditor")
    page.click("header nav >> text=Audit log")
    page.wait_for_url("**/console/audit")
    assert page.get_by_role("heading", name="Audit log").is_visible()
    assert len(table_rows(page)) >= 4  # start records and the four requests, newest first
    seqs = [int(a.inner_text()) for a in page.query_selector_all("table.audit-table tbody tr td:first-child a")]
    assert seqs == sorted(seqs, reverse=True)
    shot(page, "audit-log")

    # By official: the three requests of official-42 (and none of official-7's).
    search(page, official="official-42")
    rows = table_rows(page)
    assert len(rows) == 3 and all("official-42" in r and "street-office-app" in r for r in rows)
    assert all("psb.resident" in r and PURPOSE in r and "ok" in r for r in rows)
    assert "3 records match" in page.inner_text(".audit-count")
    assert page.get_by_label("Official", exact=True).input_value() == "official-42"  # the form keeps it
    shot(page, "audit-log-official")

    # By subject: the one request that returned the showcase resident.
    page.get_by_label("Official", exact=True).fill("")
    search(page, subject=SHOWCASE_ID)
    rows = table_rows(page)
    assert len(rows) == 1 and "official-42" in rows[0], rows
    assert "1 record matches" in page.inner_text(".audit-count")
    shot(page, "audit-log-subject")
    assert SHOWCASE_ID not in page.url and "subject_hmac=" in page.url  # the number never travels in an address

    # An invalid ID number: a message, no search.
    search(page, subject=BAD_ID)
    alert = page.inner_text(".audit-errors")
    assert "Subject ID number" in alert and "check digit" in alert and BAD_ID not in alert
    assert page.get_by_label("Subject ID number").get_attribute("aria-invalid") == "true"
    assert table_rows(page) == []
    shot(page, "audit-log-invalid-subject")

    # A record in full.
    search(page, subject=SHOWCASE_ID)
    page.click("table.audit-table tbody tr >> nth=0 >> td >> nth=0 >> a")
    page.wait_for_url(re.compile(r".*/console/audit/\d+$"))
    seq = int(page.url.rsplit("/", 1)[1])
    text = page.inner_text("main")
    assert f"Audit record {seq}" in text and "official-42" in text and "CASE-1" in text
    assert "matches the content" in text and f"links to record {seq - 1}" in text
    fields = page.inner_text("table.audit-fields")
    assert "psb.resident" in fields and "name" in fields and "clear" in fields
    stored = {s: b for s, _, b in bodies(tmp_path)}
    assert orjson.loads(stored[seq])["request_id"] in text  # every body field is shown
    assert page.locator("code.audit-hash").first.inner_text() in text
    shot(page, "audit-record")

    # Verify: intact.
    page.goto(f"{console}/console/audit/verify")
    verdict = page.inner_text(".audit-verdict")
    assert "intact" in verdict and re.search(r"records 1 to \d+", verdict), verdict
    shot(page, "audit-verify-intact")

    # Edit the body of the first request record behind the gateway's back: damaged there.
    first_request = min(s for s, k, _ in bodies(tmp_path) if k == "request")
    with audit_db(tmp_path) as db:
        changed = db.execute("UPDATE audit_record SET body = replace(body, 'official-42', 'official-99') "
                             "WHERE seq = ?", (first_request,)).rowcount
    assert changed == 1
    page.goto(f"{console}/console/audit/verify")
    verdict = page.inner_text(".audit-verdict")
    assert f"Damaged at record {first_request}" in verdict and "changed" in verdict, verdict
    shot(page, "audit-verify-damaged")
    page.click(f"text=Open record {first_request}")
    page.wait_for_url(f"**/console/audit/{first_request}")
    assert "does not match the content" in page.inner_text("main")
    shot(page, "audit-record-damaged")

    # Reading the trail was recorded, without the ID number typed (valid or not).
    events = [orjson.loads(b) for _, k, b in bodies(tmp_path) if k == "admin"]
    searches = [e for e in events if e.get("event") == "console.audit_search"]
    assert searches and all(e["actor"] == "auditor" for e in searches)
    assert {"acting_user": "official-42"} in [e["filters"] for e in searches]
    assert any(e["subject_filter"] and e["filters"] == {} for e in searches)
    assert {e.get("event") for e in events} >= {"console.audit_record", "console.audit_verify"}
    for _, _, body in bodies(tmp_path):
        assert SHOWCASE_ID not in body and BAD_ID not in body
    assert SHOWCASE_ID not in caplog.text and BAD_ID not in caplog.text


def test_pages_of_fifty_and_the_filters_checked(console: str) -> None:
    with httpx.Client(base_url=console, timeout=30) as c:
        token = c.post("/oauth/token", data={"grant_type": "client_credentials", "client_id": "street-office-app",
                                             "client_secret": "street-office-demo-secret"}).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", **DATA_HEADERS, "X-Acting-User": "official-55"}
        for _ in range(55):
            assert c.post("/graphql", json={"query": "{ residents(limit: 1) { nodes { name } } }"},
                          headers=headers).status_code == 200

    with console_session(console, "auditor") as s:
        first = s.get("/console/audit", params={"acting_user": "official-55"})
        assert first.status_code == 200
        assert "<strong>55</strong> records match" in first.text
        assert first.text.count("official-55</td>") == 50
        older = re.search(r'href="([^"]*after=\d+[^"]*)" rel="next"', first.text)
        assert older, "an Older link"
        url = older.group(1).replace("&amp;", "&")
        assert "acting_user=official-55" in url
        second = s.get(url)
        assert second.status_code == 200 and second.text.count("official-55</td>") == 5
        assert 'rel="next"' not in second.text and "← Newest" in second.text
        seqs = [int(x) for x in re.findall(r'/console/audit/(\d+)" aria-label', first.text + second.text)]
        assert len(seqs) == 55 == len(set(seqs)) and seqs == sorted(seqs, reverse=True)

        bad_time = s.get("/console/audit", params={"time_from": "yesterday-ish"})
        assert bad_time.status_code == 400 and "Time from: not a date or time" in bad_time.text
        later = s.get("/console/audit", params={"acting_user": "official-55", "time_from": "2999-01-01T00:00"})
        assert "<strong>0</strong> records match" in later.text and "No record matches" in later.text
        escaped = s.get("/console/audit", params={"client_id": '<script>alert("x")</script>'})
        assert escaped.status_code == 200 and "<script>alert" not in escaped.text and "&lt;script&gt;" in escaped.text
        assert s.get("/console/audit/999999").status_code == 404
        assert s.get("/console/audit/" + "9" * 30).status_code == 404
        assert s.get("/console/audit", params={"after": "9" * 30}).status_code == 400
        assert s.get("/console/audit", params={"kind": "request", "outcome": "ok", "department": "civil",
                                               "dataset": "psb.resident", "purpose": PURPOSE}).status_code == 200
