"""Addresses cut off for sending junk: their requests are refused before any check, and counted.

An address that keeps sending bad tokens (or requests no GraphQL endpoint answers: a wrong method,
an impossible Accept) is refused with 429 before its token is checked, once it has spent
``failed_auth_burst`` ([limits]). Recording each refusal durably would let a flood of junk fill
the audit log and cap the gateway at the audit's write rate; recording none would leave requests
without a trace. So each address's refusals are counted and recorded together: one audit record
(``refused``: how many requests it stands for, outcome ``rejected``, ``RATE_LIMITED``) at the
first refusal, then at most one per ``FLUSH_SECONDS`` while the flood lasts, and whatever is
pending when the address is let through again or the gateway stops. A valid token sent from a
cut-off address is refused and counted in the same way.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.audit.entry import request_record
from gateway.audit.errors import AuditTimeout, AuditUnavailable
from gateway.errors import Code

__all__ = ["Cutoffs"]

log = logging.getLogger("hutong.limits")

FLUSH_SECONDS = 10.0
MAX_ADDRESSES = 10_000  # cut-off addresses remembered at once

Append = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass
class _Pending:
    count: int = 0
    since: float = 0.0  # monotonic time of the first refusal not yet recorded
    flushed: float = 0.0  # monotonic time of the last record


class Cutoffs:
    def __init__(self, append: Append, clock: Callable[[], float] = time.monotonic) -> None:
        self._append = append
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()  # oldest cut-off first

    async def refused(self, address: str) -> None:
        """Count a refused request of ``address``; record the count if it is due."""
        now = self._clock()
        p = self._pending.get(address)
        first = p is None
        if p is None:
            if len(self._pending) >= MAX_ADDRESSES:  # addresses that never come back (rotating IPv6): the
                old, gone = self._pending.popitem(last=False)  # oldest is recorded and forgotten
                if gone.count:
                    await self._flush(old, gone, now)
            p = self._pending[address] = _Pending(since=now)
            log.warning("%s: cut off for sending requests with invalid tokens; refusing it until its bucket refills",
                        address)
        if p.count == 0:
            p.since = now
        p.count += 1
        if first or now - p.flushed >= FLUSH_SECONDS:
            await self._flush(address, p, now)

    async def let_through(self, address: str) -> None:
        """The address is served again: record what is pending and forget it."""
        p = self._pending.pop(address, None)
        if p is not None and p.count:
            await self._flush(address, p, self._clock())

    async def close(self) -> None:
        for address, p in list(self._pending.items()):
            if p.count:
                await self._flush(address, p, self._clock())
        self._pending.clear()

    async def _flush(self, address: str, p: _Pending, now: float) -> None:
        count, seconds = p.count, max(0.0, now - p.since)
        p.count, p.flushed = 0, now
        body = {"errors": [{"extensions": {"code": Code.RATE_LIMITED.value}}]}
        entry = request_record(request_id=uuid.uuid4().hex, ip=address.removeprefix("address:"), client_id=None,
                               department=None, acting_user=None, case_id=None, purpose=None, legal_basis=None,
                               status=429, body=body, audit={"refused": count}, latency_ms=seconds * 1000)
        try:
            await self._append("request", entry)
        except AuditTimeout:
            # The record is still on its way (the writer keeps it): counting these again would double them.
            log.error("%s: the audit log is slow to record %d refused requests", address, count)
        except AuditUnavailable:
            # Not written: the count is kept for the next record.
            p.count += count
            log.error("%s: the audit log cannot record %d refused requests now; kept for the next record",
                      address, count)
