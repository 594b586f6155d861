"""The ``[audit]`` section of the configuration file.

```toml
[audit]
url = "sqlite+aiosqlite:///run/audit.sqlite"   # or postgresql+asyncpg://hutong_audit:${PASSWORD}@host/db
signing_key = "run/audit-signing-key.pem"      # Ed25519 private key (PEM); generated 0600 if missing
previous_keys = []                              # earlier signing keys (PEM or JWK), still trusted by verify
checkpoint_every = 1000                         # a checkpoint at every multiple of N (verify requires it) ...
checkpoint_seconds = 60                         # ... and at least this often while records arrive
durable = true                                  # false: commit without waiting for the disk (benchmarks only)
batch_max = 256                                 # records per group commit
retention_days = 0                              # 0: keep forever; else `hutong audit archive` moves records
                                                # older than this to a verified archive and prunes them
```
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.loader import expand_env
from gateway.audit.mark import head_mark_path
from gateway.config import ConfigError, Settings

__all__ = ["AUDIT_KEYS", "AuditSettings", "parse_audit"]

AUDIT_KEYS = {"url", "signing_key", "previous_keys", "checkpoint_every", "checkpoint_seconds", "durable",
              "batch_max", "retention_days"}


@dataclass(frozen=True)
class AuditSettings:
    url: str  # SQLAlchemy async URL, relative SQLite paths resolved
    signing_key: Path
    previous_keys: tuple[Path, ...] = ()
    checkpoint_every: int = 1000
    checkpoint_seconds: float = 60.0
    durable: bool = True
    batch_max: int = 256
    retention_days: int = 0  # records younger than this are never pruned; 0: none ever are

    @property
    def head_mark(self) -> Path:
        """The file holding the newest checkpoint written to this store from this machine (mark.py)."""
        return head_mark_path(self.signing_key, self.url)

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> AuditSettings:
        return parse_audit(settings.audit, base_dir=settings.base_dir, where=str(settings.path), environ=environ)


def parse_audit(raw: Mapping[str, Any], *, base_dir: Path, where: str = "config",
                environ: Mapping[str, str] | None = None) -> AuditSettings:
    from gateway.auth.settings import _store_url  # the same URL rules as the client store

    at = f"{where}: [audit]"
    unknown = sorted(set(raw) - AUDIT_KEYS)
    if unknown:
        raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(AUDIT_KEYS))} "
                          "(see docs/audit.md)")

    def text(key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{at}: {key} must be a non-empty string")
        try:
            return expand_env(value, dict(environ) if environ is not None else None).strip()
        except KeyError as exc:
            raise ConfigError(f"{at}: {key}: {exc.args[0]}") from None

    def whole(key: str, default: int, low: int, high: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{at}: {key} must be a whole number from {low} to {high}, got {value!r}")
        return value

    seconds = raw.get("checkpoint_seconds", 60)
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0.01 <= seconds <= 86_400:
        raise ConfigError(f"{at}: checkpoint_seconds must be a number of seconds from 0.01 to 86400, got {seconds!r}")
    durable = raw.get("durable", True)
    if not isinstance(durable, bool):
        raise ConfigError(f"{at}: durable must be true or false, got {durable!r}")
    previous = raw.get("previous_keys", [])
    if not isinstance(previous, list) or not all(isinstance(p, str) and p for p in previous):
        raise ConfigError(f"{at}: previous_keys must be a list of PEM file paths")
    try:
        url = _store_url(text("url", "sqlite+aiosqlite:///run/audit.sqlite"), base_dir, f"{at} url")
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("client store", "audit store").replace("every client", "every record")
                          ) from None
    return AuditSettings(
        url=url,
        signing_key=(base_dir / text("signing_key", "run/audit-signing-key.pem")).resolve(),
        previous_keys=tuple((base_dir / p).resolve() for p in previous),
        checkpoint_every=whole("checkpoint_every", 1000, 1, 10_000_000),
        checkpoint_seconds=float(seconds),
        durable=durable,
        batch_max=whole("batch_max", 256, 1, 10_000),
        retention_days=whole("retention_days", 0, 0, 36_500),
    )
