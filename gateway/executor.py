"""Stage 4: run the plan's fetches against the sources.

Each fetch is one pushed-down query (per batch of ``max_batch`` keys). A fetch that
depends on a parent starts as soon as that parent's rows are in, with the parent's
distinct key values as its ``IN (...)`` list; independent fetches run concurrently.
So the number of source queries depends on the shape of the request, never on the
number of rows. A failed fetch is recorded, not raised: the rest of the answer stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.logs import where
from gateway.plan import Fetch, Plan
from resolvers.base import Row
from resolvers.errors import SourceError, SourceFailure
from resolvers.registry import Sources

__all__ = ["FetchResult", "execute"]

log = logging.getLogger("hutong.executor")


@dataclass(slots=True)
class FetchResult:
    fetch: Fetch
    rows: list[Row] = field(default_factory=list)
    error: SourceError | None = None
    by_key: dict[Any, list[Row]] = field(default_factory=dict)  # rows grouped by the fetch's key column
    has_next: bool = False  # root pages: the source had more rows than the page holds
    ms: float | None = None  # wall time of the source query in ms (None: no query ran, its parent failed)


async def execute(plan: Plan, sources: Sources) -> dict[int, FetchResult]:
    tasks: dict[int, asyncio.Task[FetchResult]] = {}

    async def run(f: Fetch) -> FetchResult:
        keys: tuple[Any, ...] | None = f.literal_keys
        if f.parent is not None:
            parent = await tasks[f.parent]
            if parent.error is not None:
                # Nothing to join on: the parent's failure is reported where the parent appears.
                return FetchResult(f, error=parent.error)
            assert f.parent_column is not None
            keys = tuple(dict.fromkeys(v for r in parent.rows if (v := r.get(f.parent_column)) is not None))
        query = replace(f.query, keys=keys)
        if query.matches_nothing:  # answered without asking the source: no time, no availability sample
            return FetchResult(f, rows=[])
        started = time.perf_counter()
        try:
            rows = await sources.fetch(f.source, query)
        except SourceError as exc:
            log.warning("fetch %d (%s) failed: %s %s", f.id, f.dataset, exc.failure.value, exc.message)
            return FetchResult(f, error=exc, ms=(time.perf_counter() - started) * 1000)
        except Exception as exc:  # a bug or an unexpected driver error: logged here, reported as SOURCE_ERROR
            log.error("fetch %d (%s) raised %s at %s", f.id, f.dataset, type(exc).__name__, where(exc))
            return FetchResult(f, error=SourceError(f.source, SourceFailure.ERROR,
                                                    f"source {f.source!r} failed unexpectedly"),
                               ms=(time.perf_counter() - started) * 1000)
        ms = (time.perf_counter() - started) * 1000
        if f.row_cap is not None and len(rows) > f.row_cap:
            return FetchResult(f, error=SourceError(
                f.source, SourceFailure.ROW_LIMIT,
                f"{f.dataset} matched more than {f.row_cap} records for this request (max_rows): "
                "ask for fewer parents or filter the nested list"), ms=ms)
        result = FetchResult(f, rows=rows, ms=ms)
        if f.page and f.query.limit is not None:
            # One row beyond the page was asked for only to learn whether a next page exists.
            result.has_next = len(rows) >= f.query.limit
            result.rows = rows[: f.query.limit - 1]
        if f.query.key_column:
            groups: defaultdict[Any, list[Row]] = defaultdict(list)
            for r in rows:
                groups[r.get(f.query.key_column)].append(r)
            result.by_key = dict(groups)
        return result

    # Fetches are listed parents first, so every parent task exists before its children.
    for f in plan.fetches:
        tasks[f.id] = asyncio.create_task(run(f))
    done = await asyncio.gather(*tasks.values())
    return {r.fetch.id: r for r in done}
