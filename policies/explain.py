"""Explain a decision: what a caller gets of a field for a purpose, and the rules that made it so.

A debugger for policy. For (subject, purpose, dataset.field) an :class:`Explanation` gives the
decision and everything behind it: the catalogue's terms that apply before any policy line
(the purpose's datasets, share type ``none``, ``conditional``), for each action level the
matching allow and deny lines with the ``g`` path from one of the caller's own names to the
line's subject, which deny overrode which allow, why the mask is the one chosen, and the row
rules that limit the dataset's records.

The decision follows :class:`policies.decide.Decider`'s rule (catalogue terms first; a deny on
a weaker level denies every stronger level; the strictest mask of the matching masked reads)
over the lines :func:`policies.decide.compile_policy` selects, matched with Casbin's own
``key_match``. ``tests/test_explain.py`` checks that it equals the Decider's for every demo
client, purpose and field and for random policies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import casbin
from casbin.util import key_match

from catalog.model import Catalog, FieldSpec, Purpose, ShareType
from policies.decide import (
    ACTION,
    LEVELS,
    Access,
    Decider,
    Decision,
    RowRule,
    Subject,
    compile_policy,
    grant,
    offers_mask,
    reaches,
)
from policies.lines import PolicyLine, format_line

__all__ = ["Explanation", "LevelTrace", "Override", "RowRuleMatch", "RuleMatch", "Term", "catalogue_terms", "explain",
           "explain_query", "field_spec", "purpose_of", "role_paths"]

@dataclass(frozen=True, slots=True)
class Term:
    """A catalogue term on the field for the purpose; ``blocks``: it denies whatever the policy says."""

    kind: str  # outside_purpose | not_shared | legal_basis | conditional
    blocks: bool
    text: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "blocks": self.blocks, "text": self.text}


def catalogue_terms(purpose: Purpose, obj: str, spec: FieldSpec) -> list[Term]:
    """The catalogue's terms on ``obj`` for ``purpose``, as the Decider applies them (before the policy)."""
    code = obj.rpartition(".")[0]
    if code not in purpose.datasets:
        return [Term("outside_purpose", True,
                     f"purpose {purpose.code!r} does not cover dataset {code} (it covers "
                     f"{', '.join(purpose.datasets)}): the dataset is not queried at all, whatever the policy grants")]
    if spec.share is ShareType.NONE:
        if obj not in purpose.none_fields:
            return [Term("not_shared", True,
                         f"{obj} is not shared (不予共享) and the legal basis of purpose {purpose.code!r} does not "
                         "list it in none_fields: it is never returned, whatever the policy grants")]
        return [Term("legal_basis", False,
                     f"{obj} is not shared (不予共享), but the legal basis of purpose {purpose.code!r} "
                     f"({purpose.legal_basis}) lists it in none_fields: the policy decides")]
    if spec.share is ShareType.CONDITIONAL:
        return [Term("conditional", False,
                     f"{obj} is conditional (有条件共享): where the policy grants it, each record's value is also "
                     "released only if the data subject's consent or a recorded legal basis covers it "
                     "(CONSENT_REQUIRED otherwise), and filters or verify claims on it are refused")]
    return []


@dataclass(frozen=True, slots=True)
class RuleMatch:
    """A policy line that matched, and the ``g`` path from one of the caller's own names to its subject."""

    line: PolicyLine
    role_path: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"line": format_line(self.line), "role_path": list(self.role_path)}


@dataclass(frozen=True, slots=True)
class LevelTrace:
    """One action level: the lines that match it and what came of them."""

    action: str  # verify | read_masked | read
    allows: tuple[RuleMatch, ...]
    denies: tuple[RuleMatch, ...]
    outcome: str  # allowed | denied | denied_below (a weaker level's deny) | no_allow

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "outcome": self.outcome, "allows": [m.to_dict() for m in self.allows],
                "denies": [m.to_dict() for m in self.denies]}


@dataclass(frozen=True, slots=True)
class Override:
    """A matching deny line, the weakest level it matches, and the allows it overrides: those of that level
    and of every stronger one."""

    deny: RuleMatch
    action: str  # the weakest level the deny matches
    overridden: tuple[RuleMatch, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"deny": self.deny.to_dict(), "action": self.action,
                "overridden": [m.to_dict() for m in self.overridden]}


@dataclass(frozen=True, slots=True)
class RowRuleMatch:
    """A row rule (``p2`` line) on the field's dataset for this caller and purpose."""

    line: PolicyLine
    role_path: tuple[str, ...]
    rule: RowRule
    bound: str  # the value with ${client_id} and ${department} filled in for this caller

    def to_dict(self) -> dict[str, Any]:
        return {"line": format_line(self.line), "role_path": list(self.role_path), "column": self.rule.column,
                "op": self.rule.op, "value": self.rule.value, "bound_value": self.bound}


@dataclass(frozen=True, slots=True)
class Explanation:
    client_id: str
    purpose: str
    field: str  # dataset.field
    access: Access
    mask: str | None  # for MASKED: the mask applied
    terms: tuple[Term, ...]
    levels: tuple[LevelTrace, ...]  # verify, read_masked, read
    overrides: tuple[Override, ...]
    mask_reason: str | None
    row_rules: tuple[RowRuleMatch, ...]
    summary: tuple[str, ...]

    @property
    def blocked_by_terms(self) -> bool:
        return any(t.blocks for t in self.terms)

    def to_dict(self) -> dict[str, Any]:
        return {"client_id": self.client_id, "purpose": self.purpose, "field": self.field,
                "access": self.access.name, "mask": self.mask, "blocked_by_terms": self.blocked_by_terms,
                "terms": [t.to_dict() for t in self.terms], "levels": [lv.to_dict() for lv in self.levels],
                "overrides": [o.to_dict() for o in self.overrides], "mask_reason": self.mask_reason,
                "row_rules": [r.to_dict() for r in self.row_rules], "summary": list(self.summary)}


def role_paths(enforcer: casbin.Enforcer, subject: Subject) -> dict[str, tuple[str, ...]]:
    """The shortest ``g`` path from one of the subject's own names (client id, dept:X, role:Y) to every
    name it reaches; an own name is its own path. Ties go to the earlier own name."""
    edges: dict[str, list[str]] = {}
    for line in enforcer.get_named_grouping_policy("g"):
        edges.setdefault(line[0], []).append(line[1])
    paths = {name: (name,) for name in subject.names}
    queue = deque(subject.names)
    while queue:
        name = queue.popleft()
        for group in edges.get(name, ()):
            if group not in paths:
                paths[group] = (*paths[name], group)
                queue.append(group)
    return paths


def purpose_of(catalog: Catalog, purpose: str) -> Purpose:
    found = catalog.purposes.get(purpose)
    if found is None:
        raise ValueError(f"unknown purpose {purpose!r}; known: {', '.join(sorted(catalog.purposes))}")
    return found


def field_spec(catalog: Catalog, obj: str) -> FieldSpec:
    """The catalogue's entry for ``dataset.field``; ValueError naming what is unknown."""
    code, _, name = obj.rpartition(".")
    ds = catalog.datasets.get(code)
    if ds is None:
        raise ValueError(f"unknown dataset {code!r} in {obj!r}: write dataset.field, e.g. psb.resident.name")
    try:
        return ds.field(name)
    except KeyError:
        raise ValueError(f"unknown field {name!r} of {code}; its fields: "
                         f"{', '.join(f.name for f in ds.fields)}") from None


def explain(enforcer: casbin.Enforcer, catalog: Catalog, subject: Subject, purpose: str, field: str) -> Explanation:
    """Why ``subject`` gets what it gets of ``field`` (dataset.field) for ``purpose`` under ``enforcer``'s policy."""
    return explain_query(enforcer, catalog, subject, purpose, [field])[0]


def explain_query(enforcer: casbin.Enforcer, catalog: Catalog, subject: Subject, purpose: str,
                  plan_fields: Iterable[str]) -> list[Explanation]:
    """An explanation for every ``dataset.field`` a planned query reads or tests (``Plan.fields()``), in order.
    The policy lines that concern the subject and purpose are selected once for them all."""
    pur = purpose_of(catalog, purpose)
    fields = [(obj, field_spec(catalog, obj)) for obj in plan_fields]  # every unknown field before any work
    rules = compile_policy(enforcer, subject, purpose).rules
    paths = role_paths(enforcer, subject)
    names = Decider.closure(enforcer, subject)
    rows: dict[str, list[RowRuleMatch]] = {}
    for line in enforcer.get_named_policy("p2"):
        sub, dataset, p2_purpose, column, op, value = line
        if sub in names and p2_purpose in (purpose, "*"):
            rule = RowRule(column, op, value)
            try:
                bound = rule.bind(subject)
            except LookupError as exc:
                bound = f"(unbound: {exc}; its requests are refused)"
            rows.setdefault(dataset, []).append(RowRuleMatch(("p2", *line), paths[sub], rule, bound))
    return [_explain(subject, pur, obj, spec, rules, paths, rows) for obj, spec in fields]


def _explain(subject: Subject, purpose: Purpose, obj: str, spec: FieldSpec, rules: list[list[str]],
             paths: dict[str, tuple[str, ...]], rows: dict[str, list[RowRuleMatch]]) -> Explanation:
    matches: dict[Access, tuple[list[RuleMatch], list[RuleMatch]]] = {a: ([], []) for a in LEVELS}
    for rule in rules:
        sub, pattern, act, _pur, eft, _mask = rule
        if not key_match(obj, pattern):
            continue
        match = RuleMatch(("p", *rule), paths[sub])
        for access in LEVELS:
            if reaches(act, eft, access):
                # Decider.effects counts every effect other than "deny" as an allow.
                matches[access][1 if eft == "deny" else 0].append(match)
    effects = {a: (bool(allows), bool(denies), [m.line[6] for m in allows if offers_mask(m.line[3])])
               for a, (allows, denies) in matches.items()}
    by_policy, denied_at = grant(effects, spec.mask)
    terms = catalogue_terms(purpose, obj, spec)
    blocked = any(t.blocks for t in terms)
    decision = Decision(Access.DENIED) if blocked else by_policy

    levels = tuple(LevelTrace(ACTION[a], tuple(allows), tuple(denies), _outcome(a, allows, denies, denied_at))
                   for a, (allows, denies) in matches.items())
    deny_lines = _denies(matches)
    overrides = tuple(d for d in deny_lines if d.overridden)
    mask_reason = None
    if decision.access is Access.MASKED:
        mask_reason = _mask_reason(decision.mask, effects[Access.MASKED][2], spec)
    code = obj.rpartition(".")[0]
    row_rules = tuple(rows.get(code, ())) if code in purpose.datasets else ()
    summary = _summary(subject, purpose.code, obj, decision, by_policy, terms, matches, deny_lines, mask_reason,
                       row_rules, code)
    return Explanation(subject.client_id, purpose.code, obj, decision.access, decision.mask, tuple(terms), levels,
                       overrides, mask_reason, row_rules, tuple(summary))


def _outcome(access: Access, allows: list[RuleMatch], denies: list[RuleMatch], denied_at: Access | None) -> str:
    if denied_at is not None and access > denied_at:
        return "denied_below"
    if denies:
        return "denied"
    return "allowed" if allows else "no_allow"


def _denies(matches: Mapping[Access, tuple[list[RuleMatch], list[RuleMatch]]]) -> list[Override]:
    """Each matching deny line, at the weakest level it matches, with the distinct allows it overrides:
    those of that level and of every stronger one (possibly none)."""
    out: list[Override] = []
    seen: set[PolicyLine] = set()
    for access in LEVELS:
        for deny in matches[access][1]:
            if deny.line in seen:
                continue  # an action * deny: already taken at a weaker level, which covers this one
            seen.add(deny.line)
            overridden = {m.line: m for a in LEVELS if a >= access for m in matches[a][0]}
            out.append(Override(deny, ACTION[access], tuple(overridden.values())))
    return out


def _mask_reason(mask: str | None, given: list[str], spec: FieldSpec) -> str:
    """Why ``mask``: ``given`` are the masks the matching allows name for a masked read (``grant``'s)."""
    if not given:
        return (f"Masked with {mask}, the catalogue's mask for this field: only read allows reach the masked "
                "level, and they name no mask for it.")
    resolved = sorted({spec.mask if m == "default" else m for m in given})
    why = (f"Masked with {mask}, the only mask the matching read_masked allows give" if len(resolved) == 1
           else f"Masked with {mask}, the strictest of {', '.join(resolved)}, the masks the matching read_masked "
                "allows give (the outcome must not depend on line order)")
    if "default" in given:
        why += f"; 'default' stands for the catalogue's mask for this field, {spec.mask}"
    return why + "."


def _via(match: RuleMatch | RowRuleMatch, subject: Subject) -> str:
    path = " -> ".join(match.role_path)
    own = match.role_path[0]
    if own == subject.client_id:
        return "(its own line)" if len(match.role_path) == 1 else f"(via {path})"
    origin = f"{own} is {'its department' if own.startswith('dept:') else 'a role in its token'}"
    return f"({origin})" if len(match.role_path) == 1 else f"(via {path}; {origin})"


def _lines(found: Iterable[RuleMatch], subject: Subject) -> str:
    return " and ".join(f"`{format_line(m.line)}` {_via(m, subject)}" for m in found)


def _verdict(decision: Decision) -> str:
    return {Access.CLEAR: "read in clear", Access.MASKED: f"read masked with {decision.mask}",
            Access.VERIFY: "verify only (yes/no claims, never the value)",
            Access.DENIED: "denied (null with FORBIDDEN_FIELD)"}[decision.access]


def _summary(subject: Subject, purpose: str, obj: str, decision: Decision, by_policy: Decision, terms: list[Term],
             matches: Mapping[Access, tuple[list[RuleMatch], list[RuleMatch]]], denies: list[Override],
             mask_reason: str | None, row_rules: tuple[RowRuleMatch, ...], code: str) -> list[str]:
    out = [f"{subject.client_id}, for purpose {purpose!r}: {obj} is {_verdict(decision)}."]
    blocking = [t for t in terms if t.blocks]
    if blocking:
        out.append(f"The catalogue's terms decide before the policy: {blocking[0].text}.")
        if by_policy.access is not Access.DENIED:
            out.append(f"The policy lines alone would give {_verdict(by_policy)}.")
    for d in denies:
        scope = d.action if d.action == ACTION[Access.CLEAR] else f"{d.action} and every stronger level"
        overriding = f", overriding {_lines(d.overridden, subject)}: deny overrides allow" if d.overridden else ""
        out.append(f"{_lines([d.deny], subject)} denies {scope}{overriding}.")
    if by_policy.access is not Access.DENIED:
        out.append(f"{ACTION[by_policy.access]} is allowed by {_lines(matches[by_policy.access][0], subject)}.")
    elif not any(allows for allows, _ in matches.values()):
        out.append("No policy line allows verify, read_masked or read of it for this client and purpose: "
                   "nothing is visible by default.")
    if mask_reason is not None:
        out.append(mask_reason)
    out += [f"Note: {t.text}." for t in terms if not t.blocks]
    if decision.access is not Access.DENIED:
        out += [f"Records of {code} are limited to {r.rule.column} {r.rule.op} {r.bound} by "
                f"`{format_line(r.line)}` {_via(r, subject)}." for r in row_rules]
        if not row_rules:
            out.append(f"No row rule limits the records of {code} for this client and purpose.")
    return out
