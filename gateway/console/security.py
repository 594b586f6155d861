"""Who is signed in, what they may do, and that every form really came from the console.

The session is a signed cookie (Starlette's SessionMiddleware: HttpOnly, SameSite=Strict,
Secure unless configured off for a plain-HTTP demo) holding the account's name, roles,
department, when it signed in, and a random CSRF token. Every POST must carry that token (a
hidden form field, or the ``X-CSRF-Token`` header for htmx); a page or action a role may not
use is a 403 page, and nothing is changed.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request

__all__ = ["Forbidden", "SessionCheck", "SignInRequired", "User", "check_csrf", "csrf_token", "require", "sign_in",
           "sign_out", "user_of"]


class SignInRequired(HTTPException):
    def __init__(self) -> None:
        super().__init__(401, "sign in first")


class Forbidden(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(403, detail)


@dataclass(frozen=True, slots=True)
class User:
    username: str
    display_name: str
    roles: tuple[str, ...]
    department: str | None

    def has(self, role: str) -> bool:
        return role in self.roles


def sign_in(request: Request, username: str, display_name: str, roles: tuple[str, ...],
            department: str | None, epoch: int = 0) -> None:
    request.session.clear()  # a fresh session (and CSRF token) at every sign-in: no fixation
    request.session.update({"user": username, "name": display_name, "roles": list(roles),
                            "department": department, "at": int(time.time()), "epoch": epoch,
                            "csrf": secrets.token_urlsafe(32)})


def sign_out(request: Request) -> None:
    request.session.clear()


def user_of(request: Request) -> User | None:
    s = request.session
    if not s.get("user"):
        return None
    max_age = request.app.state.console_settings.session_minutes * 60
    if time.time() - int(s.get("at", 0)) > max_age:
        s.clear()
        return None
    return User(s["user"], s.get("name", s["user"]), tuple(s.get("roles", ())), s.get("department"))


def require(request: Request, *roles: str) -> User:
    """The signed-in user, holding one of ``roles`` (any role if none given)."""
    user = user_of(request)
    if user is None:
        raise SignInRequired()
    if roles and not any(user.has(r) for r in roles):
        raise Forbidden(f"this page is for the role {' or '.join(roles)}; you are signed in as "
                        f"{', '.join(user.roles)}")
    return user


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not token:
        token = request.session["csrf"] = secrets.token_urlsafe(32)
    return str(token)


async def check_csrf(request: Request) -> dict[str, Any]:
    """The POSTed form, after checking its CSRF token (403 otherwise: nothing is done)."""
    form = dict(await request.form())
    sent = str(form.get("csrf_token") or request.headers.get("x-csrf-token") or "")
    expected = request.session.get("csrf")
    if not expected or not hmac.compare_digest(sent.encode(), str(expected).encode()):
        raise Forbidden("the form has expired or did not come from this console: reload the page and try again")
    return form


class SessionCheck:
    """Every request of a local account's session is checked against the account: a disabled
    account, a new password or a sign-out (``session_epoch``) ends its sessions at once, and a
    change of roles or department applies at the next request. (Sessions from the identity
    provider end with ``session_minutes``.)"""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        session = scope.get("session") if scope["type"] == "http" else None
        user = session.get("user") if session else None
        if session is not None and user and not str(user).startswith("oidc:"):
            account = await scope["app"].state.accounts.get(user)
            if account is None or account.disabled or account.session_epoch != session.get("epoch"):
                session.clear()
            else:
                session.update({"roles": list(account.roles), "department": account.department,
                                "name": account.display_name})
        await self.app(scope, receive, send)
