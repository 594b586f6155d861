"""The policy store: the policy lines in force, as a Casbin enforcer, reloaded when they change.

Two sources, both through maintained Casbin adapters:

- a CSV file (Casbin's file adapter), the default; a change is seen by its modification time;
- a SQL database (``casbin-async-sqlalchemy-adapter``: PostgreSQL, MySQL, SQLite) for
  production; a change is seen by comparing the lines' digest.

``refresh()`` looks for a change at most once per ``reload_interval`` seconds, so policies
reload without a restart. A new version is validated against the catalogue first; an
invalid one is refused (logged) and the previous policy stays in force. Every reload bumps
``version``, which invalidates cached decisions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import casbin
from casbin.persist.adapters import FileAdapter

from catalog.model import Catalog
from policies.validate import PolicyError, validate_policy

__all__ = ["MODEL_PATH", "FilePolicySource", "PolicySource", "PolicyStore", "SQLPolicySource", "Snapshot",
           "open_policy_store"]

log = logging.getLogger("hutong.policies")

MODEL_PATH = Path(__file__).resolve().parent / "model.conf"
LOAD_TIMEOUT = 60.0  # seconds a policy source may take to answer before the check is given up


def new_enforcer() -> casbin.Enforcer:
    enforcer = casbin.Enforcer(str(MODEL_PATH))
    enforcer.enable_auto_save(False)  # the gateway never writes policy through its enforcer
    return enforcer


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded policy: the enforcer, its version, and its ``p`` lines indexed by subject
    (with their position, since the first matching allow gives the mask), swapped atomically."""

    enforcer: casbin.Enforcer
    version: int
    by_subject: dict[str, list[tuple[int, list[str]]]]
    digest: str = ""  # of the lines, independent of their order: what the audit log records


def index_by_subject(enforcer: casbin.Enforcer) -> dict[str, list[tuple[int, list[str]]]]:
    index: dict[str, list[tuple[int, list[str]]]] = {}
    for pos, line in enumerate(enforcer.get_named_policy("p")):
        index.setdefault(line[0], []).append((pos, line))
    return index


class PolicySource(Protocol):
    name: str

    async def load_if_changed(self, stamp: str) -> tuple[str, casbin.Enforcer | None]:
        """The current stamp (changes whenever the policy does) and, unless it equals ``stamp``, the policy."""
        ...

    async def close(self) -> None: ...


class FilePolicySource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    async def load_if_changed(self, stamp: str) -> tuple[str, casbin.Enforcer | None]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise PolicyError([f"{self.path}: policy file not found"]) from None
        current = f"{st.st_mtime_ns}:{st.st_size}"
        if current == stamp:
            return current, None
        enforcer = await asyncio.to_thread(self._read)
        return current, enforcer

    def _read(self) -> casbin.Enforcer:
        enforcer = new_enforcer()
        FileAdapter(str(self.path)).load_policy(enforcer.get_model())
        enforcer.build_role_links()
        return enforcer

    async def close(self) -> None:
        return None


class SQLPolicySource:
    """Policy lines in a ``casbin_rule`` table (created if missing), read through the async adapter.
    A change is seen by the digest of the lines (one read of a small table per interval)."""

    def __init__(self, url: str) -> None:
        from casbin_async_sqlalchemy_adapter import Adapter
        from sqlalchemy.ext.asyncio import create_async_engine

        self.engine = create_async_engine(url, hide_parameters=True)
        self.adapter = Adapter(self.engine)
        self.name = f"SQL policy store {self.engine.url.render_as_string(hide_password=True)}"
        self._created = False

    async def load_if_changed(self, stamp: str) -> tuple[str, casbin.Enforcer | None]:
        if not self._created:
            await self.adapter.create_table()
            self._created = True
        enforcer = new_enforcer()
        await self.adapter.load_policy(enforcer.get_model())
        current = await asyncio.to_thread(_digest, enforcer)
        if current == stamp:
            return current, None
        enforcer.build_role_links()
        return current, enforcer

    async def close(self) -> None:
        await self.engine.dispose()


def _digest(enforcer: casbin.Enforcer) -> str:
    """A digest of the policy lines, independent of their order in the table."""
    model = enforcer.get_model()
    lines = sorted((ptype, *line) for sec in ("p", "g") for ptype in model[sec] for line in model[sec][ptype].policy)
    return hashlib.sha256(repr(lines).encode()).hexdigest()


# Told of every policy version taken into force or refused: (event, details without values).
ChangeHook = Callable[[str, dict[str, object]], Awaitable[None]]


class PolicyStore:
    def __init__(self, source: PolicySource, catalog: Catalog, *, reload_interval: float = 1.0) -> None:
        self.on_change: ChangeHook | None = None
        self.source = source
        self.catalog = catalog
        self.reload_interval = reload_interval
        self._snapshot: Snapshot | None = None
        self._stamp = ""
        self._checked = 0.0
        self._lock = asyncio.Lock()

    @property
    def snapshot(self) -> Snapshot:
        if self._snapshot is None:
            raise RuntimeError("the policy store is not loaded: await refresh() first")
        return self._snapshot

    async def refresh(self, *, force: bool = False) -> None:
        """Load the policy if it changed. The first load raises PolicyError when the policy is
        invalid; later invalid versions are refused and the one in force is kept."""
        if not force and self._snapshot is not None and time.monotonic() - self._checked < self.reload_interval:
            return
        if not force and self._snapshot is not None and self._lock.locked():
            return  # another request is checking: use the policy in force rather than wait behind it
        async with self._lock:
            if not force and self._snapshot is not None and time.monotonic() - self._checked < self.reload_interval:
                return
            self._checked = time.monotonic()
            try:
                async with asyncio.timeout(LOAD_TIMEOUT):
                    stamp, enforcer = await self.source.load_if_changed(self._stamp)
                if enforcer is None:
                    return
                self._stamp = stamp  # a refused version is not retried until it changes again
                # Validating and indexing a large policy takes a while: off the event loop.
                index = await asyncio.to_thread(self._check, enforcer)
            except PolicyError as exc:
                if self._snapshot is None:
                    raise
                log.error("policy change refused, keeping version %d: %s", self._snapshot.version, exc)
                await self._tell("policy.refused", {"source": self.source.name, "kept_version": self._snapshot.version,
                                                    "problems": exc.problems[:20]})
                return
            except Exception as exc:  # the store cannot be read: keep the policy in force
                if self._snapshot is None:
                    raise PolicyError([f"{self.source.name}: cannot be read ({type(exc).__name__})"]) from None
                log.error("policy store unreadable, keeping version %d: %s", self._snapshot.version,
                          type(exc).__name__)
                return
            version = 1 if self._snapshot is None else self._snapshot.version + 1
            before = self._snapshot
            digest = stamp if isinstance(self.source, SQLPolicySource) else await asyncio.to_thread(_digest, enforcer)
            self._snapshot = Snapshot(enforcer, version, index, digest)
            log.info("policy loaded from %s: version %d", self.source.name, version)
            await self._tell("policy.loaded", {
                "source": self.source.name, "before": {"version": before.version, "digest": before.digest}
                if before else None, "after": {"version": version, "digest": digest,
                                               "lines": len(enforcer.get_named_policy("p"))}})

    async def _tell(self, event: str, details: dict[str, object]) -> None:
        if self.on_change is not None:
            try:
                await self.on_change(event, details)
            except Exception as exc:  # the policy change stands; say loudly that it went unrecorded
                log.error("policy %s not recorded in the audit log: %s", event, type(exc).__name__)

    def _check(self, enforcer: casbin.Enforcer) -> dict[str, list[tuple[int, list[str]]]]:
        validate_policy(enforcer, self.catalog, self.source.name)
        return index_by_subject(enforcer)

    async def close(self) -> None:
        await self.source.close()


def open_policy_store(settings: Any, catalog: Catalog) -> PolicyStore:
    """The policy store the configuration names (``[policies] file`` or ``url``), not yet loaded:
    ``await store.refresh(force=True)`` loads it. One place builds it: the gateway and every tool."""
    from policies.settings import PolicySettings

    policy = PolicySettings.from_settings(settings)
    source: PolicySource = FilePolicySource(policy.file) if policy.file else SQLPolicySource(str(policy.url))
    return PolicyStore(source, catalog, reload_interval=policy.reload_interval)
