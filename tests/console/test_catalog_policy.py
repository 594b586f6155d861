"""The console's catalogue browser and policy editor, in a real browser (and over plain HTTP for the roles).

The policy editor calls the same services as the GraphQL API and ``hutong policy``: a rule the
validator refuses is shown with the validator's own message and changes nothing; explain and
simulate give what ``policies.explain`` and ``policies.simulate`` give; every change is a new
version in the history, with its diff, and can be rolled back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.console.conftest import http_sign_in, shot, sign_in

STREET_RESIDENT = "p, role:street-office, psb.resident.*, read, subsistence-allowance-review, allow, default"
CIVIL_STATUS = "p, dept:civil, hrss.pension.status, read, subsistence-allowance-review, allow, default"
TAX_STATUS = "p, dept:tax, hrss.pension.status, read, subsistence-allowance-review, allow, default"
ADD = "form[action$='/policy/add']"


def version_on(page: Any) -> int:
    return int(page.inner_text("#policy-version"))


def row(page: Any, line: str) -> Any:
    return page.locator(f'table.pol-rules tr[data-line="{line}"]')


def test_catalogue_search_and_dataset(console: str, page: Any) -> None:
    sign_in(page, console, "admin")
    page.click("header nav >> text=Catalogue")
    page.wait_for_url("**/console/catalog")
    assert page.locator("table.cat-datasets tr").count() > 10  # every department's datasets
    page.fill("input[name=q]", "pension")
    page.click("form[role=search] button[type=submit]")
    page.wait_for_url("**/console/catalog?q=pension")
    codes = [c.inner_text() for c in page.query_selector_all("table.cat-datasets td:first-child code")]
    assert "hrss.pension" in codes and "psb.resident" not in codes
    assert "match" in page.inner_text(".cat-count")
    shot(page, "catalog-search")

    page.click("a:has-text('hrss.pension')")
    page.wait_for_url("**/console/catalog/hrss.pension")
    amount = page.locator("tr[data-field=monthly_amount]")
    assert amount.locator("td.share .tag").inner_text() == "conditional"
    assert "round_1000" in amount.inner_text() and "L3" in amount.inner_text()
    assert page.locator("tr[data-field=status] td.share .tag").inner_text() == "unconditional"
    facts = page.inner_text(".cat-facts")
    assert "id_number" in facts and "not dated" in facts  # subject field, and no dated_by
    assert "subsistence-allowance-review" in page.inner_text("table.cat-purposes")
    shot(page, "catalog-dataset")

    response = page.goto(f"{console}/console/catalog/no.such")
    assert response is not None and response.status == 404
    assert "no dataset 'no.such'" in page.inner_text("main")
    shot(page, "catalog-not-found")


def test_policy_editor(console: str, page: Any) -> None:
    sign_in(page, console, "admin")
    page.click("header nav >> text=Policy")
    page.wait_for_url("**/console/policy")
    start = version_on(page)
    assert row(page, STREET_RESIDENT).count() == 1
    shot(page, "policy-rules")

    # Add a rule through the form's separate inputs: a new version, in the table at once.
    page.fill(f"{ADD} input[name=subject]", "dept:civil")
    page.fill(f"{ADD} input[name=object]", "hrss.pension.status")
    page.select_option(f"{ADD} select[name=action]", "read")
    page.select_option(f"{ADD} select[name=purpose]", "subsistence-allowance-review")
    page.select_option(f"{ADD} select[name=effect]", "allow")
    page.fill(f"{ADD} input[name=reason]", "civil checks pension status <b>now</b>")
    page.click("text=Add the rule")
    page.wait_for_load_state()
    assert f"Version {start + 1} is in force" in page.inner_text(".flash.ok")
    assert version_on(page) == start + 1
    assert row(page, CIVIL_STATUS).count() == 1
    shot(page, "policy-added")

    # An invalid rule: the validator's own message, and no new version.
    page.fill(f"{ADD} input[name=line]", TAX_STATUS)
    page.fill(f"{ADD} input[name=reason]", "should be refused")
    page.click("text=Add the rule")
    page.wait_for_load_state()
    assert "Not changed" in page.inner_text(".flash.error")
    assert "unknown department 'tax'" in page.inner_text(".pol-problems")
    assert version_on(page) == start + 1
    assert page.input_value(f"{ADD} input[name=line]") == TAX_STATUS  # kept, to correct it
    shot(page, "policy-invalid")

    # Explain: the masked read, the mask, and the deny that overrides the broader allow.
    page.click(".pol-tabs >> text=Explain a decision")
    page.select_option("select[name=client]", "street-office-app")
    page.select_option("select[name=purpose]", "subsistence-allowance-review")
    page.fill("input[name=field]", "hrss.pension.monthly_amount")
    page.click("button:has-text('Explain')")
    page.wait_for_url("**/policy/explain?*")
    assert page.inner_text(".pol-access") == "MASKED"
    assert page.inner_text(".pol-mask") == "round_1000"
    summary = page.inner_text(".pol-summary")
    assert "round_1000" in summary and "deny overrides allow" in summary
    assert "hrss.pension.monthly_amount, read, subsistence-allowance-review, deny, default" in page.inner_text(
        ".pol-overrides")
    assert "denied" in page.inner_text("tr[data-level=read]")
    shot(page, "policy-explain")

    # Simulate removing the street office's resident rule: its psb.resident fields would be DENIED.
    page.click(".pol-tabs >> text=Simulate a change")
    page.fill("textarea[name=remove]", STREET_RESIDENT)
    page.click("button:has-text('Simulate')")
    page.wait_for_load_state()
    changed = page.locator('table.pol-changes tr[data-client=street-office-app][data-field^="psb.resident."]')
    assert changed.count() >= 3
    for i in range(changed.count()):
        assert changed.nth(i).locator("td.now").inner_text() == "CLEAR"
        assert changed.nth(i).locator("td.after").inner_text() == "DENIED"
    assert "decisions would change" in page.inner_text(".pol-counts")
    shot(page, "policy-simulate")
    page.fill("form.pol-apply input[name=reason]", "street office reads residents through a sharing request now")
    page.click("form.pol-apply button:has-text('Apply this change')")
    page.wait_for_url("**/console/policy")
    assert f"Version {start + 2} is in force" in page.inner_text(".flash.ok")
    assert version_on(page) == start + 2
    assert row(page, STREET_RESIDENT).count() == 0

    # History: every version with its author and reason (escaped), each with its diff.
    page.click(".pol-tabs >> text=History")
    page.wait_for_url("**/policy/history")
    for number in range(1, start + 3):
        assert page.locator(f"tr[data-version='{number}']").count() == 1
    latest = page.inner_text(f"tr[data-version='{start + 2}']")
    assert "admin (console)" in latest and "console" in latest and "−1" in latest
    assert "civil checks pension status <b>now</b>" in page.inner_text(f"tr[data-version='{start + 1}']")
    shot(page, "policy-history")
    page.click(f"tr[data-version='{start + 2}'] >> text=diff with {start + 1}")
    page.wait_for_url("**/policy/diff?*")
    assert page.inner_text(".pol-diff .diff-remove") == f"- {STREET_RESIDENT}"
    assert page.locator(".pol-diff .diff-add").count() == 0
    shot(page, "policy-diff")

    # Roll back to the version before the removal: the rule is in force again.
    page.goto(f"{console}/console/policy/history")
    page.fill("input[name=version]", str(start + 1))
    page.fill("form[action$='/policy/rollback'] input[name=reason]", "the sharing request is not approved yet")
    page.click("button:has-text('Roll back')")
    page.wait_for_url("**/policy/history")
    assert f"Version {start + 3} is in force" in page.inner_text(".flash.ok")
    assert "rollback to version" in page.inner_text(f"tr[data-version='{start + 3}']")
    shot(page, "policy-rolled-back")
    page.goto(f"{console}/console/policy?dataset=psb.resident")
    assert version_on(page) == start + 3
    assert row(page, STREET_RESIDENT).count() == 1
    assert row(page, CIVIL_STATUS).count() == 0  # filtered out: another dataset
    page.goto(f"{console}/console/policy?dataset=hrss.pension&department=civil")
    assert row(page, CIVIL_STATUS).count() == 1
    shot(page, "policy-filtered")

    # Remove a rule with its own button and reason: a new version, and the filters are kept.
    civil = row(page, CIVIL_STATUS)
    civil.locator("summary").click()
    civil.locator("input[name=reason]").fill("civil no longer needs it")
    civil.locator("button:has-text('Remove')").click()
    page.wait_for_url("**/console/policy?department=civil&dataset=hrss.pension")
    assert f"Version {start + 4} is in force: removed {CIVIL_STATUS}" in page.inner_text(".flash.ok")
    assert row(page, CIVIL_STATUS).count() == 0
    assert "No rule in force matches these filters" in page.inner_text("main")


def policy_version(admin: httpx.Client) -> int:
    found = re.search(r'id="policy-version">(\d+)<', admin.get("/console/policy").text)
    assert found is not None
    return int(found.group(1))


def test_other_roles_cannot_use_the_policy_editor(console: str) -> None:
    with httpx.Client(base_url=console) as admin, httpx.Client(base_url=console) as auditor, \
            httpx.Client(base_url=console) as owner:
        http_sign_in(admin, "admin")
        token = http_sign_in(auditor, "auditor")  # a valid token of the auditor's own session
        http_sign_in(owner, "hrss-owner")
        before = policy_version(admin)
        page = auditor.get("/console/policy")
        assert page.status_code == 403 and "Not for your role" in page.text
        for path, data in (("/console/policy/add", {"line": CIVIL_STATUS, "reason": "not mine to add"}),
                           ("/console/policy/remove", {"line": STREET_RESIDENT, "reason": "not mine to remove"}),
                           ("/console/policy/apply", {"remove": STREET_RESIDENT, "reason": "not mine"}),
                           ("/console/policy/rollback", {"version": "1", "reason": "not mine"})):
            refused = auditor.post(path, data={"csrf_token": token, **data})
            assert refused.status_code == 403 and "Not for your role" in refused.text, path
        for path in ("/console/policy/explain", "/console/policy/simulate", "/console/policy/history",
                     "/console/policy/diff?a=0&b=1"):
            assert auditor.get(path).status_code == 403, path
            assert owner.get(path).status_code == 403, path
        assert policy_version(admin) == before
        # The catalogue is for every role.
        assert auditor.get("/console/catalog").status_code == 200
        assert owner.get("/console/catalog/hrss.pension").status_code == 200
        assert owner.get("/console/policy").status_code == 403
        # Whatever is searched for is shown as text, never as markup.
        found = owner.get("/console/catalog", params={"q": "<script>alert(1)</script>"})
        assert found.status_code == 200 and "<script>alert(1)" not in found.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in found.text


def test_policy_forms_need_the_csrf_token(console: str) -> None:
    with httpx.Client(base_url=console) as admin:
        token = http_sign_in(admin, "admin")
        before = policy_version(admin)
        forged = admin.post("/console/policy/add", data={"line": CIVIL_STATUS, "reason": "forged"})
        assert forged.status_code == 403
        assert policy_version(admin) == before
        # The same form with the token: in force, a new version (through the redirect to the rules).
        done = admin.post("/console/policy/add", data={"csrf_token": token, "line": CIVIL_STATUS,
                                                       "reason": "with the token"}, follow_redirects=True)
        assert done.status_code == 200 and f"Version {before + 1} is in force" in done.text
        # A change made against a version that is no longer the latest is refused, not applied over it.
        stale = admin.post("/console/policy/remove", data={"csrf_token": token, "line": CIVIL_STATUS,
                                                           "reason": "stale", "base_version": str(before)})
        assert stale.status_code == 409 and "changed meanwhile" in stale.text
        # No reason: the service refuses it.
        bare = admin.post("/console/policy/remove", data={"csrf_token": token, "line": CIVIL_STATUS, "reason": ""})
        assert bare.status_code == 409 and "give a reason" in bare.text
        assert policy_version(admin) == before + 1
        # Explain through POST (with the token) answers as through GET.
        posted = admin.post("/console/policy/explain", data={
            "csrf_token": token, "client": "street-office-app", "purpose": "subsistence-allowance-review",
            "field": "psb.resident.name"})
        assert posted.status_code == 200 and "CLEAR" in posted.text
        # "Simulate removing it" (from the rules table) fills the simulation form in.
        form = admin.get("/console/policy/simulate", params={"remove": STREET_RESIDENT})
        assert f">{STREET_RESIDENT}</textarea>" in form.text


@pytest.fixture
def file_console(make_settings: Any, tmp_path: Path) -> Iterator[str]:
    """A console whose gateway reads its policy from the demo's file: nothing can be changed there."""
    from catalog.loader import load_catalog
    from demo.server_thread import ServerThread
    from gateway.app import create_app
    from gateway.config import load_settings
    from gateway.pipeline import Gateway

    settings = make_settings(stores=tmp_path / "stores")
    text = settings.path.read_text(encoding="utf-8")
    text += (f'[auth]\nclient_store = "sqlite+aiosqlite:///{tmp_path}/stores/clients.sqlite"\n'
             f'[console]\naccounts = "sqlite+aiosqlite:///{tmp_path}/stores/console.sqlite"\n')
    settings.path.write_text(text, encoding="utf-8")
    settings = load_settings(settings.path, environ={})
    app = create_app(settings, Gateway(load_catalog(*settings.catalog), settings))
    with ServerThread(app, start_timeout=30) as server:
        yield server.url


def test_a_policy_file_is_read_only_here(file_console: str) -> None:
    with httpx.Client(base_url=file_console) as admin:
        token = http_sign_in(admin, "admin")
        page = admin.get("/console/policy")
        assert page.status_code == 200 and "read-only here" in page.text
        assert "Add a rule" not in page.text and STREET_RESIDENT in page.text
        refused = admin.post("/console/policy/add", data={"csrf_token": token, "line": CIVIL_STATUS,
                                                          "reason": "cannot"})
        assert refused.status_code == 409 and "read-only here" in refused.text
        assert "read-only here" in admin.get("/console/policy/history").text
        explained = admin.get("/console/policy/explain", params={
            "client": "street-office-app", "purpose": "subsistence-allowance-review",
            "field": "hrss.pension.monthly_amount"})
        assert explained.status_code == 200 and "round_1000" in explained.text
