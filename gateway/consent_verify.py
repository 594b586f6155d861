"""``hutong consent verify``: is the consent store what the gateway wrote, and what the audit log says?

The gateway ignores, at every request, a grant whose terms or current state fail their
signature, or whose state is not the last of its history. What it cannot see alone is a
grant rolled back whole: later history rows deleted and an older signed state put back (an
un-revoked consent), or use rows deleted to reset a frequency limit. The audit log, hash-
chained and checkpointed, is the independent witness: every change is an admin event there,
and every request that used a grant names it. This check compares the two.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from gateway.audit.store import AuditStore
from policies.consent.model import Kind
from policies.consent.store import ConsentStore

__all__ = ["verify_consents"]


async def verify_consents(store: ConsentStore, audit: AuditStore | None) -> tuple[int, list[str]]:
    """(grants checked, problems): each problem names the grant and what is wrong."""
    problems: list[str] = []
    grants = []
    after: str | None = None
    while True:
        page = await store.search(limit=500, after=after)
        grants += page
        if len(page) < 500:
            break
        after = page[-1].id
    uses = await store.use_counts()
    changes: dict[str, list[dict[str, Any]]] = {}
    used: Counter[str] = Counter()
    if audit is not None:
        async for rec in audit.bodies({"kind": "admin"}):
            body = rec["body"]
            if str(body.get("event", "")).startswith(("consent.", "legal_basis.")):
                changes.setdefault(str(body.get("target")), []).append(body)
        async for rec in audit.bodies({"kind": "request"}):
            body = rec["body"]
            used.update(body.get("consents") or [])
            used.update(g["id"] for g in body.get("legal_basis_grants") or [])
    for listed in grants:
        g = await store.get(listed.id)  # with its history
        if g is None:
            continue
        what = f"{'consent' if g.terms.kind is Kind.CONSENT else 'legal basis'} {g.id}"
        if not store.signer.verify(g):
            problems.append(f"{what}: its terms or current state do not match their signature (edited outside hutong)")
        prev = ""
        for i, e in enumerate(g.history, start=1):
            if e.seq != i:
                problems.append(f"{what}: history entry {i} is missing (found seq {e.seq}): history cut")
                break
            if not store.signer.verify_event(g.key_id, g.id, e, prev):
                problems.append(f"{what}: history entry {e.seq} does not verify (edited, or not chained to the one "
                                "before)")
                break
            prev = e.signature
        if g.history and (g.history[-1].seq != g.status_seq or g.history[-1].signature != g.state_signature):
            problems.append(f"{what}: its current state (#{g.status_seq}) is not the last of its history "
                            f"(#{g.history[-1].seq}): rolled back")
        if uses.get(g.id, 0) != g.use_count:
            problems.append(f"{what}: {uses.get(g.id, 0)} use rows but a use count of {g.use_count}: uses deleted")
        if audit is None:
            continue
        events = changes.get(g.id, [])
        if len(events) != len(g.history):
            problems.append(f"{what}: {len(g.history)} changes in the store but {len(events)} in the audit log")
        elif events and (events[-1].get("after") or {}).get("status") not in (g.status.value, "EXPIRED"):
            problems.append(f"{what}: the audit log's last change left it {events[-1]['after'].get('status')}, the "
                            f"store says {g.status.value}: rolled back")
        if used.get(g.id, 0) != g.use_count:
            problems.append(f"{what}: the audit log records {used.get(g.id, 0)} requests using it, the store "
                            f"{g.use_count}")
    return len(grants), problems
