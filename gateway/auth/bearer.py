"""Authenticating a request: ``Authorization: Bearer <token>`` (RFC 6750 §2.1) to an Identity.

Tokens are accepted in the header only, never in the query string (access logs and browser
histories keep URLs) nor in a form body. A token must also belong to a client the store has not
disabled: the store is read at most once per client every ``STATUS_TTL`` seconds per process,
so disabling a client reaches every worker within seconds, even for tokens not yet expired.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.clients import Client, ClientStore
from gateway.auth.errors import AuthError, Reason
from gateway.auth.identity import Identity
from gateway.auth.tokens import LEEWAY, MAX_TOKEN_BYTES

__all__ = ["AuthError", "BearerAuth", "ClientStatusCache", "Identity", "auth_error_response", "bearer_token"]

STATUS_TTL = 5.0
VERIFIED_CACHE = 4096  # tokens remembered as verified, least recently used dropped first
VERIFIED_MAX_AGE = 60.0
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class Verifier(Protocol):
    async def verify(self, token: str) -> Identity: ...


def bearer_token(request: Request) -> str:
    """The token of the Authorization header; AuthError(missing) when there is no bearer token."""
    values = request.headers.getlist("authorization")
    if not values:
        raise AuthError(Reason.MISSING)
    if len(values) > 1:
        raise AuthError(Reason.MALFORMED)
    if len(values[0]) > MAX_TOKEN_BYTES + 16:
        raise AuthError(Reason.TOO_LARGE)
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        # Another scheme (Basic...) carries no bearer token: RFC 6750 §3.1 asks for no error code then.
        raise AuthError(Reason.MISSING)
    token = token.strip()
    if not TOKEN68.fullmatch(token):
        raise AuthError(Reason.MALFORMED)
    return token


class ClientStatusCache:
    """Registered clients by id, read from the store at most once per ``ttl`` seconds each.
    Concurrent misses for one client share a single query."""

    def __init__(self, store: ClientStore, ttl: float = STATUS_TTL, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.store, self.ttl, self.clock = store, ttl, clock
        self._cache: dict[str, tuple[float, Client | None]] = {}
        self._pending: dict[str, asyncio.Future[Client | None]] = {}

    async def get(self, client_id: str) -> Client | None:
        hit = self._cache.get(client_id)
        if hit is not None and self.clock() - hit[0] < self.ttl:
            return hit[1]
        pending = self._pending.get(client_id)
        if pending is None:
            pending = self._pending[client_id] = asyncio.ensure_future(self._load(client_id))
            pending.add_done_callback(lambda _: self._pending.pop(client_id, None))
        return await asyncio.shield(pending)

    async def _load(self, client_id: str) -> Client | None:
        try:
            client = await self.store.get(client_id)
        except (SQLAlchemyError, OSError, TimeoutError):
            # Fail closed: a token whose client cannot be checked is not accepted, but not blamed either.
            raise AuthError(Reason.UNAVAILABLE) from None
        self._cache[client_id] = (self.clock(), client)
        return client


class BearerAuth:
    """Verify the token, then check its client is still enabled.

    ``require_registered``: for the gateway's own tokens the client must be in the store; for an
    external IdP's, clients the store does not know are accepted (the IdP vouches for them) and a
    client registered there and disabled is refused: the gateway's own kill switch.
    ``registered_id`` gives the store id of an identity (an IdP's client ``idp:his`` is ``his``
    in the store); by default its client id.

    A client sends the same token with every request for minutes: a token that verified is
    remembered (exact string, at most ``VERIFIED_MAX_AGE`` seconds, never past its ``exp``), which
    spares the signature check (most of the cost) without skipping the revocation check.
    """

    def __init__(self, verifier: Verifier, statuses: ClientStatusCache, *, require_registered: bool,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 registered_id: Callable[[Identity], str] | None = None) -> None:
        self.verifier, self.statuses, self.require_registered = verifier, statuses, require_registered
        self.registered_id = registered_id or (lambda identity: identity.client_id)
        self.clock, self.monotonic = clock, monotonic
        self._verified: OrderedDict[str, tuple[Identity, float]] = OrderedDict()

    async def authenticate(self, request: Request) -> Identity:
        identity = await self._verify(bearer_token(request))
        client = await self.statuses.get(self.registered_id(identity))
        if (client is None and self.require_registered) or (client is not None and client.disabled):
            raise AuthError(Reason.REVOKED_CLIENT)
        return identity

    async def _verify(self, token: str) -> Identity:
        hit = self._verified.get(token)
        if hit is not None:
            identity, verified_at = hit
            fresh = self.monotonic() - verified_at < VERIFIED_MAX_AGE
            if fresh and identity.expires_at.timestamp() > self.clock() - LEEWAY:
                self._verified.move_to_end(token)
                return identity
            del self._verified[token]  # verified again below: it reports expiry with its reason
        identity = await self.verifier.verify(token)
        self._verified[token] = (identity, self.monotonic())
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return identity


def auth_error_response(err: AuthError, media_type: str = "application/json") -> Response:
    """The GraphQL-shaped refusal: 401 with the RFC 6750 challenge (503 with Retry-After when the
    token could not be checked). Give ``media_type`` the type the request negotiated."""
    code = "SERVICE_UNAVAILABLE" if err.status == 503 else "UNAUTHENTICATED"
    body = {"errors": [{"message": err.message, "extensions": {"code": code, "reason": err.reason.value}}]}
    headers = {"Cache-Control": "no-store"}
    if err.status == 401:
        headers["WWW-Authenticate"] = err.www_authenticate
    else:
        headers["Retry-After"] = "5"
    return Response(orjson.dumps(body), status_code=err.status, media_type=f"{media_type}; charset=utf-8",
                    headers=headers)
