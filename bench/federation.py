"""Speed and memory of the gateway against baselines on the same data, in the same process.

``python -m bench.federation [--residents N] [--rounds R]`` builds a throwaway demo city,
starts its Housing REST service on a free loopback port, and runs each workload through:

- **hutong**: ``Gateway.run`` in process (parse, plan, batched fetches, shaping; no HTTP);
- **direct**: hand-written code issuing the same batched statements and Housing request
  and assembling the answer in plain Python, the physical limit (bench/direct.py);
- **naive**: a hand-written graphene schema whose resolvers ask once per parent object,
  the N+1 pattern the gateway exists to avoid (bench/naive.py; showcase and bulk only).

Every baseline's answer is checked equal to hutong's ``data`` before anything is timed.
It prints ratios, never asserts on them: timings belong to the machine they ran on.
See bench/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from bench import direct
from bench.harness import Baseline, ServerThread
from bench.naive import NaiveGraphQL
from catalog.loader import load_catalog
from demo.build import build_demo
from demo.housing_service import create_app as housing_app
from gateway.cli import SHOWCASE_QUERY
from gateway.config import REPO_ROOT, load_settings
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway

__all__ = ["BULK_QUERY", "PAGE_QUERY", "main"]

BULK_QUERY = ("{ residents(limit: 1000) { nodes { idNumber name birthDate person { employments { employerName "
              "monthlyWage } pensions { status } properties { propertyId areaSqm } } } } }")
PAGE_QUERY = "{ residents(limit: 1000) { nodes { idNumber name gender birthDate district householdId relation } } }"

DEFAULT_RESIDENTS = 10_000
DEFAULT_ROUNDS = 20
DEFAULT_WARMUP = 2
# The naive contestant needs seconds per bulk run (thousands of source queries), so it gets
# a fifth of the timed rounds, 1 to 3, to keep the whole benchmark within a couple of
# minutes. Its spread between rounds is small next to the ratios it is compared by.
MAX_NAIVE_ROUNDS = 3

Data = dict[str, Any]
console = Console(highlight=False)


class MismatchError(Exception):
    """A baseline answered differently from hutong: the timings would compare different work."""


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    query: str
    variables: dict[str, Any] | None
    direct: Callable[[Baseline], Awaitable[Data]]
    naive: bool  # whether the naive contestant runs it


@dataclass
class Contestant:
    name: str
    run: Callable[[], Awaitable[Data]]
    statements: Callable[[], int]  # source queries issued so far, cumulative
    rounds: int
    warm: bool = True  # gets the warm-up rounds
    trace_under: float | None = None  # trace memory only if the checking run took at most this many seconds


@dataclass
class Measurement:
    name: str
    queries: int = 0  # source queries (SQL statements + HTTP requests) per run
    times: list[float] = field(default_factory=list)  # seconds, one per timed round
    peak: int | None = None  # tracemalloc peak of one run, bytes; None when not traced

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


@dataclass
class WorkloadResult:
    workload: Workload
    measurements: dict[str, Measurement]

    def ratio(self, name: str, over: str) -> float:
        return self.measurements[name].median_ms / self.measurements[over].median_ms


def naive_rounds_for(rounds: int) -> int:
    return min(MAX_NAIVE_ROUNDS, max(1, rounds // 5))


def workloads(applicant: str) -> list[Workload]:
    return [
        Workload("showcase", "SHOWCASE_QUERY: one household across 5 departments", SHOWCASE_QUERY,
                 {"applicant": applicant}, partial(direct.showcase, applicant=applicant), naive=True),
        Workload("bulk", "1,000 residents with fields from 3 departments beyond PSB", BULK_QUERY, None,
                 direct.bulk, naive=True),
        Workload("page", "1,000 residents, 7 columns, one source", PAGE_QUERY, None, direct.page, naive=False),
    ]


def first_difference(a: Any, b: Any, path: str = "data") -> str | None:
    """Where two JSON-like values first differ, for a useful error message."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{path}: keys {sorted(a)} != {sorted(b)}"
        return next((d for k in a if (d := first_difference(a[k], b[k], f"{path}.{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        return next((d for i, (x, y) in enumerate(zip(a, b, strict=True))
                     if (d := first_difference(x, y, f"{path}[{i}]"))), None)
    return None if a == b else f"{path}: {a!r} != {b!r}"


def write_config(folder: Path, housing_url: str) -> Path:
    """A gateway configuration over the city in ``folder/data``.

    The demo catalogue names its SQLite files relative to the configuration file, so the
    file goes next to ``data/``. JSON string quoting is valid TOML basic-string quoting.
    """
    path = folder / "hutong.toml"
    path.write_text(
        "[gateway]\n"
        f"catalog = {json.dumps(str(REPO_ROOT / 'demo' / 'catalog'))}\n"
        "debug = false\n"
        "demo = true\n"
        "max_limit = 1000\n"
        "[sources.housing_api]\n"
        f"url = {json.dumps(housing_url)}\n"
        "[policies]\n"
        f"file = {json.dumps(str(REPO_ROOT / 'demo' / 'policies' / 'policy.csv'))}\n"
        'mask_key = "hutong-demo-mask-key-NOT-A-SECRET"\n',
        encoding="utf-8",
    )
    return path


async def measure(workload: Workload, contestants: list[Contestant], warmup: int) -> WorkloadResult:
    results = {c.name: Measurement(c.name) for c in contestants}

    for _ in range(warmup):
        for c in contestants:
            if c.warm:
                await c.run()

    # Check and count once, before anything is measured: every contestant must give hutong's
    # answer. For the naive contestant this is also its only warm-up: its caches and pools
    # are warm after the first few of its thousands of source queries, and it shares its
    # connections with "direct", which has just been warmed.
    reference: Data | None = None
    checked: dict[str, float] = {}
    for c in contestants:
        before = c.statements()
        started = time.perf_counter()
        data = await c.run()
        checked[c.name] = time.perf_counter() - started
        results[c.name].queries = c.statements() - before
        if reference is None:
            reference = data
        elif data != reference:
            raise MismatchError(f"{workload.name}: {c.name} differs from hutong at "
                                f"{first_difference(reference, data)}")

    # Memory in runs of their own: tracing every allocation slows Python about threefold,
    # so a traced run is never a timed one.
    for c in contestants:
        if c.trace_under is not None and checked[c.name] > c.trace_under:
            continue  # too slow to trace in a quick run; reported as skipped
        gc.collect()
        tracemalloc.start()
        try:
            await c.run()
            results[c.name].peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    # Rounds interleave the contestants, so a slow spell of the machine (another process,
    # thermal throttling) hits all of them alike instead of skewing one contestant's median.
    for i in range(max(c.rounds for c in contestants)):
        for c in contestants:
            if i >= c.rounds:
                continue
            # Collect the previous run's garbage first, so a run does not pay for its predecessor.
            gc.collect()
            started = time.perf_counter()
            await c.run()
            results[c.name].times.append(time.perf_counter() - started)
    return WorkloadResult(workload, results)


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:.0f}x"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def report(result: WorkloadResult) -> None:
    w = result.workload
    # SIMPLE_HEAD keeps the table within 80 columns, the width rich assumes when piped.
    table = Table(title=f"[bold]{w.name}[/]: {w.description}", title_justify="left", caption_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("contestant")
    table.add_column("median ms", justify="right")
    table.add_column("range ms", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("vs direct", justify="right")
    table.add_column("queries", justify="right")
    table.add_column("peak MiB", justify="right")
    if any(m.peak is None for m in result.measurements.values()):
        table.caption = "peak skipped: tracing triples a slow run; traced with 2+ naive rounds (--rounds 10+)"
    for name, m in result.measurements.items():
        peak = "skipped" if m.peak is None else f"{m.peak / 2**20:.2f}"
        spread = _ms(m.times[0]) if len(m.times) == 1 else f"{_ms(min(m.times))}–{_ms(max(m.times))}"
        table.add_row(name, f"{m.median_ms:.2f}", spread, str(len(m.times)),
                      _ratio(result.ratio(name, "direct")), str(m.queries), peak)
    console.print(table)


def summary(result: WorkloadResult) -> str:
    line = f"{result.workload.name}: hutong {_ratio(result.ratio('hutong', 'direct'))} direct"
    if "naive" in result.measurements:
        line += f", naive {_ratio(result.ratio('naive', 'hutong'))} hutong"
    return line


async def run(residents: int, rounds: int, warmup: int, naive_rounds: int) -> list[WorkloadResult]:
    results: list[WorkloadResult] = []
    with tempfile.TemporaryDirectory(prefix="hutong-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        city = await build_demo(root / "data", residents=residents)
        console.print(f"built a city of {residents:,} residents in {time.perf_counter() - started:.1f} s")
        with ServerThread(housing_app(root / "data" / "housing.json")) as server:
            # environ={}: the benchmark's gateway must not pick up HUTONG_* settings of the shell.
            settings = load_settings(write_config(root, server.url), environ={})
            gateway = Gateway(load_catalog(*settings.catalog), settings)
            baseline = Baseline(root / "data", server.url)
            naive = NaiveGraphQL(baseline)
            try:
                for w in workloads(city.showcase["applicant_id_number"]):
                    results.append(await measure(w, _contestants(w, gateway, baseline, naive, rounds, naive_rounds),
                                                 warmup))
                    report(results[-1])
            finally:
                # Connections first: the SQLite files live in the temporary folder removed below.
                await gateway.close()
                await baseline.close()
    return results


def _contestants(w: Workload, gateway: Gateway, baseline: Baseline, naive: NaiveGraphQL, rounds: int,
                 naive_rounds: int) -> list[Contestant]:
    async def hutong() -> Data:
        out = await gateway.run(w.query, None, w.variables, context=UNRESTRICTED)
        if out.status != 200 or "errors" in out.body:
            raise MismatchError(f"{w.name}: hutong answered {out.status}: {out.body.get('errors')}")
        data: Data = out.body["data"]
        return data

    def hutong_statements() -> int:
        return sum(gateway.sources.statements().values())

    def baseline_statements() -> int:
        return baseline.statements

    out = [Contestant("hutong", hutong, hutong_statements, rounds),
           Contestant("direct", partial(w.direct, baseline), baseline_statements, rounds)]
    if w.naive:
        # A quick run (one naive round) skips tracing a naive run of over a second: traced, the
        # bulk one takes about 20 s on a 2-core machine, more than the rest of a quick run together.
        out.append(Contestant("naive", partial(naive.run, w.query, w.variables), baseline_statements,
                              naive_rounds, warm=False, trace_under=1.0 if naive_rounds == 1 else None))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.federation", description=__doc__.split("\n\n")[0])
    parser.add_argument("--residents", type=int, default=DEFAULT_RESIDENTS,
                        help=f"size of the generated city (default {DEFAULT_RESIDENTS:,})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"timed rounds per contestant (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=DEFAULT_WARMUP,
                        help=f"untimed rounds first (default {DEFAULT_WARMUP})")
    parser.add_argument("--naive-rounds", type=int, default=None,
                        help=f"timed rounds of the slow naive contestant (default: a fifth of --rounds, "
                             f"1 to {MAX_NAIVE_ROUNDS})")
    args = parser.parse_args(argv)
    if args.naive_rounds is None:
        args.naive_rounds = naive_rounds_for(args.rounds)
    if args.residents < 1000:
        parser.error("--residents must be at least 1000: the bulk and page workloads ask for 1,000 residents")
    if args.rounds < 1 or args.warmup < 0 or args.naive_rounds < 1:
        parser.error("--rounds and --naive-rounds must be at least 1, --warmup at least 0")

    console.print(f"hutong federation benchmark, {dt.date.today().isoformat()}, Python {platform.python_version()}, "
                  f"{os.cpu_count()} CPUs ({platform.machine()} {platform.system()})")
    console.print(f"{args.residents:,} residents; timed rounds: {args.rounds} after {args.warmup} warm-up "
                  f"(naive: {args.naive_rounds}, no warm-up)")
    started = time.perf_counter()
    try:
        results = asyncio.run(run(args.residents, args.rounds, args.warmup, args.naive_rounds))
    except MismatchError as exc:
        # markup=False: the message quotes data, whose brackets rich would take for markup.
        console.print(f"error: {exc}", style="red", markup=False)
        sys.exit(1)
    console.print()
    for r in results:
        console.print(summary(r))
    console.print(f"[dim]total {time.perf_counter() - started:.0f} s[/]")


if __name__ == "__main__":
    main()
