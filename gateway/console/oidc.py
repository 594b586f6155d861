"""Sign-in through the city's OpenID Connect provider (optional, ``[console.oidc]``), with Authlib.

The provider's ID token says who the person is; its ``roles_claim`` (through ``role_map``)
which console roles they hold, and ``department_claim`` their department (needed for a
data-owner). A person with none of the console's roles is refused. The provider is
trusted for identity only: roles it does not map give nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.integrations.starlette_client import OAuth, OAuthError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from gateway.console.security import sign_in
from gateway.console.settings import ROLES, ConsoleSettings, OidcSettings

__all__ = ["console_roles", "oidc_routes"]

log = logging.getLogger("hutong.console")


def console_roles(claims: dict[str, Any], oidc: OidcSettings) -> tuple[str, ...]:
    """The console roles a token's claims give: with a ``role_map``, only the roles it maps (an IdP role
    that happens to be called policy-admin gives nothing unless mapped); without one, the console's
    role names as the provider spells them, if ``trust_roles`` says so, else none."""
    given = claims.get(oidc.roles_claim) or []
    if isinstance(given, str):
        given = given.split()
    if not isinstance(given, list):
        return ()
    mapping = dict(oidc.role_map)
    if mapping:
        names = {mapping.get(str(g)) for g in given}
    elif oidc.trust_roles:
        names = {str(g) for g in given}
    else:  # the provider's role names count only when the configuration trusts them
        return ()
    return tuple(sorted(r for r in names if r in ROLES))


def oidc_routes(settings: ConsoleSettings) -> list[BaseRoute]:
    oidc = settings.oidc
    if oidc is None:
        return []
    oauth = OAuth()
    oauth.register("city", client_id=oidc.client_id, client_secret=oidc.client_secret,
                   server_metadata_url=oidc.metadata_url, client_kwargs={"scope": oidc.scope})

    async def start(request: Request) -> Response:
        client: Any = oauth.create_client("city")
        return await client.authorize_redirect(request, str(request.url_for("console:oidc_callback")))  # type: ignore

    async def callback(request: Request) -> Response:
        from gateway.console.app import render

        client: Any = oauth.create_client("city")
        try:
            token = await client.authorize_access_token(request)
        except OAuthError as exc:
            return render(request, "login.html", 401, error=f"the identity provider refused: {exc.error}", oidc=True)
        except Exception as exc:  # a bad ID token (signature, nonce, issuer) or the provider unreachable
            log.warning("console sign-in through %s failed: %s", oidc.issuer, type(exc).__name__)
            return render(request, "login.html", 401, oidc=True,
                          error="sign-in through the identity provider failed: try again, or ask its administrators")
        claims = dict(token.get("userinfo") or {})
        roles = console_roles(claims, oidc)
        department = claims.get(oidc.department_claim)
        catalog = request.app.state.gateway.catalog
        if department is not None and (not isinstance(department, str) or department not in catalog.departments):
            department = None  # only a department of the catalogue can own data
        if not roles or ("data-owner" in roles and not department):
            return render(request, "login.html", 403, oidc=True,
                          error="the identity provider gives you no console role (policy-admin, auditor, data-owner "
                                "with a department): ask its administrators")
        # The person is who the issuer says by its stable subject id; the username is only shown.
        ident = f"oidc:{claims.get('sub')}"
        name = str(claims.get("name") or claims.get("preferred_username") or claims.get("sub"))
        sign_in(request, ident, name, roles, department)
        await request.app.state.record({"event": "console.sign_in", "target": ident, "actor": ident, "name": name,
                                        "roles": list(roles), "via": oidc.issuer, "outcome": "ok"})
        return RedirectResponse(request.url_for("console:home"), 303)

    return [Route("/oidc/login", start, name="oidc_login"), Route("/oidc/callback", callback, name="oidc_callback")]
