"""The consent store on SQLite and PostgreSQL: one lookup for any number of subjects, status changes
and their history, signatures, and frequency limits that hold under concurrent requests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from catalog.loader import load_catalog
from gateway.audit.entry import SubjectHasher
from gateway.audit.keys import AuditKeys
from gateway.config import REPO_ROOT
from policies.consent.model import Kind, Status
from policies.consent.signing import ConsentSigner
from policies.consent.store import ConsentStateError, ConsentStore
from policies.consent.terms import GrantRequest, build_terms
from tests.conftest import throwaway_pg_database

CATALOG = load_catalog(REPO_ROOT / "demo" / "catalog")
HASH = SubjectHasher(b"consent-store-tests-key-0123456789")
NOW = datetime.now(UTC)
PEOPLE = ["990111198009303439", "11010519491231002X", "440524188001010014"]


@pytest.fixture(scope="module")
def pg_store_url() -> Iterator[str]:
    yield from throwaway_pg_database("hutong_consent")


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConsentStore]:
    url = (f"sqlite+aiosqlite:///{tmp_path}/consent.sqlite" if request.param == "sqlite"
           else request.getfixturevalue("pg_store_url"))
    keys = AuditKeys.load(tmp_path / "key.pem")
    s = ConsentStore(url, ConsentSigner(keys))
    await s.init()
    if request.param == "postgresql":  # the module's database is shared: start empty
        async with s.engine.begin() as conn:
            for table in ("consent_use", "consent_event", "consent_grant"):
                await conn.exec_driver_sql(f"DELETE FROM {table}")
    yield s
    await s.close()


def terms(subject: str | None, kind: Kind = Kind.CONSENT, **kw: Any) -> Any:
    base: dict[str, Any] = {"kind": kind, "subject": subject, "requester": "civil",
                            "purpose": "subsistence-allowance-review", "fields": ["hrss.pension.monthly_amount"],
                            "valid_until": NOW + timedelta(days=30), "recorded_by": "clerk"}
    if kind is Kind.CONSENT:
        base.update(max_uses=20, per_days=30, explicit_request=True, method="app")
    else:
        base.update(basis_type="statutory_duty", reference="art. 11", every_subject=subject is None)
    base.update(kw)
    return build_terms(GrantRequest(**base), CATALOG, HASH, NOW)


async def test_one_lookup_finds_each_subjects_grants_and_the_ones_for_everyone(store: ConsentStore) -> None:
    mine = [await store.add(terms(p), by="clerk") for p in PEOPLE]
    everyone = await store.add(terms(None, Kind.LEGAL_BASIS), by="legal")
    await store.add(terms(PEOPLE[0], requester="health", purpose="public-health-followup",
                          fields=["health.medical_insurance.status"], max_uses=1, per_days=365), by="clerk")
    # Thousands of pseudonyms travel as one parameter: the statement does not grow with them.
    many = {HASH(f"{i:018d}") for i in range(5000)} | {HASH(PEOPLE[0]), HASH(PEOPLE[2])}
    found = await store.candidates("civil", "subsistence-allowance-review", many, NOW)
    assert {g.id for g, _ in found} == {mine[0].id, mine[2].id, everyone.id}
    assert all(store.signer.verify(g) for g, _ in found)
    assert all(uses == 0 for _, uses in found)


async def test_uses_are_counted_in_their_window(store: ConsentStore) -> None:
    grant = await store.add(terms(PEOPLE[0], max_uses=2, per_days=7), by="clerk")
    assert await store.record_uses([grant], "r1", NOW - timedelta(days=10)) == set()  # outside the window
    assert await store.record_uses([grant], "r2", NOW - timedelta(days=1)) == set()
    [(g, uses)] = await store.candidates("civil", "subsistence-allowance-review", {HASH(PEOPLE[0])}, NOW)
    assert uses == 1 and g.use_count == 2
    assert await store.record_uses([grant], "r3", NOW) == set()
    assert await store.record_uses([grant], "r4", NOW) == {grant.id}  # the limit is reached: not counted
    assert [r for _, r in await store.uses(grant.id)] == ["r3", "r2", "r1"]


async def test_concurrent_requests_cannot_overrun_a_frequency_limit(store: ConsentStore) -> None:
    grant = await store.add(terms(PEOPLE[1], max_uses=5, per_days=30), by="clerk")
    results = await asyncio.gather(*(store.record_uses([grant], f"r{i}", NOW) for i in range(20)))
    assert sum(1 for refused in results if not refused) == 5
    stored = await store.get(grant.id)
    assert stored is not None and stored.use_count == 5


async def test_status_changes_keep_a_signed_history(store: ConsentStore) -> None:
    grant = await store.add(terms(PEOPLE[0]), by="clerk")
    _, paused = await store.change(grant.id, "pause", by="citizen", reason="travelling", now=NOW)
    assert paused.status is Status.PAUSED and store.signer.verify(paused)
    with pytest.raises(ConsentStateError, match="only ACTIVE can be paused"):
        await store.change(grant.id, "pause", by="citizen", reason="again", now=NOW)
    await store.change(grant.id, "resume", by="citizen", reason="back", now=NOW)
    await store.change(grant.id, "revoke", by="citizen", reason="no longer", now=NOW)
    with pytest.raises(ConsentStateError, match="revocation is final"):
        await store.change(grant.id, "resume", by="citizen", reason="oops", now=NOW)
    with pytest.raises(ConsentStateError, match="give a reason"):
        await store.change(grant.id, "revoke", by="citizen", reason=" ", now=NOW)
    with pytest.raises(ConsentStateError, match="no consent or legal basis"):
        await store.change("cst-nope", "revoke", by="citizen", reason="x", now=NOW)
    stored = await store.get(grant.id)
    assert stored is not None and store.signer.verify(stored)
    assert [(e.status, e.by, e.reason) for e in stored.history] == [
        (Status.ACTIVE, "clerk", "recorded"), (Status.PAUSED, "citizen", "travelling"),
        (Status.ACTIVE, "citizen", "back"), (Status.REVOKED, "citizen", "no longer")]


async def test_an_expired_consent_can_be_revoked_but_not_paused(store: ConsentStore) -> None:
    grant = await store.add(terms(PEOPLE[0]), by="clerk")
    later = NOW + timedelta(days=31)
    assert (await store.get(grant.id)).effective_status(later) is Status.EXPIRED  # type: ignore[union-attr]
    with pytest.raises(ConsentStateError, match="expired on"):
        await store.change(grant.id, "pause", by="citizen", reason="x", now=later)
    _, after = await store.change(grant.id, "revoke", by="citizen", reason="tidy up", now=later)
    assert after.status is Status.REVOKED


async def test_a_failing_audit_undoes_the_change(store: ConsentStore) -> None:
    async def audit_down(*_: Any) -> None:
        raise RuntimeError("audit log unavailable")

    with pytest.raises(RuntimeError):
        await store.add(terms(PEOPLE[0]), by="clerk", then=audit_down)
    assert await store.search() == []
    grant = await store.add(terms(PEOPLE[0]), by="clerk")
    with pytest.raises(RuntimeError):
        await store.change(grant.id, "revoke", by="citizen", reason="x", now=NOW, then=audit_down)
    stored = await store.get(grant.id)
    assert stored is not None and stored.status is Status.ACTIVE and len(stored.history) == 1


async def test_search_pages_newest_first(store: ConsentStore) -> None:
    ids = []
    for i in range(5):
        t = terms(PEOPLE[i % 3])
        t = type(t)(**{**{f: getattr(t, f) for f in t.__dataclass_fields__}, "created_at": NOW + timedelta(seconds=i)})
        ids.append((await store.add(t, by="clerk")).id)
    first = await store.search(limit=2)
    second = await store.search(limit=2, after=first[-1].id)
    third = await store.search(limit=2, after=second[-1].id)
    assert [g.id for g in first + second + third] == ids[::-1]
    assert [g.id for g in await store.search(subject_hash=HASH(PEOPLE[0]))] == [ids[3], ids[0]]


async def test_an_older_signed_state_put_back_is_not_honoured_and_verify_finds_it(store: ConsentStore) -> None:
    from gateway.consent_verify import verify_consents

    grant = await store.add(terms(PEOPLE[0]), by="clerk")
    await store.change(grant.id, "revoke", by="citizen", reason="no", now=NOW)
    assert await verify_consents(store, None) == (1, [])
    # Un-revoke by replaying the first, genuinely signed, state into the row.
    async with store.engine.begin() as conn:
        await conn.execute(sa.text(
            "UPDATE consent_grant SET status = 'ACTIVE', status_seq = 1, status_at = e.at, status_by = e.by, "
            "status_reason = e.reason, prev_signature = '', state_signature = e.signature "
            "FROM (SELECT at, by, reason, signature FROM consent_event WHERE grant_id = :i AND seq = 1) AS e "
            "WHERE id = :i"), {"i": grant.id})
    g = await store.get(grant.id)
    assert g is not None and store.signer.verify(g)  # the replayed state's own signature is genuine ...
    # ... but it is not the last of the grant's history: the lookup leaves it out.
    assert await store.candidates("civil", "subsistence-allowance-review", {HASH(PEOPLE[0])}, NOW) == []
    _, problems = await verify_consents(store, None)
    assert any("not the last of its history" in p for p in problems), problems
    # Cutting the history too defeats the lookup: only the audit log can tell (hutong consent verify, with
    # the audit log, in tests/test_consent_http.py).
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM consent_event WHERE grant_id = :i AND seq > 1"), {"i": grant.id})
    assert len(await store.candidates("civil", "subsistence-allowance-review", {HASH(PEOPLE[0])}, NOW)) == 1


async def test_deleted_use_rows_are_found(store: ConsentStore) -> None:
    from gateway.consent_verify import verify_consents

    grant = await store.add(terms(PEOPLE[1], max_uses=2, per_days=30), by="clerk")
    await store.record_uses([grant], "r1", NOW)
    await store.record_uses([grant], "r2", NOW)
    async with store.engine.begin() as conn:
        await conn.execute(sa.text("DELETE FROM consent_use WHERE grant_id = :i"), {"i": grant.id})
    _, problems = await verify_consents(store, None)
    assert problems == [f"consent {grant.id}: 0 use rows but a use count of 2: uses deleted"]


async def test_a_paused_consent_past_its_expiry_is_expired(store: ConsentStore) -> None:
    grant = await store.add(terms(PEOPLE[2]), by="clerk")
    _, paused = await store.change(grant.id, "pause", by="citizen", reason="away", now=NOW)
    later = NOW + timedelta(days=31)
    assert paused.effective_status(later) is Status.EXPIRED
    with pytest.raises(ConsentStateError, match="expired on"):
        await store.change(grant.id, "resume", by="citizen", reason="back", now=later)
