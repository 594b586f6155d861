"""Client authentication at the token endpoint (RFC 6749 §2.3, RFC 7523 §2.2), on Authlib.

Three methods, exactly one per request:

- ``client_secret_basic`` and ``client_secret_post``: Authlib's own
  (``authlib.oauth2.rfc6749.authenticate_client``), which read the credentials and call
  ``OAuthClient.check_client_secret``: a salted scrypt hash compared in constant time;
- ``private_key_jwt``: Authlib's ``JWTBearerClientAssertion`` (RFC 7523), registered under that
  name, with hutong's rules where Authlib leaves them to the server (``PrivateKeyJWT``): ``aud``
  is the token endpoint URL or the issuer, ``exp`` at most 10 minutes ahead, a ``jti`` never used
  before (recorded in the store until the assertion expires), and an algorithm the registered
  key's type fits (``keys.client_key_algorithms``: RS256 or PS256 for RSA, ES256/ES384/ES512 for
  EC P-256/P-384/P-521, EdDSA or Ed25519 for Ed25519); ``none``, HS* and any other algorithm are
  refused before the key is used.

Authlib's server is synchronous and hutong's client store is asynchronous: the token endpoint
runs Authlib in a worker thread, and ``Clients`` runs each store call on the event loop and waits.

Every failure (unknown client, wrong secret, disabled client, bad assertion, replay) answers the
same ``invalid_client`` (``token_endpoint``), and an unknown client costs the same scrypt run as a
known one: ``Clients.query`` answers an unknown id with a client that has no secret, so Authlib's
secret check still runs. Neither the words nor the timing tell which client ids exist. The
reason is logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import logging
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote

from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7523.client import ASSERTION_TYPE
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import import_key

from gateway.auth.client_secrets import verify_secret
from gateway.auth.clients import CLIENT_ID, Client, ClientStore
from gateway.auth.demo import DEMO_SECRETS
from gateway.auth.keys import ASSERTION_ALGORITHMS, Key, client_key_algorithms
from gateway.auth.tokens import LEEWAY

__all__ = ["ASSERTION_ALGORITHMS", "ASSERTION_TYPE", "AUTH_METHODS", "Clients", "OAuthClient", "PrivateKeyJWT",
           "check_one_method", "oauth_text"]

log = logging.getLogger("hutong.auth")

T = TypeVar("T")
AUTH_METHODS = ["client_secret_basic", "client_secret_post", "private_key_jwt"]
MAX_ASSERTION_LIFETIME = 600  # seconds: its jti is remembered that long
MAX_JTI_CHARS = 255  # the store's column
MAX_SECRET_CHARS = 512
STORE_TIMEOUT = 10.0  # seconds a token request waits for the client store before answering 503
# scrypt runs at once: a flood of token requests with wrong secrets queues here instead of
# taking every core from the GraphQL requests.
HASH_CONCURRENCY = max(1, (os.cpu_count() or 2) // 2)


class Clients:
    """The client store as Authlib's synchronous server sees it.

    Authlib calls ``query_client``, ``check_client_secret`` and ``validate_jti`` from the token
    endpoint's worker thread; each store call runs on the event loop (``bind``), which stays free
    while the thread waits."""

    def __init__(self, store: ClientStore, *, demo: bool, clock: Callable[[], float] = time.time,
                 timeout: float = STORE_TIMEOUT) -> None:
        self.store, self.demo, self.clock, self.timeout = store, demo, clock, timeout
        self.loop: asyncio.AbstractEventLoop | None = None
        self._hashing = threading.BoundedSemaphore(HASH_CONCURRENCY)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a store coroutine on the event loop from a worker thread; TimeoutError after ``timeout``."""
        if self.loop is None:
            coro.close()
            raise RuntimeError("Clients.bind(loop) was not called")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(self.timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise

    def query(self, client_id: Any) -> OAuthClient:
        """The client ``client_id`` names. An unknown id (or one no client can have) gets a client
        without secret or key: Authlib then checks the secret against nothing, which costs one
        scrypt run like a real check, and refuses."""
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            return OAuthClient(None, str(client_id)[:64], self)
        return OAuthClient(self.run(self.store.get(client_id)), client_id, self)

    def check_secret(self, client: OAuthClient, secret: str) -> bool:
        stored = client.client.secret_hash if client.client else None
        if len(secret) > MAX_SECRET_CHARS:
            stored = None  # checked against nothing, at the same cost
        with self._hashing:
            ok = verify_secret(secret[:MAX_SECRET_CHARS], stored)
        if not ok:
            refused(client.client_id, "unknown client" if client.client is None else "wrong secret")
            return False
        if not self.demo and secret in DEMO_SECRETS:
            log.error("client %r authenticated with a documented demo secret outside demo mode: refused; "
                      "rotate its secret", client.client_id)
            return False
        return True

    def use_assertion(self, client_id: str, jti: str, expires_at: int) -> bool:
        return self.run(self.store.use_assertion(client_id, jti, expires_at, int(self.clock())))


class OAuthClient(ClientMixin):
    """A registered client as Authlib's ``ClientMixin``; ``client`` is None for an unknown id."""

    def __init__(self, client: Client | None, client_id: str, clients: Clients) -> None:
        self.client, self.client_id, self.clients = client, client_id, clients

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None  # machines only: no authorization endpoint, no redirects

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"

    def get_allowed_scope(self, scope: str | None) -> str:
        # No scopes: what a client may see is the policy's business (per department, role,
        # purpose and field), not the token's. A requested scope is ignored, as before.
        return ""

    def check_client_secret(self, client_secret: str) -> bool:
        return self.clients.check_secret(self, client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.client is None:
            return False
        if endpoint != "token" or method not in self.client.auth_methods:
            refused(self.client_id, f"{method} is not registered for this client")
            return False
        if self.client.disabled:
            refused(self.client_id, "disabled client")
            return False
        return True


class PrivateKeyJWT(JWTBearerClientAssertion):
    """``private_key_jwt`` (RFC 7523 §2.2): Authlib's client assertion check, with the key, its
    algorithms, the audiences and the replay record hutong's."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, clients: Clients, *, issuer: str, token_endpoint: str,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(validate_jti=True, leeway=LEEWAY)
        self.clients, self.issuer, self.token_endpoint, self.clock = clients, issuer, token_endpoint, clock

    def __call__(self, query_client: Callable[[str], OAuthClient], request: OAuth2Request) -> OAuthClient | None:
        client = super().__call__(query_client, request)
        claimed = request.form.get("client_id")
        if client is not None and claimed and claimed != client.get_client_id():
            raise InvalidClientError(description="client_id is not the client assertion's sub")
        return client

    def get_audiences(self) -> list[str]:
        return [self.token_endpoint, self.issuer]

    def resolve_client_public_key(self, client: OAuthClient) -> Key:
        jwk = client.client.public_jwk if client.client else None
        if not jwk:
            raise InvalidClientError(description="unknown client or no registered public key")
        # The algorithms follow from the key's type, never from the "alg" a stored JWK may hold
        # (older registrations stored "RS256" for every RSA key, which refused PS256).
        try:
            key: Key = import_key({k: v for k, v in jwk.items() if k not in ("alg", "kid", "use", "key_ops")})
            client_key_algorithms(key)
        except Exception:  # a stored key no algorithm fits (registered before the check), or a damaged row
            log.warning("client %r has a registered key that cannot verify assertions: register a new one "
                        "(hutong client set-key)", client.client_id)
            raise InvalidClientError(description="the registered key cannot verify assertions") from None
        return key

    def process_assertion_claims(self, assertion: str, resolve_key: Key) -> dict[str, Any]:
        # Authlib decodes with joserfc's default algorithms, its "recommended" ones (HS256, RS256,
        # ES256): that would refuse PS256, ES384, ES512 and Ed25519, and allow HS256 for any key
        # joserfc accepts for it. Authlib offers no hook for the algorithms, so this one call is
        # hutong's: only what the registered key's type allows, checked before the key is used.
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=client_key_algorithms(resolve_key))
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        self.verify_claims(token.claims)  # Authlib's, extended below
        return token.claims

    def verify_claims(self, claims: dict[str, Any]) -> None:
        # Authlib checks iss, sub (equal), aud, exp, nbf and iat with the leeway, then the jti.
        # hutong bounds what it must remember before the jti is recorded: exp at most 10 minutes
        # ahead, a jti that fits the store.
        exp, jti = claims.get("exp"), claims.get("jti")
        if not isinstance(exp, int | float) or isinstance(exp, bool) or exp > self.clock() + MAX_ASSERTION_LIFETIME:
            raise InvalidClientError(description=f"exp is missing or more than {MAX_ASSERTION_LIFETIME} s ahead")
        if not isinstance(jti, str) or not 0 < len(jti) <= MAX_JTI_CHARS:
            raise InvalidClientError(description="jti is missing or not a string of 1 to 255 characters")
        super().verify_claims(claims)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # Kept until exp + LEEWAY: Authlib accepts the assertion that long, so must the replay check.
        # In the store rather than in memory, so a replay to another worker or node is refused too.
        return self.clients.use_assertion(claims["sub"], jti, int(claims["exp"]) + LEEWAY)


def check_one_method(headers: Mapping[str, str], form: Mapping[str, str]) -> None:
    """``invalid_request`` unless the request uses at most one client authentication method and
    uses it well-formed. Authlib takes the first method that succeeds and skips a malformed one;
    RFC 6749 §2.3 and §5.2 make both a request error. No method at all is left to Authlib
    (``invalid_client``)."""
    methods = []
    basic_id: str | None = None
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "basic":
            raise InvalidRequestError("authenticate the client with HTTP Basic, the form parameters "
                                      "client_id and client_secret, or a client assertion")
        basic_id = _basic_client_id(value.strip())
        methods.append("client_secret_basic")
    if "client_secret" in form:
        methods.append("client_secret_post")
    if "client_assertion" in form or "client_assertion_type" in form:
        methods.append("private_key_jwt")
    if len(methods) > 1:
        raise InvalidRequestError(f"use one client authentication method, not {' and '.join(methods)}")
    if basic_id is not None and "client_id" in form and form["client_id"] != basic_id:
        raise InvalidRequestError("client_id in the body differs from the one in the Basic credentials")
    if methods == ["client_secret_post"] and not form.get("client_id"):
        raise InvalidRequestError("client_secret needs client_id in the same form")
    if methods == ["private_key_jwt"]:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise InvalidRequestError(f"client_assertion_type must be {ASSERTION_TYPE}")
        if not form.get("client_assertion"):
            raise InvalidRequestError("client_assertion is missing")


def _basic_client_id(value: str) -> str:
    """The client id of Basic credentials, decoded as Authlib decodes it (RFC 6749 §2.3.1:
    percent-encoded, then base64); invalid_request unless they are ``base64(id:secret)``."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidRequestError("the Basic credentials are not base64 of client_id:client_secret") from None
    client_id, sep, _ = decoded.partition(":")
    if not sep:
        raise InvalidRequestError("the Basic credentials are not base64 of client_id:client_secret")
    return unquote(client_id)


def refused(client_id: str, why: str) -> None:
    log.info("token request refused for client %r: %s", client_id[:64], why)


def oauth_text(text: str) -> str:
    """``text`` fit for an error_description (RFC 6749 §5.2: printable ASCII without '"' and '\\'),
    which Authlib's errors insist on."""
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)
