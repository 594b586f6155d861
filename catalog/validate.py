"""Cross-reference validation of a catalogue: what no single entry can check on its own."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

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
class Broken:
    """Entries that were declared but could not be parsed (``kind -> codes``; ``"*"``: a whole
    section or file was unreadable, so any code of that kind may have been declared there; kind
    ``home``: files whose own ``department`` is unusable). References to them are not reported
    again as unknown: the parse error already names them."""

    codes: dict[str, set[str | None]] = field(default_factory=dict)

    def add(self, kind: str, code: str | None) -> None:
        self.codes.setdefault(kind, set()).add(code)

    def __contains__(self, ref: tuple[str, str | None]) -> bool:
        kind, code = ref
        declared = self.codes.get(kind, set())
        return "*" in declared or code in declared


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def __bool__(self) -> bool:
        return bool(self.items)


def cross_validate(cat: Catalog, problems: Problems, broken: Broken | None = None) -> list[EntityLink]:
    """Check references between entries; return the resolved entity links.

    ``broken`` names entries that were declared but failed to parse: references to them are
    not reported as unknown (their own parse errors are), so one mistake gives one message."""
    where = cat.origin
    broken = broken or Broken()

    for src in cat.sources.values():
        at = f"{where[f'source {src.code!r}']}: sources[{src.code}]"
        if src.department is None:
            if ("home", where[f'source {src.code!r}']) not in broken:
                problems.add(at, "no department: set 'department' or put the source in a file with a 'department'")
        elif src.department not in cat.departments and ("department", src.department) not in broken:
            problems.add(at, f"unknown department {src.department!r}; known: {_known(cat.departments)}")
        _check_url(src.kind, src.url, at, problems, src.code)
        _check_headers(src.code, src.headers, at, problems)

    types: dict[str, str] = {}
    roots: dict[str, str] = {}
    # Built-in entities claim their names first: a clash is the declared entry's to fix.
    for ent in sorted(cat.entities.values(), key=lambda e: f"entity {e.code!r}" in where):
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
        _check_dataset(cat, ds, at, problems, broken)

    for pur in cat.purposes.values():
        _check_purpose(cat, pur, f"{where[f'purpose {pur.code!r}']}: purposes[{pur.code}]", problems, broken)

    links: list[EntityLink] = []
    for ds in cat.datasets.values():
        at = f"{where[f'dataset {ds.code!r}']}: datasets[{ds.code}]"
        links.extend(_links(cat, ds, at, problems, broken))
    _check_member_names(cat, links, problems)
    return links


def _check_dataset(cat: Catalog, ds: Dataset, at: str, problems: Problems, broken: Broken) -> None:
    if ds.provider is None:
        if ("home", cat.origin[f'dataset {ds.code!r}']) not in broken:
            problems.add(at, "no provider: set 'provider' or put the dataset in a file with a 'department'")
    elif ds.provider not in cat.departments and ("department", ds.provider) not in broken:
        problems.add(at, f"unknown provider department {ds.provider!r}; known: {_known(cat.departments)}")
    src = cat.sources.get(ds.source)
    if src is None:
        if ("source", ds.source) not in broken:
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
            if ("dataset", rel.target) not in broken:
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


def _check_purpose(cat: Catalog, pur: Purpose, at: str, problems: Problems, broken: Broken) -> None:
    bounds = pur.consent
    if (bounds.max_uses is None) != (bounds.per_days is None):
        problems.add(at, "consent: give max_uses and per_days together (at most max_uses uses per per_days days)")
    for code in pur.datasets:
        if code not in cat.datasets and ("dataset", code) not in broken:
            problems.add(at, f"unknown dataset {code!r}; known: {_known(cat.datasets)}")
    for ref in pur.none_fields:
        code, _, name = ref.rpartition(".")
        ds = cat.datasets.get(code)
        spec = next((f for f in ds.fields if f.name == name), None) if ds else None
        if ds is None and ("dataset", code) in broken:
            continue
        if spec is None:
            problems.add(at, f"none_fields: {ref!r} is not a dataset.field of the catalogue")
        elif spec.share is not ShareType.NONE:
            problems.add(at, f"none_fields: {ref!r} has share type {spec.share.value!r}; list only 'none' fields")
        elif code not in pur.datasets:
            problems.add(at, f"none_fields: {ref!r} is outside the purpose's datasets")


def _links(cat: Catalog, ds: Dataset, at: str, problems: Problems, broken: Broken) -> list[EntityLink]:
    out: list[EntityLink] = []
    by_kind = {e.key: e for e in cat.entities.values()}
    for f in ds.fields:
        if f.key is None or f.link is False or f.key not in KEY_KINDS:
            continue
        spec = f.link
        entity = cat.entities.get(spec.entity) if spec and spec.entity else by_kind.get(f.key)
        fat = f"{at}.fields[{f.name}].link"
        if entity is None:
            if spec and spec.entity and ("entity", spec.entity) in broken:
                continue
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


# Credentials never go in the catalogue (it is reviewed, versioned and published as metadata):
# a header or URL query parameter that carries one must take its value from the environment.
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "cookie"}
_CREDENTIAL_HEADER_WORDS = ("key", "token", "secret", "auth", "password", "passwd", "signature", "session")
_CREDENTIAL_PARAMS = {"password", "pass", "passwd", "pwd", "secret", "token", "key", "api_key", "apikey",
                      "access_token", "refresh_token", "id_token", "auth", "auth_token", "sig", "signature",
                      "client_secret", "private_key", "sessionid", "session", "credential", "credentials",
                      "sslpassword"}
_CREDENTIAL_PARAM_WORDS = ("password", "passwd", "secret", "token", "apikey", "api_key", "signature", "credential")
# File paths, not secrets (PostgreSQL and MySQL TLS options).
_PATH_PARAMS = {"sslkey", "sslcert", "sslrootcert", "sslcrl", "ssl_key", "ssl_cert", "ssl_ca", "ssl_capath"}
_REF = r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-)?\}"  # ${VAR} (an empty default is no secret; a non-empty one is)
# A credential value from the environment: "${VAR}", "Bearer ${VAR}" (an auth scheme word first),
# "name=${VAR}" or several "a=${A}; b=${B}" (cookies).
_FROM_ENV = re.compile(rf"\s*(?:[A-Za-z][A-Za-z0-9_.-]*\s+|[A-Za-z0-9_.-]+=)?{_REF}"
                       rf"(?:\s*;\s*[A-Za-z0-9_.-]+={_REF})*\s*;?\s*")


def credential_header(name: str) -> bool:
    """True for a header that carries a credential (Authorization, Cookie, X-Api-Key, ...)."""
    low = name.strip().lower()
    return low in _CREDENTIAL_HEADERS or any(word in low for word in _CREDENTIAL_HEADER_WORDS)


def credential_param(name: str) -> bool:
    """True for a URL query parameter that carries a credential (password, api_key, token, sig, ...)."""
    low = unquote(name).strip().lower().replace("-", "_")
    if low in _PATH_PARAMS:
        return False
    return low in _CREDENTIAL_PARAMS or any(word in low for word in _CREDENTIAL_PARAM_WORDS)


def from_env(value: str) -> bool:
    """True when a credential value comes from the environment (``${VAR}``, ``Bearer ${VAR}``), or is empty."""
    return not value.strip() or _FROM_ENV.fullmatch(value) is not None


def _env_name(source: str, what: str) -> str:
    """A suggested environment variable name: ``housing_api`` + ``X-Api-Key`` -> ``HOUSING_API_X_API_KEY``."""
    return re.sub(r"[^A-Z0-9]+", "_", f"{source}_{what}".upper()).strip("_")


def _check_url(kind: str, url: str, at: str, problems: Problems, source: str = "source") -> None:
    if kind == "rest" and not re.match(r"^(https?://|\$\{)", url):
        problems.add(at, f"REST url must start with http:// or https:// (got {url[:40]!r})")
    # A literal password in the file would be a secret committed to the catalogue. The value is
    # never repeated in the message: it is a secret, and messages end up in logs and CI output.
    parts = urlsplit(url)
    try:
        password = parts.password
    except ValueError:
        password = None
    if password and not from_env(password):
        problems.add(at, f"url contains a literal password: write ${{{_env_name(source, 'password')}}} in its "
                         "place and set that environment variable where the gateway runs")
    for pair in parts.query.split("&") if parts.query else ():
        name, has_value, value = pair.partition("=")
        if has_value and value and credential_param(name) and not from_env(unquote(value)):
            var = _env_name(source, unquote(name))
            problems.add(at, f"url query parameter {unquote(name)!r} has a literal value, a credential in the "
                             f"catalogue: write {unquote(name)}=${{{var}}} and set {var} where the gateway runs")


def _check_headers(source: str, headers: dict[str, str], at: str, problems: Problems) -> None:
    for name, value in headers.items():
        if credential_header(name) and not from_env(value):
            var = _env_name(source, "token" if name.lower() in ("authorization", "proxy-authorization") else name)
            example = (f'"Bearer ${{{var}}}"' if name.lower() in ("authorization", "proxy-authorization")
                       else f'"${{{var}}}"')
            problems.add(at, f"header {name!r} has a literal value, a credential in the catalogue: write "
                             f"{name}: {example} (the scheme word, if any, then a ${{VAR}} reference) "
                             f"and set {var} where the gateway runs")


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
