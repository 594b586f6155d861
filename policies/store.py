"""The policy store: the policy lines in force, as a Casbin enforcer, reloaded when they change.

Two sources:

- a CSV file (Casbin's file adapter): read-only for the gateway; a change is seen by its
  modification time. Simple deployments and tests;
- the versioned policy repository (:mod:`policies.repository`, SQLite or PostgreSQL): what the
  administration API and ``hutong policy`` change, with history and rollback. The policy in
  force is Casbin's standard ``casbin_rule`` table, loaded through the maintained adapter
  ``casbin-async-sqlalchemy-adapter`` and checked against the version it must hold (a table
  changed outside hutong is refused like an invalid version: :mod:`policies.casbin_rule`).
  A change is seen by one cheap read of the latest version number and casbin_rule's write
  count, at once through the watcher (:mod:`policies.watcher`: PostgreSQL LISTEN/NOTIFY) and
  at the latest after ``reload_interval``.

A new version is validated against the catalogue first; an invalid one is refused (logged)
and the previous policy stays in force. Every load bumps the snapshot's ``version``, which
invalidates cached decisions. The store also knows when it last *confirmed* that its policy is
the current one: a gateway that cannot confirm it for ``max_staleness`` seconds refuses data
requests rather than serve grants that may have been withdrawn.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import casbin
from casbin.persist.adapters import FileAdapter

from catalog.model import Catalog
from policies.validate import PolicyError, validate_policy

__all__ = ["MODEL_PATH", "FilePolicySource", "Loaded", "PolicySource", "PolicyStore", "RepositorySource", "Snapshot",
           "new_enforcer", "open_policy_store"]

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
    version: int  # load counter of this process: decisions are cached per version
    by_subject: dict[str, list[tuple[int, list[str]]]]
    digest: str = ""  # of the lines, independent of their order: what the audit log records
    policy_version: int | None = None  # the repository's version number (None for a file)
    proposed: Snapshot | None = None  # a dry-run proposal, evaluated but never enforced
    proposal: dict[str, str] | None = None  # who started the dry run, when, why


@dataclass(slots=True)
class Loaded:
    """What a source read: the policy, and for the repository its version and any dry-run proposal."""

    enforcer: casbin.Enforcer
    policy_version: int | None = None
    proposed: casbin.Enforcer | None = None
    proposal: dict[str, str] | None = None
    problems: list[str] | None = None  # the source cannot be taken as it is (refused like an invalid policy)


def index_by_subject(enforcer: casbin.Enforcer) -> dict[str, list[tuple[int, list[str]]]]:
    index: dict[str, list[tuple[int, list[str]]]] = {}
    for pos, line in enumerate(enforcer.get_named_policy("p")):
        index.setdefault(line[0], []).append((pos, line))
    return index


class PolicySource(Protocol):
    name: str

    async def load_if_changed(self, stamp: str) -> tuple[str, Loaded | None]:
        """The current stamp (changes whenever the policy does) and, unless it equals ``stamp``, the policy."""
        ...

    async def close(self) -> None: ...


class FilePolicySource:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.name = str(path)

    async def load_if_changed(self, stamp: str) -> tuple[str, Loaded | None]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            raise PolicyError([f"{self.path}: policy file not found"]) from None
        current = f"{st.st_mtime_ns}:{st.st_size}"
        if current == stamp:
            return current, None
        enforcer = await asyncio.to_thread(self._read)
        return current, Loaded(enforcer)

    def _read(self) -> casbin.Enforcer:
        enforcer = new_enforcer()
        FileAdapter(str(self.path)).load_policy(enforcer.get_model())
        enforcer.build_role_links()
        return enforcer

    async def close(self) -> None:
        return None


class RepositorySource:
    """The versioned repository. The stamp is the latest version number, casbin_rule's write count and
    the dry run's start: one indexed read per check. The policy is casbin_rule loaded through the
    maintained adapter (:meth:`PolicyRepository.load`). Time-limited lines lapse by themselves: past
    the next expiry the policy is reloaded even though no version was recorded, and the lapsed lines
    are removed from casbin_rule (best effort: the next version removes them in any case)."""

    def __init__(self, repo: Any) -> None:
        self.repo = repo  # policies.repository.PolicyRepository
        self.name = repo.name
        self._expiry: datetime | None = None
        self._ready = False

    async def load_if_changed(self, stamp: str) -> tuple[str, Loaded | None]:
        from policies.lines import enforcer_of, parse_csv

        if not self._ready:
            await self.repo.init()
            self._ready = True
        now = datetime.now(UTC)
        current = await self.repo.stamp()
        if current == stamp and (self._expiry is None or now < self._expiry):
            return current, None
        # A new version, casbin_rule written, a dry run started or stopped, or a time-limited line lapsing.
        found = await self.repo.load(now)
        if found.lapsed and not found.problems:
            try:
                if await self.repo.prune_lapsed(now):
                    found = await self.repo.load(now)
            except Exception as exc:  # the gateway applies the time limit all the same
                log.warning("%s: lapsed lines not removed from casbin_rule (%s)", self.name, type(exc).__name__)
        self._expiry = found.upcoming
        proposed = proposal = None
        dry = await self.repo.dry_run()
        if dry is not None:
            text, by, at, reason = dry
            try:
                proposed = await asyncio.to_thread(enforcer_of, parse_csv(text))
                proposal = {"by": by, "at": at.isoformat(), "reason": reason}
            except ValueError as exc:
                log.error("the dry-run proposal cannot be read, ignored: %s", exc)
        return found.stamp, Loaded(found.enforcer, found.version, proposed, proposal, found.problems or None)

    async def close(self) -> None:
        await self.repo.close()


def _digest(enforcer: casbin.Enforcer) -> str:
    """A digest of the policy lines, independent of their order in the table."""
    model = enforcer.get_model()
    lines = sorted((ptype, *line) for sec in ("p", "g") for ptype in model[sec] for line in model[sec][ptype].policy)
    return hashlib.sha256(repr(lines).encode()).hexdigest()


# Told of every policy version taken into force or refused: (event, details without values).
ChangeHook = Callable[[str, dict[str, object]], Awaitable[None]]


class PolicyStore:
    def __init__(self, source: PolicySource, catalog: Catalog, *, reload_interval: float = 1.0,
                 max_staleness: float = 10.0) -> None:
        self.on_change: ChangeHook | None = None
        self.source = source
        self.catalog = catalog
        self.reload_interval = reload_interval
        self.max_staleness = max_staleness
        self._snapshot: Snapshot | None = None
        self._stamp = ""
        self._checked = 0.0
        self.confirmed = 0.0  # monotonic time the policy in force was last confirmed current
        self.refused = False  # the latest version was refused: the one in force is not the current one
        self._lock = asyncio.Lock()

    def stale(self) -> bool:
        """True when the policy in force could not be confirmed current for ``max_staleness`` seconds (the
        store is unreachable, or its latest version was refused here: a revocation in it is not in force)."""
        return self._snapshot is not None and time.monotonic() - self.confirmed > self.max_staleness

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
                    stamp, loaded = await self.source.load_if_changed(self._stamp)
                if loaded is None:
                    if not self.refused:  # unchanged, and what is in force is what the store holds
                        self.confirmed = time.monotonic()
                    return
                self._stamp = stamp  # a refused version is not retried until it changes again
                enforcer = loaded.enforcer
                if loaded.problems:
                    raise PolicyError(loaded.problems)
                # Validating and indexing a large policy takes a while: off the event loop.
                index = await asyncio.to_thread(self._check, enforcer)
            except PolicyError as exc:
                if self._snapshot is None:
                    raise
                self.refused = True  # not confirmed current from now on: data requests stop at max_staleness
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
            self.refused = False
            self.confirmed = time.monotonic()
            version = 1 if self._snapshot is None else self._snapshot.version + 1
            before = self._snapshot
            digest = await asyncio.to_thread(_digest, enforcer)
            proposed = await self._proposed(loaded, version)
            self._snapshot = Snapshot(enforcer, version, index, digest, loaded.policy_version, proposed,
                                      loaded.proposal if proposed else None)
            log.info("policy loaded from %s: version %d%s", self.source.name, version,
                     f" (policy version {loaded.policy_version})" if loaded.policy_version is not None else "")
            if before is None or before.digest != digest or before.policy_version != loaded.policy_version:
                await self._tell("policy.loaded", {
                    "source": self.source.name,
                    "before": {"version": before.version, "digest": before.digest,
                               "policy_version": before.policy_version} if before else None,
                    "after": {"version": version, "digest": digest, "policy_version": loaded.policy_version,
                              "lines": len(enforcer.get_named_policy("p"))}})

    async def _proposed(self, loaded: Loaded, version: int) -> Snapshot | None:
        """The dry-run proposal, validated like any policy; an invalid one is ignored (logged)."""
        if loaded.proposed is None:
            return None
        try:
            index = await asyncio.to_thread(self._check, loaded.proposed)
        except PolicyError as exc:
            log.error("the dry-run proposal is not a valid policy, ignored: %s", exc)
            return None
        return Snapshot(loaded.proposed, version, index, await asyncio.to_thread(_digest, loaded.proposed))

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
    from policies.repository import PolicyRepository
    from policies.settings import PolicySettings

    policy = PolicySettings.from_settings(settings)
    source: PolicySource = (FilePolicySource(policy.file) if policy.file
                            else RepositorySource(PolicyRepository(str(policy.url))))
    return PolicyStore(source, catalog, reload_interval=policy.reload_interval, max_staleness=policy.max_staleness)
