"""Explain and simulate policy through GraphQL, for policy administrators (role ``policy-admin``).

``explainAccess`` says why a registered client gets what it gets of a field, or of every field a
query reads or tests, for a purpose: the decision, the catalogue's terms, the matching allow and
deny lines with their role paths, the mask and the row rules (``policies/explain.py``).
``simulatePolicy`` lists the (client, purpose, field) decisions and the row rules that a proposed
change, or a whole new policy file, would change (``policies/simulate.py``). Both read the policy
in force (the decider's snapshot) and the client store; neither changes anything.

Context keys read: ``subject`` (the caller), ``catalog``, ``decider``, ``clients`` (the client
store) and ``plan_fields`` (query text -> the ``dataset.field`` its plan reads or tests).
"""

from __future__ import annotations

import asyncio
from typing import Any

import casbin
import graphene

from catalog.model import Catalog
from gateway.context import require_role
from policies.decide import Subject
from policies.explain import explain_query
from policies.lines import PolicyLine, enforcer_of, lines_of, parse_csv, parse_line
from policies.simulate import SimulationResult, proposed, simulate
from policies.validate import PolicyError, validate_policy

__all__ = ["POLICY_ADMIN_ROLE", "PolicyInsightQuery"]

POLICY_ADMIN_ROLE = "policy-admin"


def _context(info: Any) -> Any:
    require_role(info.context, POLICY_ADMIN_ROLE)
    return info.context


class PolicyRuleMatch(graphene.ObjectType):
    line = graphene.String(required=True, description="The policy line, as written in a policy file")
    role_path = graphene.List(graphene.NonNull(graphene.String), required=True,
                              description="From one of the client's own names (client id, dept:CODE, role:NAME) "
                                          "to the line's subject, through g lines")


class PolicyLevel(graphene.ObjectType):
    action = graphene.String(required=True, description="verify, read_masked or read")
    outcome = graphene.String(required=True, description="allowed, denied, denied_below (a deny on a weaker level "
                                                         "denies this one) or no_allow")
    allows = graphene.List(graphene.NonNull(PolicyRuleMatch), required=True)
    denies = graphene.List(graphene.NonNull(PolicyRuleMatch), required=True)


class PolicyOverride(graphene.ObjectType):
    deny = graphene.Field(PolicyRuleMatch, required=True)
    action = graphene.String(required=True, description="The weakest level the deny matches: it denies that level "
                                                        "and every stronger one")
    overridden = graphene.List(graphene.NonNull(PolicyRuleMatch), required=True)


class PolicyTerm(graphene.ObjectType):
    kind = graphene.String(required=True, description="outside_purpose, not_shared, legal_basis or conditional")
    blocks = graphene.Boolean(required=True, description="Denies the field whatever the policy grants")
    text = graphene.String(required=True)


class PolicyRowRuleMatch(graphene.ObjectType):
    line = graphene.String(required=True)
    role_path = graphene.List(graphene.NonNull(graphene.String), required=True)
    column = graphene.String(required=True)
    op = graphene.String(required=True)
    value = graphene.String(required=True, description="As written, placeholders included")
    bound_value = graphene.String(required=True, description="With ${client_id} and ${department} filled in")


class PolicyExplanation(graphene.ObjectType):
    client_id = graphene.String(required=True)
    client_disabled = graphene.Boolean(required=True, description="A disabled client gets nothing, whatever this says")
    purpose = graphene.String(required=True)
    field = graphene.String(required=True, description="dataset.field")
    access = graphene.String(required=True, description="CLEAR, MASKED, VERIFY or DENIED")
    mask = graphene.String()
    blocked_by_terms = graphene.Boolean(required=True)
    terms = graphene.List(graphene.NonNull(PolicyTerm), required=True)
    levels = graphene.List(graphene.NonNull(PolicyLevel), required=True)
    overrides = graphene.List(graphene.NonNull(PolicyOverride), required=True)
    mask_reason = graphene.String()
    row_rules = graphene.List(graphene.NonNull(PolicyRowRuleMatch), required=True)
    summary = graphene.List(graphene.NonNull(graphene.String), required=True)


class PolicyDecision(graphene.ObjectType):
    access = graphene.String(required=True, description="CLEAR, MASKED, VERIFY or DENIED")
    mask = graphene.String()


class PolicyDecisionChange(graphene.ObjectType):
    client_id = graphene.String(required=True)
    purpose = graphene.String(required=True)
    field = graphene.String(required=True)
    before = graphene.Field(PolicyDecision, required=True)
    after = graphene.Field(PolicyDecision, required=True)
    direction = graphene.String(required=True, description="stronger, weaker, or mask (same access, another mask)")


class PolicyRowRule(graphene.ObjectType):
    column = graphene.String(required=True)
    op = graphene.String(required=True)
    value = graphene.String(required=True)


class PolicyRowRuleChange(graphene.ObjectType):
    client_id = graphene.String(required=True)
    purpose = graphene.String(required=True)
    dataset = graphene.String(required=True)
    before = graphene.List(graphene.NonNull(PolicyRowRule), required=True)
    after = graphene.List(graphene.NonNull(PolicyRowRule), required=True)


class PolicySimulation(graphene.ObjectType):
    changes = graphene.List(graphene.NonNull(PolicyDecisionChange), required=True)
    row_rule_changes = graphene.List(graphene.NonNull(PolicyRowRuleChange), required=True)
    added = graphene.List(graphene.NonNull(graphene.String), required=True, description="Lines the change adds")
    removed = graphene.List(graphene.NonNull(graphene.String), required=True, description="Lines it removes")
    checked = graphene.Int(required=True, description="(client, purpose, field) decisions compared")
    changed = graphene.Int(required=True)
    stronger = graphene.Int(required=True)
    weaker = graphene.Int(required=True)
    mask_changed = graphene.Int(required=True)
    row_rules_changed = graphene.Int(required=True)


def _parsed(texts: list[str]) -> list[PolicyLine]:
    lines: list[PolicyLine] = []
    problems: list[str] = []
    for text in texts:
        try:
            lines.append(parse_line(text))
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("; ".join(problems))
    return lines


def _simulate(catalog: Catalog, before: casbin.Enforcer, lines: list[PolicyLine], subjects: list[Subject],
              purposes: list[str] | None) -> SimulationResult:
    after = enforcer_of(lines)
    try:
        validate_policy(after, catalog, "proposed policy")
    except PolicyError as exc:
        raise ValueError(f"the proposed policy would be refused when loaded ({len(exc.problems)} problem(s)): "
                         + "; ".join(exc.problems)) from None
    return simulate(catalog, before, after, subjects, purposes)


class PolicyInsightQuery(graphene.ObjectType):
    explain_access = graphene.List(
        graphene.NonNull(PolicyExplanation), required=True,
        client_id=graphene.String(required=True), purpose=graphene.String(required=True),
        field=graphene.String(description="dataset.field, e.g. psb.resident.name"),
        query=graphene.String(description="A data query: every field its plan reads or tests is explained"),
        description="Why a client gets what it gets of a field, or of a query's fields, for a purpose, under the "
                    "policy in force (role policy-admin). Give field or query.")
    simulate_policy = graphene.Field(
        PolicySimulation, required=True,
        add=graphene.List(graphene.NonNull(graphene.String), description="Lines to add, as in a policy file"),
        remove=graphene.List(graphene.NonNull(graphene.String), description="Lines to remove, exactly as in force"),
        csv=graphene.String(description="A whole new policy file, instead of add and remove"),
        purpose=graphene.String(description="Only this purpose (default: every purpose)"),
        description="The decisions of registered, enabled clients that a proposed policy change would change, "
                    "before anything is applied (role policy-admin).")

    @staticmethod
    async def resolve_explain_access(_: Any, info: Any, client_id: str, purpose: str, field: str | None = None,
                                     query: str | None = None) -> list[dict[str, Any]]:
        ctx = _context(info)
        if (field is None) == (query is None):
            raise ValueError("give field (dataset.field) or query (a data query), one of the two")
        client = await ctx["clients"].get(client_id)
        if client is None:
            raise ValueError(f"no client {client_id!r} is registered; `hutong client list` shows them")
        fields = [field] if field is not None else ctx["plan_fields"](query)
        subject = Subject.of_client(client)
        found = explain_query(ctx["decider"].store.snapshot.enforcer, ctx["catalog"], subject, purpose, fields)
        return [{**e.to_dict(), "client_disabled": client.disabled} for e in found]

    @staticmethod
    async def resolve_simulate_policy(_: Any, info: Any, add: list[str] | None = None, remove: list[str] | None = None,
                                      csv: str | None = None, purpose: str | None = None) -> dict[str, Any]:
        ctx = _context(info)
        if csv is not None and (add or remove):
            raise ValueError("give a whole policy in csv, or lines to add and remove, not both")
        if csv is None and not add and not remove:
            raise ValueError("give lines to add or remove (as in a policy file: "
                             "'p, role:NAME, dataset.field, read, purpose, allow, default'), or a whole policy in csv")
        before = ctx["decider"].store.snapshot.enforcer
        lines = parse_csv(csv) if csv is not None else proposed(lines_of(before), _parsed(add or []),
                                                                _parsed(remove or []))
        subjects = [Subject.of_client(c)
                    for c in await ctx["clients"].list() if not c.disabled]
        # Building, validating and comparing a large policy takes a while: off the event loop.
        result = await asyncio.to_thread(_simulate, ctx["catalog"], before, lines, subjects,
                                         None if purpose is None else [purpose])
        return result.to_dict()
