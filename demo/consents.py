"""Seed the demo's consent store: some residents have consented, one has changed their mind.

For the street office's subsistence-allowance review, pension amounts (conditional) flow only
with the person's consent. The showcase household shows both outcomes: the retired father
signed a paper consent at the counter, so his pension is returned; the spouse consented in the
app and later revoked it, so hers is withheld with CONSENT_REVOKED. About a third of the other
pension holders have consented too. Every grant is signed and recorded in the audit log like
any other, by the demo's own counter clerk.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from catalog.model import Catalog
from gateway.audit.admin import admin_event
from gateway.audit.entry import SubjectHasher
from gateway.audit.settings import AuditSettings
from gateway.audit.writer import AuditWriter
from gateway.config import Settings
from gateway.consent_admin import ConsentAdmin, open_store
from policies.consent.model import Kind
from policies.consent.terms import GrantRequest
from policies.settings import PolicySettings

__all__ = ["seed_consents"]

PURPOSE = "subsistence-allowance-review"
FIELDS = ["hrss.pension.monthly_amount"]
SHARE = 3  # one pension holder in SHARE has consented


def _consent(subject: str, method: str, now: datetime) -> GrantRequest:
    return GrantRequest(kind=Kind.CONSENT, subject=subject, requester="civil", purpose=PURPOSE, fields=FIELDS,
                        valid_from=now, valid_until=now + timedelta(days=365), max_uses=20, per_days=30,
                        explicit_request=True, method=method, recorded_by="demo-counter-clerk",
                        recorded_via="demo-seed")


def _read(data_dir: Path) -> tuple[dict[str, str], list[str]]:
    """The showcase household's members by relation, and every pension holder, from the built sources."""
    showcase = json.loads((data_dir / "showcase.json").read_text(encoding="utf-8"))
    with sqlite3.connect(f"file:{data_dir / 'psb.sqlite'}?mode=ro", uri=True) as psb:
        members = dict(psb.execute("SELECT relation, id_number FROM resident WHERE household_id = ?",
                                   (showcase["household_id"],)).fetchall())
    with sqlite3.connect(f"file:{data_dir / 'hrss.sqlite'}?mode=ro", uri=True) as hrss:
        pensioned = [r[0] for r in hrss.execute("SELECT DISTINCT id_number FROM pension ORDER BY id_number")]
    return members, pensioned


async def seed_consents(settings: Settings, catalog: Catalog, data_dir: Path) -> dict[str, int | str]:
    """Record the demo consents unless the store already holds some (a rebuilt city keeps what
    people granted and revoked since). Returns what was done."""
    store = open_store(settings)
    await store.init()
    writer = AuditWriter.from_settings(AuditSettings.from_settings(settings))
    await writer.start()
    try:
        if await store.search(limit=1):
            return {"kept": "the consent store already holds consents"}

        async def record(body: dict[str, object]) -> None:
            await writer.append("admin", body)

        admin = ConsentAdmin(catalog, store, SubjectHasher(PolicySettings.from_settings(settings).mask_key), record)
        now = datetime.now(UTC)
        members, holders = _read(data_dir)
        pensioned = set(holders)

        granted = 0
        if members.get("parent") in pensioned:
            await admin.grant(_consent(members["parent"], "paper", now))
            granted += 1
        if members.get("spouse") in pensioned:
            grant = await admin.grant(_consent(members["spouse"], "app", now - timedelta(days=20)), now=now
                                      - timedelta(days=20))
            await admin.change(grant.id, "revoke", by="citizen (via the portal)", via="demo-seed",
                               reason="I no longer agree to share my pension details", now=now - timedelta(days=3))
            granted += 1
        others = sorted(pensioned - set(members.values()))
        for subject in others:
            # A stable third of the others, whatever the order the city was generated in.
            if int(hashlib.sha256(subject.encode()).hexdigest(), 16) % SHARE == 0:
                await admin.grant(_consent(subject, "app", now))
                granted += 1
        where = sa.engine.make_url(store.url).render_as_string(hide_password=True)
        await writer.append("admin", admin_event("demo.consents_seeded", where, by="demo-seed",
                                                 after={"consents": granted}))
        return {"granted": granted}
    finally:
        await writer.close()
        await store.close()
