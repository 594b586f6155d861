"""The console under test: a real gateway served over HTTP, driven by headless Chromium.

Playwright for Python drives Debian's chromium (``/usr/bin/chromium``, installed by
``make e2e-deps``); no browser is downloaded. Each test signs in as a demo account of the
role it exercises. Screenshots go to ``artifacts/screenshots/`` (git-ignored).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.config import REPO_ROOT, load_settings

SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("HUTONG_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
PASSWORDS = {"admin": "admin-demo-password", "auditor": "auditor-demo-password",
             "hrss-owner": "hrss-owner-demo-password", "civil-owner": "civil-owner-demo-password"}


def console_settings(make_settings: Any, tmp_path: Path) -> Any:
    """A demo-mode configuration with its own stores and a policy store seeded from the demo policy."""
    settings = make_settings(stores=tmp_path / "stores")
    text = settings.path.read_text(encoding="utf-8")
    text = text.replace(f'file = "{REPO_ROOT / "demo" / "policies" / "policy.csv"}"',
                        f'url = "sqlite+aiosqlite:///{tmp_path}/stores/policy.sqlite"\n'
                        f'seed = "{REPO_ROOT / "demo" / "policies" / "policy.csv"}"')
    text += (f'[auth]\nclient_store = "sqlite+aiosqlite:///{tmp_path}/stores/clients.sqlite"\n'
             f'[console]\naccounts = "sqlite+aiosqlite:///{tmp_path}/stores/console.sqlite"\n')
    settings.path.write_text(text, encoding="utf-8")
    return load_settings(settings.path, environ={})


@pytest.fixture
def console(make_settings: Any, tmp_path: Path) -> Iterator[str]:
    """The base URL of a running gateway whose console has the demo accounts."""
    from catalog.loader import load_catalog
    from demo.server_thread import ServerThread
    from gateway.app import create_app
    from gateway.pipeline import Gateway

    settings = console_settings(make_settings, tmp_path)
    app = create_app(settings, Gateway(load_catalog(*settings.catalog), settings))
    with ServerThread(app, start_timeout=30) as server:
        yield server.url


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One browser per test module: Playwright's sync API keeps an event loop running in this thread
    while it is open, so it is closed before the next module's asyncio tests run."""
    if CHROMIUM is None:
        from tests.conftest import service_unavailable

        service_unavailable("Chromium (run `make e2e-deps`, or set HUTONG_CHROMIUM)", FileNotFoundError("chromium"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    context.close()


def sign_in(page: Any, base: str, username: str) -> None:
    page.goto(f"{base}/console/login")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", PASSWORDS[username])
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/console/$"))


def shot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artefact."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def http_sign_in(client: Any, username: str) -> str:
    """Sign in with an httpx client (the sign-in form's CSRF token first); returns the session's token."""
    form = client.get("/console/login").text
    token = re.search(r'name="csrf-token" content="([^"]+)"', form)
    assert token is not None, "the sign-in page carries a CSRF token"
    r = client.post("/console/login", data={"username": username, "password": PASSWORDS[username],
                                            "csrf_token": token.group(1)})
    assert r.status_code in (200, 303), r.text[:300]
    home = client.get("/console/").text
    signed = re.search(r'name="csrf-token" content="([^"]+)"', home)
    assert signed is not None
    return signed.group(1)
