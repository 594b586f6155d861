"""Policy lines as values: parsing, printing, and building an enforcer from them.

A line is a tuple whose first item is its type, as in Casbin's CSV files:

    ("p",  subject, dataset.field, action, purpose, allow|deny, mask|default)
    ("p2", subject, dataset, purpose, column, operator, value)          row rules
    ("g",  member, role or group)

Every tool that reads or writes policy (the store, the administration API and CLI, explain,
simulate, sharing requests) speaks in these tuples, so a line means the same everywhere.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable

import casbin

__all__ = [
    "ARITY",
    "PLACEHOLDER",
    "PolicyLine",
    "enforcer_of",
    "format_csv",
    "format_line",
    "lines_of",
    "parse_csv",
    "parse_line",
]

# What a row rule's value may name (p2 lines): bound per client at authorisation (policies/decide.py).
PLACEHOLDER = re.compile(r"\$\{(client_id|department|claim\.[a-z][a-z0-9_]*)\}")

PolicyLine = tuple[str, ...]
ARITY = {"p": 6, "p2": 6, "g": 2}  # values after the type


def parse_line(text: str) -> PolicyLine:
    """``"p, role:x, psb.resident.*, read, *, allow, default"`` -> a line; ValueError naming what is wrong."""
    row = next(csv.reader([text], skipinitialspace=True), [])
    items = tuple(v.strip() for v in row)
    if not items or items[0] not in ARITY:
        raise ValueError(f"{text.strip()!r}: a policy line starts with p, p2 or g")
    if len(items) - 1 != ARITY[items[0]]:
        raise ValueError(f"{text.strip()!r}: a {items[0]} line has {ARITY[items[0]]} values after its type, "
                         f"not {len(items) - 1}")
    if any(not v for v in items):
        raise ValueError(f"{text.strip()!r}: empty value")
    return items


def parse_csv(text: str) -> list[PolicyLine]:
    """A whole Casbin CSV policy: blank lines and ``#`` comments skipped; every bad line reported."""
    lines: list[PolicyLine] = []
    problems: list[str] = []
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        try:
            lines.append(parse_line(raw))
        except ValueError as exc:
            problems.append(f"line {n}: {exc}")
    if problems:
        raise ValueError("; ".join(problems))
    return lines


def format_line(line: PolicyLine) -> str:
    return ", ".join(line)


def format_csv(lines: Iterable[PolicyLine]) -> str:
    buf = io.StringIO()
    for line in lines:
        buf.write(format_line(line) + "\n")
    return buf.getvalue()


def lines_of(enforcer: casbin.Enforcer) -> list[PolicyLine]:
    """Every line of an enforcer's model, p then p2 then g, in model order."""
    out: list[PolicyLine] = [("p", *line) for line in enforcer.get_named_policy("p")]
    out += [("p2", *line) for line in enforcer.get_named_policy("p2")]
    out += [("g", *line) for line in enforcer.get_named_grouping_policy("g")]
    return out


def enforcer_of(lines: Iterable[PolicyLine]) -> casbin.Enforcer:
    """A fresh enforcer (hutong's model) holding exactly ``lines``, role links built."""
    from policies.store import new_enforcer

    enforcer = new_enforcer()
    model = enforcer.get_model()
    # Straight into the assertions, duplicates dropped with a set: pycasbin's add_policy looks each line
    # up in a list first, which makes a 100,000-line policy take minutes instead of a fraction of a second.
    seen: set[PolicyLine] = set()
    for line in lines:
        if line in seen:
            continue
        seen.add(line)
        assertion = model["g" if line[0] == "g" else "p"][line[0]]
        assertion.policy.append(list(line[1:]))
    for sec in ("p", "g"):
        for assertion in model[sec].values():
            assertion.policy_map = {",".join(rule): i for i, rule in enumerate(assertion.policy)}
    enforcer.build_role_links()
    return enforcer
