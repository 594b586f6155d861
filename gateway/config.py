"""Configuration: one TOML file named by ``HUTONG_CONFIG`` plus environment variables.

Without ``HUTONG_CONFIG`` the commands act on the demo (``demo/hutong.toml`` in the
repository), so ``hutong catalog check`` works right after ``make demo``. Secrets never
live in the file: catalogue URLs and headers reference ``${ENV_VARS}``.
"""

from __future__ import annotations

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
    source_urls: dict[str, str] = field(default_factory=dict)  # per-source URL overrides

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

    gw: dict[str, Any] = raw.get("gateway", {})
    known = {"catalog", "host", "port", "debug", "default_limit", "max_limit", "max_keys"}
    unknown = sorted(set(gw) - known)
    if unknown:
        raise ConfigError(f"{cfg_path}: [gateway] has unknown key(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known))}")
    cats = gw.get("catalog", "catalog")
    cats = [cats] if isinstance(cats, str) else list(cats)
    base = cfg_path.parent

    overrides = {code: str(v["url"]) for code, v in raw.get("sources", {}).items() if "url" in v}
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

    return Settings(
        path=cfg_path,
        catalog=tuple((base / c).resolve() for c in cats),
        host=env.get("HUTONG_HOST", gw.get("host", "127.0.0.1")),
        port=num("port", 8000),
        debug=str(env.get("HUTONG_DEBUG", gw.get("debug", False))).lower() in ("1", "true", "yes"),
        default_limit=num("default_limit", 100),
        max_limit=num("max_limit", 1000),
        max_keys=num("max_keys", 1000),
        source_urls=overrides,
    )
