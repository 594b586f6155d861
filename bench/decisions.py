"""Time to decide a 50-field query under large policies: hutong's Decider against pycasbin's ``enforce``.

``python -m bench.decisions [--lines 1000,10000,100000] [--rounds R]`` writes, for each size,
a random (seeded) policy file of that many lines over the demo catalogue: clients (one per
50 lines), roles (one per 500), departments and groups, fields and wildcards, denies, row
rules and role links, plus the same few dozen lines that concern the subject under test
(``app-bench`` of Civil Affairs with role ``street-office``, purpose
``subsistence-allowance-review``). Every file passes ``validate_policy``, since the store
validates it on load. Then, for the same 50 fields:

- **hutong cold**: a fresh ``Decider`` over the loaded store decides every field. This
  includes compiling the subject's and purpose's lines (one scan of the policy);
- **hutong warm**: the same decisions again, answered from the compiled cache;
- **pycasbin**: ``Enforcer.enforce(client, field, action, purpose)`` for ``read``, then
  ``read_masked``, then ``verify``, stopping at the first allow, which is hutong's order.
  The enforcer is loaded from the same file, with the subject's department and roles added
  as role links, the way tests/test_decide.py establishes that the two agree.

Before anything is timed, hutong's access level for every field is checked equal to the one
the enforce calls give. It prints ratios, never asserts on them: timings belong to the
machine they ran on. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

import casbin
from rich import box
from rich.console import Console
from rich.table import Table

from catalog.loader import load_catalog
from catalog.model import Catalog, DataType, ShareType
from gateway.config import REPO_ROOT
from policies.decide import Access, Decider, Subject, compile_policy
from policies.store import MODEL_PATH, FilePolicySource, PolicyStore

__all__ = ["FIELDS", "PURPOSE", "SUBJECT", "main", "write_policy"]

DEFAULT_LINES = (1_000, 10_000, 100_000)
DEFAULT_ROUNDS = 20
DEFAULT_SEED = 2026
FIELDS = 50  # fields the query touches
# pycasbin gets as many timed rounds as fit in this many seconds (at most --rounds), judged by
# its checking run. When not even two fit, the checking run is its one timed round: pycasbin
# parses its matcher again on every call, so a first run is no colder than the next. On a
# 2-core VM a round takes about 0.8 s at 1,000 lines, 9 s at 10,000 and 90 s at 100,000.
PYCASBIN_BUDGET_S = 5.0

SUBJECT = Subject("app-bench", "civil", frozenset({"street-office"}))
PURPOSE = "subsistence-allowance-review"
ACTIONS = ("read", "read_masked", "verify")  # hutong's order: the strongest allowed wins
ACCESS_OF = {"read": Access.CLEAR, "read_masked": Access.MASKED, "verify": Access.VERIFY}

# The lines that concern the subject under test: its client id, department, role and the
# groups these belong to. Some are for other purposes, so the compiled list is shorter.
SAR = PURPOSE
SUBJECT_LINES = [
    "g, role:street-office, group:civil-affairs",
    "g, dept:civil, group:municipal",
    "g, street-office-app, role:street-office",
    f"p, role:street-office, psb.resident.*, read, {SAR}, allow, default",
    f"p, role:street-office, psb.resident.address, read, {SAR}, deny, default",
    f"p, role:street-office, psb.resident.address, read_masked, {SAR}, allow, default",
    f"p, role:street-office, hrss.employment.*, read, {SAR}, allow, default",
    f"p, role:street-office, hrss.employment.monthly_wage, read, {SAR}, deny, default",
    f"p, role:street-office, hrss.employment.monthly_wage, read_masked, {SAR}, allow, default",
    f"p, role:street-office, hrss.pension.*, read, {SAR}, allow, default",
    f"p, role:street-office, hrss.pension.monthly_amount, read, {SAR}, deny, default",
    f"p, role:street-office, hrss.pension.monthly_amount, read_masked, {SAR}, allow, default",
    f"p, role:street-office, hrss.unemployment_insurance.*, verify, {SAR}, allow, default",
    f"p, role:street-office, hrss.unemployment_insurance.status, read, {SAR}, allow, default",
    f"p, role:street-office, housing.property.*, read_masked, {SAR}, allow, default",
    f"p, role:street-office, housing.property.area_sqm, read, {SAR}, allow, default",
    f"p, role:street-office, housing.property.owner_id_number, read, {SAR}, allow, default",
    f"p, role:street-office, housing.property.mortgaged, *, {SAR}, deny, default",
    f"p, role:street-office, mr.business.*, verify, {SAR}, allow, default",
    f"p, role:street-office, mr.business.name, read, {SAR}, allow, default",
    f"p, role:street-office, mr.business.credit_code, read, {SAR}, allow, default",
    f"p, role:street-office, mr.business.legal_rep_id_number, read, {SAR}, allow, default",
    "p, role:street-office, health.*, *, public-health-followup, deny, default",
    "p, dept:civil, civil.*, read, *, allow, default",
    "p, dept:civil, civil.subsistence_case.monthly_allowance, read, market-supervision, deny, default",
    f"p, dept:civil, civil.subsistence_case.street_office, *, {SAR}, deny, default",
    "p, dept:civil, psb.resident.*, verify, *, allow, default",
    "p, dept:civil, psb.resident.name, read, citizen-self-service, allow, default",
    f"p, group:civil-affairs, hrss.*, verify, {SAR}, allow, default",
    f"p, group:civil-affairs, psb.resident.registered_on, read, {SAR}, deny, default",
    "p, group:civil-affairs, mr.business.registered_capital, read_masked, *, allow, default",
    "p, group:municipal, mr.*, read, citizen-self-service, allow, default",
    "p, group:municipal, housing.property.district, read, *, allow, default",
    f"p, app-bench, housing.property.address, read_masked, {SAR}, deny, default",
    f"p, app-bench, mr.business.address, *, {SAR}, deny, default",
    f"p, app-bench, hrss.employment.position, read, {SAR}, allow, default",
    "p, app-bench, psb.resident.gender, read, market-supervision, allow, default",
    f"p2, role:street-office, psb.resident, {SAR}, district, eq, 北苑区",
    "p2, app-bench, civil.subsistence_case, *, street_office, eq, ${client_id}",
]
# Names the random lines never use as a subject or a member, so that only SUBJECT_LINES
# concern the subject under test, whatever the size.
RESERVED = {"app-bench", "dept:civil", "role:street-office", "group:civil-affairs", "group:municipal"}

console = Console(highlight=False)
T = TypeVar("T")


class MismatchError(Exception):
    """hutong and pycasbin decided a field differently: the timings would compare different work."""


# --- the policy -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyFile:
    path: Path
    lines: Counter[str]  # p, p2, g -> count


def write_policy(path: Path, catalog: Catalog, lines: int, seed: int) -> PolicyFile:
    """A policy of exactly ``lines`` distinct lines (``p``, ``p2`` and ``g``), valid for ``catalog``."""
    rng = random.Random(seed)
    clients = [f"app-{i:04d}" for i in range(1, max(50, lines // 50) + 1)]
    roles = [f"role:r-{i:03d}" for i in range(1, max(20, lines // 500) + 1)]
    groups = [f"group:g-{i:02d}" for i in range(1, 21)]
    departments = [f"dept:{d}" for d in sorted(catalog.departments) if f"dept:{d}" not in RESERVED]
    fields = [(ds.code, f) for ds in catalog.datasets.values() for f in ds.fields]
    # Explicit fields for allow lines leave out share type none: only a wildcard may cover
    # them (validate_policy refuses an explicit grant without a legal basis).
    shared = [f"{code}.{f.name}" for code, f in fields if f.share is not ShareType.NONE]
    every = [f"{code}.{f.name}" for code, f in fields]
    per_dataset = [f"{code}.*" for code in catalog.datasets]
    per_department = sorted({f"{code.split('.')[0]}.*" for code in catalog.datasets})
    purposes = [*sorted(catalog.purposes), "*"]

    out: dict[str, None] = dict.fromkeys(line for line in SUBJECT_LINES)  # ordered, distinct
    # Role links: each client has one or two roles, each role belongs to a department, some
    # roles also to a group. A few other clients get the subject's role (links into it are harmless).
    g_lines: list[str] = []
    for client in clients:
        for role in rng.sample(roles, rng.choice((1, 1, 2))):
            g_lines.append(f"g, {client}, {role}")
    for role in roles:
        g_lines.append(f"g, {role}, {rng.choice(departments)}")
        if rng.random() < 0.3:
            g_lines.append(f"g, {role}, {rng.choice(groups)}")
    g_lines += [f"g, {client}, role:street-office" for client in rng.sample(clients, max(2, len(clients) // 100))]
    # Row rules, about 1 % of the lines.
    p2_lines = []
    for _ in range(lines // 100):
        code = rng.choice(list(catalog.datasets))
        ds = catalog.datasets[code]
        # ${department} binds text: the validator refuses it on a date or number column.
        column = rng.choice([f.name for f in ds.fields if f.type is DataType.STRING])
        sub = rng.choice(clients + roles)
        p2_lines.append(f"p2, {sub}, {code}, {rng.choice(purposes)}, {column}, eq, ${{department}}")
    for line in g_lines + p2_lines:
        if len(out) >= lines:
            break
        out[line] = None

    while len(out) < lines:
        r = rng.random()
        sub = rng.choice(clients) if r < 0.55 else rng.choice(roles) if r < 0.9 else rng.choice(departments)
        eft = "allow" if rng.random() < 0.88 else "deny"
        r = rng.random()
        if r < 0.70:
            obj = rng.choice(shared if eft == "allow" else every)
        elif r < 0.92:
            obj = rng.choice(per_dataset)
        elif r < 0.995:
            obj = rng.choice(per_department)
        else:
            obj = "*"
        act = rng.choices(("read", "read_masked", "verify", "*"), weights=(50, 20, 15, 15))[0]
        pur = rng.choices(purposes, weights=[*(85 / (len(purposes) - 1),) * (len(purposes) - 1), 15])[0]
        out[f"p, {sub}, {obj}, {act}, {pur}, {eft}, default"] = None

    text = list(out)
    rng.shuffle(text)  # the subject's lines anywhere in the file, as in real life
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return PolicyFile(path, Counter(line.split(",", 1)[0] for line in text))


def query_fields(catalog: Catalog, seed: int) -> list[str]:
    """The query's fields: 50 distinct ones from the datasets the purpose covers, none of share type
    none, so every decision is the policy's (the catalogue's own terms deny nothing here)."""
    purpose = catalog.purposes[PURPOSE]
    pool = [f"{code}.{f.name}" for code in purpose.datasets for f in catalog.datasets[code].fields
            if f.share is not ShareType.NONE]
    return sorted(random.Random(seed).sample(pool, FIELDS))


# --- the contestants ------------------------------------------------------------------------


def hutong_cold(store: PolicyStore, catalog: Catalog, fields: list[str]) -> tuple[Decider, list[Access]]:
    decider = Decider(store, catalog)
    return decider, [decider.decide(SUBJECT, PURPOSE, f).access for f in fields]


def hutong_warm(decider: Decider, fields: list[str]) -> list[Access]:
    return [decider.decide(SUBJECT, PURPOSE, f).access for f in fields]


def pycasbin_enforcer(path: Path) -> casbin.Enforcer:
    enforcer = casbin.Enforcer(str(MODEL_PATH), str(path))
    enforcer.enable_auto_save(False)
    # What the access token says, as role links: the client is in its department and has its roles.
    for name in SUBJECT.names[1:]:
        enforcer.add_grouping_policy(SUBJECT.client_id, name)
    return enforcer


def pycasbin_decide(enforcer: casbin.Enforcer, fields: list[str]) -> tuple[list[Access], int]:
    """Each field's access from plain enforce calls, in hutong's order; and how many calls it took."""
    out: list[Access] = []
    calls = 0
    for f in fields:
        access = Access.DENIED
        for act in ACTIONS:
            calls += 1
            if enforcer.enforce(SUBJECT.client_id, f, act, PURPOSE):
                access = ACCESS_OF[act]
                break
        out.append(access)
    return out, calls


# --- measuring ------------------------------------------------------------------------------


@dataclass
class Measurement:
    name: str
    times: list[float] = field(default_factory=list)  # seconds, one per timed round

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000


@dataclass
class SizeResult:
    lines: int
    policy: PolicyFile
    load_s: float  # the store's first refresh: read the file, build role links, validate
    compiled: int  # p lines hutong kept for the subject and purpose
    checks: int  # enforce calls for the 50 fields (also hutong's allowed() calls)
    decisions: Counter[str]
    pycasbin_check_s: float
    cold: Measurement
    warm: Measurement
    pycasbin: Measurement

    def ratio(self, over: Measurement) -> float:
        return self.pycasbin.median_ms / over.median_ms


def timed(fn: Callable[[], T]) -> tuple[float, T]:
    gc.collect()  # do not pay for the previous run's garbage
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def measure(lines: int, catalog: Catalog, folder: Path, rounds: int, seed: int, fields: list[str]) -> SizeResult:
    policy = write_policy(folder / f"policy-{lines}.csv", catalog, lines, seed)
    store = PolicyStore(FilePolicySource(policy.path), catalog)
    started = time.perf_counter()
    asyncio.run(store.refresh())
    load_s = time.perf_counter() - started
    enforcer = pycasbin_enforcer(policy.path)

    # Check before timing: the same access level for every field, or no numbers at all.
    decider, ours = hutong_cold(store, catalog, fields)
    if hutong_warm(decider, fields) != ours:
        raise MismatchError(f"{lines:,} lines: hutong's cached decisions differ from its first ones")
    gc.collect()
    started = time.perf_counter()
    theirs, checks = pycasbin_decide(enforcer, fields)
    pycasbin_check_s = time.perf_counter() - started
    if ours != theirs:
        diff = [f"{f}: hutong {a.name}, pycasbin {b.name}" for f, a, b in zip(fields, ours, theirs, strict=True)
                if a != b]
        raise MismatchError(f"{lines:,} lines: {len(diff)} field(s) decided differently: {'; '.join(diff[:5])}")
    compiled = len(compile_policy(store.snapshot.enforcer, SUBJECT, PURPOSE).rules)

    cold, warm, pyc = Measurement("hutong cold"), Measurement("hutong warm"), Measurement("pycasbin")
    pycasbin_rounds = min(rounds, int(PYCASBIN_BUDGET_S / pycasbin_check_s))
    if pycasbin_rounds < 2:
        pyc.times.append(pycasbin_check_s)  # the checking run is the one timed round
        pycasbin_rounds = 0
    # Rounds interleave the contestants, so a slow spell of the machine hits all of them alike.
    for i in range(rounds):
        seconds, (fresh, _) = timed(partial(hutong_cold, store, catalog, fields))
        cold.times.append(seconds)
        warm.times.append(timed(partial(hutong_warm, fresh, fields))[0])
        if i < pycasbin_rounds:
            pyc.times.append(timed(partial(pycasbin_decide, enforcer, fields))[0])
    return SizeResult(lines, policy, load_s, compiled, checks, Counter(a.name for a in ours), pycasbin_check_s,
                      cold, warm, pyc)


# --- reporting ------------------------------------------------------------------------------


def _ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:,.0f}x"


def _ms(seconds: float) -> str:
    ms = seconds * 1000
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.2f}"


def _us(us: float) -> str:
    return f"{us:,.0f}" if us >= 100 else f"{us:.1f}"


def report(r: SizeResult) -> None:
    p = r.policy.lines
    mix = ", ".join(f"{r.decisions[a.name]} {a.name.lower()}" for a in (Access.CLEAR, Access.MASKED, Access.VERIFY,
                                                                           Access.DENIED))
    # SIMPLE_HEAD keeps the table within 80 columns, the width rich assumes when piped.
    table = Table(title=f"[bold]{r.lines:,} policy lines[/]: {p['p']:,} p, {p['p2']:,} p2 (row rules), {p['g']:,} g",
                  title_justify="left", caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("contestant", no_wrap=True)
    table.add_column("median ms", justify="right")
    table.add_column("range ms", justify="right")
    table.add_column("rounds", justify="right")
    table.add_column("µs/check", justify="right")
    table.add_column("ratio", justify="right")
    for m in (r.cold, r.warm, r.pycasbin):
        spread = _ms(m.times[0]) if len(m.times) == 1 else f"{_ms(min(m.times))}–{_ms(max(m.times))}"
        table.add_row(m.name, _ms(m.median_ms / 1000), spread, str(len(m.times)), _us(m.median_ms * 1000 / r.checks),
                      _ratio(r.ratio(m)))
    caption = [f"load+validate {_ms(r.load_s)} ms (the store's first refresh, not in the times above); "
               f"{r.compiled} p lines concern the subject and purpose",
               f"{FIELDS} fields: {mix}; {r.checks} checks = enforce calls (read → read_masked → verify, first "
               "allow wins); ratio: pycasbin's median over the row's"]
    if len(r.pycasbin.times) == 1:
        caption.append(f"pycasbin: 1 round only, its checking run ({r.pycasbin_check_s:.1f} s; two do not fit in "
                       f"{PYCASBIN_BUDGET_S:.0f} s)")
    elif len(r.pycasbin.times) < len(r.cold.times):
        caption.append(f"pycasbin: {len(r.pycasbin.times)} rounds only, as many as fit in {PYCASBIN_BUDGET_S:.0f} s "
                       f"({r.pycasbin_check_s:.1f} s per round)")
    table.caption = "\n".join(caption)
    console.print(table)
    console.print()


def summary(results: list[SizeResult]) -> Table:
    table = Table(title=f"[bold]Deciding {FIELDS} fields[/], median ms", title_justify="left",
                  caption="÷: pycasbin's time over hutong's; load: the store's load+validate, not in the others",
                  caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("lines", "load", "hutong cold", "hutong warm", "pycasbin", "÷ cold", "÷ warm"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(f"{r.lines:,}", _ms(r.load_s), _ms(r.cold.median_ms / 1000), f"{r.warm.median_ms:.3f}",
                      _ms(r.pycasbin.median_ms / 1000), _ratio(r.ratio(r.cold)), _ratio(r.ratio(r.warm)))
    return table


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(s.replace("_", "")) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated line counts, e.g. 1000,10000: {text!r}") from None
    if not sizes or min(sizes) < 2 * len(SUBJECT_LINES):
        raise argparse.ArgumentTypeError(f"each size must be at least {2 * len(SUBJECT_LINES)} lines")
    return sizes


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.decisions", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=_sizes, default=DEFAULT_LINES,
                        help="policy sizes, comma-separated (default 1000,10000,100000; quick: 1000,10000)")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                        help=f"timed rounds for hutong (default {DEFAULT_ROUNDS}); pycasbin gets as many as fit in "
                             f"{PYCASBIN_BUDGET_S:.0f} s per size, at least 1 (its checking run)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    console.print(f"hutong decision benchmark, {dt.date.today().isoformat()}, Python {platform.python_version()}, "
                  f"pycasbin {_version('pycasbin')}, {os.cpu_count()} CPUs ({platform.machine()} {platform.system()})")
    console.print(f"subject {SUBJECT.client_id} (dept {SUBJECT.department}, roles {', '.join(sorted(SUBJECT.roles))}), "
                  f"purpose {PURPOSE}; timed rounds: {args.rounds}")
    console.print()
    started = time.perf_counter()
    catalog = load_catalog(REPO_ROOT / "demo" / "catalog")
    fields = query_fields(catalog, args.seed)
    results: list[SizeResult] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hutong-bench-policy-") as tmp:
            for lines in args.lines:
                results.append(measure(lines, catalog, Path(tmp), args.rounds, args.seed, fields))
                report(results[-1])
    except MismatchError as exc:
        console.print(f"error: {exc}", style="red", markup=False)
        sys.exit(1)
    console.print(summary(results))
    console.print(f"[dim]total {time.perf_counter() - started:.0f} s[/]")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"


if __name__ == "__main__":
    main()
