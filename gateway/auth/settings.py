"""The ``[auth]`` section of the configuration file.

```toml
[auth]
issuer = "https://gateway.city.gov.cn"      # the gateway's public base URL; ${VAR} allowed
audience = "hutong"
token_ttl = 300                             # seconds, at most 3600
signing_key = "run/signing-key.pem"         # EC P-256 or RSA private key (PEM), relative to this file
previous_keys = ["run/signing-key-2025.pem"]  # still published and accepted while their tokens live
client_store = "sqlite+aiosqlite:///run/clients.sqlite"   # or postgresql+asyncpg://...${PASSWORD}...
extra_departments = ["audit", "admin"]      # offices that call the gateway but are not in the catalogue

[auth.external]                             # trust this identity provider instead of issuing tokens
issuer = "https://idp.city.gov.cn/realms/gov"
audience = "hutong"
jwks_url = "https://idp.city.gov.cn/realms/gov/protocol/openid-connect/certs"
client_id_claim = "azp"                     # exactly this claim; no fallback to other claims
client_id_prefix = "idp:"                   # the IdP's clients are "idp:NAME" here, never a local name
department_claim = "department"
roles_claim = "realm_access.roles"

[auth.external.role_map]                    # without it the IdP's roles grant nothing (or trust_roles = true)
street-clerk = "street-office"

[auth.external.attributes]                  # attribute name = the claim holding it
district = "district"
```
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from catalog.loader import expand_env
from gateway.auth.clients import DEPARTMENT, ROLE
from gateway.auth.identity import ATTRIBUTE_NAME
from gateway.config import ConfigError, Settings
from policies.validate import IDP_PREFIX

__all__ = ["ASYMMETRIC_ALGORITHMS", "AuthSettings", "ExternalIdP"]

MAX_TOKEN_TTL = 3600
# What a token may be signed with. Never HS* (a shared secret: with a published public key it
# becomes the HS/RS confusion attack) and never "none".
ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
                         "EdDSA", "Ed25519")
AUTH_KEYS = {"issuer", "audience", "token_ttl", "signing_key", "previous_keys", "client_store", "external",
             "extra_departments"}
EXTERNAL_KEYS = {"issuer", "audience", "jwks_url", "department_claim", "roles_claim", "client_id_claim",
                 "client_id_prefix", "algorithms", "token_types", "department_map", "role_map", "trust_roles",
                 "trust_department",
                 "attributes"}
# "idp:" or "idp-NAME:": policies name an IdP's clients with it (policies/validate.py knows the form),
# and it can never be role:, dept: or group:.
CLIENT_ID_PREFIX = re.compile(IDP_PREFIX.pattern + ":")


@dataclass(frozen=True)
class ExternalIdP:
    """An identity provider the gateway trusts instead of issuing its own tokens."""

    issuer: str
    audience: str
    jwks_url: str
    department_claim: str = "department"  # a claim name, or a dotted path into nested claims
    roles_claim: str = "roles"
    # Exactly this claim names the client (RFC 9068 §2.2: client_id); no fallback to azp or sub, whose
    # meaning differs between IdPs (a sub may name a user, or anything the IdP lets someone create).
    client_id_claim: str = "client_id"
    # Prepended to the IdP's client id, so that it can never be a local client's or a policy group's name.
    client_id_prefix: str = "idp:"
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256", "EdDSA", "Ed25519")
    token_types: tuple[str, ...] = ("at+jwt", "application/at+jwt")  # add "JWT" for IdPs not following RFC 9068
    department_map: Mapping[str, str] = field(default_factory=dict)  # IdP value -> department code
    role_map: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # IdP role -> hutong roles
    trust_roles: bool = False  # without a role_map: take the IdP's role names as they are (else no roles)
    attributes: Mapping[str, str] = field(default_factory=dict)  # attribute name -> claim (or dotted path)


@dataclass(frozen=True)
class AuthSettings:
    issuer: str
    audience: str
    token_ttl: int
    signing_key: Path
    previous_keys: tuple[Path, ...]
    client_store: str  # SQLAlchemy async URL, relative SQLite paths resolved
    demo: bool
    external: ExternalIdP | None = None
    # Departments a client may act for besides the catalogue's: offices that hold no data (audit, admin).
    extra_departments: tuple[str, ...] = ()

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/oauth/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> AuthSettings:
        return parse_auth(settings.auth, base_dir=settings.base_dir, demo=settings.demo,
                          default_issuer=f"http://{settings.host}:{settings.port}", where=str(settings.path),
                          environ=environ)


def parse_auth(raw: Mapping[str, Any], *, base_dir: Path, demo: bool, default_issuer: str, where: str = "config",
               environ: Mapping[str, str] | None = None) -> AuthSettings:
    at = f"{where}: [auth]"
    _no_unknown(raw, AUTH_KEYS, at)

    def text(key: str, default: str, section: Mapping[str, Any] = raw, place: str = at) -> str:
        value = section.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{place}: {key} must be a non-empty string")
        try:
            return expand_env(value, dict(environ) if environ is not None else None).strip()
        except KeyError as exc:
            raise ConfigError(f"{place}: {key}: {exc.args[0]}") from None

    issuer = _url(text("issuer", default_issuer), f"{at} issuer").rstrip("/")
    issuer_host = urlsplit(issuer).hostname or ""
    if urlsplit(issuer).scheme != "https" and not _loopback(issuer_host) and not demo:
        # Tokens name it and clients send secrets to it: over plain HTTP both travel in clear.
        raise ConfigError(f"{at}: issuer must be an https URL (the gateway's public address, e.g. behind a TLS "
                          f"proxy), or a loopback address for local use; got {issuer!r}")
    ttl = raw.get("token_ttl", 300)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or not 1 <= ttl <= MAX_TOKEN_TTL:
        raise ConfigError(f"{at}: token_ttl must be a whole number of seconds from 1 to {MAX_TOKEN_TTL}, "
                          f"got {ttl!r}: short-lived tokens limit what a leaked one is worth")
    previous = raw.get("previous_keys", [])
    if not isinstance(previous, list) or not all(isinstance(p, str) and p for p in previous):
        raise ConfigError(f"{at}: previous_keys must be a list of PEM file paths")
    external = raw.get("external")
    if external is not None and not isinstance(external, dict):
        raise ConfigError(f"{at}: external must be a table: [auth.external]")
    extra = raw.get("extra_departments", [])
    if not isinstance(extra, list) or not all(isinstance(d, str) and DEPARTMENT.fullmatch(d) for d in extra):
        raise ConfigError(f"{at}: extra_departments must be a list of department codes (lower-case letters, "
                          "digits, '_' or '-'), e.g. [\"audit\", \"admin\"]")
    return AuthSettings(
        issuer=issuer,
        audience=text("audience", "hutong"),
        token_ttl=ttl,
        signing_key=(base_dir / text("signing_key", "run/signing-key.pem")).resolve(),
        previous_keys=tuple((base_dir / p).resolve() for p in previous),
        client_store=_store_url(text("client_store", "sqlite+aiosqlite:///run/clients.sqlite"), base_dir,
                                f"{at} client_store"),
        demo=demo,
        external=None if external is None else _external(external, text, text("audience", "hutong"),
                                                         f"{where}: [auth.external]"),
        extra_departments=tuple(dict.fromkeys(extra)),
    )


def _external(raw: Mapping[str, Any], text: Any, default_audience: str, at: str) -> ExternalIdP:
    _no_unknown(raw, EXTERNAL_KEYS, at)
    for key in ("issuer", "jwks_url"):
        if key not in raw:
            raise ConfigError(f"{at}: {key} is required: the identity provider's issuer and its JWKS URL")
    jwks_url = _url(text("jwks_url", "", raw, at), f"{at} jwks_url")
    host = urlsplit(jwks_url).hostname or ""
    if urlsplit(jwks_url).scheme != "https" and not _loopback(host):
        raise ConfigError(f"{at}: jwks_url must use https (the keys it serves decide who gets in); "
                          "plain http is accepted only on the loopback interface")
    algorithms = tuple(_strings(raw, "algorithms", ExternalIdP.algorithms, at))
    refused = [a for a in algorithms if a not in ASYMMETRIC_ALGORITHMS]
    if refused:
        raise ConfigError(f"{at}: algorithms {', '.join(refused)} not accepted; use asymmetric ones: "
                          f"{', '.join(ASYMMETRIC_ALGORITHMS)}")
    dept_map = raw.get("department_map", {})
    if not isinstance(dept_map, dict) or not all(isinstance(v, str) for v in dept_map.values()):
        raise ConfigError(f"{at}: department_map must be a table of IdP value = \"department code\"")
    if not all(isinstance(v, str) and DEPARTMENT.fullmatch(v) for v in dept_map.values()):
        raise ConfigError(f"{at}: department_map values must be department codes (lower-case letters, digits, "
                          "'_' or '-')")
    raw_role_map = raw.get("role_map", {})
    if not isinstance(raw_role_map, dict):
        raise ConfigError(f"{at}: role_map must be a table of IdP role = \"role\" or [\"role\", ...]")
    role_map: dict[str, tuple[str, ...]] = {}
    for k, v in raw_role_map.items():
        roles = [v] if isinstance(v, str) else v
        if not isinstance(roles, list) or not all(isinstance(r, str) and ROLE.fullmatch(r) for r in roles):
            raise ConfigError(f"{at}: role_map.{k} must be a role name or a list of role names (lower-case "
                              "letters, digits, '_' or '-')")
        role_map[str(k)] = tuple(roles)
    trust_roles = raw.get("trust_roles", False)
    if not isinstance(trust_roles, bool):
        raise ConfigError(f"{at}: trust_roles must be true or false")
    if trust_roles and role_map:
        raise ConfigError(f"{at}: trust_roles and role_map exclude each other: with a role_map only the roles it "
                          "lists count; trust_roles = true takes every IdP role as it is")
    attributes = raw.get("attributes", {})
    if not isinstance(attributes, dict) or not all(isinstance(c, str) and c for c in attributes.values()):
        raise ConfigError(f"{at}: attributes must be a table of attribute name = \"claim name\"")
    bad = [n for n in attributes if not ATTRIBUTE_NAME.fullmatch(n)]
    if bad:
        raise ConfigError(f"{at}: attribute name(s) {', '.join(map(repr, bad))}: use a lower-case letter, then "
                          "lower-case letters, digits or '_'")
    prefix = text("client_id_prefix", ExternalIdP.client_id_prefix, raw, at)
    if not CLIENT_ID_PREFIX.fullmatch(prefix):
        raise ConfigError(f"{at}: client_id_prefix {prefix!r}: use \"idp:\" (the default) or \"idp-NAME:\" "
                          "for a second provider, so the IdP's client ids can never be a local client's, a role's, "
                          "a department's or a policy group's name")
    trust_department = raw.get("trust_department", False)
    if not isinstance(trust_department, bool):
        raise ConfigError(f"{at}: trust_department must be true or false")
    if not dept_map and not trust_department:
        # Any client the IdP registers could otherwise claim "health" and act as the health department.
        raise ConfigError(f"{at}: give a department_map (IdP value = \"department code\"), or trust_department = "
                          "true if the IdP's department values are the catalogue's codes and only it sets them")
    return ExternalIdP(
        issuer=_url(text("issuer", "", raw, at), f"{at} issuer"),  # compared exactly: IdPs differ on a final /
        audience=text("audience", default_audience, raw, at),
        jwks_url=jwks_url,
        department_claim=text("department_claim", "department", raw, at),
        roles_claim=text("roles_claim", "roles", raw, at),
        client_id_claim=text("client_id_claim", ExternalIdP.client_id_claim, raw, at),
        client_id_prefix=prefix,
        algorithms=algorithms,
        token_types=tuple(t.lower() for t in _strings(raw, "token_types", ExternalIdP.token_types, at)),
        department_map={str(k): v for k, v in dept_map.items()},
        role_map=role_map,
        trust_roles=trust_roles,
        attributes={str(k): v for k, v in attributes.items()},
    )


def _no_unknown(raw: Mapping[str, Any], known: set[str], at: str) -> None:
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))} "
                          "(see docs/identity.md)")


def _strings(raw: Mapping[str, Any], key: str, default: tuple[str, ...], at: str) -> list[str]:
    value = raw.get(key, list(default))
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{at}: {key} must be a non-empty list of strings")
    return value


def _url(value: str, at: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(f"{at} must be an http(s) URL without query or fragment, got {value!r}")
    return value


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _store_url(value: str, base_dir: Path, at: str) -> str:
    """Relative SQLite paths are relative to the configuration file, like every other path in it."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise ConfigError(f"{at} is not a SQLAlchemy URL (e.g. sqlite+aiosqlite:///run/clients.sqlite or "
                          "postgresql+asyncpg://user:${PASSWORD}@host/db)") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"{at}: the client store runs on SQLite or PostgreSQL, got {url.get_backend_name()!r}")
    if url.get_backend_name() == "sqlite":
        if url.drivername != "sqlite+aiosqlite":
            raise ConfigError(f"{at}: use the async driver: sqlite+aiosqlite:///PATH")
        db = url.database or ""
        if not db or db == ":memory:" or db.startswith("file:"):
            raise ConfigError(f"{at}: give the SQLite store a file path (a memory database forgets every client)")
        if not Path(db).is_absolute():
            url = url.set(database=str((base_dir / db).resolve()))
    elif url.drivername != "postgresql+asyncpg":
        raise ConfigError(f"{at}: use the async driver: postgresql+asyncpg://...")
    return url.render_as_string(hide_password=False)
