"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2).

Three methods, exactly one per request:

- ``client_secret_basic``: ``Authorization: Basic base64(urlencode(id):urlencode(secret))``;
- ``client_secret_post``: ``client_id`` and ``client_secret`` in the form body;
- ``private_key_jwt``: ``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer``
  and ``client_assertion``, a JWT the client signed with its private key: ``iss`` = ``sub`` =
  client id, ``aud`` = the token endpoint URL (or the issuer), ``exp`` at most 10 minutes ahead,
  a ``jti`` never used before (recorded in the store until the assertion expires). It is signed
  with an algorithm the registered key's type fits (``keys.client_key_algorithms``: RS256 or
  PS256 for RSA, ES256/ES384/ES512 for EC P-256/P-384/P-521, EdDSA or Ed25519 for Ed25519);
  ``none``, HS* and any other algorithm are refused before the key is used.

Every failure (unknown client, wrong secret, disabled client, bad assertion, replay) answers
the same ``invalid_client`` message, and an unknown client costs the same scrypt run as a known
one: neither the words nor the timing tell which client ids exist. The reason is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import unquote_plus

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import import_key

from gateway.auth.client_secrets import verify_secret
from gateway.auth.clients import Client, ClientStore
from gateway.auth.demo import DEMO_SECRETS
from gateway.auth.errors import AuthError
from gateway.auth.keys import ASSERTION_ALGORITHMS, client_key_algorithms
from gateway.auth.tokens import LEEWAY, peek_header

__all__ = ["ASSERTION_ALGORITHMS", "ASSERTION_TYPE", "ClientAuthenticator", "Credentials", "OAuthError",
           "credentials"]

log = logging.getLogger("hutong.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MAX_ASSERTION_LIFETIME = 600  # seconds: its jti is remembered that long
MAX_SECRET_CHARS = 512
# scrypt runs at once: a flood of token requests with wrong secrets queues here instead of
# taking every core from the GraphQL requests.
HASH_CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)
FAILED = "client authentication failed"


class OAuthError(Exception):
    """An RFC 6749 §5.2 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error, self.description, self.status = error, description, status


def invalid_client() -> OAuthError:
    return OAuthError("invalid_client", f"{FAILED}: check the client id and secret (or the client assertion)", 401)


@dataclass(frozen=True)
class Credentials:
    method: str  # client_secret_basic, client_secret_post or private_key_jwt
    client_id: str | None
    secret: str | None = None
    assertion: str | None = None


def credentials(authorization: str | None, form: Mapping[str, str]) -> Credentials:
    """How the client authenticates, from the Authorization header and the form; invalid_request
    for more than one method, invalid_client for none."""
    methods = []
    basic: tuple[str, str] | None = None
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise OAuthError("invalid_request", "authenticate the client with HTTP Basic, the form parameters "
                             "client_id and client_secret, or a client assertion")
        basic = _basic(value.strip())
        methods.append("client_secret_basic")
    if "client_secret" in form:
        methods.append("client_secret_post")
    if "client_assertion" in form or "client_assertion_type" in form:
        methods.append("private_key_jwt")
    if len(methods) > 1:
        raise OAuthError("invalid_request", f"use one client authentication method, not {' and '.join(methods)}")
    if not methods:
        raise invalid_client()
    method = methods[0]
    if basic is not None:
        if "client_id" in form and form["client_id"] != basic[0]:
            raise OAuthError("invalid_request", "client_id in the body differs from the one in the Basic credentials")
        return Credentials(method, basic[0], secret=basic[1])
    if method == "client_secret_post":
        if not form.get("client_id"):
            raise OAuthError("invalid_request", "client_secret needs client_id in the same form")
        return Credentials(method, form["client_id"], secret=form["client_secret"])
    if form.get("client_assertion_type") != ASSERTION_TYPE:
        raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE}")
    if not form.get("client_assertion"):
        raise OAuthError("invalid_request", "client_assertion is missing")
    return Credentials(method, form.get("client_id") or None, assertion=form["client_assertion"])


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError("invalid_request", "the Basic credentials are not base64 of client_id:client_secret",
                         ) from None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise OAuthError("invalid_request", "the Basic credentials are not base64 of client_id:client_secret")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


class ClientAuthenticator:
    def __init__(self, store: ClientStore, *, issuer: str, token_endpoint: str, demo: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.issuer, self.token_endpoint, self.demo, self.clock = (
            store, issuer, token_endpoint, demo, clock)
        self._hashing = asyncio.Semaphore(HASH_CONCURRENCY)

    async def authenticate(self, creds: Credentials) -> Client:
        if creds.method == "private_key_jwt":
            return await self._assertion(creds)
        return await self._secret(creds)

    async def _secret(self, creds: Credentials) -> Client:
        client_id, secret = creds.client_id or "", creds.secret or ""
        known = len(client_id) <= 64 and len(secret) <= MAX_SECRET_CHARS
        client = await self.store.get(client_id) if known else None
        async with self._hashing:
            ok = await asyncio.to_thread(verify_secret, secret[:MAX_SECRET_CHARS],
                                         client.secret_hash if client else None)
        if not ok or client is None:
            return self._refuse(client_id, "unknown client" if client is None else "wrong secret")
        if client.disabled:
            return self._refuse(client_id, "disabled client")
        if not self.demo and secret in DEMO_SECRETS:
            log.error("client %r authenticated with a documented demo secret outside demo mode: refused; "
                      "rotate its secret", client_id)
            raise invalid_client()
        return client

    async def _assertion(self, creds: Credentials) -> Client:
        assertion = creds.assertion or ""
        try:
            header = peek_header(assertion)
            payload = assertion.split(".")[1]
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (AuthError, ValueError, binascii.Error, RecursionError):
            return self._refuse(creds.client_id or "?", "malformed client assertion")
        sub = claims.get("sub") if isinstance(claims, dict) else None
        if not isinstance(sub, str) or creds.client_id not in (None, sub):
            return self._refuse(creds.client_id or "?", "assertion sub missing or not the client_id")
        client = await self.store.get(sub) if len(sub) <= 64 else None
        if client is None or not client.public_jwk:
            return self._refuse(sub, "unknown client or no registered public key")
        claims = self._verify_assertion(assertion, header, client)
        if claims is None:
            return self._refuse(sub, "client assertion signature or claims invalid")
        if client.disabled:
            return self._refuse(sub, "disabled client")
        # Kept until exp + LEEWAY: the verifier still accepts the assertion that long, so must the replay check.
        if not await self.store.use_assertion(sub, claims["jti"], int(claims["exp"]) + LEEWAY, int(self.clock())):
            return self._refuse(sub, "client assertion replayed (jti already used)")
        return client

    def _verify_assertion(self, assertion: str, header: dict[str, Any], client: Client) -> dict[str, Any] | None:
        # The algorithms follow from the key's type, never from the "alg" a stored JWK may hold
        # (older registrations stored "RS256" for every RSA key, which refused PS256).
        jwk = {k: v for k, v in (client.public_jwk or {}).items() if k not in ("alg", "kid", "use", "key_ops")}
        alg = header["alg"]
        try:
            key = import_key(jwk)
            allowed = client_key_algorithms(key)
        except Exception:  # a stored key no algorithm fits (registered before the check), or a damaged row
            log.warning("client %r has a registered key that cannot verify assertions: register a new one "
                        "(hutong client set-key)", client.client_id)
            return None
        if alg not in allowed or alg not in ASSERTION_ALGORITHMS:
            return None
        try:
            obj = jws.deserialize_compact(assertion, key, algorithms=[alg])
            claims = json.loads(obj.payload or b"")
        except (JoseError, ValueError, RecursionError):
            return None
        if not isinstance(claims, dict):
            return None
        now = self.clock()
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        exp, jti = claims.get("exp"), claims.get("jti")
        if (claims.get("iss") != client.client_id or claims.get("sub") != client.client_id
                or not ({self.token_endpoint, self.issuer} & {a for a in auds if isinstance(a, str)})
                or not isinstance(exp, int | float) or isinstance(exp, bool)
                or not now - LEEWAY < exp <= now + MAX_ASSERTION_LIFETIME
                or not isinstance(jti, str) or not 0 < len(jti) <= 255):
            return None
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value > now + LEEWAY):
                return None
        return claims

    def _refuse(self, client_id: str, why: str) -> NoReturn:
        log.info("token request refused for client %r: %s", client_id[:64], why)
        raise invalid_client()
