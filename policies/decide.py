"""Decisions: what a caller may do with each field, for a purpose, taken once per plan.

A decision for (subject, purpose, dataset.field) is the strongest action the policy
allows and does not deny: ``read`` (in clear), ``read_masked`` (through a mask),
``verify`` (test a predicate only), or nothing. On top of the policy, the catalogue's
terms always hold: a purpose never touches a dataset it does not list, and a field of
share type ``none`` is never returned unless the purpose's legal basis names it.

pycasbin's ``enforce`` evaluates its matcher against every policy line per call (measured by
``bench/decisions.py`` on this project's model: 9 ms at 1,000 lines, 1.1 s at 100,000). Here
the lines of a subject's names are taken from the snapshot's index, filtered by purpose,
then every field of a plan is decided against that short list with Casbin's own
``key_match``; the result is cached per (subject, purpose) until the policy changes.
``tests/test_decide.py`` checks that every answer equals ``Enforcer.enforce``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import casbin
from casbin.util import key_match

from catalog.model import Catalog, Purpose, ShareType
from policies.lines import PLACEHOLDER
from policies.masks import mask_rank
from policies.store import PolicyStore, Snapshot

__all__ = ["ACTION", "LEVEL", "LEVELS", "Access", "Decider", "Decision", "Effects", "RowRule", "Subject",
           "compile_policy", "grant", "offers_mask", "reaches"]


class Access(IntEnum):
    """Ordered: a stronger access includes the weaker ones."""

    DENIED = 0
    VERIFY = 1
    MASKED = 2
    CLEAR = 3


# The access levels, weakest first, and the action a policy line names for each.
LEVELS = (Access.VERIFY, Access.MASKED, Access.CLEAR)
ACTION = {Access.VERIFY: "verify", Access.MASKED: "read_masked", Access.CLEAR: "read"}

# The level each action names. A line reaches more than its own level: see `reaches`.
LEVEL = {act: access for access, act in ACTION.items()}


def reaches(act: str, eft: str, access: Access) -> bool:
    """Whether a policy line with action ``act`` and effect ``eft`` speaks about ``access``. An allow
    reaches its level and every weaker one (a clear read includes a masked read and a verification);
    a deny reaches its level and every stronger one (what may not be verified may not be read either).
    ``policies/model.conf``'s matcher says the same to Casbin, so ``enforce`` agrees level by level."""
    if act == "*":
        return True
    level = LEVEL.get(act)
    if level is None:
        return False
    return level <= access if eft == "deny" else level >= access


def offers_mask(act: str) -> bool:
    """Whether an allow line's mask counts for a masked read: a ``read`` line reaches the masked level
    but names no mask for it (the catalogue default applies when only such lines allow it)."""
    return act != "read"


# What Decider.effects tells of one level: (some allow matches, some deny matches, masks of the allows).
Effects = tuple[bool, bool, list[str]]


@dataclass(frozen=True, slots=True)
class Subject:
    """Who asks: the client, its department and roles (from the access token)."""

    client_id: str
    department: str
    roles: frozenset[str] = frozenset()
    # The client's attributes (name, value), sorted: row rules bind ${claim.NAME} to them. A tuple, so
    # that a Subject stays hashable (it keys the decision cache).
    attributes: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, client_id: str, department: str, roles: Iterable[str],
           attributes: Mapping[str, str] | None = None) -> Subject:
        return cls(client_id, department, frozenset(roles), tuple(sorted((attributes or {}).items())))

    @classmethod
    def of_client(cls, client: Any) -> Subject:
        """A registered client (the client store's record) as its access token presents it."""
        return cls.of(client.client_id, client.department, client.roles, client.attributes)

    @property
    def names(self) -> tuple[str, ...]:
        """The subject's own names in policy lines: the client id, dept:CODE, role:NAME."""
        return (self.client_id, f"dept:{self.department}", *sorted(f"role:{r}" for r in self.roles))


@dataclass(frozen=True, slots=True)
class Decision:
    access: Access
    mask: str | None = None  # for MASKED: the mask to apply
    reason: str = ""  # for DENIED: why, naming the field and purpose, never a value




@dataclass(frozen=True, slots=True)
class RowRule:
    column: str
    op: str
    value: str  # may hold ${client_id}, ${department} or ${claim.NAME} (one of the client's attributes)

    def bind(self, subject: Subject) -> str:
        """The value for this client. LookupError when it names an attribute the client does not have:
        the rule cannot be met, and the request is refused rather than the rule dropped."""
        attributes = dict(subject.attributes)

        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "client_id":
                return subject.client_id
            if name == "department":
                return subject.department
            attribute = name.removeprefix("claim.")
            if attribute not in attributes:
                raise LookupError(f"the client has no attribute {attribute!r}")
            return attributes[attribute]

        return PLACEHOLDER.sub(value, self.value)

    def bind_each(self, subject: Subject) -> list[str]:
        """For ``in``: the line's own alternatives (split on ``|``), each bound. Split before binding,
        so that an attribute holding a ``|`` stays one value instead of widening the rule."""
        return [RowRule(self.column, self.op, part).bind(subject) for part in self.value.split("|")]


@dataclass
class _Compiled:
    """The policy lines that concern one subject and purpose."""

    rules: list[list[str]]  # p lines: sub, obj, act, pur, eft, mask
    rows: dict[str, list[RowRule]]  # dataset -> row rules
    decisions: dict[str, Decision] = field(default_factory=dict)


def compile_policy(enforcer: casbin.Enforcer, subject: Subject, purpose: str,
                   by_subject: dict[str, list[tuple[int, list[str]]]] | None = None) -> _Compiled:
    """The lines of the policy that can ever match this subject and purpose, in policy order.
    With ``by_subject`` (the snapshot's index) only the subject's names are looked up."""
    names = Decider.closure(enforcer, subject)
    if by_subject is None:
        rules = [line for line in enforcer.get_named_policy("p") if line[0] in names and line[3] in (purpose, "*")]
    else:
        hits = sorted(item for n in names for item in by_subject.get(n, ()))
        rules = [line for _, line in hits if line[3] in (purpose, "*")]
    rows: dict[str, list[RowRule]] = {}
    for sub, dataset, pur, column, op, value in enforcer.get_named_policy("p2"):
        if sub in names and pur in (purpose, "*"):
            rows.setdefault(dataset, []).append(RowRule(column, op, value))
    return _Compiled(rules, rows)


def grant(effects: dict[Access, Effects], default_mask: str) -> tuple[Decision, Access | None]:
    """The rule over the levels: the strongest level allowed below the first level a deny reaches.
    Since allows reach down and denies reach up (``reaches``), that is the strongest level Casbin's
    ``enforce`` allows. Returns the decision and that first
    denied level (None: no deny matched). Decisions and explanations both take it from here."""
    granted = Decision(Access.DENIED)
    for access in LEVELS:
        allow, deny, masks = effects.get(access, (False, False, []))
        if deny:
            return granted, access
        if allow:
            granted = Decision(access, mask=Decider.strictest(masks, default_mask)) if access is Access.MASKED \
                else Decision(access)
    return granted, None


class Decider:
    def __init__(self, store: PolicyStore, catalog: Catalog, cache_size: int = 4096, *, proposed: bool = False) -> None:
        self.store = store
        self.catalog = catalog
        self.cache_size = cache_size
        self.proposed = proposed  # decide by the dry run's proposed policy instead of the one in force
        self._cache: OrderedDict[tuple[Any, ...], _Compiled] = OrderedDict()

    @staticmethod
    def closure(enforcer: casbin.Enforcer, subject: Subject) -> set[str]:
        """Every name the subject acts as: its own, plus roles and groups reached through ``g``."""
        names = set(subject.names)
        for n in subject.names:
            names.update(enforcer.get_implicit_roles_for_user(n))
        return names

    def _compiled(self, subject: Subject, purpose: str) -> _Compiled:
        snap: Snapshot = self.store.snapshot
        if self.proposed:
            if snap.proposed is None:
                raise LookupError("no dry run is in progress")
            snap = snap.proposed
        key = (snap.version, subject, purpose)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        compiled = compile_policy(snap.enforcer, subject, purpose, snap.by_subject)
        self._cache[key] = compiled
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return compiled

    @staticmethod
    def allowed(rules: list[list[str]], obj: str, act: str) -> tuple[bool, str | None]:
        """Casbin's matcher and effect over the pre-selected lines: (allowed, mask of the first allow)."""
        allow, deny, masks = Decider.effects(rules, obj, act)
        return allow and not deny, (masks[0] if masks else None)

    @staticmethod
    def effects(rules: list[list[str]], obj: str, act: str) -> tuple[bool, bool, list[str]]:
        """(some allow reaches, some deny reaches, masks the reaching allows name, in policy order)."""
        access = LEVEL[act]
        allow = deny = False
        masks: list[str] = []
        for _sub, pattern, p_act, _pur, eft, p_mask in rules:
            if reaches(p_act, eft, access) and key_match(obj, pattern):
                if eft == "deny":
                    deny = True
                else:
                    allow = True
                    if offers_mask(p_act):
                        masks.append(p_mask)
        return allow, deny, masks

    def decide(self, subject: Subject, purpose: str, obj: str) -> Decision:
        """The decision for ``obj`` (dataset.field), cached with the subject's compiled policy."""
        compiled = self._compiled(subject, purpose)
        hit = compiled.decisions.get(obj)
        if hit is None:
            hit = compiled.decisions[obj] = self._decide(compiled, purpose, obj)
        return hit

    def _decide(self, compiled: _Compiled, purpose: str, obj: str) -> Decision:
        code, _, name = obj.rpartition(".")
        ds = self.catalog.datasets[code]
        spec = ds.field(name)
        pur: Purpose = self.catalog.purposes[purpose]
        if code not in pur.datasets:
            return Decision(Access.DENIED, reason=f"purpose {purpose!r} does not cover dataset {code}")
        if spec.share is ShareType.NONE and obj not in pur.none_fields:
            return Decision(Access.DENIED, reason=f"{obj} is not shared (不予共享) and purpose {purpose!r} has "
                                                  "no legal basis for it")
        granted, denied_at = grant({a: self.effects(compiled.rules, obj, ACTION[a]) for a in LEVELS}, spec.mask)
        if granted.access is Access.DENIED:
            why = (f"a deny rule forbids this client to {ACTION[denied_at]} {obj}" if denied_at is not None
                   else f"no policy lets this client read {obj}")
            return Decision(Access.DENIED, reason=f"{why} for purpose {purpose!r}")
        return granted

    @staticmethod
    def strictest(masks: list[str], default: str) -> str:
        """When several lines grant a masked read, the strictest mask applies: the outcome must not
        depend on line order (a SQL store has none)."""
        names = [default if m == "default" else m for m in masks] or [default]
        return min(names, key=lambda n: (mask_rank(n), n))

    def row_rules(self, subject: Subject, purpose: str, dataset: str) -> list[RowRule]:
        return self._compiled(subject, purpose).rows.get(dataset, [])
