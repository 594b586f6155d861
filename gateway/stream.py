"""Stage 5, streamed: a large root page sent while it is read, each part audited before it leaves.

A bulk page held whole costs memory in proportion to its rows three times over (fetched rows,
shaped objects, JSON). A *streamable* request is instead read in parts of ``stream_chunk`` rows,
each a keyset query of its own (the page's order, after the last row read), so no connection or
transaction is held while a part waits for a slow client; each part is shaped, encoded, sent and
dropped: memory is bounded by a part, whatever the page size. A part sees the source as it is when
it is read, as a client paging with cursors would.

Fail closed holds part by part. The request's own audit record (written by the HTTP layer before
the first byte, with the first part's data subjects) and then one ``request-part`` record per
later part (its subjects and rows) are durable before that part is sent; a final part record
closes the request with its outcome. If a record cannot be written, or the source fails midway,
the answer stops and the connection is cut before the JSON document is complete, so no client
can take a partial page for a whole one, and no record left unaccounted.

What can stream: one data root, a page (``residents(limit: N) { nodes {...} }``) with N from
``stream_from`` up (a page over ``max_nodes`` is refused before anything is read, as every request
is), with plain fields only (no nested lists, no conditional fields, no withheld ones, one ``nodes``
selection, ``pageInfo`` after ``nodes``). Masks apply as usual.
Anything else is answered whole by the usual stages. With the default ``max_limit`` (1,000) no page
is that large: streaming serves deployments that raise ``max_limit`` for bulk clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import anyio
import orjson

from catalog.model import Catalog
from gateway.audit.entry import SubjectHasher, subjects_of
from gateway.config import Settings
from gateway.cursor import CursorCodec
from gateway.errors import RequestError
from gateway.plan import Const, Fetch, Plan, RootPage, Scalar
from gateway.shape import Shaper
from resolvers.base import Row
from resolvers.errors import SourceError
from resolvers.registry import Sources

__all__ = ["PartRecorder", "StreamedAnswer", "streamable"]

T = TypeVar("T")

# (part number, data subjects, rows per source) -> durable, or AuditUnavailable
PartRecorder = Callable[[int, set[str], dict[str, int]], Awaitable[None]]


def streamable(plan: Plan, settings: Settings, debug: bool) -> RootPage | None:
    """The page to stream, or None when the request is to be answered whole."""
    if debug or len(plan.fetches) != 1:
        return None
    data_roots = [r for r in plan.roots if not isinstance(r, Const)]
    if len(data_roots) != 1 or not isinstance(root := data_roots[0], RootPage):
        return None
    fetch = plan.fetches[0]
    if (root.limit < settings.stream_from or fetch.gated or not fetch.page or len(root.nodes) != 1
            or fetch.query.order_by != root.order_by):
        return None
    _, shape = root.nodes[0]
    if not all(isinstance(e, Scalar | Const) for e in shape.entries):
        return None
    if root.order and root.page_info and root.order.index(root.page_info[0].key) < root.order.index(root.nodes[0][0]):
        return None  # pageInfo before nodes: hasNextPage is known only after the last row
    return root


@dataclass
class StreamedAnswer:
    """The answer of a streamable request, produced part by part. ``open`` reads the first part (a
    source failure there is still an ordinary error response); ``audit`` then describes it for the
    request's own record; ``body`` yields the JSON, recording each later part before sending it."""

    plan: Plan
    root: RootPage
    fetch: Fetch
    shaper: Shaper
    sources: Sources
    catalog: Catalog
    hasher: SubjectHasher
    cursors: CursorCodec
    chunk_rows: int
    audit: dict[str, Any]
    _after: Any = None
    _first: list[Row] = field(default_factory=list)
    _sent_rows: int = 0
    _has_next: bool = False
    _done: bool = False
    _last: Row | None = None

    async def open(self) -> None:
        started = time.perf_counter()
        self._after = self.fetch.query.after  # the client's own cursor, if it gave one
        self._first = await self._next()
        self.audit.update(subjects=sorted(self._subjects(self._first)), rows={self.fetch.source: len(self._first)},
                          sources={self.fetch.source: {"ms": round((time.perf_counter() - started) * 1000, 3),
                                                       "fetches": 1, "errors": []}}, stream=True)

    async def _next(self) -> list[Row]:
        """The next part: a keyset query of its own (the page's order, after the last row sent), so
        that no connection or transaction is held while a part waits for a slow client. Each part
        sees the source as it is when read, as a client paging with cursors would."""
        room = self.root.limit - self._sent_rows
        if self._done or room <= 0:
            return []
        n = min(self.chunk_rows, room)
        last_part = n == room
        # The page's last part asks for one row more, to learn whether a next page exists.
        query = replace(self.fetch.query, after=self._after, limit=n + 1 if last_part else n)
        part = await self.sources.fetch(self.fetch.source, query)
        if len(part) > n:
            self._has_next = True
            part = part[:n]
        if len(part) < n or last_part:
            self._done = True
        self._sent_rows += len(part)
        if part:
            self._last = part[-1]
            self._after = self._last[self.root.order_by]
        return part

    def _subjects(self, rows: list[Row]) -> set[str]:
        return subjects_of(rows, self.fetch.dataset, self.fetch.query.columns, self.catalog, self.hasher)

    async def body(self, record_part: PartRecorder, record_end: Callable[[int, list[str]], Awaitable[None]]
                   ) -> AsyncIterator[bytes]:
        """The JSON document, part by part. Raises (cutting the connection) when a part cannot be
        recorded or read.

        The waits overlap: while part k's record is being committed, part k is shaped and encoded
        and part k+1 is read from the source; part k is sent only once its record is durable. A part
        read or recorded but not sent when the answer stops may therefore have a record (never the
        reverse); the final record comes after every other record of the request."""
        key, shape = self.root.nodes[0]
        path = ((None, self.root.key), key)
        part = 1
        pending: list[asyncio.Task[Any]] = []
        failure: str | None = None
        try:
            yield self._prefix()
            rows, self._first = self._first, []
            reading = _task(self._next(), pending)
            yield self._encode(shape, rows, path, first=True)
            while rows := await reading:
                part += 1
                recording = _task(record_part(part, self._subjects(rows), {self.fetch.source: len(rows)}), pending)
                reading = _task(self._next(), pending)
                encoded = self._encode(shape, rows, path, first=False)
                await recording
                yield encoded
        except (asyncio.CancelledError, GeneratorExit):  # the client went away: what it was sent is recorded
            failure = "CLIENT_DISCONNECTED"
            raise
        except Exception as exc:
            failure = (exc.failure.value if isinstance(exc, SourceError)
                       else exc.code.value if isinstance(exc, RequestError) else type(exc).__name__)
            raise
        finally:
            # Shielded: under the server's cancelled scope every await would be cancelled again.
            with anyio.CancelScope(shield=True):
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
                if failure is not None:
                    with contextlib.suppress(Exception):  # the audit store may be the very thing that failed
                        await record_end(part + 1, [failure])
        await record_end(part + 1, [])
        yield self._suffix()

    def _encode(self, shape: Any, rows: list[Row], path: Any, *, first: bool) -> bytes:
        encoded = orjson.dumps(self.shaper.objs(shape, rows, path), option=orjson.OPT_NON_STR_KEYS)[1:-1]
        return encoded if first or not encoded else b"," + encoded

    # -- the JSON around the nodes: the roots and keys in the order the request asked for them ------

    def _prefix(self) -> bytes:
        out = [b'{"data":{']
        for i, r in enumerate(self.plan.roots):
            if r is self.root:
                out.append((b"," if i else b"") + _key(r.key) + b"{")
                break
            assert isinstance(r, Const)
            out.append((b"," if i else b"") + _key(r.key) + orjson.dumps(r.value))
        nodes_key = self.root.nodes[0][0]
        typenames = dict(self.root.typename)
        before = []
        for k in self._order():
            if k == nodes_key:
                break
            before.append(_key(k) + orjson.dumps(typenames[k]))
        out.append(b",".join([*before, _key(nodes_key) + b"["]))
        return b"".join(out)

    def _suffix(self) -> bytes:
        nodes_key = self.root.nodes[0][0]
        typenames = dict(self.root.typename)
        infos = {i.key: i for i in self.root.page_info}
        after = []
        order = self._order()
        for k in order[order.index(nodes_key) + 1:]:
            if k in infos:
                value = {name: (self._has_next if what == "hasNextPage"
                                else self._cursor() if what == "endCursor" else "PageInfo")
                         for name, what in infos[k].entries}
                after.append(_key(k) + orjson.dumps(value))
            else:
                after.append(_key(k) + orjson.dumps(typenames[k]))
        out = [b"]", *(b"," + a for a in after), b"}"]
        seen = False
        for r in self.plan.roots:
            if r is self.root:
                seen = True
            elif seen:
                assert isinstance(r, Const)
                out.append(b"," + _key(r.key) + orjson.dumps(r.value))
        out.append(b"}")
        if self.shaper.errors:
            out.append(b',"errors":' + orjson.dumps([e.to_dict() for e in self.shaper.errors]))
        out.append(b"}")
        return b"".join(out)

    def _order(self) -> list[str]:
        """The page's keys as the generic shaper writes them (gateway/shape.py: Shaper.root)."""
        r = self.root
        return r.order or [*(k for k, _ in r.typename), *(k for k, _ in r.nodes), *(i.key for i in r.page_info)]

    def _cursor(self) -> str | None:
        if self._last is None:
            return None
        return self.cursors.encode(self.fetch.dataset, self._last[self.root.order_by])


def _task(coro: Coroutine[Any, Any, T], pending: list[asyncio.Task[Any]]) -> asyncio.Task[T]:
    """Start ``coro`` and keep it in ``pending`` (cancelled if the answer stops); finished tasks are
    dropped, with the part they hold."""
    pending[:] = [t for t in pending if not t.done()]
    task = asyncio.ensure_future(coro)
    pending.append(task)
    return task


def _key(name: str) -> bytes:
    return orjson.dumps(name) + b":"
