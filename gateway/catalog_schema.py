"""The catalogue as GraphQL: ``catalog { departments datasets fields entities }``.

A department app discovers what exists, who provides it and on what terms before it
asks for data. Connection URLs and other deployment details are never exposed.
"""

from __future__ import annotations

from typing import Any

import graphene

from catalog.model import Catalog, Dataset, FieldSpec
from catalog.model import Department as DepartmentEntry

__all__ = ["CatalogQuery"]

ShareTypeEnum = graphene.Enum("ShareType", [("UNCONDITIONAL", "unconditional"), ("CONDITIONAL", "conditional"),
                                            ("NONE", "none")],
                              description="Share type of a data item: 无条件共享 / 有条件共享 / 不予共享.")
SensitivityEnum = graphene.Enum("Sensitivity", [("L1", "L1"), ("L2", "L2"), ("L3", "L3"), ("L4", "L4")],
                                description="Classification level: L1 public ... L4 highly sensitive.")


def _cat(info: Any) -> Catalog:
    return info.context["catalog"]


class CatalogContact(graphene.ObjectType):
    name = graphene.String(required=True)
    email = graphene.String()
    phone = graphene.String()


class CatalogDepartment(graphene.ObjectType):
    code = graphene.String(required=True)
    name = graphene.String(required=True)
    name_zh = graphene.String()
    contact = graphene.Field(CatalogContact, required=True)
    datasets = graphene.List(graphene.NonNull(lambda: CatalogDataset), required=True)

    @staticmethod
    def resolve_datasets(dep: DepartmentEntry, info: Any) -> list[Dataset]:
        return [d for d in _cat(info).datasets.values() if d.provider == dep.code]


class CatalogField(graphene.ObjectType):
    dataset = graphene.String(required=True, description="Code of the dataset the field belongs to.")
    name = graphene.String(required=True, description="Name in the source (column or attribute).")
    graphql_name = graphene.String(required=True)
    graphql_path = graphene.String(required=True, description="Type.field in this schema.")
    type = graphene.String(required=True, description="string, integer, float, decimal, boolean, date, datetime")
    description = graphene.String(required=True)
    sensitivity = graphene.Field(SensitivityEnum, required=True)
    share_type = graphene.Field(ShareTypeEnum, required=True)
    default_mask = graphene.String(required=True)
    key = graphene.String(description="Entity key kind carried by the field (id_number, credit_code).")

    @staticmethod
    def resolve_dataset(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[0].code

    @staticmethod
    def resolve_name(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].name

    @staticmethod
    def resolve_graphql_name(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].graphql_name

    @staticmethod
    def resolve_graphql_path(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return f"{pair[0].graphql.type}.{pair[1].graphql_name}"

    @staticmethod
    def resolve_type(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].type.value

    @staticmethod
    def resolve_description(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].description

    @staticmethod
    def resolve_sensitivity(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].sensitivity.value

    @staticmethod
    def resolve_share_type(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].share.value

    @staticmethod
    def resolve_default_mask(pair: tuple[Dataset, FieldSpec], _: Any) -> str:
        return pair[1].mask

    @staticmethod
    def resolve_key(pair: tuple[Dataset, FieldSpec], _: Any) -> str | None:
        return pair[1].key


class CatalogDataset(graphene.ObjectType):
    code = graphene.String(required=True)
    name = graphene.String(required=True)
    name_zh = graphene.String()
    description = graphene.String(required=True)
    provider = graphene.Field(CatalogDepartment, required=True)
    source_kind = graphene.String(required=True, description="sql or rest")
    update_cycle = graphene.String(required=True)
    keywords = graphene.List(graphene.NonNull(graphene.String), required=True)
    graphql_type = graphene.String(required=True)
    graphql_list_field = graphene.String(required=True)
    subject_field = graphene.String(description="The key field naming whose data a record is (consent is asked "
                                                "of this subject).")
    dated_by = graphene.String(description="The date field a consent's data range is checked against.")
    fields = graphene.List(graphene.NonNull(CatalogField), required=True)

    @staticmethod
    def resolve_subject_field(ds: Dataset, _: Any) -> str | None:
        spec = ds.subject_field
        return spec.name if spec else None

    @staticmethod
    def resolve_provider(ds: Dataset, info: Any) -> DepartmentEntry:
        return _cat(info).provider_of(ds.code)

    @staticmethod
    def resolve_source_kind(ds: Dataset, info: Any) -> str:
        return _cat(info).sources[ds.source].kind

    @staticmethod
    def resolve_update_cycle(ds: Dataset, _: Any) -> str:
        return ds.update_cycle.value

    @staticmethod
    def resolve_graphql_type(ds: Dataset, _: Any) -> str:
        return ds.graphql.type

    @staticmethod
    def resolve_graphql_list_field(ds: Dataset, _: Any) -> str:
        return ds.graphql.list

    @staticmethod
    def resolve_fields(ds: Dataset, _: Any) -> list[tuple[Dataset, FieldSpec]]:
        return [(ds, f) for f in ds.fields]


class CatalogEntity(graphene.ObjectType):
    code = graphene.String(required=True)
    key = graphene.String(required=True)
    description = graphene.String(required=True)
    graphql_type = graphene.String(required=True)
    held_in = graphene.List(graphene.NonNull(graphene.String), required=True,
                            description="dataset.field pairs that carry this entity's key.")

    @staticmethod
    def resolve_graphql_type(ent: Any, _: Any) -> str:
        return ent.graphql.type

    @staticmethod
    def resolve_held_in(ent: Any, info: Any) -> list[str]:
        return [f"{lk.dataset}.{lk.field}" for lk in _cat(info).links_of_entity(ent.code)]


class CatalogConsentBounds(graphene.ObjectType):
    """The broadest consent a purpose accepts."""

    max_validity_days = graphene.Int(required=True)
    max_uses = graphene.Int()
    per_days = graphene.Int()
    max_data_range_days = graphene.Int()


class CatalogPurpose(graphene.ObjectType):
    """A declared purpose of use (the X-Purpose header), its legal basis and reach."""

    code = graphene.String(required=True)
    description = graphene.String(required=True)
    legal_basis = graphene.String(required=True)
    datasets = graphene.List(graphene.NonNull(graphene.String), required=True)
    none_fields = graphene.List(graphene.NonNull(graphene.String), required=True)
    covert_days = graphene.Int(description="Accesses are hidden from the person's data tracker this long.")
    consent = graphene.Field(CatalogConsentBounds, required=True)


def _matches(ds: Dataset, text: str) -> bool:
    hay = " ".join([ds.code, ds.name, ds.name_zh or "", ds.description, *ds.keywords,
                    *(f"{f.name} {f.graphql_name} {f.description}" for f in ds.fields)]).lower()
    return all(word in hay for word in text.lower().split())


class CatalogRoot(graphene.ObjectType):
    """What exists, who provides it, field by field, and on what terms it is shared."""

    departments = graphene.List(graphene.NonNull(CatalogDepartment), required=True)
    datasets = graphene.List(graphene.NonNull(CatalogDataset), required=True,
                             department=graphene.String(description="Only this provider's datasets."),
                             search=graphene.String(description="Words that must all appear in the metadata."))
    dataset = graphene.Field(CatalogDataset, code=graphene.String(required=True))
    fields = graphene.List(graphene.NonNull(CatalogField), required=True,
                           dataset=graphene.String(), share_type=graphene.Argument(ShareTypeEnum),
                           key=graphene.String(description="Only fields carrying this key kind."))
    entities = graphene.List(graphene.NonNull(CatalogEntity), required=True)
    purposes = graphene.List(graphene.NonNull(CatalogPurpose), required=True)

    @staticmethod
    def resolve_purposes(_: Any, info: Any) -> list[Any]:
        return list(_cat(info).purposes.values())

    @staticmethod
    def resolve_departments(_: Any, info: Any) -> list[DepartmentEntry]:
        return list(_cat(info).departments.values())

    @staticmethod
    def resolve_datasets(_: Any, info: Any, department: str | None = None, search: str | None = None) -> list[Dataset]:
        out = list(_cat(info).datasets.values())
        if department is not None:
            out = [d for d in out if d.provider == department]
        if search:
            out = [d for d in out if _matches(d, search)]
        return out

    @staticmethod
    def resolve_dataset(_: Any, info: Any, code: str) -> Dataset | None:
        return _cat(info).datasets.get(code)

    @staticmethod
    def resolve_fields(_: Any, info: Any, dataset: str | None = None, share_type: Any = None,
                       key: str | None = None) -> list[tuple[Dataset, FieldSpec]]:
        share = getattr(share_type, "value", share_type)
        return [(d, f) for d in _cat(info).datasets.values() if dataset in (None, d.code)
                for f in d.fields if share in (None, f.share.value) and key in (None, f.key)]

    @staticmethod
    def resolve_entities(_: Any, info: Any) -> list[Any]:
        return list(_cat(info).entities.values())


AccessEnum = graphene.Enum("Access", [("CLEAR", "CLEAR"), ("MASKED", "MASKED"), ("VERIFY", "VERIFY")],
                          description="CLEAR: readable; MASKED: only through the mask; VERIFY: only testable.")


class AccessGrant(graphene.ObjectType):
    """One field the calling client may use for one purpose (like X-Road's allowedMethods)."""

    purpose = graphene.String(required=True)
    dataset = graphene.String(required=True)
    field = graphene.String(required=True)
    graphql_path = graphene.String(required=True)
    access = graphene.Field(AccessEnum, required=True)
    mask = graphene.String(description="The mask applied when access is MASKED.")
    share_type = graphene.Field(ShareTypeEnum, required=True,
                                description="CONDITIONAL fields also need the data subject's consent.")


class CatalogQuery(graphene.ObjectType):
    catalog = graphene.Field(CatalogRoot, required=True, description="The data catalogue (metadata only).")
    my_access = graphene.List(graphene.NonNull(AccessGrant), required=True, name="myAccess",
                              purpose=graphene.String(description="Only this purpose (default: every purpose)."),
                              description="The fields this client may read, masked or in clear, or only verify, "
                                          "for each purpose. Fields it may not use at all are not listed.")

    @staticmethod
    def resolve_catalog(_: Any, __: Any) -> object:
        return object()

    @staticmethod
    def resolve_my_access(_: Any, info: Any, purpose: str | None = None) -> list[dict[str, Any]]:
        from policies.decide import Access

        cat: Catalog = _cat(info)
        subject, decider = info.context.get("subject"), info.context.get("decider")
        if subject is None or decider is None:
            return []  # no caller identity (an in-process call): nothing to report
        purposes = [purpose] if purpose is not None else sorted(cat.purposes)
        out = []
        for pur in purposes:
            if pur not in cat.purposes:
                raise ValueError(f"unknown purpose; accepted: {', '.join(sorted(cat.purposes))}")
            for ds in cat.datasets.values():
                for f in ds.fields:
                    d = decider.decide(subject, pur, f"{ds.code}.{f.name}")
                    if d.access > Access.DENIED:
                        out.append({"purpose": pur, "dataset": ds.code, "field": f.name,
                                    "graphql_path": f"{ds.graphql.type}.{f.graphql_name}", "access": d.access.name,
                                    "mask": d.mask, "share_type": f.share.value})
        return out
