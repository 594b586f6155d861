"""Cross-reference validation of a catalogue: what no single entry can check on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from catalog.keys import KEY_KINDS
from catalog.model import DataType, EntityLink, ShareType
from policies.masks import MASKS, mask_for

if TYPE_CHECKING:
    from catalog.model import Catalog, Dataset, Purpose

# Names the gateway itself puts in the schema; a dataset or entity may not take them.
SCALAR_NAMES = ("String", "Int", "Float", "Boolean", "ID", "Date", "DateTime", "Decimal")
RESERVED_TYPES = {"Query", "Mutation", "Subscription", "PageInfo", "ShareType", "Sensitivity", "CatalogRoot",
                  "CatalogContact", "CatalogDepartment", "CatalogDataset", "CatalogField", "CatalogEntity",
                  "Claim", "Access", "AccessGrant", "CatalogPurpose", "CatalogConsentBounds", "JSONString",
                  "AuditRecord", "AuditPage", "AuditFilter", "AuditFieldUse", "TrackedAccess",
                  "TrackerPage",
                  "ConsentGrant", "ConsentEvent", "ConsentPage", "ConsentInput", "LegalBasisInput",
                  "PolicyRule", "PolicyVersionInfo", "PolicyDiff", "PolicyDryRun", "PolicyExplanation",
                  "PolicyRuleMatch", "PolicyLevel", "PolicyOverride", "PolicyTerm", "PolicyRowRuleMatch",
                  "PolicyDecision", "PolicyDecisionChange", "PolicyRowRule", "PolicyRowRuleChange", "PolicySimulation",
                  "ShareRequest", "ShareRequestEvent", "ShareRequestPage", "ShareRequestInput",
                  *SCALAR_NAMES, *(f"{s}Filter" for s in SCALAR_NAMES)}
RESERVED_ROOTS = {"catalog", "node", "nodes", "myAccess", "verify", "auditLog", "dataTracker", "consents", "consent",
                  "policyRules", "policyVersions", "policyDiff", "policyExport", "policyDryRun", "shareRequests",
                  "shareRequest", "explainAccess", "simulatePolicy"}


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def __bool__(self) -> bool:
        return bool(self.items)


def cross_validate(cat: Catalog, problems: Problems) -> list[EntityLink]:
    """Check references between entries; return the resolved entity links."""
    where = cat.origin

    for src in cat.sources.values():
        at = f"{where[f'source {src.code!r}']}: sources[{src.code}]"
        if src.department is None:
            problems.add(at, "no department: set 'department' or put the source in a file with a 'department'")
        elif src.department not in cat.departments:
            problems.add(at, f"unknown department {src.department!r}; known: {_known(cat.departments)}")
        _check_url(src.kind, src.url, at, problems)

    types: dict[str, str] = {}
    roots: dict[str, str] = {}
    for ent in cat.entities.values():
        at = f"{where.get(f'entity {ent.code!r}', 'built-in')}: entities[{ent.code}]"
        if ent.key not in KEY_KINDS:
            problems.add(at, f"unknown key kind {ent.key!r}; known: {', '.join(KEY_KINDS)}")
        _claim(types, ent.graphql.type, at, "GraphQL type", problems, RESERVED_TYPES)
        _claim(roots, ent.graphql.one, at, "root field", problems, RESERVED_ROOTS)
        _claim(roots, ent.graphql.many, at, "root field", problems, RESERVED_ROOTS)

    for ds in cat.datasets.values():
        at = f"{where[f'dataset {ds.code!r}']}: datasets[{ds.code}]"
        # Each dataset type brings its page and filter input types along.
        for name in (ds.graphql.type, f"{ds.graphql.type}Page", f"{ds.graphql.type}Filter"):
            _claim(types, name, at, "GraphQL type", problems, RESERVED_TYPES)
        _claim(roots, ds.graphql.list, at, "root field", problems, RESERVED_ROOTS)
        _check_dataset(cat, ds, at, problems)

    for pur in cat.purposes.values():
        _check_purpose(cat, pur, f"{where[f'purpose {pur.code!r}']}: purposes[{pur.code}]", problems)

    links: list[EntityLink] = []
    for ds in cat.datasets.values():
        at = f"{where[f'dataset {ds.code!r}']}: datasets[{ds.code}]"
        links.extend(_links(cat, ds, at, problems))
    _check_member_names(cat, links, problems)
    return links


def _check_dataset(cat: Catalog, ds: Dataset, at: str, problems: Problems) -> None:
    if ds.provider is None:
        problems.add(at, "no provider: set 'provider' or put the dataset in a file with a 'department'")
    elif ds.provider not in cat.departments:
        problems.add(at, f"unknown provider department {ds.provider!r}; known: {_known(cat.departments)}")
    src = cat.sources.get(ds.source)
    if src is None:
        problems.add(at, f"unknown source {ds.source!r}; known: {_known(cat.sources)}")
    elif src.kind == "sql" and not ds.table:
        problems.add(at, f"source {src.code!r} is SQL: set 'table'")
    elif src.kind == "rest" and not ds.endpoint:
        problems.add(at, f"source {src.code!r} is REST: set 'endpoint' (a path below the base URL)")
    if ds.table and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?", ds.table):
        problems.add(at, f"table {ds.table!r} is not a plain [schema.]table name")

    names: set[str] = set()
    gql: set[str] = set()
    for f in ds.fields:
        fat = f"{at}.fields[{f.name}]"
        if f.name in names:
            problems.add(fat, f"duplicate field name {f.name!r}")
        names.add(f.name)
        if f.graphql_name in gql:
            problems.add(fat, f"duplicate GraphQL field name {f.graphql_name!r}")
        gql.add(f.graphql_name)
        if f.graphql_name.startswith("__"):
            problems.add(fat, "GraphQL names may not start with '__'")
        mask = mask_for(f.mask)
        if mask is None:
            problems.add(fat, f"unknown mask {f.mask!r}; known: {', '.join(sorted(MASKS))}, show_first_N, show_last_N")
        elif not mask.accepts(f.type):
            problems.add(fat, f"mask {f.mask!r} does not apply to type {f.type.value!r}")
        if f.key is not None:
            if f.key not in KEY_KINDS:
                problems.add(fat, f"unknown key kind {f.key!r}; known: {', '.join(KEY_KINDS)}")
            if f.type is not DataType.STRING:
                problems.add(fat, f"key fields must have type 'string', not {f.type.value!r}")
        if f.link and f.key is None:
            problems.add(fat, "'link' needs 'key': say which key kind this field carries")
    if ds.primary_key not in names:
        problems.add(at, f"primary key {ds.primary_key!r} is not one of its fields")
    if any(f.share is ShareType.NONE and f.name == ds.primary_key for f in ds.fields):
        problems.add(at, f"primary key {ds.primary_key!r} cannot have share type 'none': records need an identity")

    _check_consent_terms(ds, at, problems)

    for rel in ds.relations:
        rat = f"{at}.relations[{rel.name}]"
        if rel.name in gql:
            problems.add(rat, f"relation name {rel.name!r} clashes with a field of the same GraphQL name")
        gql.add(rel.name)
        target = cat.datasets.get(rel.target)
        if target is None:
            problems.add(rat, f"unknown target dataset {rel.target!r}; known: {_known(cat.datasets)}")
            continue
        if len(rel.join) != 1:
            problems.add(rat, "'join' must map exactly one column to one column (composite joins are not supported)")
        tnames = {f.name for f in target.fields}
        for mine, theirs in rel.join.items():
            if mine not in names:
                problems.add(rat, f"column {mine!r} is not a field of {ds.code}")
            if theirs not in tnames:
                problems.add(rat, f"column {theirs!r} is not a field of {target.code}")


def _check_consent_terms(ds: Dataset, at: str, problems: Problems) -> None:
    """Conditional fields are released per data subject (and per record date, for data ranges):
    the dataset must say whose each record is, and by which date."""
    by_name = {f.name: f for f in ds.fields}
    if ds.subject is not None:
        spec = by_name.get(ds.subject)
        if spec is None:
            problems.add(at, f"subject {ds.subject!r} is not one of its fields")
        elif spec.key is None:
            problems.add(at, f"subject {ds.subject!r} must be a key field (give it key: id_number or credit_code)")
    if ds.dated_by is not None:
        spec = by_name.get(ds.dated_by)
        if spec is None:
            problems.add(at, f"dated_by {ds.dated_by!r} is not one of its fields")
        elif spec.type not in (DataType.DATE, DataType.DATETIME):
            problems.add(at, f"dated_by {ds.dated_by!r} must be a date or datetime field, not {spec.type.value!r}")
    conditional = [f.name for f in ds.fields if f.share is ShareType.CONDITIONAL]
    if not conditional:
        return
    # These columns are read by the gateway for every record (paging, consent lookup, data range):
    # a per-person release cannot apply to them.
    for role, column in (("primary key", ds.primary_key), ("subject", ds.subject_field.name if ds.subject_field
                                                           else None), ("dated_by", ds.dated_by)):
        if column in conditional:
            problems.add(at, f"{role} {column!r} cannot be conditional: the gateway reads it for every record "
                             "(make it unconditional and restrict it by policy and mask)")
    if ds.subject_field is None and ds.subject is None:
        keys = [f.name for f in ds.fields if f.key is not None]
        problems.add(at, f"conditional field(s) {', '.join(conditional)} need a data subject to ask consent of: "
                         + (f"set subject to one of its key fields ({', '.join(keys)})" if keys
                            else "give the field naming the person or organisation key: id_number or credit_code"))


def _check_purpose(cat: Catalog, pur: Purpose, at: str, problems: Problems) -> None:
    bounds = pur.consent
    if (bounds.max_uses is None) != (bounds.per_days is None):
        problems.add(at, "consent: give max_uses and per_days together (at most max_uses uses per per_days days)")
    for code in pur.datasets:
        if code not in cat.datasets:
            problems.add(at, f"unknown dataset {code!r}; known: {_known(cat.datasets)}")
    for ref in pur.none_fields:
        code, _, name = ref.rpartition(".")
        ds = cat.datasets.get(code)
        spec = next((f for f in ds.fields if f.name == name), None) if ds else None
        if spec is None:
            problems.add(at, f"none_fields: {ref!r} is not a dataset.field of the catalogue")
        elif spec.share is not ShareType.NONE:
            problems.add(at, f"none_fields: {ref!r} has share type {spec.share.value!r}; list only 'none' fields")
        elif code not in pur.datasets:
            problems.add(at, f"none_fields: {ref!r} is outside the purpose's datasets")


def _links(cat: Catalog, ds: Dataset, at: str, problems: Problems) -> list[EntityLink]:
    out: list[EntityLink] = []
    by_kind = {e.key: e for e in cat.entities.values()}
    for f in ds.fields:
        if f.key is None or f.link is False or f.key not in KEY_KINDS:
            continue
        spec = f.link
        entity = cat.entities.get(spec.entity) if spec and spec.entity else by_kind.get(f.key)
        fat = f"{at}.fields[{f.name}].link"
        if entity is None:
            wanted = f"named {spec.entity!r}" if spec and spec.entity else f"has key {f.key!r}"
            problems.add(fat, f"no entity {wanted}; known: {_known(cat.entities)}")
            continue
        if entity.key != f.key:
            problems.add(fat, f"entity {entity.code!r} is keyed by {entity.key!r}, but the field carries {f.key!r}")
            continue
        unique = f.unique or f.name == ds.primary_key
        default_as = _lower_first(ds.graphql.type) if unique else ds.graphql.list
        out.append(EntityLink(
            entity=entity.code, dataset=ds.code, field=f.name,
            entity_field=(spec.as_ if spec and spec.as_ else default_as),
            back_field=(spec.back if spec and spec.back else entity.graphql.one),
            unique=unique,
        ))
    return out


def _check_member_names(cat: Catalog, links: list[EntityLink], problems: Problems) -> None:
    """Link names must not clash on the entity type nor on the dataset's type."""
    on_entity: dict[tuple[str, str], str] = {}
    on_dataset: dict[tuple[str, str], str] = {}
    for lk in links:
        ds = cat.datasets[lk.dataset]
        ent = cat.entities[lk.entity]
        where = f"{cat.origin[f'dataset {ds.code!r}']}: datasets[{ds.code}].fields[{lk.field}].link"
        key = (lk.entity, lk.entity_field)
        if lk.entity_field == ent.graphql.argument or key in on_entity:
            problems.add(where, f"{ent.graphql.type}.{lk.entity_field} is already taken "
                         f"({on_entity.get(key, 'the key field')}); set 'link.as' to another name")
        on_entity[key] = f"{ds.code}.{lk.field}"
        dkey = (lk.dataset, lk.back_field)
        taken = {f.graphql_name for f in ds.fields} | {r.name for r in ds.relations}
        if lk.back_field in taken or dkey in on_dataset:
            problems.add(where, f"{ds.graphql.type}.{lk.back_field} is already taken; set 'link.back' to another name")
        on_dataset[dkey] = lk.field


def _check_url(kind: str, url: str, at: str, problems: Problems) -> None:
    if kind == "rest" and not re.match(r"^(https?://|\$\{)", url):
        problems.add(at, f"REST url must start with http:// or https:// (got {url[:40]!r})")
    # A literal password in the file would be a secret committed to the catalogue.
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password and not password.startswith("${"):
        problems.add(at, "url contains a literal password: write ${SOME_ENV_VAR} and set it in the environment")


def _claim(taken: dict[str, str], name: str, at: str, what: str, problems: Problems, reserved: set[str]) -> None:
    if name in reserved or name.startswith("__"):
        problems.add(at, f"{what} {name!r} is reserved by the gateway; choose another")
    elif name in taken:
        problems.add(at, f"{what} {name!r} is already used by {taken[name]}")
    else:
        taken[name] = at


def _known(d: dict[str, object]) -> str:
    return ", ".join(sorted(d)) or "(none)"


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]
