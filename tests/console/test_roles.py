"""Roles over plain HTTP: each demo account reaches its pages only; other pages and actions are
refused with the "Not for your role" page and change nothing; signed out, nothing is reached.

Pages by role: catalog (all), policy (policy-admin), sharing (data-owner, policy-admin), audit
(auditor), scoreboard (policy-admin, auditor, data-owner).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.console.test_audit_viewer import DATA_HEADERS, console_session, csrf_of, graphql

ROLE_OF = {"admin": "policy-admin", "auditor": "auditor", "hrss-owner": "data-owner"}
ALL = ("policy-admin", "auditor", "data-owner")
PAGES = {"catalog": ALL, "policy": ("policy-admin",), "sharing": ("data-owner", "policy-admin"),
         "audit": ("auditor",), "scoreboard": ALL}
# Paths below a page, refused like the page itself.
SUBPATHS = {"audit": ("/console/audit/verify", "/console/audit/1"), "policy": ("/console/policy/history",),
            "sharing": ("/console/sharing/x",)}
# A rule the policy-admin may add (valid against the demo catalogue), which nobody else may.
NEW_RULE = "p, role:investigator, psb.resident.*, read, subsistence-allowance-review, allow, default"
REFUSED = "Not for your role"
FORGED = "did not come from this console"


def paths_of(page: str) -> list[str]:
    return [f"/console/{page}", *SUBPATHS.get(page, ())]


def policy_versions(console: str) -> list[int]:
    """The policy's version numbers, asked over GraphQL as the demo client policy-admin."""
    body = graphql(console, "{ policyVersions { number } }", client_id="policy-admin",
                   secret="policy-admin-demo-secret", headers={**DATA_HEADERS, "X-Acting-User": "admin-zhang"})
    assert "errors" not in body, body
    return sorted(v["number"] for v in body["data"]["policyVersions"])


def assert_refused(r: httpx.Response) -> None:
    """A 403 "Not for your role" page because of the role, not because of a missing CSRF token."""
    assert r.status_code == 403, (r.request.method, r.request.url, r.status_code)
    assert REFUSED in r.text and FORGED not in r.text and "this page is for the role" in r.text, r.text[-600:]


@pytest.mark.parametrize("username", sorted(ROLE_OF))
def test_each_role_reaches_its_pages_only(console: str, username: str) -> None:
    role = ROLE_OF[username]
    with console_session(console, username) as s:
        home = s.get("/console/")
        assert home.status_code == 200
        for page, roles in PAGES.items():
            link = f'href="/console/{page}"'
            if role in roles:
                r = s.get(f"/console/{page}")
                assert r.status_code == 200, (username, page, r.status_code)
                assert link in home.text, (username, page)
            else:
                assert link not in home.text, (username, page)  # not offered either
                for path in paths_of(page):
                    assert_refused(s.get(path))


def test_actions_not_for_the_role_are_refused_and_change_nothing(console: str) -> None:
    before = policy_versions(console)
    for username in ("auditor", "hrss-owner"):
        with console_session(console, username) as s:
            token = csrf_of(s.get("/console/").text)
            r = s.post("/console/policy/add", data={"line": NEW_RULE, "reason": "should not be possible",
                                                    "csrf_token": token})
            assert_refused(r)
            if username == "auditor":
                assert_refused(s.post("/console/sharing/x/approve", data={"reason": "no", "csrf_token": token}))
            else:
                assert_refused(s.get("/console/audit"))
    with console_session(console, "admin") as s:
        assert_refused(s.get("/console/audit"))
        policy = s.get("/console/policy")
        assert policy.status_code == 200
    assert policy_versions(console) == before  # no new version

    # The control: the same form from the policy-admin does make a version.
    with console_session(console, "admin") as s:
        token = csrf_of(s.get("/console/policy").text)
        done = s.post("/console/policy/add", data={"line": NEW_RULE, "reason": "investigators read residents",
                                                   "csrf_token": token})
        assert done.status_code in (200, 303), done.text[-600:]
    assert policy_versions(console) == [*before, before[-1] + 1]


def test_signed_out_requests_reach_nothing(console: str) -> None:
    before = policy_versions(console)
    with httpx.Client(base_url=console, timeout=30) as c:
        for page in PAGES:
            for path in paths_of(page):
                r = c.get(path)
                assert r.status_code == 303, (path, r.status_code)
                assert r.headers["location"].endswith(f"/console/login?next={path}"), r.headers["location"]
        posts: dict[str, dict[str, Any]] = {
            "/console/policy/add": {"line": NEW_RULE, "reason": "signed out"},
            "/console/sharing/x/approve": {"reason": "signed out"},
            "/console/logout": {},
        }
        for path, form in posts.items():
            r = c.post(path, data={**form, "csrf_token": "guessed"})
            assert r.status_code in (401, 403), (path, r.status_code)
    assert policy_versions(console) == before
