"""Trusting an external identity provider: its JWKS, fetched and cached, and its claims
mapped to the gateway's client, department and roles by configuration.

The JWKS is fetched on first use and again after ``JWKS_TTL``; a token naming a kid the cache
does not hold triggers one refetch, at most once per ``MIN_REFETCH`` (an IdP that rotated its
keys is picked up at once; a flood of made-up kids costs the IdP one request a minute). If the
IdP cannot be reached, the keys already held keep working.

What an IdP's token may claim is limited by configuration, because an IdP lets many people
create clients and roles the gateway's policy never heard of:

- the client id is read from exactly one claim (``client_id_claim``), never from a chain of
  fallbacks, and is **namespaced** with ``client_id_prefix`` (``idp:``): a client the IdP calls
  ``street-office-app`` is ``idp:street-office-app`` here, so it can never be a local client, a
  policy group, a ``role:`` or a ``dept:`` and get their grants. Local client ids hold no ``:``.
  (Refusing IdP ids that are registered locally would not do: the store does not know the
  policy's groups, and a client registered later would silently change who is who.)
- roles: with a ``role_map``, only the roles it lists count, mapped to the roles it names;
  without one, the IdP's roles are ignored (no roles) unless ``trust_roles = true`` says to take
  them as they are (then only names of the roles' shape);
- attributes: only those ``[auth.external.attributes]`` maps, each from its claim; a claim that
  is present but not a valid value refuses the token (``unmapped_claims``) rather than dropping
  a value a row rule depends on.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.auth.clients import CLIENT_ID, DEPARTMENT, ROLE
from gateway.auth.errors import AuthError, Reason
from gateway.auth.identity import Attributes, Identity, check_attributes
from gateway.auth.keys import PublicKey
from gateway.auth.settings import ExternalIdP
from gateway.auth.tokens import expiry, peek_header, verify_jwt

__all__ = ["ExternalVerifier", "RemoteJWKS"]

log = logging.getLogger("hutong.auth")

JWKS_TTL = 300.0
MIN_REFETCH = 60.0
RETRY_EMPTY = 5.0  # while no key set was ever fetched
MAX_JWKS_BYTES = 256 * 1024
# Which key type each algorithm family needs; a JWKS key is used only with an algorithm of its type.
KEY_TYPES = {"RS": RSAKey, "PS": RSAKey, "ES": ECKey, "Ed": OKPKey}


class RemoteJWKS:
    def __init__(self, url: str, http: httpx.AsyncClient, algorithms: tuple[str, ...], *,
                 clock: Callable[[], float] = time.monotonic, ttl: float = JWKS_TTL,
                 min_refetch: float = MIN_REFETCH) -> None:
        self.url, self.http, self.algorithms, self.clock = url, http, algorithms, clock
        self.ttl, self.min_refetch = ttl, min_refetch
        self.keys: dict[str, dict[str, Any]] = {}  # kid -> {"key": Key, "alg": str | None}
        self.fetched_at: float | None = None  # last success
        self.tried_at: float | None = None  # last attempt, success or not
        self.fetches = 0
        self._lock = asyncio.Lock()

    async def key(self, kid: str | None, alg: str) -> PublicKey | None:
        """The key for a token's kid and alg, or None (an unknown kid, or a key of another type).
        AuthError(unavailable) while no key set could ever be fetched."""
        stale = self.fetched_at is None or self.clock() - self.fetched_at >= self.ttl
        if stale and self._may_try():
            await self._refresh()
        entry = self._find(kid)
        if entry is None and self._may_try():
            await self._refresh()
            entry = self._find(kid)
        if not self.keys:
            raise AuthError(Reason.UNAVAILABLE)
        if entry is None or alg not in self.algorithms or entry["alg"] not in (None, alg):
            return None
        if not isinstance(entry["key"], KEY_TYPES.get(alg[:2], ())):
            return None
        return PublicKey(kid=kid or "", alg=alg, key=entry["key"])

    def _may_try(self) -> bool:
        # Without any key set, retry soon; with one, refetch at most once per min_refetch.
        wait = self.min_refetch if self.keys else RETRY_EMPTY
        return self.tried_at is None or self.clock() - self.tried_at >= wait

    def _find(self, kid: str | None) -> dict[str, Any] | None:
        if kid is None:
            return next(iter(self.keys.values())) if len(self.keys) == 1 else None
        return self.keys.get(kid)

    async def _refresh(self) -> None:
        """Fetch the key set; on failure keep the one held (logged, never raised)."""
        asked = self.fetches
        async with self._lock:
            if self.fetches != asked:
                return  # another request fetched while this one waited for the lock
            self.tried_at = self.clock()
            self.fetches += 1
            try:
                self.keys = await self._fetch()
                self.fetched_at = self.clock()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("cannot fetch the identity provider's JWKS from %s: %s", self.url, type(exc).__name__)

    async def _fetch(self) -> dict[str, dict[str, Any]]:
        response = await self.http.get(self.url, headers={"Accept": "application/json"})
        response.raise_for_status()
        if len(response.content) > MAX_JWKS_BYTES:
            raise ValueError("JWKS too large")
        doc = response.json()
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys: dict[str, dict[str, Any]] = {}
        for jwk in doc["keys"]:
            # Signature keys of asymmetric types only: an "oct" key here would be a shared secret.
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
                continue
            cls = {"RSA": RSAKey, "EC": ECKey, "OKP": OKPKey}.get(jwk.get("kty", ""))
            if cls is None:
                continue
            try:
                public = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi", "oth")}
                key = cls.import_key(public)
            except Exception:  # a malformed entry spoils only itself (RFC 7517 §5)
                continue
            kid = jwk.get("kid") if isinstance(jwk.get("kid"), str) else key.thumbprint()
            keys[kid] = {"key": key, "alg": jwk.get("alg") if isinstance(jwk.get("alg"), str) else None}
        if not keys:
            raise ValueError("no usable signature keys")
        return keys


class ExternalVerifier:
    """Verifies the IdP's access tokens and maps their claims to an Identity."""

    def __init__(self, idp: ExternalIdP, jwks: RemoteJWKS, clock: Callable[[], float] = time.time) -> None:
        self.idp, self.jwks, self.clock = idp, jwks, clock

    @property
    def issuer(self) -> str:
        return self.idp.issuer

    async def verify(self, token: str) -> Identity:
        header = peek_header(token)
        key = await self.jwks.key(header.get("kid"), header["alg"])
        claims = verify_jwt(token, header, key, issuer=self.idp.issuer, audience=self.idp.audience,
                            now=self.clock(), token_types=self.idp.token_types)
        client_id = _claim(claims, self.idp.client_id_claim)
        department = _claim(claims, self.idp.department_claim)
        if self.idp.department_map:
            department = self.idp.department_map.get(department) if isinstance(department, str) else None
        if not isinstance(client_id, str) or not isinstance(department, str):
            raise AuthError(Reason.UNMAPPED_CLAIMS)
        # The same shapes as registered clients: an IdP-issued "dept:health" or "a|b" must not turn
        # into policy subject names or row-rule values.
        if not CLIENT_ID.fullmatch(client_id) or not DEPARTMENT.fullmatch(department):
            raise AuthError(Reason.UNMAPPED_CLAIMS)
        return Identity(client_id=self.idp.client_id_prefix + client_id, department=department,
                        roles=self._roles(claims),
                        token_id=claims.get("jti") if isinstance(claims.get("jti"), str) else None,
                        issuer=self.idp.issuer, expires_at=expiry(claims), attributes=self._attributes(claims))

    def registered_id(self, identity: Identity) -> str:
        """The client store entry that can disable this IdP client: its id without the prefix."""
        return identity.client_id.removeprefix(self.idp.client_id_prefix)

    def _roles(self, claims: dict[str, Any]) -> frozenset[str]:
        raw = _claim(claims, self.idp.roles_claim)
        if isinstance(raw, str):
            raw = raw.split()  # a space-separated list, like "scope"
        values = [r for r in raw if isinstance(r, str)] if isinstance(raw, list) else []
        if self.idp.role_map:
            # Only roles the configuration maps count: an IdP role nobody mapped grants nothing here.
            return frozenset(mapped for r in values for mapped in self.idp.role_map.get(r, ()))
        if self.idp.trust_roles:
            return frozenset(r for r in values if ROLE.fullmatch(r))
        return frozenset()  # neither mapped nor trusted: an IdP's role names mean nothing here

    def _attributes(self, claims: dict[str, Any]) -> Attributes:
        found = {}
        for name, claim in self.idp.attributes.items():
            value = _claim(claims, claim)
            if value is None:
                continue  # absent: the identity has no such attribute
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # a numeric code, e.g. an administrative division code
            found[name] = value
        try:
            return check_attributes(found)
        except ValueError:
            raise AuthError(Reason.UNMAPPED_CLAIMS) from None


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by name, or by dotted path into nested objects (``realm_access.roles``). A name
    that exists as is wins, so namespaced claims such as ``https://city.gov/department`` work."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value
