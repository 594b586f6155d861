"""What every workload of the suite shares: timing rounds, statistics, tables and the JSON shape.

Rounds interleave the contestants, so a slow spell of the machine (another process, a
checkpoint of PostgreSQL) hits all of them alike instead of skewing one contestant's median.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

__all__ = ["BenchError", "Series", "Target", "console", "fmt_ms", "fmt_ratio", "interleave", "percentile",
           "requests_recorded", "table"]

# Wide enough for the tables when piped (rich assumes 80 columns then), e.g. into tee.
console = Console(highlight=False, width=None if Console().is_terminal else 120)


class BenchError(Exception):
    """A contestant answered wrongly, or a service did not start: the numbers would mean nothing."""


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@dataclass
class Series:
    """Timed runs of one contestant (seconds each) and what it sent to the sources per run."""

    name: str
    times: list[float] = field(default_factory=list)
    queries: int | None = None
    note: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    @property
    def p99_ms(self) -> float:
        return percentile(self.times, 99) * 1000

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rounds": len(self.times), "median_ms": round(self.median_ms, 3),
                               "p99_ms": round(self.p99_ms, 3), "min_ms": round(min(self.times) * 1000, 3),
                               "max_ms": round(max(self.times) * 1000, 3)}
        if self.queries is not None:
            out["source_queries"] = self.queries
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Target:
    """One of issue 8's targets: what was asked, what was measured, and whether it was met."""

    id: str
    description: str
    backend: str
    measured: float | None  # None: could not be measured (the detail says why)
    unit: str
    limit: float
    met: bool
    detail: str = ""

    def json(self) -> dict[str, Any]:
        return {"id": self.id, "description": self.description, "backend": self.backend,
                "measured": None if self.measured is None else round(self.measured, 3), "unit": self.unit,
                "limit": self.limit, "met": self.met, "detail": self.detail}


async def interleave(contestants: dict[str, Callable[[], Awaitable[Any]]], rounds: dict[str, int], warmup: int,
                     block: int = 1, collect: bool = True) -> dict[str, Series]:
    """Time each contestant ``rounds[name]`` times, after ``warmup`` untimed runs each.

    Contestants take turns, ``block`` runs at a time. ``collect``: ``gc.collect()`` before every
    turn, so that a run does not pay for its predecessor's garbage (for runs long enough that a
    collection inside them would be noise; short requests keep their natural collections).
    """
    out = {name: Series(name) for name in contestants}
    for _ in range(warmup):
        for run in contestants.values():
            await run()
    turn = 0
    while any(len(out[n].times) < rounds[n] for n in contestants):
        names = list(contestants)
        names = names[turn % len(names):] + names[:turn % len(names)]  # nobody always goes first
        for name in names:
            left = rounds[name] - len(out[name].times)
            if left <= 0:
                continue
            if collect:
                gc.collect()
            run = contestants[name]
            for _ in range(min(block, left)):
                started = time.perf_counter()
                await run()
                out[name].times.append(time.perf_counter() - started)
        turn += 1
    return out


def fmt_ms(ms: float) -> str:
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x" if value < 10 else f"{value:,.0f}x"


def table(title: str, columns: list[tuple[str, str]], rows: list[list[str]], caption: str = "") -> Group:
    """A compact table (SIMPLE_HEAD) with its title above and its caption below, both as wide as the
    console rather than the table."""
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in columns:
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        t.add_row(*row)
    parts: list[Any] = [Text.from_markup(title), t]
    if caption:
        parts.append(Text(caption, style="dim"))
    return Group(*parts)


async def requests_recorded(url: str) -> int:
    """Audit records of kind ``request`` in the store at ``url``: one per request answered (not the
    workers' start events and other admin records, nor a streamed answer's ``request-part``
    records); 0 before the store has its tables."""
    from gateway.audit.store import AuditStore

    store = AuditStore(url)
    try:
        return (await store.search({"kind": "request"}, 1))[1]
    except Exception:  # no table yet: nothing recorded
        return 0
    finally:
        await store.close()
