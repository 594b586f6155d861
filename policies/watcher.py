"""The policy watcher: a change made through one gateway governs the next request on every other.

On PostgreSQL the repository sends ``NOTIFY hutong_policy`` when a change commits (and a trigger
on ``casbin_rule`` does when anything else writes that table, see :mod:`policies.casbin_rule`);
each gateway holds one connection that ``LISTEN``s and reloads at once. Between notifications it confirms,
every ``poll_interval``, that its policy is still the latest (one indexed read), so a lost
notification costs at most that long, and a store it cannot reach shows as staleness: past
``max_staleness`` the gateway refuses data requests (``PolicyStore.stale``). If the listening
connection drops, the watcher reconnects with backoff and reloads on reconnecting.

On SQLite (one machine) and for a policy file there is nothing to listen to: the watcher only
polls, every ``poll_interval``.

pycasbin's own PostgreSQL and Redis watchers run a thread or a process per enforcer over
synchronous drivers and call back into a synchronous enforcer; the gateway is asyncio over
asyncpg, so LISTEN runs on asyncpg's own listener support instead (the same protocol those
watchers use), and the reload goes through the store's validation like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import sqlalchemy as sa

from policies.repository import CHANNEL
from policies.store import PolicyStore, RepositorySource
from policies.validate import PolicyError

__all__ = ["PolicyWatcher"]

log = logging.getLogger("hutong.policies")


class PolicyWatcher:
    def __init__(self, store: PolicyStore, poll_interval: float = 0.5) -> None:
        self.store = store
        self.poll_interval = poll_interval
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.notifications = 0  # received, for tests and /readyz
        self.listening = False

    @property
    def _url(self) -> str | None:
        source = self.store.source
        if isinstance(source, RepositorySource) and source.repo.backend == "postgresql":
            return str(source.repo.url)
        return None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="policy-watcher")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _confirm(self) -> None:
        try:
            await self.store.refresh(force=True)
        except PolicyError:
            pass  # logged by the store; staleness grows until it can read again
        except Exception as exc:
            log.warning("policy check failed: %s", type(exc).__name__)

    async def _run(self) -> None:
        url = self._url
        if url is None:
            while True:
                await asyncio.sleep(self.poll_interval)
                await self._confirm()
        backoff = 0.2
        while True:
            conn: Any = None
            try:
                conn = await _listen(url, self._notified)
                self.listening = True
                backoff = 0.2
                await self._confirm()  # whatever changed while not listening
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), self.poll_interval)
                    self._wake.clear()
                    if conn.is_closed():
                        raise ConnectionError("listening connection closed")
                    await self._confirm()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.listening = False
                log.warning("policy watcher lost its connection (%s); reconnecting in %.1f s", type(exc).__name__,
                            backoff)
                await self._confirm()  # still confirms by polling when the store answers
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()

    def _notified(self, *_: Any) -> None:
        self.notifications += 1
        self._wake.set()


async def _listen(url: str, callback: Any) -> Any:
    """An asyncpg connection LISTENing on the policy channel (SQLAlchemy URL -> asyncpg)."""
    import asyncpg

    u = sa.engine.make_url(url)
    conn = await asyncpg.connect(host=u.host or "127.0.0.1", port=u.port or 5432, user=u.username,
                                 password=u.password, database=u.database, timeout=5)
    try:
        await conn.add_listener(CHANNEL, callback)
    except BaseException:
        await conn.close()
        raise
    return conn
