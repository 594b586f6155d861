"""The Starlette application: ``/graphql``, ``/healthz``, ``/readyz`` and the explorer's assets."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from catalog.loader import load_catalog
from gateway.access_log import AccessLog
from gateway.audit.admin import admin_event
from gateway.audit.settings import AuditSettings
from gateway.audit.writer import AuditWriter
from gateway.auth.service import AuthService
from gateway.catalogue_events import start_events
from gateway.config import Settings, load_settings
from gateway.console.accounts import AccountStore
from gateway.console.app import create_console
from gateway.console.settings import ConsoleSettings
from gateway.cutoffs import Cutoffs
from gateway.explorer import explorer_routes
from gateway.http import graphql_endpoint, json_response
from gateway.pipeline import Gateway
from gateway.rate_limit import MemoryRateLimiter, open_rate_limiter

__all__ = ["create_app"]

log = logging.getLogger("hutong")


async def healthz(_: Request) -> Response:
    """Alive: the process answers. Says nothing about the sources (that is /readyz)."""
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Ready: every source answers and the policy in force is confirmed current. 503 otherwise,
    with the state of each."""
    gateway: Gateway = request.app.state.gateway
    sources = await gateway.sources.readiness()
    store = gateway.store
    snap = store.snapshot
    policy = {"status": "stale" if store.stale() else "ok", "version": snap.policy_version,
              "digest": snap.digest, "confirmed_seconds_ago": round(time.monotonic() - store.confirmed, 2),
              "watcher": "listening" if gateway.watcher.listening else "polling",
              "dry_run": snap.proposal is not None}
    ready = all(s["status"] == "ok" for s in sources.values()) and policy["status"] == "ok"
    # A degraded rate limit store does not make the gateway unready: limits fall back per worker.
    return json_response({"status": "ok" if ready else "degraded", "sources": sources, "policy": policy,
                          "rate_limits": request.app.state.rate_limiter.status()}, 200 if ready else 503)


async def _check_limit_clients(gw: Gateway, identity: AuthService) -> None:
    """A [limits.clients] section for a client the store does not know is most likely a typo: say so."""
    if not gw.limits.clients:
        return
    try:
        known = {c.client_id for c in await identity.store.list()}
    except Exception:  # the store is checked elsewhere; this is advice only
        return
    unknown = sorted(set(gw.limits.clients) - known)
    if unknown:
        log.warning("[limits.clients] names client(s) not registered here: %s (check the ids; clients of an "
                    "external identity provider are fine)", ", ".join(unknown))




def create_app(settings: Settings | None = None, gateway: Gateway | None = None,
               auth: AuthService | None = None, audit: AuditWriter | None = None) -> Starlette:
    """The gateway's ASGI app. ``gateway``, ``auth`` and ``audit`` are built from ``settings`` unless
    given (tests give their own). Whatever the app holds, its lifespan starts and closes."""
    settings = settings or load_settings()
    gw = gateway or Gateway(load_catalog(*settings.catalog), settings)
    identity = auth or AuthService.from_settings(settings)
    # Every answer waits for its audit record (fail closed): there is no setting that turns it off.
    trail = audit or AuditWriter.from_settings(AuditSettings.from_settings(settings))

    console_settings = ConsoleSettings.from_settings(settings)
    accounts = AccountStore(console_settings.accounts)

    async def record(body: dict[str, object]) -> None:
        await trail.append("admin", body)

    console = create_console(console_settings, accounts, {"gateway": gw, "audit": trail, "record": record,
                                                          "auth": identity})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Each part is closed if a later one fails to start: an invalid policy, or demo secrets
        # outside demo mode, stop start-up here without leaving the audit writer open.
        async with contextlib.AsyncExitStack() as stack:
            await trail.start()  # first: the policy loading below is itself recorded
            stack.push_async_callback(trail.close)
            stack.push_async_callback(gw.close)
            await gw.start()
            stack.push_async_callback(identity.close)
            await identity.start()
            await _check_limit_clients(gw, identity)
            stack.push_async_callback(accounts.close)
            stack.push_async_callback(app.state.rate_limiter.close)
            stack.push_async_callback(gw.claim_budgets.close)
            stack.push_async_callback(app.state.cutoffs.close)  # before the trail closes (LIFO)
            await accounts.init()
            if settings.demo:
                added = await accounts.ensure_demo()
                if added:
                    log.warning("demo console accounts added: %s (published demo passwords: demo mode only)",
                                ", ".join(added))
            policy = {"version": gw.store.snapshot.version, "digest": gw.store.snapshot.digest}
            for event in await start_events(getattr(trail, "store", None), gw.catalog, str(settings.path), policy):
                await trail.append("admin", event)
            yield

    app = Starlette(
        routes=[
            # Every method reaches the endpoint, so that refusals are GraphQL errors with a code.
            Route("/graphql", graphql_endpoint, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            *identity.routes(),
            *explorer_routes(),
            Mount("/console", app=console, name="console"),
        ],
        lifespan=lifespan,
        middleware=[Middleware(AccessLog)],
    )
    app.state.gateway = gw
    app.state.auth = identity
    app.state.audit = trail
    app.state.rate_limiter = open_rate_limiter(gw.limits.rate_store)
    # Verify budgets (gateway/verify_limits.py) in a store of their own, shared like the rate through
    # Redis; in memory, one that never drops a spent budget to make room (fail closed).
    gw.claim_budgets = open_rate_limiter(gw.limits.rate_store, prefix="hutong:verify:", fail_closed=True)
    app.state.auth_failures = MemoryRateLimiter()  # per caller address: bad tokens only (gateway/http.py)
    app.state.cutoffs = Cutoffs(trail.append)  # what those addresses send meanwhile: counted, recorded
    gw.audit_store = getattr(trail, "store", None)
    gw.audit_writer = trail
    gw.clients = getattr(identity, "store", None)

    async def policy_changed(event: str, details: dict[str, object]) -> None:
        await trail.append("admin", admin_event(event, str(details.get("source")), by="policy store",
                                                before=details.get("before"), after=details.get("after"),
                                                detail={k: v for k, v in details.items()
                                                        if k not in ("source", "before", "after")}))

    gw.store.on_change = policy_changed
    app.state.settings = settings
    return app
