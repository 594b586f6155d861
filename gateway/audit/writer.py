"""Appending to the chain: group commit, fail closed.

``append`` validates the body, queues it and waits until the batch holding it is committed; one
background task drains the queue, up to ``batch_max`` records per transaction. The transaction
takes the chain lock, reads the head, hashes the batch onto it, inserts, adds the signed
checkpoints that are due, and commits; only then are the callers answered. A failed commit fails
every record of its batch with ``AuditUnavailable`` and the next batch starts again from the head
in the store. Records are never reported durable unless their transaction committed.

Checkpoints are due at every multiple of ``checkpoint_every`` (each signs the record at exactly
that seq, and the interval), so that verify can require them; also at the head after
``checkpoint_seconds``, on a clean shutdown and on demand. A batch signs every multiple of its
interval after the store's last checkpoint, also ones another writer (with another interval)
passed. After a commit with checkpoints, the newest goes to the head mark (mark.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.audit.entry import answer_withheld
from gateway.audit.errors import AuditTimeout, AuditUnavailable
from gateway.audit.keys import AuditKeys
from gateway.audit.mark import write_head_mark
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
    taken: bool = False  # its batch is being written: the body can no longer change
    late: bool = False  # the caller gave up waiting (and answered 503) while it was being written


# What a request's record says when its caller gave up waiting for it: the client was answered
# 503 AUDIT_UNAVAILABLE, whatever the request's own outcome would have been.
def _unanswered(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "status": 503, "outcome": "failed",
            "codes": sorted({*body.get("codes", []), "AUDIT_UNAVAILABLE"}), "answered": False}


class AuditWriter:
    def __init__(self, store: AuditStore, keys: AuditKeys, *, checkpoint_every: int = 1000,
                 checkpoint_seconds: float = 60.0, batch_max: int = 256, max_pending: int = 10_000,
                 timeout: float = 10.0, own_store: bool = False, checkpoint_on_close: bool = True,
                 head_mark: Path | None = None) -> None:
        self.store = store
        self.keys = keys
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.batch_max = batch_max
        self.max_pending = max_pending
        self.timeout = timeout  # an append not committed within it fails (the batch may still commit)
        self.own_store = own_store
        self.checkpoint_on_close = checkpoint_on_close  # sign the head on a clean shutdown
        self.head_mark = head_mark  # where the newest checkpoint is recorded outside the store (mark.py)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_checkpoint = time.monotonic()
        self._dirty = False  # records written since this writer's last checkpoint
        self._gap_reported: int | None = None  # the last checkpoint after which missing ones were logged
        self.batches = 0
        self.failures = 0

    @classmethod
    def from_settings(cls, audit: AuditSettings, **kwargs: Any) -> AuditWriter:
        keys = AuditKeys.load(audit.signing_key, audit.previous_keys)
        store = AuditStore(audit.url, durable=audit.durable, checkpoint_every=audit.checkpoint_every,
                           head_mark=audit.head_mark)
        return cls(store, keys, checkpoint_every=audit.checkpoint_every, checkpoint_seconds=audit.checkpoint_seconds,
                   batch_max=audit.batch_max, own_store=True, head_mark=audit.head_mark, **kwargs)

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
        item = _Item(kind, body, body_json, future)
        self._queue.put_nowait(item)
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.timeout)
        except TimeoutError:
            # The caller answers 503 now; the record must not say otherwise once it is written. Still
            # queued: it is written saying so. Already being written: a correction follows it.
            if kind == "request" and "refused" not in body:  # (a count of refusals was answered 429 already)
                if item.taken:
                    item.late = True
                else:
                    item.body = _unanswered(body)
                    item.body_json = check_body(item.body)
            raise AuditTimeout("the audit store did not confirm the record in time") from None

    async def checkpoint_now(self) -> int | None:
        """Sign the current head now if it is not signed yet; its seq, or None if nothing to sign."""
        async with self.store.write_transaction() as conn:
            head = await self.store.head(conn)
            if head.seq == 0 or head.signed >= head.seq:
                return None
            checkpoints = await self.due_checkpoints(conn, head, head, force=True)
            await self.store.insert(conn, [], checkpoints)
        await self.committed(checkpoints, head.seq)
        return head.seq

    async def write_in(self, conn: AsyncConnection, items: list[tuple[str, dict[str, Any], bytes]], *,
                       force_checkpoint: bool = False) -> tuple[list[Receipt], list[dict[str, Any]]]:
        """Append ``items`` (kind, body, its canonical JSON) and the checkpoints due in ``conn``, a
        write transaction of this writer's store (it holds the chain lock). Returns the receipts and
        the checkpoints written; the caller commits, then calls ``committed(checkpoints, last seq)``."""
        head = await self.store.head(conn)
        now = format_time(datetime.now(UTC))
        stamp = max(now, head.time)  # never before the head: time order is chain order
        seq, prev = head.seq, head.hash
        rows, receipts = [], []
        for kind, body, body_json in items:
            seq += 1
            digest = record_hash_raw(seq, stamp, kind, body_json, prev)
            rows.append({"seq": seq, "time": stamp, "kind": kind, "body": body_json.decode(),
                         "prev_hash": prev, "hash": digest, "_derived": derive(body)})
            receipts.append(Receipt(seq, digest, stamp))
            prev = digest
        force = force_checkpoint or time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds
        checkpoints = await self.due_checkpoints(conn, head, Head(seq, prev, stamp), force=force,
                                                 batch={r["seq"]: r for r in rows})
        await self.store.insert(conn, rows, checkpoints)
        return receipts, checkpoints

    async def due_checkpoints(self, conn: AsyncConnection, head: Head, new_head: Head, *, force: bool,
                              batch: dict[int, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The checkpoints due when the chain goes from ``head`` to ``new_head``: one at every
        multiple of ``checkpoint_every`` after the store's last checkpoint up to the new head, and
        the new head itself when ``force``.

        A multiple before this batch was passed by a writer keeping a larger interval, and is signed
        now, unless the last checkpoint's own interval shows that checkpoints were due after it and
        are missing: then they were deleted, and signing now would hide that, so verify is left to
        report it."""
        every = self.checkpoint_every
        last_every = head.signed_every or every
        missing = (head.signed // last_every + 1) * last_every <= head.seq
        if missing and self._gap_reported != head.signed:
            self._gap_reported = head.signed
            log.error("audit checkpoints are missing after seq %d (one was due at seq %d): the audit store may have "
                      "been tampered with; run `hutong audit verify`", head.signed,
                      (head.signed // last_every + 1) * last_every)
        due: dict[int, Head] = {}
        # The multiples of this writer's interval, and of the interval the last checkpoint declares (a
        # writer configured otherwise, during a rolling change): verify holds the chain to the latter too.
        multiples = {m for iv in {every, last_every} for m in range((head.signed // iv + 1) * iv, new_head.seq + 1, iv)}
        for m in sorted(multiples):
            if batch is not None and m in batch:
                due[m] = Head(m, batch[m]["hash"], batch[m]["time"])
            elif m == new_head.seq:
                due[m] = new_head
            elif not missing:
                found = await self.store.record_at(conn, m)
                if found is not None:
                    due[m] = found
        if force and new_head.seq > head.signed and new_head.seq not in due:
            due[new_head.seq] = new_head
        return [self._checkpoint(h) for _, h in sorted(due.items())]

    async def committed(self, checkpoints: list[dict[str, Any]], head_seq: int) -> None:
        """After the commit: the checkpoint clock, whether the head is left unsigned, the head mark."""
        self._dirty = not checkpoints or checkpoints[-1]["seq"] < head_seq
        if not checkpoints:
            return
        self._last_checkpoint = time.monotonic()
        if self.head_mark is not None:
            try:
                await asyncio.to_thread(write_head_mark, self.head_mark, checkpoints[-1], sync=self.store.durable)
            except OSError as exc:  # the records are committed; verify will say the mark is behind
                log.warning("cannot update the audit head mark %s: %s", self.head_mark, exc.strerror)

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
        late = [(item, receipt) for item, receipt in zip(batch, receipts, strict=True) if item.late]
        if late:
            await self._correct(late)

    async def _correct(self, late: list[tuple[_Item, Receipt]]) -> None:
        """Records committed after their callers gave up and answered 503: an admin record each, so
        that the log never says a request was answered that was not."""
        corrections = [_Item("admin", body, check_body(body), asyncio.get_running_loop().create_future())
                       for body in (answer_withheld(item.body.get("request_id"), receipt.seq)
                                    for item, receipt in late)]
        try:
            await self._write(corrections)
        except Exception as exc:  # logged loudly: the earlier records stand uncorrected
            log.error("audit: could not record that %d answer(s) were withheld (%s)", len(late), type(exc).__name__)

    def _checkpoint(self, head: Head) -> dict[str, Any]:
        kid, every = self.keys.signing_id, self.checkpoint_every
        return {"seq": head.seq, "hash": head.hash, "time": head.time, "key_id": kid, "every": every,
                "signature": self.keys.sign(checkpoint_message(head.seq, head.hash, head.time, kid, every))}

    async def _write(self, batch: list[_Item]) -> list[Receipt]:
        for item in batch:
            item.taken = True
        async with self.store.write_transaction() as conn:
            receipts, checkpoints = await self.write_in(conn, [(i.kind, i.body, i.body_json) for i in batch])
        await self.committed(checkpoints, receipts[-1].seq)
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
