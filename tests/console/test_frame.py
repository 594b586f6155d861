"""The console's frame, in a real browser: sign-in, sessions, roles, CSRF, security headers."""

from __future__ import annotations

from typing import Any

import httpx

from tests.console.conftest import shot, sign_in


def test_sign_in_shows_each_role_its_pages(console: str, page: Any) -> None:
    page.goto(f"{console}/console/")
    assert page.url.endswith("/console/login?next=/console/")  # not signed in: sent to sign in
    shot(page, "login")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", "wrong password here")
    page.click("button[type=submit]")
    assert "wrong name or password" in page.content()
    sign_in(page, console, "admin")
    nav = [a.inner_text() for a in page.query_selector_all("header nav a")]
    assert nav == ["Home", "Catalogue", "Policy", "Sharing requests", "Scoreboard"]
    shot(page, "home-policy-admin")
    page.click("text=Sign out")
    page.wait_for_url("**/console/login")
    sign_in(page, console, "auditor")
    assert [a.inner_text() for a in page.query_selector_all("header nav a")] == [
        "Home", "Catalogue", "Audit log", "Scoreboard"]


def test_cookies_headers_and_csrf(console: str) -> None:
    with httpx.Client(base_url=console) as c:
        # Signing in needs the sign-in form's token too (no login CSRF).
        forged = c.post("/console/login", data={"username": "auditor", "password": "auditor-demo-password"})
        assert forged.status_code == 403
        form = c.get("/console/login").text
        token = form.split('name="csrf-token" content="')[1].split('"')[0]
        r = c.post("/console/login", data={"username": "auditor", "password": "auditor-demo-password",
                                           "csrf_token": token})
        assert r.status_code == 303
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
        home = c.get("/console/")
        assert home.status_code == 200
        assert "script-src 'self'" in home.headers["content-security-policy"]
        assert home.headers["x-frame-options"] == "DENY" and home.headers["cache-control"] == "no-store"
        forged = c.post("/console/logout", data={})  # no CSRF token: refused, still signed in
        assert forged.status_code == 403 and "did not come from this console" in forged.text
        assert c.get("/console/").status_code == 200


def test_a_copied_session_cookie_dies_with_sign_out_and_with_the_account(console: str, tmp_path: Any) -> None:
    import asyncio
    import threading

    from gateway.console.accounts import AccountStore
    from tests.console.conftest import http_sign_in

    with httpx.Client(base_url=console) as c:
        token = http_sign_in(c, "admin")
        stolen = dict(c.cookies)
        assert c.post("/console/logout", data={"csrf_token": token}).status_code == 303
    with httpx.Client(base_url=console, cookies=stolen) as thief:
        assert thief.get("/console/policy").status_code == 303  # back to sign-in: the session ended
    with httpx.Client(base_url=console) as c:
        http_sign_in(c, "auditor")
        assert c.get("/console/audit").status_code == 200

        async def disable() -> None:
            accounts = AccountStore(f"sqlite+aiosqlite:///{tmp_path}/stores/console.sqlite")
            await accounts.disable("auditor")
            await accounts.close()

        # In a thread of its own: this module's browser keeps an event loop running in this one.
        worker = threading.Thread(target=asyncio.run, args=(disable(),))
        worker.start()
        worker.join()
        assert c.get("/console/audit").status_code == 303  # the next request already
