"""The ``[limits]`` section: what one request, and one client over time, may ask of the gateway.

```toml
[limits]
max_cost = 100000         # estimated rows a request may fetch (gateway/cost.py), before anything runs
max_fetches = 50          # source queries one request may plan (a hundred aliased roots are a hundred)
cost_mode = "enforce"     # or "measure": estimate, log and record, refuse nothing
rate = 50                 # requests per second per client, sustained ...
burst = 100               # ... and at once (a token bucket); rate or burst 0: no rate limit at all
rate_store = "memory"     # or redis://host:6379/0: one limit shared by every worker and replica
request_timeout = 30      # seconds for a whole request, sources included (REQUEST_TIMEOUT)
max_body = 1048576        # bytes of a request body (REQUEST_TOO_LARGE)
max_operations = 1        # operations in one batched request (a JSON array); 1: no batching
introspection = true      # __schema and __type queries
failed_auth_rate = 1      # requests with a bad token per second per address, sustained ...
failed_auth_burst = 20    # ... and at once: beyond, 429 before the token is even checked
verify_claims = 5         # yes/no claims one request may make (a claim.in of N values is N claims) ...
verify_budget = 10        # ... and per client, data subject and field within verify_window hours
verify_window = 24

[limits.clients."street-office-app"]   # any of the keys above but rate_store, for one client
rate = 200
introspection = false
```

``max_depth`` may be set per client too (its server default is ``[gateway] max_depth``). Each
refusal has its own ``extensions.code`` and says which limit and its value; see docs/limits.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from catalog.loader import expand_env
from gateway.config import ConfigError, Settings

__all__ = ["LimitSettings", "Limits"]

COST_MODES = ("enforce", "measure")


@dataclass(frozen=True)
class Limits:
    """The limits in force for one client."""

    max_depth: int = 12
    max_fetches: int = 50  # source queries one request may plan (aliases multiply them)
    max_cost: int = 100_000
    cost_mode: str = "enforce"
    rate: float = 50.0
    burst: int = 100
    request_timeout: float = 30.0
    max_body: int = 1 << 20
    max_operations: int = 1
    introspection: bool = True
    # verify(...) answers one yes/no question, but many of them rebuild the value (40 aliased `eq`
    # claims found a birth date; `lt` claims bisect it in about 15). A request may make verify_claims
    # claims; each subject's field answers verify_budget claims to one client per verify_window hours.
    verify_claims: int = 5
    verify_budget: int = 10
    verify_window: float = 24.0

    @property
    def rate_limited(self) -> bool:
        return self.burst > 0 and self.rate > 0


_PER_CLIENT = {f.name for f in fields(Limits)}
_KNOWN = _PER_CLIENT | {"rate_store", "clients", "failed_auth_rate", "failed_auth_burst"}


@dataclass(frozen=True)
class LimitSettings:
    defaults: Limits
    rate_store: str = "memory"
    clients: dict[str, Limits] = field(default_factory=dict)
    # Requests whose token fails, per caller address: past the burst they are refused (429) before
    # any token is checked or recorded, so a flood of junk tokens costs neither CPU nor audit writes.
    failed_auth_rate: float = 1.0
    failed_auth_burst: int = 20

    def of(self, client_id: str | None) -> Limits:
        return self.clients.get(client_id or "", self.defaults)

    @classmethod
    def from_settings(cls, settings: Settings) -> LimitSettings:
        at = f"{settings.path}: [limits]"
        raw: dict[str, Any] = dict(settings.limits)
        unknown = sorted(set(raw) - _KNOWN)
        if unknown:
            raise ConfigError(f"{at} has unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
        defaults = _limits(Limits(max_depth=settings.max_depth), {k: v for k, v in raw.items() if k in _PER_CLIENT},
                           at)
        store = raw.get("rate_store", "memory")
        try:
            store = expand_env(store) if isinstance(store, str) else store
        except KeyError as exc:
            raise ConfigError(f"{at}: rate_store: {exc.args[0]}") from None
        if not isinstance(store, str) or not (store == "memory" or store.startswith(("redis://", "rediss://"))):
            raise ConfigError(f"{at}: rate_store must be \"memory\" or a redis:// URL, got {store!r}")
        clients_raw = raw.get("clients", {})
        if not isinstance(clients_raw, dict):
            raise ConfigError(f"{at}: clients must be a table of [limits.clients.\"CLIENT-ID\"] sections")
        clients: dict[str, Limits] = {}
        for client_id, entry in clients_raw.items():
            where = f"{at[:-1]}.clients.{client_id!r}]"
            if not isinstance(entry, dict):
                raise ConfigError(f"{where} must be a table")
            bad = sorted(set(entry) - _PER_CLIENT)
            if bad:
                raise ConfigError(f"{where} has unknown key(s) {', '.join(bad)}; "
                                  f"known: {', '.join(sorted(_PER_CLIENT))}")
            clients[str(client_id)] = _limits(defaults, entry, where)
        # Checked as a rate and a burst are, from this class's own defaults.
        auth = _limits(Limits(rate=cls.failed_auth_rate, burst=cls.failed_auth_burst),
                       {k.removeprefix("failed_auth_"): v for k, v in raw.items() if k.startswith("failed_auth_")},
                       at, prefix="failed_auth_")
        return cls(defaults, store, clients, auth.rate, auth.burst)


def _limits(base: Limits, raw: dict[str, Any], at: str, prefix: str = "") -> Limits:
    """``base`` with the values of ``raw``, each checked; messages name keys as written (``prefix`` + key)."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        kind = type(getattr(base, key))
        name = prefix + key
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{at}: {name} must be true or false, got {value!r}")
        elif key == "cost_mode":
            if value not in COST_MODES:
                raise ConfigError(f"{at}: cost_mode must be one of {', '.join(COST_MODES)}, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{at}: {name} must be a finite number, got {value!r}")
        elif value < 0 or (value == 0 and key not in ("rate", "burst")):
            raise ConfigError(f"{at}: {name} must be positive, got {value!r}")
        elif kind is int and value != int(value):
            raise ConfigError(f"{at}: {name} must be a whole number, got {value!r}")
        values[key] = kind(value)
    return replace(base, **values)
