"""Configuration: one TOML file named by ``HUTONG_CONFIG`` plus environment variables.

Without ``HUTONG_CONFIG`` the commands act on the demo (``demo/hutong.toml`` in the
repository), so ``hutong catalog check`` works right after ``make demo``. Secrets never
live in the file: catalogue URLs and headers reference ``${ENV_VARS}``.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "ConfigError", "Settings", "load_settings"]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = REPO_ROOT / "demo" / "hutong.toml"


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Settings:
    path: Path  # the configuration file
    catalog: tuple[Path, ...]  # catalogue files or directories
    host: str = "127.0.0.1"
    port: int = 8000
    debug: bool = False  # adds extensions.plan to responses
    default_limit: int = 100  # rows per page when a query gives no limit
    max_limit: int = 1000  # the largest limit a query may ask for
    max_keys: int = 1000  # keys in one persons(idNumbers: [...]) style argument
    max_depth: int = 12  # nesting of objects in a query
    max_rows: int = 10_000  # rows one fetch may return (a nested list over many parents included)
    max_nodes: int = 200_000  # objects in one response
    stream_from: int = 5000  # a flat root page of this limit or more is streamed (gateway/stream.py)
    stream_chunk: int = 2000  # rows per streamed part (and per audit record of the stream)
    # Reverse proxies / load balancers whose X-Forwarded-For is believed (addresses or networks): the
    # caller's address in the audit record and the bad-token buckets is then the client's, not theirs.
    trusted_proxies: tuple[str, ...] = ()
    circuit_failures: int = 5  # a source failing this many times in a row is not asked ...
    circuit_open_seconds: int = 10  # ... for this long, then probed (resolvers/breaker.py)
    source_urls: dict[str, str] = field(default_factory=dict)  # per-source URL overrides
    demo: bool = False  # demo mode: the documented demo credentials are accepted only here
    auth: dict[str, Any] = field(default_factory=dict)  # the [auth] section, read by gateway.auth.settings
    policies: dict[str, Any] = field(default_factory=dict)  # the [policies] section, read by policies.settings
    audit: dict[str, Any] = field(default_factory=dict)  # the [audit] section, read by gateway.audit.settings
    consent: dict[str, Any] = field(default_factory=dict)  # the [consent] section, read by policies.consent.settings
    sharing: dict[str, Any] = field(default_factory=dict)  # the [sharing] section, read by policies.sharing
    limits: dict[str, Any] = field(default_factory=dict)  # the [limits] section, read by gateway.limits
    console: dict[str, Any] = field(default_factory=dict)  # the [console] section, read by gateway.console.settings

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_settings(path: str | Path | None = None, environ: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    cfg_path = Path(path or env.get("HUTONG_CONFIG") or DEMO_CONFIG).resolve()
    try:
        raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        hint = " (run `make demo` first to create the demo)" if cfg_path == DEMO_CONFIG else ""
        raise ConfigError(f"configuration file {cfg_path} not found{hint}; set HUTONG_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None

    sections = sorted(set(raw) - {"gateway", "sources", "auth", "policies", "audit", "consent", "sharing",
                                    "console", "limits"})
    if sections:
        raise ConfigError(f"{cfg_path}: unknown section(s) {', '.join(sections)}; "
                          "known: [gateway], [sources.CODE], [auth], [policies], [audit], [consent], [sharing], "
                          "[console], [limits]")
    gw: dict[str, Any] = raw.get("gateway", {})
    known = {"catalog", "demo", "host", "port", "debug", "default_limit", "max_limit", "max_keys", "max_depth",
             "max_rows", "max_nodes", "stream_from", "stream_chunk", "circuit_failures", "circuit_open_seconds",
             "trusted_proxies"}
    unknown = sorted(set(gw) - known)
    if unknown:
        raise ConfigError(f"{cfg_path}: [gateway] has unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    cats = gw.get("catalog", "catalog")
    cats = [cats] if isinstance(cats, str) else list(cats)
    base = cfg_path.parent

    overrides: dict[str, str] = {}
    for code, entry in raw.get("sources", {}).items():
        if not isinstance(entry, dict) or set(entry) != {"url"}:
            raise ConfigError(f"{cfg_path}: [sources.{code}] takes exactly one key, url")
        overrides[code] = str(entry["url"])
    prefix = "HUTONG_SOURCE_"
    for key, value in env.items():
        if key.startswith(prefix) and key.endswith("_URL"):
            overrides[key[len(prefix):-len("_URL")].lower()] = value

    def num(name: str, default: int) -> int:
        value = env.get(f"HUTONG_{name.upper()}", gw.get(name, default))
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
        if n < 1 or (name == "port" and n > 65535):
            raise ConfigError(f"{name} out of range: {n}")
        return n

    settings = Settings(
        path=cfg_path,
        catalog=tuple((base / c).resolve() for c in cats),
        host=env.get("HUTONG_HOST", gw.get("host", "127.0.0.1")),
        port=num("port", 8000),
        debug=str(env.get("HUTONG_DEBUG", gw.get("debug", False))).lower() in ("1", "true", "yes"),
        default_limit=num("default_limit", 100),
        max_limit=num("max_limit", 1000),
        max_keys=num("max_keys", 1000),
        max_depth=num("max_depth", 12),
        max_rows=num("max_rows", 10_000),
        max_nodes=num("max_nodes", 200_000),
        stream_from=num("stream_from", 5000),
        stream_chunk=num("stream_chunk", 2000),
        circuit_failures=num("circuit_failures", 5),
        circuit_open_seconds=num("circuit_open_seconds", 10),
        trusted_proxies=_proxies(env.get("HUTONG_TRUSTED_PROXIES", gw.get("trusted_proxies", [])), cfg_path),
        source_urls=overrides,
        demo=gw.get("demo", False) is True,
        auth=dict(raw.get("auth", {})),
        policies=dict(raw.get("policies", {})),
        audit=dict(raw.get("audit", {})),
        consent=dict(raw.get("consent", {})),
        sharing=dict(raw.get("sharing", {})),
        console=dict(raw.get("console", {})),
        limits=dict(raw.get("limits", {})),
    )
    if settings.default_limit > settings.max_limit:
        raise ConfigError(f"{cfg_path}: default_limit ({settings.default_limit}) exceeds max_limit "
                          f"({settings.max_limit})")
    return settings


def _proxies(value: Any, path: Path) -> tuple[str, ...]:
    """``trusted_proxies``: a list (or, from the environment, a comma-separated string) of IP addresses
    or networks. ``*`` is refused: any caller could then claim any address in the audit log."""
    items = [v.strip() for v in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
        raise ConfigError(f"{path}: [gateway] trusted_proxies must be a list of IP addresses or networks")
    out: list[str] = []
    for item in filter(None, items):
        try:
            out.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ConfigError(f"{path}: [gateway] trusted_proxies: {item!r} is not an IP address or network "
                              "(\"*\" is not accepted: every caller could then choose the address recorded)") from None
    return tuple(out)
