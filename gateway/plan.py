"""The plan: what a validated request will fetch, from where, and how the answer is shaped.

A :class:`Plan` is built once per request by :mod:`gateway.planner` and read by every later
stage: authorisation (which dataset fields), the executor (one pushed-down :class:`Fetch`
per dataset per level, batched by keys), consent (which fetched columns are conditional),
the shaper, the audit log. ``Plan.describe()`` is what ``hutong plan`` and
``extensions.plan`` show.

Shapes mirror the response: an :class:`ObjShape` lists entries in selection order, each
saying where its value comes from (a column of the current row, rows of a child fetch,
an entity built from a key column, a constant).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from catalog.model import DataType
from resolvers.query import SourceQuery

__all__ = [
    "ENTITY_KEY", "Conditional", "Const", "EntityRef", "Fetch", "KeyValue", "Meta", "Nested", "ObjShape",
    "PageInfoShape", "Plan", "RootEntity", "RootPage", "RootVerify", "Scalar", "Withheld",
]

# Entity objects are built from a one-entry row holding their key under this name, which is
# not a valid column name, so it can never collide with a catalogue field.
ENTITY_KEY = "#key"


@dataclass(slots=True)
class Fetch:
    """One pushed-down source query (batched by keys when it depends on a parent)."""

    id: int
    dataset: str
    source: str
    level: int
    query: SourceQuery  # keys are filled in at execution
    path: str  # response path of the records, e.g. residents.nodes.person.employments
    required: list[str] = field(default_factory=list)  # columns the gateway needs (joins, order): never returned
    selected: list[str] = field(default_factory=list)  # dataset fields whose values the client receives
    filtered: list[str] = field(default_factory=list)  # dataset fields the client's conditions test
    literal_keys: tuple[Any, ...] | None = None  # keys given in the request (entity roots)
    parent: int | None = None  # fetch whose rows give the keys ...
    parent_column: str | None = None  # ... in this column
    page: bool = False  # a root page: one extra row is fetched to know whether there is a next page
    row_cap: int | None = None  # more rows than this is an error (ROW_LIMIT_EXCEEDED), not a silent cut
    claim: bool = False  # a verify(...) claim: its condition is a yes/no question, not a list filter
    gated: list[str] = field(default_factory=list)  # conditional columns released per subject by consent

    def need(self, column: str, selected: bool = False) -> None:
        """Fetch ``column``: for the client (``selected``) or for the gateway itself (``required``)."""
        if column not in self.query.columns:
            self.query = replace(self.query, columns=(*self.query.columns, column))
        kept = self.selected if selected else self.required
        if column not in kept:
            kept.append(column)


@dataclass(slots=True)
class Scalar:
    key: str
    column: str
    type: DataType
    mask: str | None = None  # set by authorisation when the caller may read the field only masked


@dataclass(slots=True)
class Conditional:
    """A conditional field (有条件共享) the policy allows: returned per record only where the
    consent stage left its value in the row (else the row holds a ``Refused`` marker)."""

    key: str
    column: str
    type: DataType
    mask: str | None = None


@dataclass(slots=True)
class Withheld:
    """A field (or a whole nested list) the caller may not have: null, with an error at each path."""

    key: str
    code: str  # FORBIDDEN_FIELD, CONSENT_REQUIRED, ...
    message: str
    non_null: bool = False  # the field is non-null in the schema: its null nulls the enclosing object


@dataclass(slots=True)
class Const:
    key: str
    value: Any


@dataclass(slots=True)
class KeyValue:
    """An entity's own key (``Person.idNumber``)."""

    key: str
    mask: str | None = None


@dataclass(slots=True)
class Nested:
    """Rows of ``fetch`` whose key column equals ``row[parent_column]``."""

    key: str
    fetch: int
    parent_column: str
    many: bool
    shape: ObjShape


@dataclass(slots=True)
class EntityRef:
    """An entity object keyed by ``row[column]`` (``Employment.person``)."""

    key: str
    column: str
    shape: ObjShape


@dataclass(slots=True)
class ObjShape:
    entries: list[Scalar | Conditional | Const | KeyValue | Nested | EntityRef | Withheld] = field(
        default_factory=list)
    fetch: int | None = None  # the fetch whose rows this shape is built from (None: an entity object)


@dataclass(slots=True)
class PageInfoShape:
    key: str
    entries: list[tuple[str, str]]  # (response key, hasNextPage | endCursor | __typename)


@dataclass(slots=True)
class RootPage:
    """``residents(filter:, limit:, after:) { nodes {...} pageInfo {...} }``"""

    key: str
    fetch: int
    limit: int
    order_by: str
    nodes: list[tuple[str, ObjShape]]  # nodes may be aliased several times
    page_info: list[PageInfoShape]
    typename: list[tuple[str, str]]
    order: list[str] = field(default_factory=list)  # the response keys in selection order


@dataclass(slots=True)
class RootEntity:
    """``person(idNumber:)`` or ``persons(idNumbers:)``: entity objects from given keys."""

    key: str
    keys: list[str]  # normalised, in request order
    many: bool
    shape: ObjShape


@dataclass(slots=True)
class RootVerify:
    """``verify(idNumber:, claim:)``: true when the subject has a record satisfying the claim."""

    key: str
    fetch: int


@dataclass(slots=True)
class Meta:
    """A root field answered by graphql-core (``catalog``, ``__schema``, ``__type``)."""

    key: str


@dataclass
class Plan:
    operation: str | None
    roots: list[RootPage | RootEntity | RootVerify | Meta | Const | Withheld] = field(default_factory=list)
    fetches: list[Fetch] = field(default_factory=list)
    introspection: bool = False  # __schema or __type is asked for (may be refused per client)

    @property
    def levels(self) -> list[list[Fetch]]:
        out: list[list[Fetch]] = []
        for f in self.fetches:
            while len(out) <= f.level:
                out.append([])
            out[f.level].append(f)
        return out

    @property
    def sources(self) -> list[str]:
        return sorted({f.source for f in self.fetches})

    @property
    def datasets(self) -> list[str]:
        return sorted({f.dataset for f in self.fetches})

    def fields(self) -> list[str]:
        """``dataset.field`` for every field the request reads or tests: what authorisation decides on.

        A filter reveals something about a field even when it is not returned (which ID numbers
        earn more than X), so filtered fields count; join columns the gateway adds do not.
        """
        return sorted({f"{f.dataset}.{c}" for f in self.fetches for c in (*f.selected, *f.filtered)})

    def requested(self) -> list[tuple[str, str, str]]:
        """(fetch path, dataset, field) for every field the request reads or tests, for the audit record."""
        return sorted({(f.path, f.dataset, c) for f in self.fetches for c in (*f.selected, *f.filtered)})

    def filtered(self) -> list[str]:
        """``dataset.field`` for every field a condition of the request tests."""
        return sorted({f"{f.dataset}.{c}" for f in self.fetches for c in f.filtered})

    def describe(self) -> dict[str, Any]:
        """A JSON-ready view of the plan. It shows the shape of conditions, never their values."""
        return {
            "operation": self.operation,
            "sources": self.sources,
            "levels": [
                [
                    {
                        "fetch": f.id,
                        "dataset": f.dataset,
                        "source": f.source,
                        "path": f.path,
                        "columns": list(f.query.columns),
                        "where": [c.describe() for c in f.query.conditions]
                        + ([f"{f.query.key_column} in keys of "
                            + (f"fetch {f.parent}.{f.parent_column}" if f.parent is not None else "request")]
                           if f.query.key_column else []),
                        "orderBy": f.query.order_by,
                        "limit": f.query.limit,
                        "limitPerKey": f.query.limit_per_key,
                    }
                    for f in level
                ]
                for level in self.levels
            ],
            "fields": self.fields(),
            "filtered": self.filtered(),
        }
