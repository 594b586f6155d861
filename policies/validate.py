"""Policy lines checked against the catalogue before they take effect.

A rule naming a department, dataset, field, purpose, action, mask or operator that does
not exist is an error naming the line; so is a grant of a field whose share type is
``none`` (不予共享) for a purpose whose legal basis does not list it.
"""

from __future__ import annotations

import re

import casbin

from catalog.model import Catalog, DataType, ShareType
from policies.lines import PLACEHOLDER
from policies.masks import mask_for
from resolvers.coerce import coerce
from resolvers.query import Op

__all__ = ["ACTIONS", "PolicyError", "validate_policy"]

ACTIONS = ("read", "read_masked", "verify")
ROW_OPS = {op.value for op in Op} - {Op.IS_NULL.value}


class PolicyError(Exception):
    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join([f"policy invalid ({len(problems)} problem(s)):", *(f"  - {p}" for p in problems)]))


def validate_policy(enforcer: casbin.Enforcer, catalog: Catalog, origin: str) -> None:
    problems: list[str] = []
    # Large policies repeat the same (object, action, purpose, effect, mask) for many subjects:
    # each distinct combination is checked once (100,000 lines: 3.5 s -> 0.5 s).
    checked: dict[tuple[str, ...], list[str]] = {}
    for line in enforcer.get_named_policy("p"):
        key = tuple(line)[1:] if len(line) == 6 else tuple(line)
        found = checked.get(key)
        if found is None:
            found = checked[key] = check_rule(catalog, ["-", *line[1:]] if len(line) == 6 else line)
        found = _subject(catalog, line[0]) + found if len(line) == 6 else found
        problems += [f"{origin}: p, {', '.join(line)}: {p}" for p in found]
    for line in enforcer.get_named_policy("p2"):
        problems += [f"{origin}: p2, {', '.join(line)}: {p}" for p in check_row_rule(catalog, line)]
    for line in enforcer.get_named_grouping_policy("g"):
        problems += [f"{origin}: g, {', '.join(line)}: {p}" for p in check_grouping(catalog, line)]
    if problems:
        raise PolicyError(problems)


# What may stand before ":" in a policy name: a client id has no ":" at all; an external identity
# provider's clients are idp:ID or idp-NAME:ID ([auth.external] client_id_prefix).
PREFIXES = ("dept", "role", "group", "idp")
IDP_PREFIX = re.compile(r"idp(-[a-z0-9]{1,12})?")  # also gateway/auth/settings.py client_id_prefix


def _subject(catalog: Catalog, sub: str) -> list[str]:
    if not sub:
        return ["the subject is empty"]
    prefix, colon, name = sub.partition(":")
    if colon and ((prefix not in PREFIXES and not IDP_PREFIX.fullmatch(prefix)) or not name):
        return [f"{sub!r}: a name is a client id, or {', '.join(p + ':NAME' for p in PREFIXES)} "
                "(idp-NAME:ID for a second identity provider)"]
    if prefix == "dept" and name not in catalog.departments:
        return [f"unknown department {name!r}; known: {', '.join(sorted(catalog.departments))}"]
    return []


def _purpose(catalog: Catalog, pur: str) -> list[str]:
    if pur != "*" and pur not in catalog.purposes:
        return [f"unknown purpose {pur!r}; known: {', '.join(sorted(catalog.purposes))} or *"]
    return []


def check_rule(catalog: Catalog, line: list[str]) -> list[str]:
    """Problems with one ``p`` line: sub, obj, act, pur, eft, mask."""
    if len(line) != 6:
        return ["expected 6 values: subject, dataset.field, action, purpose, allow|deny, mask|default"]
    sub, obj, act, pur, eft, mask = line
    out = _subject(catalog, sub) + _purpose(catalog, pur)
    if act not in (*ACTIONS, "*"):
        out.append(f"unknown action {act!r}; known: {', '.join(ACTIONS)} or *")
    if eft not in ("allow", "deny"):
        out.append(f"effect must be allow or deny, not {eft!r}")
    every = [(d, f) for d in catalog.datasets.values() for f in d.fields]
    if obj.endswith("*"):
        # keyMatch: a trailing * matches any rest, e.g. psb.resident.* or hrss.* or *.
        fields = [(d, f) for d, f in every if f"{d.code}.{f.name}".startswith(obj[:-1])]
        if not fields:
            return [*out, f"{obj!r} matches no field of the catalogue"]
    else:
        fields = [(d, f) for d, f in every if f"{d.code}.{f.name}" == obj]
        if not fields:
            return [*out, f"unknown field {obj!r}: write dataset.field, a prefix ending in *, or *"]
        spec = fields[0][1]
        if eft == "allow" and spec.share is ShareType.NONE:
            purpose = catalog.purposes.get(pur)
            if purpose is None or obj not in purpose.none_fields:
                out.append(f"{obj} has share type none (不予共享): it can be granted only for a purpose whose "
                           "legal basis lists it in none_fields")
    purpose = catalog.purposes.get(pur)
    if eft == "allow" and purpose is not None and not any(d.code in purpose.datasets for d, _ in fields):
        # The catalogue's terms come first: such a grant could never take effect, and would mislead.
        out.append(f"purpose {pur!r} does not cover {obj} (its datasets: {', '.join(purpose.datasets)}): "
                   "this grant could never take effect; add the dataset to the purpose in the catalogue first")
    if act == "read_masked" and mask == "none":
        out.append("read_masked with mask none would be a clear read: grant read instead")
    if mask != "default":
        m = mask_for(mask)
        if m is None:
            out.append(f"unknown mask {mask!r}")
        elif bad := [f"{d.code}.{f.name}" for d, f in fields if not m.accepts(f.type)]:
            out.append(f"mask {mask!r} does not apply to {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}")
    return out


def check_row_rule(catalog: Catalog, line: list[str]) -> list[str]:
    """Problems with one ``p2`` line: sub, dataset, pur, column, op, value."""
    if len(line) != 6:
        return ["expected 6 values: subject, dataset, purpose, column, operator, value"]
    sub, code, pur, column, op, _value = line
    out = _subject(catalog, sub) + _purpose(catalog, pur)
    ds = catalog.datasets.get(code)
    if ds is None:
        return [*out, f"unknown dataset {code!r}"]
    spec = next((f for f in ds.fields if f.name == column), None)
    if spec is None:
        out.append(f"unknown column {column!r} of {code}")
    if op not in ROW_OPS:
        out.append(f"unknown operator {op!r}; known: {', '.join(sorted(ROW_OPS))}")
    elif unknown := [p for p in re.findall(r"\$\{[^}]*\}?", _value) if not PLACEHOLDER.fullmatch(p)]:
        out.append(f"unknown placeholder {unknown[0]!r}: use ${{client_id}}, ${{department}} or ${{claim.NAME}} "
                   "(a client attribute)")
    elif spec is not None and "${" in _value and spec.type is not DataType.STRING:
        out.append(f"placeholders (${{client_id}}, ${{department}}, ${{claim.NAME}}) bind text: {code}.{column} is "
                   f"a {spec.type.value}")
    elif spec is not None and "${" not in _value:
        # A value the column's type cannot hold would fail every matching request at run time.
        try:
            for v in (_value.split("|") if op == Op.IN.value else [_value]):
                coerce(v, spec.type)
        except (ValueError, ArithmeticError):
            out.append(f"value {_value!r} is not a {spec.type.value} (the type of {code}.{column})")
    return out


def check_grouping(catalog: Catalog, line: list[str]) -> list[str]:
    if len(line) != 2:
        return ["expected 2 values: member, role or group"]
    out = _subject(catalog, line[0]) + _subject(catalog, line[1])
    if ":" not in line[1]:
        # A bare name in a policy is a client id (client ids never hold ":"): a group named so would
        # hand its grants to any client later registered under that name.
        out.append(f"{line[1]!r} is a bare name, which policies read as a client id: name the group "
                   f"group:{line[1]} (or the role role:{line[1]})")
    return out

