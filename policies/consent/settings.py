"""The ``[consent]`` section of the configuration file.

```toml
[consent]
url = "sqlite+aiosqlite:///run/consent.sqlite"   # or postgresql+asyncpg://hutong:${PASSWORD}@host/db
self_recording = false   # true: a department's clients may record consents to its own use of data
```

Every gateway worker must use the same store: a revocation recorded through one worker is
read by the others on their next request. Consents are signed with the audit signing key
(``[audit] signing_key``).
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog.loader import expand_env
from gateway.config import ConfigError, Settings

__all__ = ["ConsentSettings"]

_KNOWN = {"url", "self_recording"}


@dataclass(frozen=True)
class ConsentSettings:
    url: str
    self_recording: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsentSettings:
        from gateway.auth.settings import _store_url  # the same URL rules as every store

        at = f"{settings.path}: [consent]"
        raw = settings.consent
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
        self_recording = raw.get("self_recording", False)
        if not isinstance(self_recording, bool):
            raise ConfigError(f"{at}: self_recording must be true or false")
        value = raw.get("url", "sqlite+aiosqlite:///run/consent.sqlite")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{at}: url must be a SQLAlchemy URL")
        try:
            value = expand_env(value)
        except KeyError as exc:
            raise ConfigError(f"{at}: url: {exc.args[0]}") from None
        try:
            url = _store_url(value, settings.base_dir, f"{at} url")
        except ConfigError as exc:
            raise ConfigError(str(exc).replace("client store", "consent store")
                              .replace("every client", "every consent")) from None
        return cls(url=url, self_recording=self_recording)
