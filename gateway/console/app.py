"""The console's Starlette app, mounted at ``/console`` by :func:`gateway.app.create_app`.

Pages are rendered on the server (Jinja2, autoescaped); the only script is htmx, served from
the package. Every response carries a strict Content-Security-Policy (nothing from another
origin, no inline script), ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.console.accounts import AccountStore
from gateway.console.security import (
    Forbidden,
    SessionCheck,
    SignInRequired,
    check_csrf,
    csrf_token,
    sign_in,
    sign_out,
    user_of,
)
from gateway.console.settings import ConsoleSettings

__all__ = ["create_console", "render"]

log = logging.getLogger("hutong.console")

HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))  # .html autoescaped (select_autoescape)
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# The pages each role may use: (path, label, about, roles).
PAGES = (
    ("catalog", "Catalogue", "Departments, datasets and fields: types, sensitivity, share types, masks",
     ("policy-admin", "auditor", "data-owner")),
    ("policy", "Policy", "Rules per department and dataset; explain, simulate, history, rollback", ("policy-admin",)),
    ("sharing", "Sharing requests", "Requests for your department's data: deadlines, approve or refuse",
     ("data-owner", "policy-admin")),
    ("audit", "Audit log", "Who accessed what, for what; the chain's integrity", ("auditor",)),
    ("scoreboard", "Scoreboard", "Inter-department sharing per department over a period",
     ("policy-admin", "auditor", "data-owner")),
)


def nav_links(user: Any) -> list[dict[str, str]]:
    return [{"url": f"/console/{page}", "label": label, "about": about, "page": page}
            for page, label, about, roles in PAGES if any(user.has(r) for r in roles)]


templates.env.globals["nav_links"] = nav_links


def render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page, with the signed-in user, the CSRF token and the navigation in its context."""
    user = user_of(request)
    return templates.TemplateResponse(request, template, {"user": user, "csrf": csrf_token(request), **context},
                                      status_code=status)


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()
                            if k.lower().encode() not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def login_page(request: Request) -> Response:
    if user_of(request) is not None:
        return RedirectResponse(request.url_for("console:home"), 303)
    oidc = request.app.state.console_settings.oidc is not None
    return render(request, "login.html", oidc=oidc, next=request.query_params.get("next", ""))


async def login(request: Request) -> Response:
    # The sign-in form carries a token too: without it a foreign page could sign a person in to an
    # account of the attacker's choosing (login CSRF).
    form = await check_csrf(request)
    username, password = str(form.get("username", "")).strip(), str(form.get("password", ""))
    accounts: AccountStore = request.app.state.accounts
    account = await accounts.authenticate(username, password) if username and password else None
    if account is None:
        # Failed sign-ins are recorded too: guessing shows in the audit log (the password never does).
        await request.app.state.record({"event": "console.sign_in_failed", "target": username[:100],
                                        "actor": username[:100], "ip": request.client.host if request.client
                                        else None, "outcome": "failed"})
        return render(request, "login.html", 401, error="wrong name or password (or the account is locked for a "
                                                        "while after repeated failures)",
                      oidc=request.app.state.console_settings.oidc is not None, username=username)
    sign_in(request, account.username, account.display_name, account.roles, account.department,
            account.session_epoch)
    await request.app.state.record({"event": "console.sign_in", "target": account.username,
                                    "actor": account.username, "roles": list(account.roles), "outcome": "ok"})
    return RedirectResponse(request.url_for("console:home"), 303)


async def logout(request: Request) -> Response:
    await check_csrf(request)
    user = user_of(request)
    if user is not None and not user.username.startswith("oidc:"):
        await request.app.state.accounts.end_sessions(user.username)  # a copied cookie ends with it
    sign_out(request)
    return RedirectResponse(request.url_for("console:login"), 303)


async def home(request: Request) -> Response:
    user = user_of(request)
    if user is None:
        raise SignInRequired()
    return render(request, "home.html")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc, SignInRequired) or exc.status_code == 401:
        if request.method == "GET":
            return RedirectResponse(str(request.url_for("console:login")) + f"?next={request.url.path}", 303)
        return render(request, "error.html", 401, title="Sign in first", message="your session has ended")
    if isinstance(exc, Forbidden) or exc.status_code == 403:
        return render(request, "error.html", 403, title="Not for your role", message=exc.detail)
    return render(request, "error.html", exc.status_code, title="Not found" if exc.status_code == 404 else "Error",
                  message=exc.detail)


async def _unexpected(request: Request, exc: Exception) -> Response:
    """A bug: a page saying so, with the security headers, never the exception's text."""
    log.error("console %s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    response = render(request, "error.html", 500, title="Something went wrong",
                      message="the console could not show this page; the operators can find the error in the log")
    response.headers.update(HEADERS)
    return response


def create_console(settings: ConsoleSettings, accounts: AccountStore, state: dict[str, Any]) -> Starlette:
    """The console app. ``state``: the gateway's objects the pages use (gateway, audit writer, record)."""
    from gateway.console.oidc import oidc_routes
    from gateway.console.pages import page_routes

    routes = [
        Route("/", home, name="home"),
        *oidc_routes(settings),
        Route("/login", login_page, methods=["GET"], name="login"),
        Route("/login", login, methods=["POST"], name="login_post"),
        Route("/logout", logout, methods=["POST"], name="logout"),
        *page_routes(),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: _http_error, Exception: _unexpected},
                    middleware=[
        Middleware(_SecurityHeaders),
        # Lax when sign-in goes through an identity provider on another site (its redirect back must carry
        # the session holding the OIDC state); every form is protected by its CSRF token either way.
        Middleware(SessionMiddleware, secret_key=settings.session_secret, session_cookie="hutong_console",
                   max_age=settings.session_minutes * 60, same_site="lax" if settings.oidc else "strict",
                   https_only=settings.secure_cookies, path="/console"),
        Middleware(SessionCheck),
    ])
    if settings.secure_cookies:
        HEADERS.setdefault("Strict-Transport-Security", "max-age=31536000")
    app.state.console_settings = settings
    app.state.accounts = accounts
    for key, value in state.items():
        setattr(app.state, key, value)
    return app
