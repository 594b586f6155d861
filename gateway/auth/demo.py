"""The demo's clients: fixed, documented credentials, accepted only in demo mode.

Their secrets are public (README, docs/identity.md), so a gateway outside demo mode refuses to
start while any registered client's secret is one of them: ``refuse_demo_secrets``.

The street office carries the attribute ``district = 北苑区``: row rules limit it to the
residents of its own district through that attribute.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.auth.client_secrets import verify_secret
from gateway.auth.clients import ClientExists, ClientStore
from gateway.config import ConfigError

__all__ = ["DEMO_CLIENTS", "DEMO_SECRETS", "DemoClient", "DemoSecretsError", "ensure_demo_clients",
           "refuse_demo_secrets"]


@dataclass(frozen=True)
class DemoClient:
    client_id: str
    secret: str
    department: str
    roles: tuple[str, ...]
    purpose: str
    attributes: Mapping[str, str] = field(default_factory=dict)


DEMO_CLIENTS = (
    DemoClient("street-office-app", "street-office-demo-secret", "civil", ("street-office",),
               "a street office (街道办) checking subsistence-allowance claims", {"district": "北苑区"}),
    DemoClient("health-app", "health-demo-secret", "health", ("clinician",), "a hospital's clinical system"),
    DemoClient("market-app", "market-demo-secret", "mr", ("market-inspector",), "Market Regulation inspectors"),
    DemoClient("citizen-portal", "citizen-portal-demo-secret", "service", ("citizen-portal", "consent-recorder"),
               "the citizens' self-service portal, where citizens grant and revoke consent"),
    DemoClient("service-counter", "service-counter-demo-secret", "service", ("consent-recorder",),
               "the Government Service Centre's counters (政务服务中心), recording consents on paper forms"),
    DemoClient("investigation-app", "investigation-demo-secret", "civil", ("investigator",),
               "Civil Affairs' benefit-fraud investigators"),
    DemoClient("legal-office", "legal-office-demo-secret", "civil", ("legal-basis-recorder",),
               "the legal affairs office that records court orders and statutory duties"),
    DemoClient("auditor", "auditor-demo-secret", "audit", ("auditor",), "the audit office"),
    DemoClient("policy-admin", "policy-admin-demo-secret", "admin", ("policy-admin",),
               "the data-sharing office that manages policies"),
    DemoClient("civil-data-office", "civil-data-office-demo-secret", "civil", ("data-owner", "share-requester"),
               "Civil Affairs' data office: asks other departments for data, answers requests for its own"),
    DemoClient("hrss-data-office", "hrss-data-office-demo-secret", "hrss", ("data-owner", "share-requester"),
               "HRSS's data office: owns employment, pension and unemployment data"),
)
DEMO_SECRETS = frozenset(c.secret for c in DEMO_CLIENTS)


class DemoSecretsError(ConfigError):
    pass


async def ensure_demo_clients(store: ClientStore) -> list[str]:
    """Register the demo clients that are missing; returns the ids added. Existing ones are left
    as they are (an operator may have rotated or disabled them), except that a demo client
    registered before clients had attributes (it has none) gets the demo's attributes."""
    added = []
    for demo in DEMO_CLIENTS:
        existing = await store.get(demo.client_id)
        if existing is None:
            try:
                await store.add(demo.client_id, demo.department, demo.roles, secret=demo.secret,
                                attributes=demo.attributes)
                added.append(demo.client_id)
            except ClientExists:  # another worker registered it meanwhile
                pass
        elif demo.attributes and not existing.attributes:
            await store.set_attributes(demo.client_id, demo.attributes)
    return added


async def refuse_demo_secrets(store: ClientStore, demo: bool) -> None:
    """Outside demo mode, raise DemoSecretsError if any client's secret is a documented demo secret.

    Every client's hash is checked against every demo secret: clients × 6 scrypt runs, spread
    over the CPUs (hashlib releases the GIL), so a few seconds at start-up for dozens of clients.
    """
    if demo:
        return
    clients = [c for c in await store.list() if c.secret_hash]
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        checks = [(c.client_id, loop.run_in_executor(pool, verify_secret, s, c.secret_hash))
                  for c in clients for s in sorted(DEMO_SECRETS)]
        found = sorted({cid for cid, fut in checks if await fut})
    if found:
        raise DemoSecretsError(
            f"client(s) {', '.join(found)} use a documented demo secret and demo mode is off: anyone can "
            "read those secrets. Run `hutong client rotate-secret CLIENT_ID` (or `hutong client disable`) "
            "for each, or set demo = true in [gateway] for a demo")
