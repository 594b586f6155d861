"""The catalogue model: what exists, who provides it, field by field, and on what terms.

These are the entries a catalogue file declares (validated by pydantic, unknown keys
rejected so a typo such as ``sharetype`` is an error rather than a silently public
field) plus :class:`Catalog`, the cross-referenced whole that the gateway reads.

Vocabulary follows the national catalogue rules (政务数据共享条例): every data item
(信息项) has a name, a data type and a share type; ``unconditional`` (无条件共享),
``conditional`` (有条件共享) or ``none`` (不予共享).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

__all__ = [
    "Catalog",
    "ConsentBounds",
    "Contact",
    "DataType",
    "Dataset",
    "DatasetGraphQL",
    "Department",
    "Entity",
    "EntityGraphQL",
    "EntityLink",
    "FieldSpec",
    "LinkSpec",
    "Purpose",
    "Relation",
    "Sensitivity",
    "ShareType",
    "Source",
    "UpdateCycle",
]

Code = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)?$", max_length=64)]
GraphQLName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9]*$", max_length=64)]
ColumnName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=64)]


class DataType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    DECIMAL = "decimal"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"


class ShareType(StrEnum):
    UNCONDITIONAL = "unconditional"  # 无条件共享
    CONDITIONAL = "conditional"  # 有条件共享
    NONE = "none"  # 不予共享


class Sensitivity(StrEnum):
    """Classification level of a data item (数据分级), lowest to highest."""

    PUBLIC = "L1"
    INTERNAL = "L2"
    SENSITIVE = "L3"
    HIGHLY_SENSITIVE = "L4"


class UpdateCycle(StrEnum):
    REALTIME = "realtime"
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    QUARTERLY = "quarterly"
    YEARLY = "yearly"
    IRREGULAR = "irregular"


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, use_enum_values=False)


class Contact(_Entry):
    name: str
    email: str | None = None
    phone: str | None = None


class Department(_Entry):
    code: Code
    name: str
    name_zh: str | None = None
    contact: Contact


class Source(_Entry):
    """Where a department's data lives. Credentials come from the environment (``${VAR}``)."""

    code: Code
    kind: Literal["sql", "rest"]
    url: str = Field(description="SQLAlchemy async URL (sql) or base URL (rest); ${VAR} is expanded")
    department: Code | None = None  # defaults to the file's department
    pool_size: int = Field(default=8, ge=1, le=100)
    timeout: float = Field(default=10.0, gt=0, le=300)
    max_batch: int = Field(default=5000, ge=1, le=30000, description="keys per IN (...) query or request")
    headers: dict[str, str] = Field(default_factory=dict, description="REST headers; ${VAR} is expanded")


class LinkSpec(_Entry):
    """How a key field links its dataset to a federated entity (person, organisation)."""

    entity: Code | None = None  # defaults to the entity whose key kind the field carries
    as_: GraphQLName | None = Field(default=None, alias="as")  # name on the entity type
    back: GraphQLName | None = None  # name on this dataset's type for the entity


class FieldSpec(_Entry):
    name: ColumnName  # column (sql) or JSON attribute (rest)
    graphql: GraphQLName | None = None  # defaults to camelCase(name)
    type: DataType
    description: str = ""
    sensitivity: Sensitivity = Sensitivity.INTERNAL
    share: ShareType
    mask: str = "redact"  # default mask, a name from policies.masks
    key: str | None = None  # entity key kind carried by this field (id_number, credit_code)
    unique: bool = False  # at most one row per value (implied for the primary key)
    nullable: bool = True
    filterable: bool = True
    link: LinkSpec | Literal[False] | None = None  # None: link by default when `key` is set

    @property
    def graphql_name(self) -> str:
        return self.graphql or camel(self.name)


class Relation(_Entry):
    """A nested relation to another dataset through equal columns (e.g. household members)."""

    name: GraphQLName
    target: Code
    join: dict[ColumnName, ColumnName]  # this dataset's column -> target's column
    many: bool = True
    description: str = ""


class DatasetGraphQL(_Entry):
    type: GraphQLName
    list: GraphQLName  # root field returning a page of records


class Dataset(_Entry):
    code: Code
    name: str
    name_zh: str | None = None
    description: str
    provider: Code | None = None  # defaults to the file's department
    source: Code
    table: str | None = None  # sql: table name (optionally schema.table)
    endpoint: str | None = None  # rest: path below the source's base URL
    update_cycle: UpdateCycle
    primary_key: ColumnName
    graphql: DatasetGraphQL
    keywords: list[str] = Field(default_factory=list)
    rows_hint: int | None = Field(default=None, ge=0, description="approximate row count, for cost estimates")
    rows_per_key: int | None = Field(default=None, ge=1, description="typical records per entity key, for cost "
                                     "estimates of nested lists without a limit (gateway/cost.py)")
    fields: list[FieldSpec] = Field(min_length=1)
    relations: list[Relation] = Field(default_factory=list)
    # Whose data a record is (a key field): consent to conditional fields is looked up for this
    # subject. Defaults to the dataset's only key field; required when it has several.
    subject: ColumnName | None = None
    # The date that places a record in time (a date or datetime field): a consent's data range
    # ("records from 2024 on") is checked against it.
    dated_by: ColumnName | None = None

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def location(self) -> str:
        return self.table or self.endpoint or ""

    @property
    def subject_field(self) -> FieldSpec | None:
        """The key field naming the data subject of each record (None: none can be told)."""
        if self.subject is not None:
            return next((f for f in self.fields if f.name == self.subject), None)
        keys = [f for f in self.fields if f.key is not None]
        return keys[0] if len(keys) == 1 else None

    @property
    def conditional_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.share is ShareType.CONDITIONAL]


PurposeCode = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9-]*[a-z0-9]$", max_length=64)]


class ConsentBounds(_Entry):
    """The broadest consent a purpose accepts: a consent beyond these is refused when recorded."""

    max_validity_days: int = Field(default=365, ge=1, le=3650)
    max_uses: int | None = Field(default=None, ge=1, le=100_000)  # uses per `per_days` ...
    per_days: int | None = Field(default=None, ge=1, le=3650)  # ... both or neither
    max_data_range_days: int | None = Field(default=None, ge=1, le=36_500)  # span of records covered


class Purpose(_Entry):
    """A declared purpose of use (X-Purpose): what it is for, on what legal basis, and which
    datasets it may ever touch. Fields of share type ``none`` are opened only by a purpose
    whose legal basis names them in ``none_fields``."""

    code: PurposeCode
    description: str
    legal_basis: str  # reference to the law, regulation or decision
    datasets: list[Code] = Field(min_length=1)
    none_fields: list[str] = Field(default_factory=list)  # dataset.field of share type none
    # Covert purposes (an investigation): accesses are hidden from the data tracker for this many
    # days after they happen, then disclosed, as Estonia's Data Tracker does for law enforcement.
    covert_days: int | None = Field(default=None, ge=1, le=3650)
    consent: ConsentBounds = Field(default_factory=ConsentBounds)


class EntityGraphQL(_Entry):
    type: GraphQLName
    one: GraphQLName  # root field for one key
    many: GraphQLName  # root field for a list of keys
    argument: GraphQLName  # argument / key field name, e.g. idNumber


class Entity(_Entry):
    """A federated entity: the same person or organisation across departments."""

    code: Code
    key: str  # key kind, see catalog.keys.KEY_KINDS
    description: str
    graphql: EntityGraphQL


# --- the cross-referenced whole -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntityLink:
    """Resolved link: ``dataset.field`` holds the key of ``entity``.

    ``entity_field`` is the name of the dataset's records on the entity type (``Person.employments``);
    ``back_field`` the name of the entity on the dataset's type (``Employment.person``).
    """

    entity: str
    dataset: str
    field: str
    entity_field: str
    back_field: str
    unique: bool


@dataclass(slots=True)
class Catalog:
    """A validated catalogue. Built only by :func:`catalog.loader.load_catalog`."""

    departments: dict[str, Department]
    sources: dict[str, Source]
    datasets: dict[str, Dataset]
    entities: dict[str, Entity]
    links: list[EntityLink]
    purposes: dict[str, Purpose] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)  # entry id -> file it came from

    def links_of_entity(self, entity: str) -> list[EntityLink]:
        return [lk for lk in self.links if lk.entity == entity]

    def links_of_dataset(self, dataset: str) -> list[EntityLink]:
        return [lk for lk in self.links if lk.dataset == dataset]

    def provider_of(self, dataset: str) -> Department:
        ds = self.datasets[dataset]
        assert ds.provider is not None  # the loader fills it in
        return self.departments[ds.provider]


_CAMEL = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """``birth_date`` -> ``birthDate``: the GraphQL default for a column name."""
    return _CAMEL.sub(lambda m: m.group(1).upper(), name.lower())
