"""Stage 3: authorise the plan, once per field, before any source is asked.

For every field the plan reads or tests, the decision for (caller, purpose, dataset.field)
is taken once (cached by :class:`policies.decide.Decider`) and applied to the plan:

- **clear**: kept.  **masked**: kept, with the mask to apply while shaping.
- **verify only / denied**: the field is not fetched at all (its column leaves the source
  query unless a join needs it) and comes back ``null`` with ``FORBIDDEN_FIELD`` at its
  path (Apollo's filter mode), or the whole request fails (``reject`` mode, 403).
- **conditional** (有条件共享) fields are withheld with ``CONSENT_REQUIRED``: consent and
  legal bases are looked up per data subject in a later stage.
- A dataset outside the purpose is not queried at all; its place in the answer is
  ``null`` with ``FORBIDDEN_FIELD``.
- Filters (and ``verify`` claims) may only test fields the caller may at least verify.
- Row rules of the caller's policy are added to the fetch's conditions: pushed into the
  source's ``WHERE``, never applied after fetching.

Messages name the field and the purpose, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from catalog.model import Catalog, ShareType
from gateway.context import RequestContext
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.plan import EntityRef, Fetch, KeyValue, Nested, ObjShape, Plan, RootPage, RootVerify, Scalar, Withheld
from policies.decide import Access, Decider, Decision
from resolvers.coerce import coerce
from resolvers.query import Condition, Op

__all__ = ["Authorisation", "authorize"]


@dataclass
class Authorisation:
    """What the stage decided, for the response and (later) the audit record."""

    decisions: dict[str, Decision] = field(default_factory=dict)  # dataset.field -> decision
    withheld: dict[str, str] = field(default_factory=dict)  # dataset.field -> error code
    row_rules: dict[str, list[str]] = field(default_factory=dict)  # dataset -> rule shapes (no values)


def authorize(plan: Plan, ctx: RequestContext, decider: Decider, catalog: Catalog) -> Authorisation:
    return _Stage(plan, ctx, decider, catalog).run()


class _Stage:
    def __init__(self, plan: Plan, ctx: RequestContext, decider: Decider, catalog: Catalog) -> None:
        self.plan = plan
        self.ctx = ctx
        self.decider = decider
        self.catalog = catalog
        self.out = Authorisation()
        self.purpose = ctx.purpose or ""
        self.dropped: set[int] = set()  # fetches of datasets the purpose does not cover

    def decision(self, dataset: str, column: str) -> Decision:
        obj = f"{dataset}.{column}"
        hit = self.out.decisions.get(obj)
        if hit is None:
            hit = self.out.decisions[obj] = self.decider.decide(self.ctx.subject, self.purpose, obj)
        return hit

    def withheld(self, key: str, dataset: str, column: str) -> Withheld | None:
        """The Withheld entry for a field the caller may not receive, or None when it may."""
        d = self.decision(dataset, column)
        spec = self.catalog.datasets[dataset].field(column)
        if d.access < Access.MASKED:
            reason = d.reason if d.access is Access.DENIED else f"this client may only verify {dataset}.{column}"
            self.out.withheld[f"{dataset}.{column}"] = Code.FORBIDDEN_FIELD.value
            return Withheld(key, Code.FORBIDDEN_FIELD.value, f"{dataset}.{column} is not available for purpose "
                                                             f"{self.purpose!r}: {reason}")
        if spec.share is ShareType.CONDITIONAL:
            self.out.withheld[f"{dataset}.{column}"] = Code.CONSENT_REQUIRED.value
            return Withheld(key, Code.CONSENT_REQUIRED.value,
                            f"{dataset}.{column} is shared only with the data subject's consent or a recorded "
                            f"legal basis, and none covers purpose {self.purpose!r}")
        return None

    def run(self) -> Authorisation:
        purpose = self.catalog.purposes[self.purpose]
        for f in self.plan.fetches:
            if f.dataset not in purpose.datasets or (f.parent is not None and f.parent in self.dropped):
                self.dropped.add(f.id)
        self.check_filters()
        if self.ctx.reject_unauthorized:
            self.reject_if_any_denied()
        for i, root in enumerate(self.plan.roots):
            if isinstance(root, RootPage | RootVerify) and root.fetch in self.dropped:
                ds = self.plan.fetches[root.fetch].dataset
                self.plan.roots[i] = self.forbidden_dataset(root.key, ds)
            elif isinstance(root, RootPage):
                for _, shape in root.nodes:
                    self.shape(shape)
            elif hasattr(root, "shape"):
                self.shape(root.shape)  # type: ignore[union-attr]
        for f in self.plan.fetches:
            if f.id not in self.dropped:
                self.trim(f)
                self.rows(f)
        self.plan.fetches = [f for f in self.plan.fetches if f.id not in self.dropped]
        return self.out

    def forbidden_dataset(self, key: str, dataset: str) -> Withheld:
        return Withheld(key, Code.FORBIDDEN_FIELD.value,
                        f"{dataset} is not available for purpose {self.purpose!r}: the purpose does not cover it")

    def shape(self, shape: ObjShape, key_source: tuple[str, str] | None = None) -> None:
        """Apply decisions to a shape. ``key_source`` is (dataset, column) holding an entity's key."""
        ds = self.plan.fetches[shape.fetch].dataset if shape.fetch is not None else None
        for i, e in enumerate(shape.entries):
            if isinstance(e, Scalar) and ds is not None:
                w = self.withheld(e.key, ds, e.column)
                if w is not None:
                    shape.entries[i] = w
                else:
                    d = self.decision(ds, e.column)
                    e.mask = d.mask if d.access is Access.MASKED else None
            elif isinstance(e, KeyValue) and key_source is not None:
                w = self.withheld(e.key, *key_source)
                if w is not None:
                    w.non_null = True  # Person.idNumber is String!: the person object becomes null instead
                    shape.entries[i] = w
                else:
                    d = self.decision(*key_source)
                    e.mask = d.mask if d.access is Access.MASKED else None
            elif isinstance(e, Nested):
                if e.fetch in self.dropped:
                    shape.entries[i] = self.forbidden_dataset(e.key, self.plan.fetches[e.fetch].dataset)
                else:
                    self.shape(e.shape)
            elif isinstance(e, EntityRef) and ds is not None:
                self.shape(e.shape, (ds, e.column))

    def trim(self, f: Fetch) -> None:
        """Columns the caller may not receive leave the source query unless a join needs them."""
        keep = [c for c in f.selected if f"{f.dataset}.{c}" not in self.out.withheld]
        f.selected = keep
        columns = tuple(c for c in f.query.columns if c in keep or c in f.required)
        f.query = replace(f.query, columns=columns)

    def rows(self, f: Fetch) -> None:
        rules = self.decider.row_rules(self.ctx.subject, self.purpose, f.dataset)
        if not rules:
            return
        ds = self.catalog.datasets[f.dataset]
        conds = []
        for r in rules:
            data_type = ds.field(r.column).type
            value = r.bind(self.ctx.subject)
            op = Op(r.op)
            conds.append(Condition(r.column, op, [coerce(v, data_type) for v in value.split("|")]
                                   if op is Op.IN else coerce(value, data_type)))
        self.out.row_rules[f.dataset] = [c.describe() for c in conds]
        # Row rules hold together with the request's own filters (AND): the most restrictive wins.
        f.query = replace(f.query, conditions=(*f.query.conditions, *conds))

    def check_filters(self) -> None:
        bad = [f"{f.dataset}.{c}" for f in self.plan.fetches if f.id not in self.dropped
               for c in f.filtered if self.decision(f.dataset, c).access < Access.VERIFY]
        if bad:
            message = (f"this client may not test {', '.join(sorted(set(bad)))} for purpose {self.purpose!r}: "
                       "remove the filter or claim on it")
            raise RequestError(Code.FORBIDDEN_FIELD, message, 403,
                               errors=[GraphQLErrorOut(message, Code.FORBIDDEN_FIELD)])

    def reject_if_any_denied(self) -> None:
        denied = sorted({f"{f.dataset}.{c}" for f in self.plan.fetches for c in f.selected
                         if f.id in self.dropped or self.decision(f.dataset, c).access < Access.MASKED})
        if denied:
            message = (f"the request asks for fields this client may not read for purpose {self.purpose!r}: "
                       f"{', '.join(denied)} (reject mode: remove them, or drop X-Reject-Unauthorized)")
            raise RequestError(Code.FORBIDDEN_FIELD, message, 403,
                               errors=[GraphQLErrorOut(message, Code.FORBIDDEN_FIELD)])
