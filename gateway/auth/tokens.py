"""JWT access tokens (RFC 9068): issued by the token endpoint (Authlib's generator), verified on
every request (hutong's verifier, below).

Verification is in a fixed order, and the claims are judged only once the signature holds:

1. size (``too_large``) and shape (``malformed``): three base64url parts, a JSON header;
2. the key the header's ``kid`` names, and the algorithm *that key* signs with; the header's
   ``alg`` must equal it. ``none``, HS256 and every algorithm not pinned are refused before any
   key is touched, which is what defeats the HS/RS confusion attack (``bad_signature``);
3. the signature (``bad_signature``);
4. ``typ`` is ``at+jwt`` (``unsupported_token_type``: an ID token or a client assertion signed
   by the same key is not an access token), then ``iss``, ``aud``, ``exp``, ``nbf``/``iat``,
   then the claims the gateway needs (``malformed`` when absent).

The gateway's tokens carry the client's ``attributes`` (a JSON object of string -> string, ``{}``
when it has none); a token without the claim (issued before attributes existed) has none.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any

from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, import_key

from gateway.auth.clients import Client
from gateway.auth.errors import AuthError, Reason
from gateway.auth.identity import EMPTY, Attributes, Identity, check_attributes
from gateway.auth.keys import KeyRing, PublicKey

__all__ = ["LEEWAY", "MAX_TOKEN_BYTES", "AccessTokenGenerator", "LocalVerifier", "expiry", "peek_header",
           "verify_jwt"]

MAX_TOKEN_BYTES = 8192  # ours are under 1 KiB; anything near this is not a token we would accept
LEEWAY = 30  # seconds of clock difference tolerated between nodes (and with an external IdP)
ACCESS_TOKEN_TYPES = ("at+jwt", "application/at+jwt")
Clock = Callable[[], float]
# joserfc errors about the token's shape; every other one (algorithm, key type, signature) is bad_signature.
SHAPE_ERRORS = {"decode_error", "exceeded_size", "invalid_header_value", "missing_crit_header", "missing_header",
                "unsupported_header", "missing_algorithm", "invalid_payload"}


class AccessTokenGenerator(JWTBearerTokenGenerator):
    """RFC 9068 access tokens, made by Authlib's ``JWTBearerTokenGenerator``: header ``typ: at+jwt``,
    ``alg`` and ``kid`` of the gateway's signing key (asymmetric: ES256 by default, RS256 for an RSA
    key); claims ``iss``, ``sub`` = ``client_id``, ``aud``, ``iat``, ``exp``, ``jti`` and ``scope``
    (empty: no scopes), plus hutong's ``department``, ``roles``, ``attributes`` and ``nbf``.

    Authlib reads ``time.time()`` itself and sets no ``nbf``: ``iat``, ``nbf`` and ``exp`` come
    from one reading of the gateway's clock here instead (so nbf == iat, and tests move time).
    Registered with the token endpoint as its generator (``AuthorizationServer.register_token_generator``)."""

    def __init__(self, keys: KeyRing, issuer: str, audience: str, ttl: int, clock: Clock = time.time) -> None:
        signing = keys.signing
        super().__init__(issuer, alg=signing.alg, expires_generator=ttl)
        self.audience, self.ttl, self.clock = audience, ttl, clock
        # A key set holding the signing key with its kid: joserfc then puts the kid in the header.
        self.jwks = KeySet([import_key({**signing.key.as_dict(private=True), "kid": signing.kid,
                                        "alg": signing.alg, "use": "sig"})])

    def get_jwks(self) -> KeySet:
        return self.jwks

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
        return self.audience  # Authlib's default is the client id: the token is for the gateway

    def get_jti(self, client: Any, grant_type: str, user: Any, scope: Any) -> str:
        return uuid.uuid4().hex  # 128 random bits, as the audit trail has always recorded them

    def get_extra_claims(self, client: Any, grant_type: str, user: Any, scope: Any) -> dict[str, Any]:
        registered: Client = client.client
        now = int(self.clock())
        return {"department": registered.department, "roles": list(registered.roles),
                "attributes": dict(registered.attributes), "iat": now, "nbf": now, "exp": now + self.ttl}


class LocalVerifier:
    """Verifies the tokens this gateway issued, with the keys of its KeyRing."""

    def __init__(self, keys: KeyRing, issuer: str, audience: str, clock: Clock = time.time) -> None:
        self.keys, self.issuer, self.audience, self.clock = keys, issuer, audience, clock

    async def verify(self, token: str) -> Identity:
        header = peek_header(token)
        kid = header.get("kid")
        key = self.keys.by_kid.get(kid) if isinstance(kid, str) else None
        claims = verify_jwt(token, header, key, issuer=self.issuer, audience=self.audience, now=self.clock())
        client_id, department, roles, jti = (claims.get(k) for k in ("client_id", "department", "roles", "jti"))
        if not (isinstance(client_id, str) and client_id and claims.get("sub") == client_id
                and isinstance(department, str) and isinstance(jti, str)
                and isinstance(roles, list) and all(isinstance(r, str) for r in roles)):
            raise AuthError(Reason.MALFORMED)
        return Identity(client_id=client_id, department=department, roles=frozenset(roles), token_id=jti,
                        issuer=self.issuer, expires_at=expiry(claims), attributes=_attributes(claims))


def _attributes(claims: Mapping[str, Any]) -> Attributes:
    raw = claims.get("attributes")
    if raw is None:
        return EMPTY
    if not isinstance(raw, dict):
        raise AuthError(Reason.MALFORMED)
    try:
        return check_attributes(raw)
    except ValueError:
        raise AuthError(Reason.MALFORMED) from None


def peek_header(token: str) -> dict[str, Any]:
    """The JOSE header, unverified: only to pick the key. ``malformed`` unless it is a compact JWS."""
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError(Reason.TOO_LARGE)
    parts = token.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        raise AuthError(Reason.MALFORMED)
    try:
        header = json.loads(_b64decode(parts[0]))
    except (ValueError, binascii.Error, RecursionError):
        raise AuthError(Reason.MALFORMED) from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise AuthError(Reason.MALFORMED)
    if "kid" in header and not isinstance(header["kid"], str):
        raise AuthError(Reason.MALFORMED)
    return header


def verify_jwt(token: str, header: Mapping[str, Any], key: PublicKey | None, *, issuer: str, audience: str,
               now: float, token_types: Collection[str] = ACCESS_TOKEN_TYPES) -> dict[str, Any]:
    """Verify a token whose header ``peek_header`` returned, with the key its kid resolved to.
    Returns the claims, or raises AuthError naming the first check that failed."""
    if key is None or header["alg"] != key.alg:
        raise AuthError(Reason.BAD_SIGNATURE)
    try:
        obj = jws.deserialize_compact(token, key.key, algorithms=[key.alg], registry=_registry(key.alg))
    except JoseError as exc:
        raise AuthError(Reason.MALFORMED if exc.error in SHAPE_ERRORS else Reason.BAD_SIGNATURE) from None
    try:
        claims = json.loads(obj.payload or b"")
    except (ValueError, RecursionError):
        raise AuthError(Reason.MALFORMED) from None
    if not isinstance(claims, dict):
        raise AuthError(Reason.MALFORMED)
    typ = header.get("typ")
    if not isinstance(typ, str) or typ.lower() not in token_types:
        raise AuthError(Reason.UNSUPPORTED_TOKEN_TYPE)
    if claims.get("iss") != issuer:
        raise AuthError(Reason.WRONG_ISSUER)
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise AuthError(Reason.WRONG_AUDIENCE)
    exp = claims.get("exp")
    if not _numeric(exp):
        raise AuthError(Reason.MALFORMED)
    if exp <= now - LEEWAY:
        raise AuthError(Reason.EXPIRED)
    for name in ("nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if not _numeric(value):
            raise AuthError(Reason.MALFORMED)
        if value > now + LEEWAY:
            raise AuthError(Reason.NOT_YET_VALID)
    return claims


def expiry(claims: Mapping[str, Any]) -> datetime:
    """``exp`` as a UTC datetime; an exp beyond what a datetime holds is ``malformed``, not a crash."""
    try:
        return datetime.fromtimestamp(claims["exp"], UTC)
    except (OverflowError, ValueError, OSError):
        raise AuthError(Reason.MALFORMED) from None


def _registry(alg: str) -> jws.JWSRegistry:
    registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
    # joserfc's default 512-byte header limit is below what some IdPs send (x5c chains);
    # the whole token is already capped at MAX_TOKEN_BYTES.
    registry.max_header_length = MAX_TOKEN_BYTES
    return registry


def _numeric(value: Any) -> bool:
    return not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float)
                                             and math.isfinite(value)))


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
