"""Shared helpers for the identity tests (tests/test_auth*.py): no tests of its own.

A Starlette app made of ``AuthService.routes()`` plus a protected ``/graphql`` stand-in that
calls ``authenticate``, driven through httpx's ASGI transport; a clock the tests move; JWTs
forged by hand; and a throwaway PostgreSQL database.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from joserfc import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.auth import AuthError, AuthService, auth_error_response
from gateway.auth.settings import AuthSettings, ExternalIdP

ISSUER = "https://gw.test"


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def auth_settings(tmp_path: Path, store_url: str | None = None, *, demo: bool = False,
                  external: ExternalIdP | None = None, ttl: int = 300,
                  previous_keys: tuple[Path, ...] = ()) -> AuthSettings:
    return AuthSettings(issuer=ISSUER, audience="hutong", token_ttl=ttl,
                        signing_key=tmp_path / "run" / "signing-key.pem", previous_keys=previous_keys,
                        client_store=store_url or f"sqlite+aiosqlite:///{tmp_path / 'run' / 'clients.sqlite'}",
                        demo=demo, external=external)


class Harness:
    """One AuthService behind a small app, with the clocks it reads."""

    def __init__(self, service: AuthService, clock: FakeClock, monotonic: FakeClock) -> None:
        self.service, self.clock, self.monotonic = service, clock, monotonic

        async def protected(request: Request) -> Response:
            try:
                who = await service.authenticate(request)
            except AuthError as exc:
                return auth_error_response(exc)
            return JSONResponse({"client_id": who.client_id, "department": who.department,
                                 "roles": sorted(who.roles), "token_id": who.token_id, "jti": who.jti,
                                 "issuer": who.issuer, "expires_at": who.expires_at.isoformat(),
                                 "attributes": dict(who.attributes)})

        app = Starlette(routes=[*service.routes(), Route("/graphql", protected, methods=["GET", "POST"])])
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=ISSUER)

    @classmethod
    async def start(cls, config: AuthSettings, *, status_ttl: float = 5.0) -> Harness:
        clock, monotonic = FakeClock(), FakeClock(1000.0)
        service = AuthService(config, clock=clock, monotonic=monotonic, status_ttl=status_ttl)
        await service.start()
        return cls(service, clock, monotonic)

    async def close(self) -> None:
        await self.http.aclose()
        await self.service.close()

    async def register(self, client_id: str, department: str = "civil", roles: tuple[str, ...] = ("street-office",),
                       secret: str | None = None, public_key: dict[str, Any] | None = None,
                       attributes: dict[str, str] | None = None) -> str:
        secret = secret or (None if public_key else f"{client_id}-{uuid.uuid4().hex}")
        extra = {"attributes": attributes} if attributes else {}
        await self.service.store.add(client_id, department, roles, secret=secret, public_key=public_key, **extra)
        return secret or ""

    async def token_request(self, data: dict[str, str], auth: tuple[str, str] | None = None,
                            headers: dict[str, str] | None = None) -> httpx.Response:
        return await self.http.post("/oauth/token", data=data, auth=auth, headers=headers)

    async def token(self, client_id: str, secret: str) -> str:
        r = await self.token_request({"grant_type": "client_credentials"}, auth=(client_id, secret))
        assert r.status_code == 200, r.text
        return str(r.json()["access_token"])

    async def call(self, token: str | None = None, headers: list[tuple[str, str]] | None = None) -> httpx.Response:
        hdrs = list(headers or [])
        if token is not None:
            hdrs.append(("Authorization", f"Bearer {token}"))
        return await self.http.post("/graphql", json={"query": "{ __typename }"}, headers=hdrs)

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """Valid claims of a token for street-office-app, with overrides (None removes a claim)."""
        now = int(self.clock())
        claims = {"iss": ISSUER, "aud": "hutong", "sub": "street-office-app", "client_id": "street-office-app",
                  "department": "civil", "roles": ["street-office"], "iat": now, "nbf": now, "exp": now + 300,
                  "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def forge(self, key: Any = None, alg: str | None = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        """A token signed with ``key`` (default: the gateway's own signing key, so only what the
        test changes is wrong)."""
        signing = self.service.keys.signing if self.service.keys else None
        key = key or signing.key  # type: ignore[union-attr]
        alg = alg or signing.alg  # type: ignore[union-attr]
        hdr = {"alg": alg, "typ": "at+jwt", "kid": signing.kid if signing else "k", **(header or {})}
        hdr = {k: v for k, v in hdr.items() if v is not None}  # None removes a header parameter
        return jwt.encode(hdr, self.claims(**claims), key, algorithms=[alg], default_type=None)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def drop_store_tables(url: str) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine

    from gateway.auth.clients import metadata

    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.drop_all)
    finally:
        await engine.dispose()
