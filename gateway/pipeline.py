"""The request pipeline, stage by stage:
parse and validate (document.py) -> plan (planner.py) -> authorise (authorize.py) ->
execute (executor.py) -> consent (consent.py) -> shape and mask (shape.py).

Each stage is a module of its own, reading the same :class:`~gateway.plan.Plan`; the audit
record (audit/entry.py) collects what each stage decided.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from inspect import isawaitable
from typing import Any

from graphql import ExecutionResult, execute
from sqlalchemy.exc import SQLAlchemyError

from catalog.model import Catalog
from gateway.audit.admin import append_admin
from gateway.audit.entry import SubjectHasher, field_dispositions, normalise_query, returned
from gateway.audit.errors import AuditUnavailable
from gateway.authorize import Authorisation, authorize
from gateway.config import ConfigError, Settings
from gateway.consent import ConsentOutcome, apply_consent
from gateway.consent_admin import ConsentAdmin, open_store
from gateway.context import RequestContext, Unrestricted
from gateway.cost import estimate
from gateway.cursor import CursorCodec
from gateway.document import DocumentCache, Prepared, prepare
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.executor import FetchResult
from gateway.executor import execute as execute_plan
from gateway.limits import Limits, LimitSettings
from gateway.plan import Const, Meta, Plan, RootEntity, RootPage, RootVerify, Withheld
from gateway.planner import Planner
from gateway.rate_limit import MemoryRateLimiter, RateLimiter
from gateway.schema import BuiltSchema, build_schema
from gateway.shape import Shaper
from gateway.shape_compiled import CompiledShapes
from gateway.stream import StreamedAnswer, streamable
from gateway.verify_limits import check_claims, claims_of, spend_claims
from policies.admin import PolicyAdmin, ensure_seeded
from policies.consent.settings import ConsentSettings
from policies.consent.store import ConsentStore
from policies.decide import Decider
from policies.masks import Masker
from policies.settings import PolicySettings
from policies.sharing import ShareService
from policies.store import RepositorySource, open_policy_store
from policies.validate import PolicyError
from policies.watcher import PolicyWatcher
from resolvers.errors import SourceError
from resolvers.registry import Sources

# The caller's context, a factory given "does the plan fetch data?", or UNRESTRICTED.
ContextSource = RequestContext | Unrestricted | Callable[[bool], RequestContext]

__all__ = ["ContextSource", "Gateway", "Outcome"]

log = logging.getLogger("hutong.pipeline")


@dataclass
class Outcome:
    """The answer to one GraphQL request, before HTTP encoding, and what the audit record says of it."""

    status: int
    body: dict[str, Any]
    plan: Plan | None = None
    headers: dict[str, str] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)  # query shape, fields and dispositions, subjects, rows
    stream: StreamedAnswer | None = None  # a page sent part by part (its first part read); body is then empty


class Gateway:
    """Everything one gateway process holds: catalogue, schema, planner, source connectors."""

    def __init__(self, catalog: Catalog, settings: Settings, sources: Sources | None = None) -> None:
        unknown = sorted(set(settings.source_urls) - set(catalog.sources))
        if unknown:
            # A misspelt override would silently leave the catalogue's URL (perhaps the demo's) in use.
            raise ConfigError(f"{settings.path}: URL overrides for unknown source(s) {', '.join(unknown)} "
                              "([sources.CODE] or HUTONG_SOURCE_CODE_URL); "
                              f"known: {', '.join(sorted(catalog.sources))}")
        self.catalog = catalog
        self.settings = settings
        self.built: BuiltSchema = build_schema(catalog)
        self.documents = DocumentCache(self.built.graphql)
        self.sources = sources or Sources(catalog, settings.base_dir, settings.source_urls,
                                          circuit_failures=settings.circuit_failures,
                                          circuit_open_seconds=settings.circuit_open_seconds)
        self.policy = PolicySettings.from_settings(settings)
        self.store = open_policy_store(settings, catalog)
        self.decider = Decider(self.store, catalog)
        self.proposed_decider = Decider(self.store, catalog, proposed=True)  # the dry run's, if one is started
        self.watcher = PolicyWatcher(self.store, self.policy.poll_interval)
        self.masker = Masker(self.policy.mask_key)
        self.compiled_shapes = CompiledShapes(self.masker)
        self.limits = LimitSettings.from_settings(settings)
        self.cursors = CursorCodec(self.policy.mask_key)
        self.subjects = SubjectHasher(self.policy.mask_key)
        # verify claims' budgets (gateway/verify_limits.py); the app shares its rate-limit store here.
        self.claim_budgets: RateLimiter = MemoryRateLimiter(fail_closed=True)
        self.audit_store: Any = None  # set by the app: the audit log the auditor queries read
        self.audit_writer: Any = None  # set by the app: consent changes are recorded through it
        self.clients: Any = None  # set by the app: the client store (explain and simulate name clients)
        self.sharing: ShareService | None = None  # sharing requests (有条件共享申请), opened by start()
        self.consent_settings = ConsentSettings.from_settings(settings)
        self.consents: ConsentStore | None = None  # opened by start(): it signs with the audit key
        self._normalised_cache: dict[str, tuple[str, str]] = {}
        self.planner = Planner(catalog, self.built.graphql, self.built.index, settings, self.cursors)

    def _normalised(self, prep: Prepared) -> tuple[str, str]:
        """The query's audit text and hash, once per distinct query text (like the parsed document)."""
        hit = self._normalised_cache.get(prep.text)
        if hit is None:
            text = normalise_query(prep.document)
            hit = self._normalised_cache[prep.text] = (text, hashlib.sha256(text.encode()).hexdigest())
            if len(self._normalised_cache) > 512:
                self._normalised_cache.pop(next(iter(self._normalised_cache)))
        return hit

    async def start(self) -> None:
        """Load the policy (an invalid policy stops the gateway here, with the problems listed),
        seeding an empty policy repository first, and start watching it for changes."""
        try:
            admin = self.policy_admin
            if admin is not None:
                await admin.repo.init()
                await ensure_seeded(admin, self.policy.seed)
            await self.store.refresh(force=True)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from None
        if not self.store.snapshot.enforcer.get_named_policy("p"):
            log.warning("the policy in force (%s) is empty: nothing is shared. Import rules (hutong policy import "
                        "FILE) or set [policies] seed", self.store.source.name)
        if self.consents is None:
            self.consents = open_store(self.settings)
        await self.consents.init()
        if self.sharing is None:
            self.sharing = ShareService.from_settings(self.settings, self.catalog, self._record_admin,
                                                      apply_lines=self._apply_shared if admin is not None else None)
        await self.sharing.start()
        await self.watcher.start()

    async def _record_admin(self, body: dict[str, Any]) -> None:
        """An administrative event: through the app's audit writer, or a short-lived one in-process."""
        if self.audit_writer is not None:
            await self.audit_writer.append("admin", body)
        else:
            await append_admin(self.settings, body)

    async def _apply_shared(self, lines: list[tuple[str, ...]], author: str, reason: str,
                            expires_at: datetime | None) -> int:
        """An approved sharing request's lines become a policy version, in force here at once."""
        admin = self.policy_admin
        assert admin is not None
        # Idempotent: an approval whose lines went in before its own record failed can be approved again.
        head, live = await admin.repo.live_at_head()
        present = {x for x, _ in live}
        missing = [tuple(x) for x in lines if tuple(x) not in present]
        if not missing:
            return head
        version = await admin.change(add=missing, author=author, reason=reason, source="share-request",
                                     expires_at=expires_at)
        await self.store.refresh(force=True)
        return version.number

    @property
    def policy_admin(self) -> PolicyAdmin | None:
        """Administration of the policy repository (None for a policy file). Changes are audit events,
        written through the app's audit writer, or a short-lived one for in-process callers."""
        source = self.store.source
        if not isinstance(source, RepositorySource):
            return None
        return PolicyAdmin(source.repo, self.catalog, self._record_admin)

    def prepare(self, query: Any, operation_name: Any = None, variables: Any = None, method: str = "POST") -> Prepared:
        return prepare(self.documents, query, operation_name, variables, method)

    def plan(self, query: Any, operation_name: Any = None, variables: Any = None) -> Plan:
        return self.planner.plan(self.prepare(query, operation_name, variables))

    async def run(self, query: Any, operation_name: Any = None, variables: Any = None, *,
                  context: ContextSource, method: str = "POST", debug: bool | None = None,
                  stream: bool = False, limits: Limits | None = None, deadline: asyncio.Timeout | None = None,
                  audit: dict[str, Any] | None = None) -> Outcome:
        """Answer one request. ``context`` is the caller's RequestContext, a function making it once
        the plan shows whether data is asked for, or UNRESTRICTED for trusted in-process callers.
        With ``stream``, a large flat page may come back as ``Outcome.stream`` (gateway/stream.py)
        for the caller to send part by part; otherwise every answer is whole. ``limits``: the
        caller's ([limits], per client); the server's defaults otherwise. ``deadline``: the request's
        (the HTTP layer's ``asyncio.timeout``), lifted once consent uses are counted, so that a use is
        never spent on an answer the deadline then withholds. ``audit``: filled as the stages go, so
        that a caller whose deadline stops ``run`` can still record what was asked."""
        debug = debug if debug is not None else self.settings.debug
        limits = limits or self.limits.defaults
        started = time.perf_counter()
        plan: Plan | None = None
        audit = audit if audit is not None else {}
        try:
            try:
                prep = self.prepare(query, operation_name, variables, method)
            except RequestError:
                if isinstance(query, str):
                    # Refused before it has a normalised text: the hash of the text as sent, so that it can
                    # still be matched against another record (the text itself may hold values).
                    audit["query_hash"] = hashlib.sha256(query.encode()).hexdigest()
                raise
            normalised, digest = self._normalised(prep)
            audit.update(query=normalised, query_hash=digest,
                         operation=prep.operation.name.value if prep.operation.name else None)
            plan = self.planner.plan(prep, limits.max_depth)
            claims = claims_of(plan, self.subjects)
            if claims:
                # Whatever the answer, a claim tells something about its subject: recorded as read.
                audit["claimed"] = sorted({c.pseudonym for c in claims})
                audit["looked_up"] = audit["claimed"]  # asked about, answered or refused
                check_claims(claims, limits)
            self._check_limits(plan, limits, audit)
            requested = plan.requested()  # before authorisation trims what it withholds
            audit["datasets"] = plan.datasets
            ctx = context(bool(plan.fetches)) if callable(context) else context
            # The watcher (started with the gateway) keeps the policy current; requests never wait on the
            # store, and staleness says when it cannot be confirmed.
            if plan.fetches and self.store.stale():
                # Grants withdrawn elsewhere may still be in force here: serve no data until confirmed.
                log.error("policy not confirmed current for %.0f s: data requests refused", self.store.max_staleness)
                raise RequestError(Code.POLICY_UNAVAILABLE, "the gateway cannot confirm that its policy is current "
                                   "(the policy store is unreachable, or its latest version is invalid here): "
                                   "retry later", 503, headers={"Retry-After": "5"})
            auth = Authorisation()
            if isinstance(ctx, RequestContext) and plan.fetches:  # a data request: its purpose is known
                try:
                    authorize(plan, ctx, self.decider, self.catalog, auth)
                    if self.store.snapshot.proposed is not None:
                        audit["dry_run"] = self._dry_run(ctx, auth)
                finally:
                    audit["fields"] = field_dispositions(requested, auth)
                    audit["row_rules"] = auth.row_rules
                if claims:
                    await spend_claims(claims, self.claim_budgets, ctx.subject.client_id, limits)
            page = streamable(plan, self.settings, debug) if stream and plan.fetches else None
            if page is not None:
                answer = StreamedAnswer(plan, page, plan.fetches[0], self._shaper(plan, {}), self.sources,
                                        self.catalog, self.subjects, self.cursors, self.settings.stream_chunk, audit)
                try:
                    await answer.open()
                    return Outcome(200, {}, plan, audit=audit, stream=answer)
                except SourceError as exc:  # nothing sent yet: the usual answer, null and an error at its path
                    results = {page.fetch: FetchResult(plan.fetches[0], error=exc, ms=0.0)}
            else:
                results = await execute_plan(plan, self.sources)
            consent = ConsentOutcome()
            if isinstance(ctx, RequestContext) and any(f.gated for f in plan.fetches):
                consent = await self._consent(plan, results, ctx)
                if deadline is not None:
                    deadline.reschedule(None)  # uses are counted: this answer is finished and sent
                audit.update(consent.record())
                audit["fields"] = field_dispositions(requested, auth, consent)
            audit.update(returned(results, self.catalog, self.subjects))
            if claims:
                audit["subjects"] = sorted(set(audit["subjects"]) | set(audit["claimed"]))
            shaper = self._shaper(plan, results)
            data: dict[str, Any] = {}
            meta = [r.key for r in plan.roots if isinstance(r, Meta)]
            meta_result = await self._meta(prep, ctx, audit) if meta else None
            for root in plan.roots:
                if isinstance(root, Const):
                    data[root.key] = root.value
                elif isinstance(root, Meta):
                    assert meta_result is not None
                    data[root.key] = (meta_result.data or {}).get(root.key)
                elif isinstance(root, RootPage | RootEntity | RootVerify | Withheld):
                    data[root.key] = shaper.root(root)
            errors = [e.to_dict() for e in shaper.errors]
            if meta_result is not None and meta_result.errors:
                errors.extend(_meta_error(e) for e in meta_result.errors)
            body: dict[str, Any] = {"data": data}
            if errors:
                body["errors"] = errors
        except RequestError as exc:
            return Outcome(exc.status, {"errors": [e.to_dict() for e in exc.errors]}, plan, exc.headers, audit)
        except Exception as exc:
            # A bug after data left the sources: the audit record must still say whose records were read.
            exc.audit = audit  # type: ignore[attr-defined]
            raise
        if debug:
            body["extensions"] = {"plan": plan.describe(),
                                  "timing": {"ms": round((time.perf_counter() - started) * 1000, 2)}}
        return Outcome(200, body, plan, audit=audit)

    def _check_limits(self, plan: Plan, limits: Limits, audit: dict[str, Any]) -> None:
        """Refuse, before anything runs, what the caller's limits do not allow."""
        if plan.introspection and not limits.introspection:
            raise RequestError(Code.INTROSPECTION_DISABLED, "introspection (__schema, __type) is disabled for this "
                               "client ([limits] introspection = false): use the catalogue query, or ask the "
                               "operators", 403)
        if not plan.fetches:
            return
        too_many = [r for r in plan.roots if isinstance(r, RootPage) and r.limit > self.settings.max_nodes]
        if too_many:
            raise RequestError(Code.QUERY_TOO_COSTLY, f"a page of {too_many[0].limit} records is more than the "
                               f"{self.settings.max_nodes} objects an answer may hold (max_nodes): ask for smaller "
                               "pages and follow the cursor", 400)
        if len(plan.fetches) > limits.max_fetches:
            raise RequestError(Code.QUERY_TOO_COSTLY, f"the query needs {len(plan.fetches)} source queries, more than "
                               f"this client's max_fetches ({limits.max_fetches}): ask for fewer lists or aliases, or "
                               "split the query", 400)
        cost = estimate(plan, self.catalog)
        audit["cost"] = cost
        if cost > limits.max_cost:
            if limits.cost_mode == "measure":
                log.warning("estimated cost %d exceeds max_cost %d (measure mode: answered)", cost, limits.max_cost)
                return
            raise RequestError(Code.QUERY_TOO_COSTLY, f"the query may fetch about {cost} records, more than this "
                               f"client's max_cost ({limits.max_cost}): ask for smaller pages or fewer keys, give "
                               "nested lists a limit, or split the query", 400)

    def _shaper(self, plan: Plan, results: dict[int, FetchResult]) -> Shaper:
        return Shaper(plan, results, self.settings.max_nodes, self.masker, self.cursors, self.compiled_shapes)

    async def _policy_refresh(self) -> None:
        await self.store.refresh(force=True)

    def _plan_fields(self, query: str) -> list[str]:
        """The dataset.field pairs a query would read (for explain), or ValueError saying why not."""
        try:
            return self.plan(query).fields()
        except RequestError as exc:
            raise ValueError(f"the query cannot be planned: {exc}") from None

    def _dry_run(self, ctx: RequestContext, auth: Authorisation) -> list[dict[str, Any]]:
        """The decisions the proposed policy would take differently for this request (logged, recorded,
        never enforced)."""
        changed: list[dict[str, Any]] = []
        purpose = ctx.purpose or ""
        for obj, now in sorted(auth.decisions.items()):
            proposed = self.proposed_decider.decide(ctx.subject, purpose, obj)
            if (proposed.access, proposed.mask) != (now.access, now.mask):
                changed.append({"field": obj, "now": now.access.name, "now_mask": now.mask,
                                "proposed": proposed.access.name, "proposed_mask": proposed.mask})
        for dataset in sorted({obj.rpartition(".")[0] for obj in auth.decisions}):
            now_rules = self.decider.row_rules(ctx.subject, purpose, dataset)
            proposed_rules = self.proposed_decider.row_rules(ctx.subject, purpose, dataset)
            if set(now_rules) != set(proposed_rules):  # rules hold together: their order does not matter
                changed.append({"dataset": dataset, "row_rules_now": sorted(f"{r.column} {r.op}" for r in now_rules),
                                "row_rules_proposed": sorted(f"{r.column} {r.op}" for r in proposed_rules)})
        if changed:
            log.warning("dry run: the proposed policy would decide %d field(s) differently for %s (%s): %s",
                        len(changed), ctx.subject.client_id, ctx.purpose,
                        ", ".join(f"{c['field']} {c['now']}->{c['proposed']}" if "field" in c
                                  else f"row rules of {c['dataset']}" for c in changed[:10]))
        return changed

    @property
    def consent_admin(self) -> ConsentAdmin | None:
        """Consent changes need the store and the audit log (each change is an audit event)."""
        if self.consents is None or self.audit_writer is None:
            return None
        writer = self.audit_writer

        async def record(body: dict[str, Any]) -> None:
            await writer.append("admin", body)

        return ConsentAdmin(self.catalog, self.consents, self.subjects, record,
                            self_recording=self.consent_settings.self_recording)

    async def _consent(self, plan: Plan, results: dict[int, Any], ctx: RequestContext) -> ConsentOutcome:
        if self.consents is None:  # never started: nothing conditional may go
            raise RequestError(Code.CONSENT_UNAVAILABLE, "the consent store is not open: retry later", 503,
                               headers={"Retry-After": "5"})
        return await apply_consent(plan, results, ctx, self.catalog, self.consents, self.consents.signer,
                                   self.subjects, datetime.now(UTC))

    async def _meta(self, prep: Prepared, ctx: RequestContext | Unrestricted,
                    audit: dict[str, Any]) -> ExecutionResult:
        """Introspection and ``catalog`` run through graphql-core. With no root value, graphene's
        default resolvers give null for the data roots (the plan answers those), so graphql-core
        never walks data. The people the audit and consent queries look up by key are recorded
        (``looked_up``, pseudonyms): reading the log about someone leaves a trace too."""
        looked_up: set[str] = set()
        result = execute(self.built.graphql, prep.document, root_value=None,
                         context_value={"catalog": self.catalog, "decider": self.decider, "audit": self.audit_store,
                                        "subjects": self.subjects, "consent_admin": self.consent_admin,
                                        "policy_admin": self.policy_admin, "policy_refresh": self._policy_refresh,
                                        "clients": self.clients, "plan_fields": self._plan_fields,
                                        "share_service": self.sharing, "looked_up": looked_up,
                                        "subject": ctx.subject if isinstance(ctx, RequestContext) else None,
                                        "acting_user": ctx.acting_user if isinstance(ctx, RequestContext) else None},
                         variable_values=prep.raw_variables,
                         operation_name=prep.operation.name.value if prep.operation.name else None)
        if isawaitable(result):  # the audit queries read the store asynchronously
            result = await result
        assert isinstance(result, ExecutionResult)
        if looked_up:
            audit["looked_up"] = sorted(looked_up | set(audit.get("looked_up", ())))
        return result

    async def close(self) -> None:
        await self.watcher.close()
        if self.sharing is not None:
            await self.sharing.close()
        await self.sources.close()
        await self.store.close()
        if self.consents is not None:
            await self.consents.close()


def _meta_error(err: Any) -> dict[str, Any]:
    if isinstance(err.original_error, PolicyError):  # a policy change that would be invalid: every problem
        problems = err.original_error.problems
        return GraphQLErrorOut("the change is refused: " + "; ".join(problems[:20]), Code.BAD_USER_INPUT,
                               path=list(err.path or []), extra={"problems": problems[:100]}).to_dict()
    if isinstance(err.original_error, AuditUnavailable):  # a change (consent, policy, sharing) not recordable
        return GraphQLErrorOut("the audit log cannot record this change, so it was not made: retry later",
                               Code.AUDIT_UNAVAILABLE, path=list(err.path or [])).to_dict()
    if isinstance(err.original_error, PermissionError):  # a role-restricted query asked by another client
        return GraphQLErrorOut(str(err.original_error), Code.FORBIDDEN, path=list(err.path or [])).to_dict()
    # PermissionError is an OSError too: it was answered above.
    if isinstance(err.original_error, SQLAlchemyError | OSError | TimeoutError):
        log.error("a store failed: %s", type(err.original_error).__name__)
        return GraphQLErrorOut("a store this request needs (consent, policy or sharing) cannot be reached: retry "
                               "later", Code.SERVICE_UNAVAILABLE, path=list(err.path or [])).to_dict()
    if isinstance(err.original_error, ValueError):  # a resolver's own "bad argument" message
        return GraphQLErrorOut(str(err.original_error), Code.BAD_USER_INPUT, path=list(err.path or [])).to_dict()
    log.error("metadata resolver failed: %s", type(err.original_error).__name__)
    return GraphQLErrorOut("internal error: quote the request id to the operators", Code.INTERNAL_SERVER_ERROR,
                           path=list(err.path or [])).to_dict()
