"""Decisions at scale: the compiled, cached decisions equal Casbin's own ``enforce``."""

from __future__ import annotations

import casbin
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decide import Decider, Subject, compile_policy
from policies.store import MODEL_PATH, index_by_subject

NAMES = ["c1", "c2", "dept:x", "dept:y", "role:a", "role:b", "group:g"]
OBJECTS = ["d1.f1", "d1.f2", "d2.f1", "d2.f2"]
PATTERNS = [*OBJECTS, "d1.*", "d2.*", "d*", "*"]
ACTS = ["read", "read_masked", "verify"]
PURPOSES = ["p1", "p2"]

rule = st.tuples(st.sampled_from(NAMES), st.sampled_from(PATTERNS), st.sampled_from([*ACTS, "*"]),
                 st.sampled_from([*PURPOSES, "*"]), st.sampled_from(["allow", "deny"]), st.just("default"))
link = st.tuples(st.sampled_from(NAMES), st.sampled_from(NAMES)).filter(lambda t: t[0] != t[1])


def enforcer_with(rules: list[tuple[str, ...]], links: list[tuple[str, str]]) -> casbin.Enforcer:
    e = casbin.Enforcer(str(MODEL_PATH))
    e.enable_auto_save(False)
    for r in dict.fromkeys(rules):
        e.add_named_policy("p", *r)
    for m, g in dict.fromkeys(links):
        e.add_grouping_policy(m, g)
    return e


@settings(max_examples=300, deadline=None)
@given(rules=st.lists(rule, max_size=25), links=st.lists(link, max_size=6),
       obj=st.sampled_from(OBJECTS), act=st.sampled_from(ACTS), purpose=st.sampled_from(PURPOSES),
       roles=st.frozensets(st.sampled_from(["a", "b"])))
def test_compiled_decisions_equal_enforce(rules: list[tuple[str, ...]], links: list[tuple[str, str]], obj: str,
                                          act: str, purpose: str, roles: frozenset[str]) -> None:
    subject = Subject("c1", "x", roles)
    e = enforcer_with(rules, links)
    compiled = compile_policy(e, subject, purpose)
    indexed = compile_policy(e, subject, purpose, index_by_subject(e))
    assert indexed.rules == compiled.rules  # the index changes the cost, never the lines or their order
    ours, _ = Decider.allowed(compiled.rules, obj, act)
    # Casbin's answer, with the token's department and roles given to the client as role links.
    for name in subject.names[1:]:
        e.add_grouping_policy(subject.client_id, name)
    assert ours == e.enforce(subject.client_id, obj, act, purpose)


def test_deny_overrides_allow_through_a_role() -> None:
    e = enforcer_with([("c1", "d1.*", "read", "*", "allow", "default"),
                       ("role:a", "d1.f1", "read", "p1", "deny", "default")], [])
    compiled = compile_policy(e, Subject("c1", "x", frozenset({"a"})), "p1")
    assert Decider.allowed(compiled.rules, "d1.f2", "read")[0] is True
    assert Decider.allowed(compiled.rules, "d1.f1", "read")[0] is False
    other = compile_policy(e, Subject("c1", "x", frozenset({"a"})), "p2")
    assert Decider.allowed(other.rules, "d1.f1", "read")[0] is True  # the deny is for p1 only
