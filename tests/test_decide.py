"""Decisions at scale: the compiled, cached decisions equal Casbin's own ``enforce``."""

from __future__ import annotations

import casbin
from hypothesis import given, settings
from hypothesis import strategies as st

from policies.decide import ACTION, LEVELS, Access, Decider, Subject, compile_policy, grant
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


@settings(max_examples=300, deadline=None)
@given(rules=st.lists(rule, max_size=25), links=st.lists(link, max_size=6),
       obj=st.sampled_from(OBJECTS), purpose=st.sampled_from(PURPOSES),
       roles=st.frozensets(st.sampled_from(["a", "b"])))
def test_granted_level_is_the_strongest_casbin_allows(rules: list[tuple[str, ...]], links: list[tuple[str, str]],
                                                      obj: str, purpose: str, roles: frozenset[str]) -> None:
    """The decision the gateway takes (``grant`` over the levels, as ``Decider.decide`` does) is the
    strongest action ``Enforcer.enforce`` allows: no level a deny reaches, none no allow reaches."""
    subject = Subject("c1", "x", roles)
    e = enforcer_with(rules, links)
    compiled = compile_policy(e, subject, purpose, index_by_subject(e))
    decision, _ = grant({a: Decider.effects(compiled.rules, obj, ACTION[a]) for a in LEVELS}, "redact")
    for name in subject.names[1:]:
        e.add_grouping_policy(subject.client_id, name)
    allowed = [a for a in LEVELS if e.enforce(subject.client_id, obj, ACTION[a], purpose)]
    assert decision.access == (max(allowed) if allowed else Access.DENIED)
    # Casbin's answers are monotone: whatever it allows, it allows every weaker level too.
    assert allowed == list(LEVELS[:len(allowed)])


def test_levels_reach_down_for_allows_and_up_for_denies() -> None:
    e = enforcer_with([("c1", "d1.f1", "read", "*", "allow", "default"),
                       ("c1", "d1.f2", "read", "*", "allow", "default"),
                       ("c1", "d1.f2", "verify", "*", "deny", "default"),
                       ("c1", "d2.f1", "read", "*", "allow", "default"),
                       ("c1", "d2.f1", "read", "*", "deny", "default"),
                       ("c1", "d2.f1", "read_masked", "*", "allow", "show_last_4")], [])
    compiled = compile_policy(e, Subject("c1", "x"), "p1")

    def decided(obj: str) -> tuple[Access, str | None]:
        d, _ = grant({a: Decider.effects(compiled.rules, obj, ACTION[a]) for a in LEVELS}, "redact")
        return d.access, d.mask

    assert decided("d1.f1") == (Access.CLEAR, None)  # a clear read includes masked and verify
    assert [e.enforce("c1", "d1.f1", a, "p1") for a in ACTS] == [True, True, True]
    assert decided("d1.f2") == (Access.DENIED, None)  # what may not be verified may not be read
    assert [e.enforce("c1", "d1.f2", a, "p1") for a in ACTS] == [False, False, False]
    # A clear read denied, a masked read allowed: the masked line's mask, not the read line's default.
    assert decided("d2.f1") == (Access.MASKED, "show_last_4")
    assert [e.enforce("c1", "d2.f1", a, "p1") for a in ACTS] == [False, True, True]


def test_deny_overrides_allow_through_a_role() -> None:
    e = enforcer_with([("c1", "d1.*", "read", "*", "allow", "default"),
                       ("role:a", "d1.f1", "read", "p1", "deny", "default")], [])
    compiled = compile_policy(e, Subject("c1", "x", frozenset({"a"})), "p1")
    assert Decider.allowed(compiled.rules, "d1.f2", "read")[0] is True
    assert Decider.allowed(compiled.rules, "d1.f1", "read")[0] is False
    other = compile_policy(e, Subject("c1", "x", frozenset({"a"})), "p2")
    assert Decider.allowed(other.rules, "d1.f1", "read")[0] is True  # the deny is for p1 only
