"""Stage 3: authorise the plan, once per field, before any source is asked.

For every field the plan reads, tests or joins on, the decision for (caller, purpose,
dataset.field) is taken once (cached by :class:`policies.decide.Decider`) and applied:

- **Returned fields.** Clear: kept. Masked: kept, masked while shaping. Verify-only or
  denied: not fetched (the column leaves the source query unless a join needs it) and
  ``null`` with ``FORBIDDEN_FIELD`` at each path (Apollo's filter mode), or the whole request
  fails in reject mode (403). Conditional fields (有条件共享) become
  :class:`~gateway.plan.Conditional` entries: fetched with their subject's key (and the
  record's date), then released per record by the consent stage (``gateway/consent.py``).
- **Tested fields.** A list filter reveals as much as reading: it needs clear, unconditional
  access. A ``verify`` claim, a yes/no question about one subject, needs at least ``verify``.
  Otherwise the request fails (403), since its answer would disclose the field.
- **Joined fields.** Following a relation or an entity link tests equality of key columns
  on both sides, so each needs at least ``verify`` and must not be conditional (consent is
  given per record, a join would test every record); otherwise the nested part is ``null``
  with the reason, and is not fetched.
- **Datasets.** A dataset outside the purpose, or one of whose fields the caller may not
  even verify, is not queried at all: even the existence or count of its records is data.
- **Row rules** of the caller's policy join the fetch's conditions: pushed into the
  source's ``WHERE``, never applied after fetching.

Messages name fields and the purpose, never a value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from catalog.model import Catalog, ShareType
from gateway.context import RequestContext
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.plan import (
    ENTITY_KEY,
    Conditional,
    EntityRef,
    Fetch,
    KeyValue,
    Nested,
    ObjShape,
    Plan,
    RootEntity,
    RootPage,
    RootVerify,
    Scalar,
    Withheld,
)
from policies.decide import Access, Decider, Decision
from resolvers.coerce import coerce
from resolvers.query import Condition, Op

__all__ = ["Authorisation", "authorize"]


@dataclass
class Authorisation:
    """What the stage decided, for the response and (later) the audit record."""

    decisions: dict[str, Decision] = field(default_factory=dict)  # dataset.field -> decision
    withheld: dict[str, str] = field(default_factory=dict)  # dataset.field or dataset -> error code
    row_rules: dict[str, list[str]] = field(default_factory=dict)  # dataset -> rule shapes (no values)
    parts: dict[str, str] = field(default_factory=dict)  # response path of a withheld fetch -> error code


def authorize(plan: Plan, ctx: RequestContext, decider: Decider, catalog: Catalog,
              into: Authorisation | None = None) -> Authorisation:
    """Apply decisions to ``plan``. ``into`` collects them even when the request is refused
    (RequestError), so that the audit record says what was asked and why it was refused."""
    return _Stage(plan, ctx, decider, catalog, into or Authorisation()).run()


class _Stage:
    def __init__(self, plan: Plan, ctx: RequestContext, decider: Decider, catalog: Catalog,
                 out: Authorisation) -> None:
        self.plan = plan
        self.ctx = ctx
        self.decider = decider
        self.catalog = catalog
        self.out = out
        self.purpose = ctx.purpose or ""
        self.dropped: dict[int, Withheld] = {}  # fetch id -> why its records are withheld

    # --- decisions ---------------------------------------------------------------------------

    def decision(self, dataset: str, column: str) -> Decision:
        obj = f"{dataset}.{column}"
        hit = self.out.decisions.get(obj)
        if hit is None:
            hit = self.out.decisions[obj] = self.decider.decide(self.ctx.subject, self.purpose, obj)
        return hit

    def conditional(self, dataset: str, column: str) -> bool:
        return self.catalog.datasets[dataset].field(column).share is ShareType.CONDITIONAL

    def refusal(self, key: str, dataset: str, column: str, need: Access, *, gated: bool = False) -> Withheld | None:
        """Why ``dataset.column`` cannot be used at level ``need`` (None when it can). ``gated``: a
        returned value, which the consent stage may release per record when it is conditional."""
        d = self.decision(dataset, column)
        obj = f"{dataset}.{column}"
        if d.access < need:
            if d.access is Access.DENIED:
                reason = d.reason
            else:
                reason = f"this client may only {'verify' if d.access is Access.VERIFY else 'read masked'} {obj}"
            self.out.withheld[obj] = Code.FORBIDDEN_FIELD.value
            return Withheld(key, Code.FORBIDDEN_FIELD.value, f"{obj} is not available for purpose "
                                                             f"{self.purpose!r}: {reason}")
        if self.conditional(dataset, column) and not gated:
            self.out.withheld[obj] = Code.CONSENT_REQUIRED.value
            return Withheld(key, Code.CONSENT_REQUIRED.value,
                            f"{obj} is shared only with the data subject's consent or a recorded legal basis, "
                            f"and none covers purpose {self.purpose!r}")
        return None

    # --- the stage ---------------------------------------------------------------------------

    def run(self) -> Authorisation:
        purpose = self.catalog.purposes[self.purpose]
        for f in self.plan.fetches:  # parents come before their children
            if f.parent is not None and f.parent in self.dropped:
                self.dropped[f.id] = self.dropped[f.parent]
            elif f.dataset not in purpose.datasets:
                self.drop(f, Code.FORBIDDEN_FIELD, "the purpose does not cover it")
            elif not self.usable(f.dataset):
                self.drop(f, Code.FORBIDDEN_FIELD, "this client may not use any of its fields")
            elif f.query.key_column is not None:
                w = self.refusal("", f.dataset, f.query.key_column, Access.VERIFY)
                if w is not None:  # the lookup by key is itself a test of the key column
                    self.dropped[f.id] = w
        self.check_tests()
        for i, root in enumerate(self.plan.roots):
            if isinstance(root, RootPage | RootVerify) and root.fetch in self.dropped:
                self.plan.roots[i] = self.renamed(self.dropped[root.fetch], root.key)
            elif isinstance(root, RootPage):
                for _, shape in root.nodes:
                    self.shape(shape)
            elif isinstance(root, RootEntity):
                self.shape(root.shape)
        if self.ctx.reject_unauthorized and self.out.withheld:
            self.reject()
        for f in self.plan.fetches:
            if f.id in self.dropped:
                self.out.parts[f.path] = self.dropped[f.id].code
            else:
                self.trim(f)
                self.rows(f)
        self.plan.fetches = [f for f in self.plan.fetches if f.id not in self.dropped]
        return self.out

    def usable(self, dataset: str) -> bool:
        fields = self.catalog.datasets[dataset].fields
        return any(self.decision(dataset, f.name).access >= Access.VERIFY for f in fields)

    def drop(self, f: Fetch, code: Code, why: str) -> None:
        self.out.withheld[f.dataset] = code.value
        self.dropped[f.id] = Withheld("", code.value, f"{f.dataset} is not available for purpose "
                                                      f"{self.purpose!r}: {why}")

    @staticmethod
    def renamed(w: Withheld, key: str) -> Withheld:
        return Withheld(key, w.code, w.message)

    def check_tests(self) -> None:
        """Filters need clear access; verify claims at least verify; neither on conditional fields."""
        for f in self.plan.fetches:
            if f.id in self.dropped:
                continue
            need = Access.VERIFY if f.claim else Access.CLEAR
            for column in f.filtered:
                w = self.refusal("", f.dataset, column, need)
                if w is not None:
                    what = "claim" if f.claim else "filter"
                    message = f"this {what} cannot be answered: {w.message}; remove the {what} on {f.dataset}.{column}"
                    raise RequestError(Code(w.code), message, 403, errors=[GraphQLErrorOut(message, Code(w.code))])

    def shape(self, shape: ObjShape, key_source: tuple[str, str] | None = None) -> None:
        """Apply decisions to a shape. ``key_source`` is (dataset, column) holding an entity's key."""
        ds = self.plan.fetches[shape.fetch].dataset if shape.fetch is not None else None
        for i, e in enumerate(shape.entries):
            if isinstance(e, Scalar) and ds is not None:
                w = self.refusal(e.key, ds, e.column, Access.MASKED, gated=True)
                if w is not None:
                    shape.entries[i] = w
                else:
                    d = self.decision(ds, e.column)
                    e.mask = d.mask if d.access is Access.MASKED else None
                    if self.conditional(ds, e.column):
                        shape.entries[i] = Conditional(e.key, e.column, e.type, e.mask)
                        self.gate(self.plan.fetches[shape.fetch], e.column)
            elif isinstance(e, KeyValue) and key_source is not None:
                w = self.refusal(e.key, *key_source, Access.MASKED)
                if w is not None:
                    w.non_null = True  # Person.idNumber is String!: the person object becomes null instead
                    shape.entries[i] = w
                else:
                    d = self.decision(*key_source)
                    e.mask = d.mask if d.access is Access.MASKED else None
            elif isinstance(e, Nested):
                w = self.dropped.get(e.fetch)
                if w is None and ds is not None and e.parent_column != ENTITY_KEY:
                    w = self.refusal(e.key, ds, e.parent_column, Access.VERIFY)  # this side of the join
                if w is not None:
                    shape.entries[i] = self.renamed(w, e.key)
                    self.drop_under(e.fetch, e.shape, w)
                else:
                    self.shape(e.shape)
            elif isinstance(e, EntityRef) and ds is not None:
                w = self.refusal(e.key, ds, e.column, Access.VERIFY)  # the link is a join on this column
                if w is not None:
                    shape.entries[i] = self.renamed(w, e.key)
                    self.drop_under(None, e.shape, w)
                else:
                    self.shape(e.shape, (ds, e.column))

    def gate(self, f: Fetch, column: str) -> None:
        """Release ``column`` of ``f`` per record: fetch the subject's key and the record's date with it."""
        if column not in f.gated:
            f.gated.append(column)
        ds = self.catalog.datasets[f.dataset]
        subject = ds.subject_field
        assert subject is not None  # the catalogue refuses conditional fields without a subject
        f.need(subject.name)
        if ds.dated_by is not None:
            f.need(ds.dated_by)

    def drop_under(self, fetch: int | None, shape: ObjShape, why: Withheld) -> None:
        """Withhold ``fetch`` and every fetch reached from ``shape``: nothing under a withheld link runs."""
        if fetch is not None:
            self.dropped.setdefault(fetch, why)
        for e in shape.entries:
            if isinstance(e, Nested):
                self.drop_under(e.fetch, e.shape, why)
            elif isinstance(e, EntityRef):
                self.drop_under(None, e.shape, why)
        for f in self.plan.fetches:  # fetches whose parent is now withheld
            if f.parent is not None and f.parent in self.dropped:
                self.dropped.setdefault(f.id, why)

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
            op = Op(r.op)
            try:
                conds.append(Condition(r.column, op, [coerce(v, data_type) for v in r.bind_each(self.ctx.subject)]
                                       if op is Op.IN else coerce(r.bind(self.ctx.subject), data_type)))
            except (ValueError, ArithmeticError, LookupError):
                # A rule this client's identity cannot satisfy (a value of the wrong type, an attribute it
                # does not have): refuse rather than widen or crash.
                message = f"a row rule on {f.dataset} cannot be applied to this client; ask the policy administrator"
                raise RequestError(Code.FORBIDDEN_FIELD, message, 403,
                                   errors=[GraphQLErrorOut(message, Code.FORBIDDEN_FIELD)]) from None
        self.out.row_rules[f.dataset] = [c.describe() for c in conds]
        # Row rules hold together with the request's own filters (AND): the most restrictive wins.
        f.query = replace(f.query, conditions=(*f.query.conditions, *conds))

    def reject(self) -> None:
        listed = ", ".join(f"{k} ({v})" for k, v in sorted(self.out.withheld.items()))
        message = (f"the request asks for what this client may not have for purpose {self.purpose!r}: {listed} "
                   "(reject mode: remove them, or drop X-Reject-Unauthorized)")
        raise RequestError(Code.FORBIDDEN_FIELD, message, 403, errors=[GraphQLErrorOut(message, Code.FORBIDDEN_FIELD)])
