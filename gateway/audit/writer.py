"""Appending to the chain: group commit, fail closed.

``append`` validates the body, queues it and waits until the batch holding it is committed; one
background task drains the queue, up to ``batch_max`` records per transaction. The transaction
takes the chain lock, reads the head, hashes the batch onto it, inserts, adds a signed checkpoint
when one is due, and commits; only then are the callers answered. A failed commit fails every
record of its batch with ``AuditUnavailable`` and the next batch starts again from the head in
the store. Records are never reported durable unless their transaction committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError

from gateway.audit.errors import AuditUnavailable
from gateway.audit.keys import AuditKeys
from gateway.audit.record import KINDS, Receipt, check_body, checkpoint_message, derive, format_time
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, Head

__all__ = ["AuditWriter", "NullAuditWriter", "record_hash_raw"]

log = logging.getLogger("hutong.audit")
_STOP = object()


def record_hash_raw(seq: int, time_: str, kind: str, body_json: bytes, prev_hash: str) -> str:
    """``record.chain_hash`` from a body already in canonical JSON: the same bytes orjson's
    sorted-keys output gives for ``{body, kind, prev_hash, seq, time}``, without serialising the
    body twice."""
    content = b"".join((b'{"body":', body_json, b',"kind":', orjson.dumps(kind), b',"prev_hash":"',
                        prev_hash.encode(), b'","seq":', str(seq).encode(), b',"time":"', time_.encode(), b'"}'))
    return hashlib.sha256(bytes.fromhex(prev_hash) + content).hexdigest()


@dataclass
class _Item:
    kind: str
    body: dict[str, Any]
    body_json: bytes
    future: asyncio.Future[Receipt] = field(repr=False)


class AuditWriter:
    def __init__(self, store: AuditStore, keys: AuditKeys, *, checkpoint_every: int = 1000,
                 checkpoint_seconds: float = 60.0, batch_max: int = 256, max_pending: int = 10_000,
                 timeout: float = 10.0, own_store: bool = False, checkpoint_on_close: bool = True) -> None:
        self.store = store
        self.keys = keys
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.batch_max = batch_max
        self.max_pending = max_pending
        self.timeout = timeout  # an append not committed within it fails (the batch may still commit)
        self.own_store = own_store
        self.checkpoint_on_close = checkpoint_on_close  # sign the head on a clean shutdown
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_checkpoint = time.monotonic()
        self._dirty = False  # records written since this writer's last checkpoint
        self.batches = 0
        self.failures = 0

    @classmethod
    def from_settings(cls, audit: AuditSettings, **kwargs: Any) -> AuditWriter:
        keys = AuditKeys.load(audit.signing_key, audit.previous_keys)
        return cls(AuditStore(audit.url, durable=audit.durable), keys, checkpoint_every=audit.checkpoint_every,
                   checkpoint_seconds=audit.checkpoint_seconds, batch_max=audit.batch_max, own_store=True, **kwargs)

    async def start(self) -> None:
        await self.store.init()
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="hutong-audit-writer")
        self._task.add_done_callback(self._died)

    async def close(self) -> None:
        """Stop taking records, commit every one already queued, then stop."""
        if self._task is not None and not self._task.done():
            self._closing = True
            self._queue.put_nowait(_STOP)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None
        if self.own_store:
            await self.store.close()

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done() and not self._closing

    async def append(self, kind: str, body: dict[str, Any]) -> Receipt:
        """Record ``body``; return once it is committed (durably unless ``durable = false``).
        ValueError for a body that is not plain JSON; AuditUnavailable when it cannot be written."""
        if kind not in KINDS:
            raise ValueError(f"audit record kind must be one of {', '.join(KINDS)}, got {kind!r}")
        body_json = check_body(body)
        if not self.running:
            raise AuditUnavailable("the audit writer is not running")
        if self._queue.qsize() >= self.max_pending:
            raise AuditUnavailable("the audit store is not keeping up (too many records waiting)")
        future: asyncio.Future[Receipt] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(kind, body, body_json, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            raise AuditUnavailable("the audit store did not confirm the record in time") from None

    async def checkpoint_now(self) -> int | None:
        """Sign the current head now if it is not signed yet; its seq, or None if nothing to sign."""
        async with self.store.write_transaction() as conn:
            head = await self.store.head(conn)
            if head.seq == 0 or await self.store.last_checkpoint_seq(conn) >= head.seq:
                return None
            await self.store.insert(conn, [], self._checkpoint(head))
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        return head.seq

    # --- the background task ----------------------------------------------------------------

    def _died(self, task: asyncio.Task[None]) -> None:
        """Should the task ever end with records waiting, fail them rather than leave them hanging."""
        if not task.cancelled() and task.exception() is not None:
            log.error("the audit writer stopped: %r", task.exception())
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, _Item) and not item.future.done():
                item.future.set_exception(AuditUnavailable("the audit writer stopped"))

    async def _run(self) -> None:
        while True:
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout=self.checkpoint_seconds)
            except TimeoutError:
                if self._dirty:
                    await self._idle_checkpoint()
                continue
            stop = first is _STOP
            batch: list[_Item] = [] if stop else [first]
            while len(batch) < self.batch_max and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is _STOP:
                    stop = True
                    continue
                batch.append(item)
            if batch:
                await self._commit(batch)
            if stop and self._queue.empty():
                if self._dirty and self.checkpoint_on_close:
                    await self._idle_checkpoint()
                return

    async def _idle_checkpoint(self) -> None:
        try:
            await self.checkpoint_now()
        except Exception as exc:  # the next batch or timeout tries again
            log.warning("audit checkpoint failed: %s", type(exc).__name__)

    async def _commit(self, batch: list[_Item]) -> None:
        error: BaseException | None = None
        receipts: list[Receipt] = []
        for attempt in (1, 2, 3):
            try:
                receipts = await self._write(batch)
                error = None
                break
            except IntegrityError as exc:  # another writer took these seqs (no lock?): retry from the head
                error = exc
                await asyncio.sleep(0.01 * attempt)
            except Exception as exc:  # the store refused or vanished: fail this batch, keep running
                error = exc
                break
        self.batches += 1
        if error is not None:
            self.failures += 1
            log.error("audit store write failed (%s): %d request(s) refused", type(error).__name__, len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(AuditUnavailable())
            return
        for item, receipt in zip(batch, receipts, strict=True):
            if not item.future.done():
                item.future.set_result(receipt)

    def _checkpoint(self, head: Head) -> dict[str, Any]:
        kid = self.keys.signing_id
        return {"seq": head.seq, "hash": head.hash, "time": head.time, "key_id": kid,
                "signature": self.keys.sign(checkpoint_message(head.seq, head.hash, head.time, kid))}

    async def _write(self, batch: list[_Item]) -> list[Receipt]:
        async with self.store.write_transaction() as conn:
            head = await self.store.head(conn)
            now = format_time(datetime.now(UTC))
            stamp = max(now, head.time)  # never before the head: time order is chain order
            seq, prev = head.seq, head.hash
            rows, receipts = [], []
            for item in batch:
                seq += 1
                digest = record_hash_raw(seq, stamp, item.kind, item.body_json, prev)
                rows.append({"seq": seq, "time": stamp, "kind": item.kind, "body": item.body_json.decode(),
                             "prev_hash": prev, "hash": digest, "_derived": derive(item.body)})
                receipts.append(Receipt(seq, digest, stamp))
                prev = digest
            due = (seq // self.checkpoint_every > head.seq // self.checkpoint_every
                   or time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds)
            checkpoint = self._checkpoint(Head(seq, prev, stamp)) if due else None
            await self.store.insert(conn, rows, checkpoint)
        # committed
        if checkpoint is not None:
            self._last_checkpoint = time.monotonic()
            self._dirty = False
        else:
            self._dirty = True
        return receipts


class NullAuditWriter:
    """No audit: for benchmarks that measure what auditing costs. Never use it to serve data."""

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def append(self, kind: str, body: dict[str, Any]) -> Receipt:
        check_body(body)
        return Receipt(0, "", "")
