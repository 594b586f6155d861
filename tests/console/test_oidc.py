"""Sign-in through an OpenID Connect provider: a small but real provider (discovery, authorize,
token, JWKS, RS256 ID tokens) runs beside the gateway, and the console's Authlib client goes
through the whole code flow against it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from demo.server_thread import ServerThread, free_port
from gateway.config import load_settings
from tests.console.conftest import console_settings


class Provider:
    """An identity provider that signs in whoever it is told to (``self.person``)."""

    def __init__(self, port: int) -> None:
        self.issuer = f"http://127.0.0.1:{port}"
        self.key = RSAKey.generate_key(2048, private=True, parameters={"kid": "idp-1"})
        self.codes: dict[str, dict[str, Any]] = {}
        self.person: dict[str, Any] = {}
        self.app = Starlette(routes=[
            Route("/.well-known/openid-configuration", self.discovery),
            Route("/authorize", self.authorize),
            Route("/token", self.token, methods=["POST"]),
            Route("/jwks", self.jwks),
        ])

    async def discovery(self, _: Request) -> Response:
        return JSONResponse({"issuer": self.issuer, "authorization_endpoint": f"{self.issuer}/authorize",
                             "token_endpoint": f"{self.issuer}/token", "jwks_uri": f"{self.issuer}/jwks",
                             "response_types_supported": ["code"], "subject_types_supported": ["public"],
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def authorize(self, request: Request) -> Response:
        q = request.query_params
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"nonce": q.get("nonce"), "client_id": q["client_id"], "redirect_uri": q["redirect_uri"]}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

    async def token(self, request: Request) -> Response:
        form = await request.form()
        grant = self.codes.pop(str(form["code"]), None)
        if grant is None:
            return JSONResponse({"error": "invalid_grant"}, 400)
        now = int(time.time())
        claims = {"iss": self.issuer, "aud": grant["client_id"], "iat": now, "exp": now + 300,
                  "nonce": grant["nonce"], **self.person}
        id_token = jwt.encode({"alg": "RS256", "kid": "idp-1"}, claims, self.key)
        return JSONResponse({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer", "expires_in": 300,
                             "id_token": id_token})

    async def jwks(self, _: Request) -> Response:
        return JSONResponse({"keys": [self.key.as_dict(private=False)]})


@pytest.fixture
def with_provider(make_settings: Any, tmp_path: Path) -> Iterator[tuple[str, Provider]]:
    from catalog.loader import load_catalog
    from gateway.app import create_app
    from gateway.pipeline import Gateway

    port = free_port()
    idp = Provider(port)
    settings = console_settings(make_settings, tmp_path)
    text = settings.path.read_text(encoding="utf-8")
    text += (f'[console.oidc]\nissuer = "{idp.issuer}"\nclient_id = "hutong-console"\n'
             'client_secret = "console-client-secret-for-tests"\nrole_map = { "hutong-auditors" = "auditor" }\n')
    settings.path.write_text(text, encoding="utf-8")
    settings = load_settings(settings.path, environ={})
    with ServerThread(idp.app, port), ServerThread(create_app(settings, Gateway(load_catalog(*settings.catalog),
                                                                                  settings)), start_timeout=30) as gw:
        yield gw.url, idp


def test_sign_in_through_the_identity_provider(with_provider: tuple[str, Provider]) -> None:
    base, idp = with_provider
    idp.person = {"sub": "u-17", "preferred_username": "li.na", "name": "Li Na", "roles": ["hutong-auditors"]}
    with httpx.Client(base_url=base, follow_redirects=True) as c:
        assert "Sign in with the city's identity provider" in c.get("/console/login").text
        home = c.get("/console/oidc/login")  # -> provider -> callback -> home
        assert home.status_code == 200 and str(home.url).endswith("/console/"), home.text[:500]
        assert "Li Na" in home.text and "Audit log" in home.text
    # Someone the provider gives no console role is refused, and is not signed in.
    idp.person = {"sub": "u-18", "preferred_username": "visitor", "roles": ["staff"]}
    with httpx.Client(base_url=base, follow_redirects=True) as c:
        refused = c.get("/console/oidc/login")
        assert refused.status_code == 403 and "no console role" in refused.text
        assert str(c.get("/console/").url).endswith("/console/login?next=/console/")
