"""The ``[policies]`` section of the configuration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.loader import expand_env
from gateway.config import ConfigError, Settings

__all__ = ["DEMO_MASK_KEY", "PolicySettings"]

# Clearly a demo value: accepted only in demo mode, so that a real deployment sets its own.
DEMO_MASK_KEY = "hutong-demo-mask-key-NOT-A-SECRET"

_KNOWN = {"file", "url", "seed", "mask_key", "reject_unauthorized", "reload_interval", "poll_interval",
          "max_staleness"}


@dataclass(frozen=True, slots=True)
class PolicySettings:
    file: Path | None  # a CSV file of policy lines, or
    url: str | None  # a SQL database (SQLAlchemy async URL) holding them
    mask_key: bytes
    reject_unauthorized: bool = False  # the server default; X-Reject-Unauthorized overrides per request
    reload_interval: float = 1.0  # a request looks for a change at most this often
    seed: Path | None = None  # a CSV imported as version 1 into an empty repository
    poll_interval: float = 0.5  # the watcher confirms the policy is current this often
    max_staleness: float = 10.0  # unconfirmed longer than this: data requests are refused

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
        def seconds(name: str, default: float, low: float) -> float:
            value = raw.get(name, default)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < low:
                raise ConfigError(f"{where}: {name} must be a number of seconds >= {low}, got {value!r}")
            return float(value)

        # A change is one stat() of a file, or one indexed read of the repository's latest version.
        interval = seconds("reload_interval", 1.0, 0)
        poll = seconds("poll_interval", 0.5, 0.05)
        staleness = seconds("max_staleness", 10.0, 0.1)
        if staleness <= poll:
            raise ConfigError(f"{where}: max_staleness ({staleness}) must exceed poll_interval ({poll})")
        url = None
        if "url" in raw:
            from gateway.auth.settings import _store_url  # the same URL rules as every store

            try:
                url = _store_url(expand_env(str(raw["url"])), settings.base_dir, f"{where} url")
            except KeyError as exc:
                raise ConfigError(f"{where}: {exc.args[0]}") from None
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("client store", "policy store")
                                  .replace("every client", "every rule")) from None
        elif "seed" in raw:
            raise ConfigError(f"{where}: seed applies to a policy store (url); a policy file is its own seed")
        return cls(file=(settings.base_dir / str(raw["file"])).resolve() if "file" in raw else None, url=url,
                   mask_key=key.encode(),
                   reject_unauthorized=raw.get("reject_unauthorized", False) is True,
                   reload_interval=interval,
                   seed=(settings.base_dir / str(raw["seed"])).resolve() if "seed" in raw else None,
                   poll_interval=poll, max_staleness=staleness)
