"""Simulate a policy change: which decisions would change, before anything is applied.

:func:`proposed` applies a change (lines to add and to remove) to a policy's lines;
:func:`simulate` compares two policies (the one in force and a proposed one, or a whole new
file) for every (client, purpose, dataset.field) and lists the decisions that differ, in
access or mask, and the (client, purpose, dataset) whose row rules differ.

Decisions follow :class:`policies.decide.Decider`'s rule (``tests/test_explain.py`` checks
the changes listed equal the diff of a Decider's decisions before and after). To be quick
on large policies, the lines of each (client, purpose) are selected through an index by
subject; when they are the same before and after, no field's decision can differ and none
is decided; otherwise each line is matched once against the fields its pattern covers
(cached per pattern), rather than each field against every line: 20 clients, 5 purposes and
65 fields under a 10,000-line policy rewritten as a whole take 0.2 s, a single added line 0.04
s (``test_simulate_is_quick_on_a_large_policy``; a Decider asked field by field: 2.1 s).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import casbin
from casbin.util import key_match

from catalog.model import Catalog
from policies.decide import (
    LEVELS,
    Access,
    Decision,
    Effects,
    RowRule,
    Subject,
    compile_policy,
    grant,
    offers_mask,
    reaches,
)
from policies.explain import catalogue_terms, purpose_of
from policies.lines import PolicyLine, format_line, lines_of
from policies.store import index_by_subject

__all__ = ["DecisionChange", "RowRuleChange", "SimulationResult", "proposed", "simulate"]


def proposed(before_lines: Sequence[PolicyLine], add: Iterable[PolicyLine] = (),
             remove: Iterable[PolicyLine] = ()) -> list[PolicyLine]:
    """``before_lines`` with ``remove`` taken out, then ``add`` appended. Removing a line that is not
    there, or adding one already there, is a ValueError naming every such line: a change written
    against another version of the policy must not half-apply."""
    present = set(before_lines)
    gone: set[PolicyLine] = set()
    problems: list[str] = []
    for line in remove:
        if line in gone:
            problems.append(f"{format_line(line)!r} is listed twice to remove")
        elif line not in present:
            problems.append(f"cannot remove {format_line(line)!r}: the policy has no such line (values are compared "
                            "one by one; copy the line from the policy)")
        gone.add(line)
    kept = [line for line in before_lines if line not in gone]
    have = set(kept)
    added: list[PolicyLine] = []
    for line in add:
        if line in have:
            problems.append(f"cannot add {format_line(line)!r}: the policy already has it"
                            if line in present else f"{format_line(line)!r} is listed twice to add")
            continue
        have.add(line)
        added.append(line)
    if problems:
        raise ValueError("; ".join(problems))
    return kept + added


@dataclass(frozen=True, slots=True)
class DecisionChange:
    client_id: str
    purpose: str
    field: str  # dataset.field
    before: Decision
    after: Decision

    @property
    def direction(self) -> str:
        """stronger or weaker access, or the same access with another mask."""
        if self.after.access == self.before.access:
            return "mask"
        return "stronger" if self.after.access > self.before.access else "weaker"

    def to_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "purpose": self.purpose, "field": self.field,
                "before": _decision_dict(self.before), "after": _decision_dict(self.after),
                "direction": self.direction}


@dataclass(frozen=True, slots=True)
class RowRuleChange:
    """The row rules on a dataset for a client and purpose, before and after (in no order: they hold together)."""

    client_id: str
    purpose: str
    dataset: str
    before: tuple[RowRule, ...]
    after: tuple[RowRule, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "purpose": self.purpose, "dataset": self.dataset,
                "before": [_rule_dict(r) for r in self.before], "after": [_rule_dict(r) for r in self.after]}


@dataclass(frozen=True, slots=True)
class SimulationResult:
    changes: tuple[DecisionChange, ...]  # by client, purpose, field
    row_rule_changes: tuple[RowRuleChange, ...]  # by client, purpose, dataset
    added: tuple[PolicyLine, ...]  # lines of the new policy that the old one lacks
    removed: tuple[PolicyLine, ...]  # lines of the old policy that the new one lacks
    checked: int  # (client, purpose, field) decisions compared

    @property
    def counts(self) -> dict[str, int]:
        directions = [c.direction for c in self.changes]
        return {"checked": self.checked, "changed": len(self.changes), "stronger": directions.count("stronger"),
                "weaker": directions.count("weaker"), "mask_changed": directions.count("mask"),
                "row_rules_changed": len(self.row_rule_changes)}

    def to_dict(self) -> dict[str, Any]:
        return {"changes": [c.to_dict() for c in self.changes],
                "row_rule_changes": [r.to_dict() for r in self.row_rule_changes],
                "added": [format_line(line) for line in self.added],
                "removed": [format_line(line) for line in self.removed], **self.counts}


def _decision_dict(d: Decision) -> dict[str, Any]:
    return {"access": d.access.name, "mask": d.mask}


def _rule_dict(r: RowRule) -> dict[str, Any]:
    return {"column": r.column, "op": r.op, "value": r.value}


def _rule_key(r: RowRule) -> tuple[str, str, str]:
    return r.column, r.op, r.value


class _Patterns:
    """The fields each line pattern matches (Casbin's key_match), computed once per pattern."""

    def __init__(self, fields: Iterable[str]) -> None:
        self.fields = list(fields)
        self._cache: dict[str, list[str]] = {}

    def fields_of(self, pattern: str) -> list[str]:
        hit = self._cache.get(pattern)
        if hit is None:
            hit = self._cache[pattern] = [obj for obj in self.fields if key_match(obj, pattern)]
        return hit


def _decisions(rules: list[list[str]], open_fields: dict[str, str], patterns: _Patterns) -> dict[str, Decision]:
    """The decisions other than DENIED over ``open_fields`` (dataset.field -> catalogue mask: the fields
    the catalogue's terms leave to the policy), taking each line once."""
    seen: dict[str, tuple[set[Access], set[Access], list[str]]] = {}
    for _sub, pattern, act, _pur, eft, mask in rules:
        levels = [a for a in LEVELS if reaches(act, eft, a)]
        if not levels:
            continue
        for obj in patterns.fields_of(pattern):
            if obj not in open_fields:
                continue
            allows, denies, masks = seen.setdefault(obj, (set(), set(), []))
            if eft == "deny":
                denies.update(levels)
            else:  # as in Decider.effects: every effect other than deny allows
                allows.update(levels)
                if Access.MASKED in levels and offers_mask(act):
                    masks.append(mask)
    out: dict[str, Decision] = {}
    for obj, (allows, denies, masks) in seen.items():
        effects: dict[Access, Effects] = {a: (a in allows, a in denies, masks if a is Access.MASKED else [])
                                          for a in LEVELS}
        decision, _ = grant(effects, open_fields[obj])
        if decision.access is not Access.DENIED:
            out[obj] = decision
    return out


def simulate(catalog: Catalog, before: casbin.Enforcer, after: casbin.Enforcer, subjects: list[Subject],
             purposes: list[str] | None = None) -> SimulationResult:
    """Every (client, purpose, dataset.field) decision and every (client, purpose, dataset) set of row rules
    that differ between the policies ``before`` and ``after``, for ``subjects`` and ``purposes`` (default:
    every purpose of the catalogue). Datasets a purpose does not cover are never queried for it, and
    fields the catalogue's terms close are denied under any policy: neither can change."""
    codes = sorted(catalog.purposes) if purposes is None else list(purposes)
    for code in codes:
        purpose_of(catalog, code)  # an unknown purpose is an error naming it, before any work
    every = [(f"{ds.code}.{f.name}", f) for ds in catalog.datasets.values() for f in ds.fields]
    open_fields = {code: {obj: spec.mask for obj, spec in every
                          if not any(t.blocks for t in catalogue_terms(catalog.purposes[code], obj, spec))}
                   for code in codes}
    patterns = _Patterns(obj for obj, _ in every)
    index_before, index_after = index_by_subject(before), index_by_subject(after)
    changes: list[DecisionChange] = []
    row_changes: list[RowRuleChange] = []
    for subject in sorted(subjects, key=lambda s: s.client_id):
        for code in codes:
            old = compile_policy(before, subject, code, index_before)
            new = compile_policy(after, subject, code, index_after)
            # Effects and the strictest mask do not depend on line order: the same lines, the same decisions.
            if {tuple(r) for r in old.rules} != {tuple(r) for r in new.rules}:
                was = _decisions(old.rules, open_fields[code], patterns)
                now = _decisions(new.rules, open_fields[code], patterns)
                denied = Decision(Access.DENIED)
                for obj in sorted(was.keys() | now.keys()):
                    b, a = was.get(obj, denied), now.get(obj, denied)
                    if (b.access, b.mask) != (a.access, a.mask):
                        changes.append(DecisionChange(subject.client_id, code, obj, b, a))
            for dataset in sorted(catalog.purposes[code].datasets):
                b_rows = tuple(sorted(set(old.rows.get(dataset, ())), key=_rule_key))
                a_rows = tuple(sorted(set(new.rows.get(dataset, ())), key=_rule_key))
                if b_rows != a_rows:
                    row_changes.append(RowRuleChange(subject.client_id, code, dataset, b_rows, a_rows))
    old_lines, new_lines = lines_of(before), lines_of(after)
    old_set, new_set = set(old_lines), set(new_lines)
    return SimulationResult(tuple(changes), tuple(row_changes),
                            added=tuple(line for line in new_lines if line not in old_set),
                            removed=tuple(line for line in old_lines if line not in new_set),
                            checked=len(subjects) * len(codes) * len(every))
