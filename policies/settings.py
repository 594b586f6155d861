"""The ``[policies]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.loader import expand_env
from gateway.config import ConfigError, Settings

__all__ = ["DEMO_MASK_KEY", "PolicySettings"]

# Clearly a demo value: accepted only in demo mode, so that a real deployment sets its own.
DEMO_MASK_KEY = "hutong-demo-mask-key-NOT-A-SECRET"

_KNOWN = {"file", "url", "mask_key", "reject_unauthorized", "reload_interval"}


@dataclass(frozen=True, slots=True)
class PolicySettings:
    file: Path | None  # a CSV file of policy lines, or
    url: str | None  # a SQL database (SQLAlchemy async URL) holding them
    mask_key: bytes
    reject_unauthorized: bool = False  # the server default; X-Reject-Unauthorized overrides per request
    reload_interval: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PolicySettings:
        raw = settings.policies
        where = f"{settings.path}: [policies]"
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise ConfigError(f"{where} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
        if ("file" in raw) == ("url" in raw):
            raise ConfigError(f"{where}: set either file = \"policy.csv\" or url = \"postgresql+asyncpg://...\" "
                              "(where the policy lines are; nothing is allowed without them)")
        try:
            key = expand_env(str(raw.get("mask_key", "${HUTONG_MASK_KEY}")))
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]}; the masking key keeps hashed values unguessable") from None
        if key == DEMO_MASK_KEY and not settings.demo:
            raise ConfigError(f"{where}: mask_key is the published demo key; set HUTONG_MASK_KEY to a secret of "
                              "your own (32 random bytes, e.g. `openssl rand -hex 32`)")
        if len(key.encode()) < 16:
            raise ConfigError(f"{where}: mask_key must be at least 16 bytes")
        # A file's change is one stat(); a database's is a read of every line: look less often.
        interval = raw.get("reload_interval", 1.0 if "file" in raw else 10.0)
        if not isinstance(interval, int | float) or interval < 0:
            raise ConfigError(f"{where}: reload_interval must be a number of seconds >= 0")
        try:
            url = expand_env(str(raw["url"])) if "url" in raw else None
        except KeyError as exc:
            raise ConfigError(f"{where}: {exc.args[0]}") from None
        return cls(file=(settings.base_dir / str(raw["file"])).resolve() if "file" in raw else None, url=url,
                   mask_key=key.encode(),
                   reject_unauthorized=raw.get("reject_unauthorized", False) is True,
                   reload_interval=float(interval))
