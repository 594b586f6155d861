"""The policy store: a Casbin enforcer over the policy lines, reloaded when they change.

Policies live in a CSV file by default (Casbin's file adapter). The file is checked for
changes at most once per ``reload_interval`` seconds and reloaded without a restart; a
reload that fails validation keeps the previous policy in force and is logged. Every
successful (re)load bumps ``version``, which invalidates cached decisions.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import casbin
from casbin.persist.adapters import FileAdapter

from catalog.model import Catalog
from policies.validate import PolicyError, validate_policy

__all__ = ["MODEL_PATH", "PolicyStore"]

log = logging.getLogger("hutong.policies")

MODEL_PATH = Path(__file__).resolve().parent / "model.conf"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One loaded policy: the enforcer and its version, swapped atomically on reload."""

    enforcer: casbin.Enforcer
    version: int


class PolicyStore:
    def __init__(self, path: Path, catalog: Catalog, *, reload_interval: float = 1.0) -> None:
        self.path = path
        self.catalog = catalog
        self.reload_interval = reload_interval
        self._lock = threading.Lock()
        self._checked = 0.0
        self._mtime = self._stat()
        self._snapshot = Snapshot(self._load(), 1)  # a bad policy at start-up raises PolicyError

    def _stat(self) -> float:
        try:
            return self.path.stat().st_mtime
        except FileNotFoundError:
            raise PolicyError([f"{self.path}: policy file not found"]) from None

    def _load(self) -> casbin.Enforcer:
        enforcer = casbin.Enforcer(str(MODEL_PATH), FileAdapter(str(self.path)))
        enforcer.enable_auto_save(False)  # the gateway never writes policy through the enforcer
        validate_policy(enforcer, self.catalog, str(self.path))
        return enforcer

    @property
    def snapshot(self) -> Snapshot:
        """The policy in force, reloaded first if the file changed (checked at most once per interval)."""
        now = time.monotonic()
        if now - self._checked >= self.reload_interval:
            with self._lock:
                if now - self._checked >= self.reload_interval:
                    self._checked = now
                    self._maybe_reload()
        return self._snapshot

    def _maybe_reload(self) -> None:
        try:
            mtime = self._stat()
        except PolicyError as exc:
            log.error("policy file unreadable, keeping version %d: %s", self._snapshot.version, exc)
            return
        if mtime == self._mtime:
            return
        try:
            enforcer = self._load()
        except PolicyError as exc:
            log.error("policy change refused, keeping version %d: %s", self._snapshot.version, exc)
            self._mtime = mtime  # do not retry the same broken file on every request
            return
        self._mtime = mtime
        self._snapshot = Snapshot(enforcer, self._snapshot.version + 1)
        log.info("policy reloaded from %s: version %d", self.path, self._snapshot.version)
