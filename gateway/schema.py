"""Build the GraphQL schema (graphene) from the catalogue.

For each dataset: an object type, a filter input type and a page type with a root list
field (``residents(filter:, limit:, after:)``). For each entity (person, organisation):
an object type whose fields are the records every department holds about it, and root
fields by one key and by a list of keys. Datasets link back to entities through their
key fields and to each other through catalogue relations.

Data fields have no resolvers: the planner reads the validated query against
:class:`SchemaIndex` and the executor fetches. Only ``catalog`` and introspection run
through graphql-core's executor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import graphene
from graphql import GraphQLSchema

from catalog.model import Catalog, Dataset, DataType, EntityLink, FieldSpec, Relation
from gateway.audit.schema import AuditQuery
from gateway.catalog_schema import CatalogQuery
from gateway.consent_schema import ConsentMutation, ConsentQuery
from gateway.policy_insight_schema import PolicyInsightQuery
from gateway.policy_schema import PolicyAdminMutation, PolicyAdminQuery
from gateway.sharing_schema import SharingMutation, SharingQuery

__all__ = ["BuiltSchema", "Member", "SchemaIndex", "build_schema"]

SCALARS: dict[DataType, type[graphene.Scalar]] = {
    DataType.STRING: graphene.String,
    DataType.INTEGER: graphene.Int,
    DataType.FLOAT: graphene.Float,
    DataType.DECIMAL: graphene.Decimal,
    DataType.BOOLEAN: graphene.Boolean,
    DataType.DATE: graphene.Date,
    DataType.DATETIME: graphene.DateTime,
}

# Operators offered per data type; the filter input names them exactly as resolvers.query.Op.
OPERATORS: dict[DataType, tuple[str, ...]] = {
    DataType.STRING: ("eq", "ne", "in", "prefix", "isNull"),
    DataType.BOOLEAN: ("eq", "isNull"),
    **{t: ("eq", "ne", "in", "lt", "lte", "gt", "gte", "isNull")
       for t in (DataType.INTEGER, DataType.FLOAT, DataType.DECIMAL, DataType.DATE, DataType.DATETIME)},
}


@dataclass(frozen=True, slots=True)
class Member:
    """What a field of a generated type means, for the planner.

    kind: ``column`` (a dataset field), ``relation`` (nested dataset records), ``entity``
    (a dataset's key field seen as the entity: ``Employment.person``), ``link`` (an entity's
    records in a dataset: ``Person.employments``), ``key`` (the entity's own key value).
    """

    kind: str
    dataset: str | None = None
    column: str | None = None
    relation: Relation | None = None
    link: EntityLink | None = None
    entity: str | None = None
    many: bool = False


@dataclass
class SchemaIndex:
    """Generated GraphQL names mapped back to the catalogue."""

    types: dict[str, tuple[str, str]] = field(default_factory=dict)  # type -> ("dataset"|"entity"|"page", code)
    members: dict[tuple[str, str], Member] = field(default_factory=dict)  # (type, field) -> member
    roots: dict[str, tuple[str, str]] = field(default_factory=dict)  # root field -> ("list"|"one"|"many", code)
    filters: dict[str, dict[str, str]] = field(default_factory=dict)  # dataset -> {graphql name: column}


@dataclass
class BuiltSchema:
    schema: graphene.Schema
    index: SchemaIndex

    @property
    def graphql(self) -> GraphQLSchema:
        return self.schema.graphql_schema


class PageInfo(graphene.ObjectType):
    """Keyset pagination state: pass ``endCursor`` as ``after`` to get the next page."""

    has_next_page = graphene.Boolean(required=True)
    end_cursor = graphene.String(description="Opaque cursor of the last record; null on an empty page.")


class Claim(graphene.InputObjectType):
    """A yes/no question about one field: ``{field: "Resident.birthDate", lt: "1966-01-01"}``.
    Values are written as strings and read as the field's type; give exactly one operator."""

    field = graphene.String(required=True, description="Type.field, as in catalog { fields { graphqlPath } }")
    eq = graphene.String()
    ne = graphene.String()
    lt = graphene.String(description="before / less than")
    lte = graphene.String()
    gt = graphene.String(description="after / greater than")
    gte = graphene.String()
    in_ = graphene.List(graphene.NonNull(graphene.String), name="in")
    is_null = graphene.Boolean(name="isNull")


def _filter_input(data_type: DataType) -> type[graphene.InputObjectType]:
    scalar = SCALARS[data_type]
    ops: dict[str, Any] = {}
    for op in OPERATORS[data_type]:
        if op == "in":
            ops["in_"] = graphene.List(graphene.NonNull(scalar), name="in", description="equal to one of")
        elif op == "isNull":
            ops["is_null"] = graphene.Boolean(name="isNull", description="true: is empty; false: has a value")
        else:
            ops[op] = scalar(name=op)
    name = f"{scalar._meta.name}Filter"
    return type(name, (graphene.InputObjectType,), {
        **ops, "Meta": type("Meta", (), {"description": f"Conditions on a {scalar._meta.name} field (all must hold)."}),
    })


def build_schema(catalog: Catalog) -> BuiltSchema:
    index = SchemaIndex()
    types: dict[str, type[graphene.ObjectType]] = {}
    op_inputs = {t: _filter_input(t) for t in DataType}
    filters: dict[str, type[graphene.InputObjectType]] = {}

    def ref(name: str) -> Any:
        return lambda: types[name]

    def describe(ds: Dataset, f: FieldSpec) -> str:
        return (f"{f.description} [{f.sensitivity.value}, {f.share.value}"
                f"{', key: ' + f.key if f.key else ''}; provided by {ds.provider}]").strip()

    for ds in catalog.datasets.values():
        fmap = {f.graphql_name: f.name for f in ds.fields if f.filterable}
        index.filters[ds.code] = fmap
        filters[ds.code] = type(f"{ds.graphql.type}Filter", (graphene.InputObjectType,), {
            **{g: graphene.Field(op_inputs[ds.field(c).type], name=g) for g, c in fmap.items()},
            "Meta": type("Meta", (), {"description": f"Filter on {ds.name}: every given condition must hold."}),
        })

    def many_args(ds_code: str) -> dict[str, Any]:
        return {"filter": graphene.Argument(filters[ds_code]),
                "limit": graphene.Int(description="Most records per parent.")}

    for ds in catalog.datasets.values():
        t = ds.graphql.type
        index.types[t] = ("dataset", ds.code)
        attrs: dict[str, Any] = {}
        for f in ds.fields:
            attrs[f.graphql_name] = graphene.Field(SCALARS[f.type], name=f.graphql_name, description=describe(ds, f))
            index.members[(t, f.graphql_name)] = Member("column", dataset=ds.code, column=f.name)
        for rel in ds.relations:
            target = catalog.datasets[rel.target]
            if rel.many:
                attrs[rel.name] = graphene.List(graphene.NonNull(ref(target.graphql.type)), name=rel.name,
                                                description=rel.description, **many_args(target.code))
            else:
                attrs[rel.name] = graphene.Field(ref(target.graphql.type), name=rel.name, description=rel.description)
            index.members[(t, rel.name)] = Member("relation", dataset=target.code, relation=rel, many=rel.many)
        for lk in catalog.links_of_dataset(ds.code):
            ent = catalog.entities[lk.entity]
            attrs[lk.back_field] = graphene.Field(ref(ent.graphql.type), name=lk.back_field,
                                                  description=f"The {ent.code} whose key is in {lk.field}.")
            index.members[(t, lk.back_field)] = Member("entity", entity=ent.code, column=lk.field, link=lk)
        attrs["Meta"] = type("Meta", (), {"description": f"{ds.name}: {ds.description} (dataset {ds.code})"})
        types[t] = type(t, (graphene.ObjectType,), attrs)

        page = f"{t}Page"
        index.types[page] = ("page", ds.code)
        types[page] = type(page, (graphene.ObjectType,), {
            "nodes": graphene.List(graphene.NonNull(ref(t)), required=True),
            "page_info": graphene.Field(PageInfo, required=True, name="pageInfo"),
            "Meta": type("Meta", (), {"description": f"A page of {ds.name}."}),
        })

    for ent in catalog.entities.values():
        t = ent.graphql.type
        index.types[t] = ("entity", ent.code)
        attrs = {ent.graphql.argument: graphene.String(required=True, name=ent.graphql.argument,
                                                       description=f"The {ent.key} key, normalised.")}
        index.members[(t, ent.graphql.argument)] = Member("key", entity=ent.code)
        for lk in catalog.links_of_entity(ent.code):
            ds = catalog.datasets[lk.dataset]
            desc = f"{ds.name} from {ds.provider} ({ds.code}.{lk.field})."
            if lk.unique:
                attrs[lk.entity_field] = graphene.Field(ref(ds.graphql.type), name=lk.entity_field, description=desc)
            else:
                attrs[lk.entity_field] = graphene.List(graphene.NonNull(ref(ds.graphql.type)), name=lk.entity_field,
                                                       description=desc, **many_args(ds.code))
            index.members[(t, lk.entity_field)] = Member("link", dataset=ds.code, link=lk, many=not lk.unique)
        attrs["Meta"] = type("Meta", (), {"description": ent.description})
        types[t] = type(t, (graphene.ObjectType,), attrs)

    root: dict[str, Any] = {}
    for ds in catalog.datasets.values():
        name = ds.graphql.list
        root[name] = graphene.Field(
            ref(f"{ds.graphql.type}Page"), name=name,
            description=f"{ds.name} ({ds.code}), provided by {ds.provider}.",
            filter=graphene.Argument(filters[ds.code]),
            limit=graphene.Int(description="Records per page."),
            after=graphene.String(description="Cursor from pageInfo.endCursor of the previous page."),
        )
        index.roots[name] = ("list", ds.code)
    for ent in catalog.entities.values():
        arg = ent.graphql.argument
        root[ent.graphql.one] = graphene.Field(ref(ent.graphql.type), name=ent.graphql.one,
                                               description=f"{ent.description} Everything the departments hold.",
                                               **{arg: graphene.String(required=True, name=arg)})
        index.roots[ent.graphql.one] = ("one", ent.code)
        root[ent.graphql.many] = graphene.List(ref(ent.graphql.type), name=ent.graphql.many,
                                               description="Several at once: one result per key, in order.",
                                               **{f"{arg}s": graphene.List(graphene.NonNull(graphene.String),
                                                                           required=True, name=f"{arg}s")})
        index.roots[ent.graphql.many] = ("many", ent.code)

    root["verify"] = graphene.Boolean(
        name="verify", description="Predicate-only access: does the person or organisation have a record "
        "satisfying the claim? Answers true or false, never the value (needs at least `verify` on the field).",
        id_number=graphene.String(name="idNumber"), credit_code=graphene.String(name="creditCode"),
        claim=graphene.Argument(Claim, required=True))
    index.roots["verify"] = ("verify", "")
    query = type("Query", (CatalogQuery, AuditQuery, ConsentQuery, PolicyAdminQuery, PolicyInsightQuery,
                           SharingQuery, graphene.ObjectType), root)
    mutation = type("Mutation", (ConsentMutation, PolicyAdminMutation, SharingMutation, graphene.ObjectType), {})
    schema = graphene.Schema(query=query, mutation=mutation, types=list(types.values()), auto_camelcase=True)
    return BuiltSchema(schema=schema, index=index)
