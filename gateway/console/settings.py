"""The ``[console]`` section of the configuration file.

```toml
[console]
session_secret = "${HUTONG_CONSOLE_SECRET}"   # signs session cookies: 32+ random bytes
accounts = "sqlite+aiosqlite:///run/console.sqlite"
session_minutes = 480                          # a session ends after this long, signed in or not
secure_cookies = true                          # cookies only over HTTPS (false only for plain-HTTP demos)

[console.oidc]                                 # optional: sign-in through the city's identity provider
issuer = "https://id.city.gov.cn/realms/staff"
client_id = "hutong-console"
client_secret = "${HUTONG_CONSOLE_OIDC_SECRET}"
roles_claim = "roles"                          # a list of role names in the ID token
department_claim = "department"
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from catalog.loader import expand_env
from gateway.config import ConfigError, Settings

__all__ = ["DEMO_SESSION_SECRET", "ROLES", "ConsoleSettings", "OidcSettings"]

ROLES = ("policy-admin", "auditor", "data-owner")
DEMO_SESSION_SECRET = "hutong-demo-console-secret-NOT-A-SECRET"
_KNOWN = {"session_secret", "accounts", "session_minutes", "secure_cookies", "oidc"}
_OIDC = {"issuer", "client_id", "client_secret", "roles_claim", "department_claim", "scope", "role_map",
         "trust_roles"}


@dataclass(frozen=True)
class OidcSettings:
    issuer: str
    client_id: str
    client_secret: str
    roles_claim: str = "roles"
    department_claim: str = "department"
    scope: str = "openid profile email"
    role_map: tuple[tuple[str, str], ...] = ()  # IdP role -> console role
    # Without a role_map, the provider's role names are taken as console roles only when this says so
    # (as [auth.external] trust_roles): anyone who can name a role at the provider is otherwise nobody here.
    trust_roles: bool = False

    @property
    def metadata_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


@dataclass(frozen=True)
class ConsoleSettings:
    session_secret: str
    accounts: str
    session_minutes: int = 480
    secure_cookies: bool = True
    oidc: OidcSettings | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleSettings:
        from gateway.auth.settings import _store_url  # the same URL rules as every store

        raw: dict[str, Any] = settings.console
        at = f"{settings.path}: [console]"
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")

        def text(value: Any, key: str) -> str:
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"{at}: {key} must be a non-empty string")
            try:
                return expand_env(value).strip()
            except KeyError as exc:
                raise ConfigError(f"{at}: {key}: {exc.args[0]}") from None

        if "session_secret" in raw:
            secret = text(raw["session_secret"], "session_secret")
        else:
            secret = os.environ.get("HUTONG_CONSOLE_SECRET", "") or (DEMO_SESSION_SECRET if settings.demo else "")
        if not secret:
            raise ConfigError(f"{at}: set session_secret (HUTONG_CONSOLE_SECRET: 32 random bytes, e.g. "
                              "`openssl rand -hex 32`): it signs the console's session cookies")
        if secret == DEMO_SESSION_SECRET and not settings.demo:
            raise ConfigError(f"{at}: session_secret is the published demo secret; set your own")
        if len(secret.encode()) < 32:
            raise ConfigError(f"{at}: session_secret must be at least 32 bytes")
        minutes = raw.get("session_minutes", 480)
        if isinstance(minutes, bool) or not isinstance(minutes, int) or not 5 <= minutes <= 24 * 60:
            raise ConfigError(f"{at}: session_minutes must be a whole number from 5 to 1440")
        secure = raw.get("secure_cookies", not settings.demo)
        if not isinstance(secure, bool):
            raise ConfigError(f"{at}: secure_cookies must be true or false")
        if not secure and not settings.demo:
            raise ConfigError(f"{at}: secure_cookies = false is for the plain-HTTP demo only: serve the console over "
                              "HTTPS (behind the city's TLS proxy)")
        try:
            accounts = _store_url(text(raw.get("accounts", "sqlite+aiosqlite:///run/console.sqlite"), "accounts"),
                                  settings.base_dir, f"{at} accounts")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("client store", "account store")) from None
        oidc = None
        if "oidc" in raw:
            o = raw["oidc"]
            if not isinstance(o, dict):
                raise ConfigError(f"{at}: oidc must be a table [console.oidc]")
            bad = sorted(set(o) - _OIDC)
            if bad:
                raise ConfigError(f"{at}.oidc has unknown key(s) {', '.join(bad)}; known: {', '.join(sorted(_OIDC))}")
            for key in ("issuer", "client_id", "client_secret"):
                if key not in o:
                    raise ConfigError(f"{at}.oidc: {key} is required")
            role_map = o.get("role_map", {})
            if not isinstance(role_map, dict) or not all(v in ROLES for v in role_map.values()):
                raise ConfigError(f"{at}.oidc: role_map maps IdP roles to {', '.join(ROLES)}")
            trust = o.get("trust_roles", False)
            if not isinstance(trust, bool):
                raise ConfigError(f"{at}.oidc: trust_roles must be true or false")
            if not role_map and not trust:
                raise ConfigError(f"{at}.oidc: give a role_map (provider role = console role), or trust_roles = true "
                                  "if the provider's role names are the console's own")
            oidc = OidcSettings(text(o["issuer"], "oidc.issuer"), text(o["client_id"], "oidc.client_id"),
                                text(o["client_secret"], "oidc.client_secret"),
                                str(o.get("roles_claim", "roles")), str(o.get("department_claim", "department")),
                                str(o.get("scope", "openid profile email")), tuple(sorted(role_map.items())), trust)
        return cls(secret, accounts, minutes, secure, oidc)
