"""Stage 2: turn a validated operation into a :class:`~gateway.plan.Plan`.

The planner walks the selection (fragments, aliases, ``@skip``/``@include`` resolved by
graphql-core's ``collect_fields``) against :class:`~gateway.schema.SchemaIndex`, and emits
one :class:`~gateway.plan.Fetch` per dataset occurrence: the columns it needs (selected
fields plus join and ordering columns), its filters, limits and where its keys come from.
Argument values are checked here, once: invalid entity keys, bad limits and foreign
cursors fail the request with ``BAD_USER_INPUT`` before any source is asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from graphql import FieldNode, GraphQLObjectType, GraphQLSchema, OperationType
from graphql.execution.collect_fields import collect_fields, collect_sub_fields
from graphql.execution.values import get_argument_values

from catalog.keys import KEY_KINDS, InvalidKey
from catalog.model import Catalog, Dataset
from gateway.config import Settings
from gateway.cursor import CursorCodec
from gateway.document import Prepared
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.plan import (
    ENTITY_KEY,
    Const,
    EntityRef,
    Fetch,
    KeyValue,
    Meta,
    Nested,
    ObjShape,
    PageInfoShape,
    Plan,
    RootEntity,
    RootPage,
    RootVerify,
    Scalar,
)
from gateway.schema import Member, SchemaIndex
from resolvers.coerce import coerce
from resolvers.query import Condition, Op, SourceQuery

__all__ = ["Planner"]

_OPS = {"eq": Op.EQ, "ne": Op.NE, "in_": Op.IN, "lt": Op.LT, "lte": Op.LTE, "gt": Op.GT, "gte": Op.GTE,
        "prefix": Op.PREFIX, "is_null": Op.IS_NULL}

# Where an object's rows come from: a fetch (dataset objects), or for entity objects the
# fetch and column holding their key, or the keys written in the request (fetch None).
Producer = tuple[int | None, str | None]


class Planner:
    def __init__(self, catalog: Catalog, schema: GraphQLSchema, index: SchemaIndex, settings: Settings,
                 cursors: CursorCodec) -> None:
        self.catalog = catalog
        self.schema = schema
        self.index = index
        self.settings = settings
        self.cursors = cursors

    def plan(self, prep: Prepared, max_depth: int | None = None) -> Plan:
        """``max_depth``: the caller's own limit ([limits.clients]), else [gateway] max_depth."""
        return _Build(self, prep, max_depth or self.settings.max_depth).run()


class _Build:
    """The state of planning one request."""

    def __init__(self, planner: Planner, prep: Prepared, max_depth: int) -> None:
        self.p = planner
        self.prep = prep
        self.max_depth = max_depth
        self.plan = Plan(operation=prep.operation.name.value if prep.operation.name else None)

    # --- helpers ---------------------------------------------------------------------------

    def fail(self, message: str, path: Iterable[str | int], node: FieldNode) -> RequestError:
        loc = node.loc.source.get_location(node.loc.start) if node.loc else None
        err = GraphQLErrorOut(message, Code.BAD_USER_INPUT, path=list(path),
                              locations=[{"line": loc.line, "column": loc.column}] if loc else None)
        return RequestError(Code.BAD_USER_INPUT, message, 400, errors=[err])

    def args(self, parent_type: GraphQLObjectType, node: FieldNode) -> dict[str, Any]:
        return get_argument_values(parent_type.fields[node.name.value], node, self.prep.variables)

    def subfields(self, type_name: str, nodes: list[FieldNode]) -> dict[str, list[FieldNode]]:
        t = self.p.schema.get_type(type_name)
        assert isinstance(t, GraphQLObjectType)
        return collect_sub_fields(self.p.schema, self.prep.fragments, self.prep.variables, t, nodes)

    def new_fetch(self, ds: Dataset, level: int, path: str, **kw: Any) -> Fetch:
        types = {f.name: f.type for f in ds.fields}
        query = SourceQuery(dataset=ds.code, location=ds.location, columns=(), types=types, **kw)
        fetch = Fetch(id=len(self.plan.fetches), dataset=ds.code, source=ds.source, level=level,
                      query=query, path=path)
        self.plan.fetches.append(fetch)
        return fetch

    @staticmethod
    def filters(fetch: Fetch) -> None:
        for c in fetch.query.conditions:
            if c.column not in fetch.filtered:
                fetch.filtered.append(c.column)

    def limit(self, value: Any, path: list[str | int], node: FieldNode, default: int | None) -> int | None:
        if value is None:
            return default
        top = self.p.settings.max_limit
        # Not 0: an empty page could only say "there is more" with no cursor to continue from.
        if value < 1 or value > top:
            raise self.fail(f"limit must be between 1 and {top}, got {value}", path, node)
        return value

    def conditions(self, ds: Dataset, flt: dict[str, Any] | None, path: list[str | int],
                   node: FieldNode) -> tuple[Condition, ...]:
        out: list[Condition] = []
        columns = self.p.index.filters[ds.code]
        for gql_name, ops in (flt or {}).items():
            if ops is None:
                continue
            spec = ds.field(columns[gql_name])
            for op_name, value in ops.items():
                op = _OPS[op_name]
                if value is None:
                    # An explicit null would mean "no condition" here and "= NULL" (never true) in SQL.
                    raise self.fail(f"filter.{gql_name}.{op.value} is null: to test for an empty value "
                                    f"use {{isNull: true}}", path, node)
                if spec.key and op in (Op.EQ, Op.NE, Op.IN):
                    value = self.keys(spec.key, value if op is Op.IN else [value], path,
                                      node, f"filter.{gql_name}.{'in' if op is Op.IN else op.value}", op is Op.IN)
                    value = value if op is Op.IN else value[0]
                if op is Op.IN and len(value) > self.p.settings.max_keys:
                    raise self.fail(f"filter.{gql_name}.in has {len(value)} values; "
                                    f"at most {self.p.settings.max_keys} are accepted", path, node)
                out.append(Condition(spec.name, op, value))
        return tuple(out)

    def keys(self, kind: str, values: list[Any], path: list[str | int], node: FieldNode, arg: str,
             listed: bool) -> list[str]:
        """Normalised keys; an invalid one fails the request, naming the argument (and index if ``listed``)."""
        normalise = KEY_KINDS[kind].normalise
        out = []
        for i, v in enumerate(values):
            try:
                out.append(normalise(v))
            except InvalidKey as exc:
                raise self.fail(f"{f'{arg}[{i}]' if listed else arg}: {exc}", path, node) from None
        return out

    # --- roots -----------------------------------------------------------------------------

    def run(self) -> Plan:
        if self.prep.operation.operation is OperationType.MUTATION:
            # Mutations (consents) read no department data: graphql-core runs them, one after another.
            mutation_type = self.p.schema.mutation_type
            assert mutation_type is not None
            for key, nodes in collect_fields(self.p.schema, self.prep.fragments, self.prep.variables, mutation_type,
                                             self.prep.operation.selection_set).items():
                is_typename = nodes[0].name.value == "__typename"
                self.plan.roots.append(Const(key, "Mutation") if is_typename else Meta(key))
            return self.plan
        query_type = self.p.schema.query_type
        assert query_type is not None
        roots = collect_fields(self.p.schema, self.prep.fragments, self.prep.variables, query_type,
                               self.prep.operation.selection_set)
        for key, nodes in roots.items():
            name = nodes[0].name.value
            if name == "__typename":
                self.plan.roots.append(Const(key, "Query"))
            elif name not in self.p.index.roots:
                # Not a data root generated from the catalogue (catalog, myAccess, auditLog, consents,
                # policy administration, introspection ...): graphql-core answers it.
                self.plan.roots.append(Meta(key))
                self.plan.introspection |= name in ("__schema", "__type")
            else:
                kind, code = self.p.index.roots[name]
                args = self.args(query_type, nodes[0])
                if kind == "list":
                    self.plan.roots.append(self.root_page(key, code, nodes, args))
                elif kind == "verify":
                    self.plan.roots.append(self.root_verify(key, nodes[0], args))
                else:
                    self.plan.roots.append(self.root_entity(key, kind, code, nodes, args))
        return self.plan

    def root_page(self, key: str, code: str, nodes: list[FieldNode], args: dict[str, Any]) -> RootPage:
        ds = self.p.catalog.datasets[code]
        node = nodes[0]
        limit = self.limit(args.get("limit"), [key], node, self.p.settings.default_limit)
        assert limit is not None
        after = None
        if args.get("after") is not None:
            try:
                after = self.p.cursors.decode(args["after"], ds.code, ds.field(ds.primary_key).type)
            except ValueError as exc:
                raise self.fail(f"after: {exc}", [key], node) from None
        fetch = self.new_fetch(ds, 0, f"{key}.nodes", conditions=self.conditions(ds, args.get("filter"), [key], node),
                               order_by=ds.primary_key, after=after, limit=limit + 1)
        fetch.page = True
        self.filters(fetch)
        fetch.need(ds.primary_key)
        page = RootPage(key=key, fetch=fetch.id, limit=limit, order_by=ds.primary_key, nodes=[], page_info=[],
                        typename=[])
        for sub_key, sub_nodes in self.subfields(f"{ds.graphql.type}Page", nodes).items():
            name = sub_nodes[0].name.value
            page.order.append(sub_key)
            if name == "nodes":
                page.nodes.append((sub_key, self.dataset_object(ds, fetch, sub_nodes, [key, sub_key])))
            elif name == "pageInfo":
                entries = [(k, n[0].name.value) for k, n in self.subfields("PageInfo", sub_nodes).items()]
                page.page_info.append(PageInfoShape(sub_key, entries))
            else:
                page.typename.append((sub_key, f"{ds.graphql.type}Page"))
        return page

    def root_verify(self, key: str, node: FieldNode, args: dict[str, Any]) -> RootVerify:
        given = {k: v for k, v in (("idNumber", args.get("id_number")), ("creditCode", args.get("credit_code")))
                 if v is not None}
        if len(given) != 1:
            raise self.fail("verify: give exactly one of idNumber or creditCode", [key], node)
        (arg, raw), = given.items()
        entity = next(e for e in self.p.catalog.entities.values() if e.graphql.argument == arg)
        subject = self.keys(entity.key, [raw], [key], node, arg, False)[0]
        claim = dict(args["claim"])
        type_name, _, field_name = str(claim.pop("field")).partition(".")
        member = self.p.index.members.get((type_name, field_name))
        if member is None or member.kind != "column" or member.dataset is None or member.column is None:
            raise self.fail(f"verify: claim.field must be Type.field of a dataset field, as in catalog "
                            f"{{ fields {{ graphqlPath }} }}; {type_name}.{field_name} is not one", [key], node)
        ds = self.p.catalog.datasets[member.dataset]
        links = [lk for lk in self.p.catalog.links_of_dataset(ds.code) if lk.entity == entity.code]
        if len(links) != 1:
            raise self.fail(f"verify: {type_name} is {'not linked' if not links else 'linked more than once'} "
                            f"to {entity.code}", [key], node)
        ops = {k: v for k, v in claim.items() if v is not None}
        if len(ops) != 1:
            raise self.fail("verify: give exactly one operator in claim (eq, ne, lt, lte, gt, gte, in, isNull)",
                            [key], node)
        (op_name, value), = ops.items()
        op = _OPS[op_name]
        spec = ds.field(member.column)
        if op is Op.IN and len(value) > self.p.settings.max_keys:
            top = self.p.settings.max_keys
            raise self.fail(f"verify: claim.in has {len(value)} values; at most {top} are accepted", [key], node)
        try:
            if op is Op.IN:
                value = [coerce(v, spec.type) for v in value]
            elif op is not Op.IS_NULL:
                value = coerce(value, spec.type)
        except (ValueError, ArithmeticError):
            raise self.fail(f"verify: the claim's value is not a {spec.type.value}", [key], node) from None
        fetch = self.new_fetch(ds, 0, key, conditions=(Condition(spec.name, op, value),),
                               key_column=links[0].field, order_by=ds.primary_key, limit=1)
        fetch.literal_keys = (subject,)
        fetch.claim = True
        self.filters(fetch)
        fetch.need(ds.primary_key)
        return RootVerify(key, fetch.id)

    def root_entity(self, key: str, kind: str, code: str, nodes: list[FieldNode], args: dict[str, Any]) -> RootEntity:
        ent = self.p.catalog.entities[code]
        arg = ent.graphql.argument
        if kind == "one":
            keys = self.keys(ent.key, [args[arg]], [key], nodes[0], arg, False)
        else:
            raw = args[f"{arg}s"]
            if len(raw) > self.p.settings.max_keys:
                raise self.fail(f"{arg}s has {len(raw)} keys; at most {self.p.settings.max_keys} are accepted",
                                [key], nodes[0])
            keys = self.keys(ent.key, raw, [key], nodes[0], f"{arg}s", True)
        literal = tuple(dict.fromkeys(keys))
        shape = self.entity_object(code, (None, None), nodes, [key], literal)
        return RootEntity(key=key, keys=keys, many=kind == "many", shape=shape)

    # --- objects ---------------------------------------------------------------------------

    def depth(self, path: list[str | int], node: FieldNode) -> None:
        top = self.max_depth
        if len(path) > top:
            message = (f"the query nests objects {len(path)} levels deep; at most {top} are allowed "
                       f"(max_depth): split it or ask for fewer levels")
            err = GraphQLErrorOut(message, Code.QUERY_TOO_DEEP, path=list(path))
            raise RequestError(Code.QUERY_TOO_DEEP, message, 400, errors=[err])

    def object_type(self, name: str) -> tuple[GraphQLObjectType, ObjShape]:
        gtype = self.p.schema.get_type(name)
        assert isinstance(gtype, GraphQLObjectType)
        return gtype, ObjShape()

    def members(self, gtype: GraphQLObjectType, nodes: list[FieldNode],
                shape: ObjShape) -> Iterator[tuple[str, list[FieldNode], Member]]:
        """The selected fields of an object with what each means; ``__typename`` is answered here."""
        for key, sub in self.subfields(gtype.name, nodes).items():
            name = sub[0].name.value
            if name == "__typename":
                shape.entries.append(Const(key, gtype.name))
            else:
                yield key, sub, self.p.index.members[(gtype.name, name)]

    def dataset_object(self, ds: Dataset, fetch: Fetch, nodes: list[FieldNode], path: list[str | int]) -> ObjShape:
        self.depth(path, nodes[0])
        gtype, shape = self.object_type(ds.graphql.type)
        shape.fetch = fetch.id
        for key, sub, m in self.members(gtype, nodes, shape):
            if m.kind == "column":
                assert m.column is not None
                fetch.need(m.column, selected=True)
                shape.entries.append(Scalar(key, m.column, ds.field(m.column).type))
            elif m.kind == "relation":
                assert m.relation is not None and m.dataset is not None
                (mine, theirs), = m.relation.join.items()
                fetch.need(mine)
                target = self.p.catalog.datasets[m.dataset]
                args = self.args(gtype, sub[0]) if m.many else {}
                child = self.child_fetch(target, theirs, (fetch.id, mine), fetch.level + 1, sub, [*path, key],
                                         args, m.many, f"{fetch.path}.{key}")
                shape.entries.append(Nested(key, child.id, mine, m.many,
                                            self.dataset_object(target, child, sub, [*path, key])))
            else:  # an entity seen from one of its key fields
                assert m.column is not None and m.entity is not None
                entity = self.entity_object(m.entity, (fetch.id, m.column), sub, [*path, key], None,
                                            f"{fetch.path}.{key}")
                # The entity's key value is this record's column: returned if the key is selected.
                fetch.need(m.column)  # the children's join key, whether or not the key is shown
                if any(isinstance(e, KeyValue) for e in entity.entries):
                    fetch.need(m.column, selected=True)
                shape.entries.append(EntityRef(key, m.column, entity))
        return shape

    def entity_object(self, code: str, producer: Producer, nodes: list[FieldNode], path: list[str | int],
                      literal: tuple[str, ...] | None, base: str | None = None) -> ObjShape:
        ent = self.p.catalog.entities[code]
        self.depth(path, nodes[0])
        gtype, shape = self.object_type(ent.graphql.type)
        parent = producer[0]
        level = 0 if parent is None else self.plan.fetches[parent].level + 1
        base = base or str(path[0])
        for key, sub, m in self.members(gtype, nodes, shape):
            if m.kind == "key":
                shape.entries.append(KeyValue(key))
                continue
            assert m.link is not None and m.dataset is not None
            ds = self.p.catalog.datasets[m.dataset]
            args = self.args(gtype, sub[0]) if m.many else {}
            child = self.child_fetch(ds, m.link.field, producer, level, sub, [*path, key], args, m.many,
                                     f"{base}.{key}", literal)
            shape.entries.append(Nested(key, child.id, ENTITY_KEY, m.many,
                                        self.dataset_object(ds, child, sub, [*path, key])))
        return shape

    def child_fetch(self, ds: Dataset, key_column: str, producer: Producer, level: int, nodes: list[FieldNode],
                    path: list[str | int], args: dict[str, Any], many: bool, fetch_path: str,
                    literal: tuple[str, ...] | None = None) -> Fetch:
        per_key = self.limit(args.get("limit"), path, nodes[0], None) if many else None
        conds = self.conditions(ds, args.get("filter"), path, nodes[0]) if many else ()
        cap = self.p.settings.max_rows
        fetch = self.new_fetch(ds, level, fetch_path, conditions=conds, key_column=key_column,
                               order_by=ds.primary_key, limit_per_key=per_key, limit=cap + 1)
        fetch.row_cap = cap
        fetch.parent, fetch.parent_column = producer
        fetch.literal_keys = literal if producer[0] is None else None
        self.filters(fetch)
        fetch.need(key_column)
        fetch.need(ds.primary_key)
        return fetch

