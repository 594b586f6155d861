"""The client store on SQLite (a file in tmp_path) and PostgreSQL, secret hashing, the demo
clients and the refusal to start with their secrets outside demo mode."""

from __future__ import annotations

import asyncio
import stat
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey

from gateway.auth.bearer import ClientStatusCache
from gateway.auth.client_secrets import hash_secret, new_secret, verify_secret
from gateway.auth.clients import (
    ClientExists,
    ClientStore,
    UnknownClient,
    check_department,
    clients_table,
    public_jwk,
)
from gateway.auth.demo import DEMO_CLIENTS, DemoSecretsError, ensure_demo_clients, refuse_demo_secrets
from gateway.auth.errors import AuthError
from gateway.auth.service import AuthService
from gateway.config import ConfigError
from tests.conftest import throwaway_pg_database
from tests.test_auth_support import auth_settings, drop_store_tables


@pytest.fixture(scope="module")
def pg_auth_url() -> Iterator[str]:
    yield from throwaway_pg_database()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ClientStore]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_auth_url")
    else:
        url = f"sqlite+aiosqlite:///{tmp_path / 'run' / 'clients.sqlite'}"
    s = ClientStore(url)
    await s.init()
    await s.init()  # idempotent: every worker calls it at start-up
    yield s
    await s.close()
    if request.param == "postgresql":
        await drop_store_tables(url)


# --- secrets ------------------------------------------------------------------------------------


def test_secrets_are_salted_scrypt_hashes() -> None:
    secret = new_secret()
    assert len(secret) >= 43 and secret.replace("-", "").replace("_", "").isalnum()
    first, second = hash_secret(secret), hash_secret(secret)
    assert first != second, "a salt per secret"
    assert first.startswith("scrypt$16384$8$1$") and secret not in first
    assert verify_secret(secret, first) and verify_secret(secret, second)
    assert not verify_secret(secret + "x", first)
    assert not verify_secret(secret, None)
    assert not verify_secret(secret, "plain-text")
    started = time.perf_counter()
    assert not verify_secret(secret, "scrypt$1048576$32$16$AAAA$AAAA")  # a tampered row asking for 4 GiB
    assert time.perf_counter() - started < 1


# --- the store ----------------------------------------------------------------------------------


async def test_add_get_list(store: ClientStore) -> None:
    secret = new_secret()
    added = await store.add("health-app", "health", ["clinician", "clinician", "nurse"], secret=secret)
    assert added.roles == ("clinician", "nurse") and added.auth_methods == ("client_secret_basic",
                                                                            "client_secret_post")
    got = await store.get("health-app")
    assert got is not None and got.department == "health" and got.roles == ("clinician", "nurse")
    assert got.created_at is not None and got.created_at.tzinfo is not None and not got.disabled
    assert verify_secret(secret, got.secret_hash)
    assert await store.get("nobody") is None
    await store.add("auditor", "audit", ["auditor"], secret=new_secret())
    assert [c.client_id for c in await store.list()] == ["auditor", "health-app"]
    with pytest.raises(ClientExists, match="already registered"):
        await store.add("health-app", "health", [], secret="x")


async def test_secrets_are_never_stored_in_clear(store: ClientStore) -> None:
    secret = "a-secret-nobody-should-read"
    await store.add("health-app", "health", ["clinician"], secret=secret)
    async with store.engine.connect() as conn:
        rows = (await conn.execute(sa.select(clients_table))).mappings().all()
    dumped = repr([dict(r) for r in rows])
    assert secret not in dumped
    assert rows[0]["secret_hash"].startswith("scrypt$")
    assert "a-secret" not in repr(await store.get("health-app")), "the hash is kept out of repr()"


async def test_rotate_disable_and_set_key(store: ClientStore) -> None:
    old = new_secret()
    await store.add("market-app", "mr", ["market-inspector"], secret=old)
    new = new_secret()
    rotated = await store.rotate_secret("market-app", new)
    assert rotated.rotated_at is not None
    assert verify_secret(new, rotated.secret_hash) and not verify_secret(old, rotated.secret_hash)

    jwk = public_jwk(ECKey.generate_key("P-256", private=True).as_dict(private=False))
    keyed = await store.set_public_key("market-app", jwk)
    assert keyed.public_jwk == jwk and "private_key_jwt" in keyed.auth_methods

    disabled = await store.disable("market-app")
    assert disabled.disabled and disabled.disabled_at is not None
    assert (await store.disable("market-app")).disabled_at == disabled.disabled_at, "disabling twice is harmless"
    for action in (store.rotate_secret("ghost", "s"), store.disable("ghost"), store.set_public_key("ghost", jwk)):
        with pytest.raises(UnknownClient, match="hutong client list"):
            await action


async def test_field_checks(store: ClientStore) -> None:
    for client_id, department, roles, match in (
            ("bad id!", "civil", [], "client id"),
            ("x" * 65, "civil", [], "client id"),
            ("ok", "Civil Affairs", [], "department"),
            ("ok", "civil", ["bad role"], "role"),
            ("ok", "civil", ["Street-Office"], "role"),
            ("ok", "civil", ["role:x"], "role"),
            ("ok", "civil", ["a.b"], "role"),
            ("ok", "civil", ["-x"], "role"),
    ):
        with pytest.raises(ValueError, match=match):
            await store.add(client_id, department, roles, secret="s")
    with pytest.raises(ValueError, match="secret or a public key"):
        await store.add("ok", "civil", [])


def test_departments_are_checked_against_the_known_ones() -> None:
    assert check_department("civil", ["civil", "health"]) == "civil"
    with pytest.raises(ValueError, match="unknown department 'nosuchdept'; known: civil, health"):
        check_department("nosuchdept", ["health", "civil"])


# --- attributes ---------------------------------------------------------------------------------


async def test_attributes_are_stored_set_and_unset(store: ClientStore) -> None:
    added = await store.add("street-office-app", "civil", ["street-office"], secret=new_secret(),
                            attributes={"district": "北苑区"})
    assert dict(added.attributes) == {"district": "北苑区"}
    assert dict((await store.get("street-office-app")).attributes) == {"district": "北苑区"}  # type: ignore[union-attr]
    await store.add("health-app", "health", ["clinician"], secret=new_secret())
    assert dict((await store.get("health-app")).attributes) == {}  # type: ignore[union-attr]
    assert {c.client_id: dict(c.attributes) for c in await store.list()} == {
        "health-app": {}, "street-office-app": {"district": "北苑区"}}

    changed = await store.set_attributes("street-office-app", {"district": "南湖区", "street": "南湖街道"})
    assert dict(changed.attributes) == {"district": "南湖区", "street": "南湖街道"}
    changed = await store.set_attributes("street-office-app", unset=["street"])
    assert dict(changed.attributes) == {"district": "南湖区"}
    assert (await store.get("street-office-app")).secret_hash == added.secret_hash  # type: ignore[union-attr]

    with pytest.raises(ValueError, match="has no attribute street; it has: district"):
        await store.set_attributes("street-office-app", unset=["street"])
    with pytest.raises(ValueError, match="both set and unset"):
        await store.set_attributes("street-office-app", {"district": "x"}, unset=["district"])
    with pytest.raises(UnknownClient):
        await store.set_attributes("ghost", {"district": "x"})
    for bad, match in (({"District": "x"}, "attribute name"), ({"1st": "x"}, "attribute name"),
                       ({"dis-trict": "x"}, "attribute name"), ({"district": ""}, "non-empty"),
                       ({"district": "x" * 201}, "201 characters"), ({"district": "a\nb"}, "control character"),
                       ({"district": 5}, "non-empty string"),
                       ({f"a{i}": "x" for i in range(33)}, "at most 32"),
                       ({f"a{i}": "北" * 200 for i in range(5)}, "bytes in an access token")):
        with pytest.raises(ValueError, match=match):
            await store.set_attributes("street-office-app", bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match=match):
            await store.add("x-app", "civil", [], secret="s", attributes=bad)  # type: ignore[arg-type]
    assert dict((await store.get("street-office-app")).attributes) == {"district": "南湖区"}  # type: ignore[union-attr]
    assert await store.get("x-app") is None
    assert dict((await store.set_attributes("street-office-app", {"district": "x" * 200})).attributes) == {
        "district": "x" * 200}


async def test_a_store_made_before_attributes_is_upgraded_in_place(store: ClientStore) -> None:
    """The store as the previous release created it (no attributes column), with a client in it:
    init() adds the column and the client keeps everything, including its secret."""
    url = store.url
    await store.close()
    await drop_store_tables(url)
    old = sa.MetaData()  # hutong_clients as the release before attributes defined it
    old_clients = sa.Table(
        "hutong_clients", old,
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("department", sa.String(32), nullable=False),
        sa.Column("roles", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.String(255)),
        sa.Column("public_jwk", sa.Text),
        sa.Column("disabled", sa.Boolean, nullable=False, default=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.Column("disabled_at", sa.DateTime(timezone=True)),
    )
    secret = new_secret()
    engine = store.engine
    async with engine.begin() as conn:
        await conn.run_sync(old.create_all)
        await conn.execute(old_clients.insert().values(
            client_id="street-office-app", department="civil", roles='["street-office"]',
            secret_hash=hash_secret(secret), disabled=False, created_at=datetime.now(UTC)))
    upgraded = ClientStore(url)
    try:
        await asyncio.gather(upgraded.init(), upgraded.init())  # workers racing at start-up
        client = await upgraded.get("street-office-app")
        assert client is not None and client.roles == ("street-office",) and client.department == "civil"
        assert verify_secret(secret, client.secret_hash) and dict(client.attributes) == {}
        changed = await upgraded.set_attributes("street-office-app", {"district": "北苑区"})
        assert dict(changed.attributes) == {"district": "北苑区"}
        await upgraded.init()  # a later start changes nothing
        assert dict((await upgraded.get("street-office-app")).attributes) == {"district": "北苑区"}  # type: ignore[union-attr]
    finally:
        await upgraded.close()


async def test_assertion_ids_are_used_once_and_pruned(store: ClientStore) -> None:
    now = int(time.time())
    assert await store.use_assertion("market-app", "j1", now + 60, now)
    assert not await store.use_assertion("market-app", "j1", now + 60, now)
    assert await store.use_assertion("health-app", "j1", now + 60, now), "jti is per client"
    # Kept past its expiry for as long as another node's clock may be behind (KEEP_PAST_EXPIRY) ...
    assert not await store.use_assertion("market-app", "j1", now + 500, now + 100)
    # ... then pruned; by then every node refuses the assertion itself for its exp.
    assert await store.use_assertion("market-app", "j1", now + 500, now + 121)


@pytest.mark.filterwarnings("ignore:Key size should be")
def test_public_keys_only() -> None:
    ec = ECKey.generate_key("P-256", private=True)
    jwk = public_jwk(ec.as_pem(private=False))
    assert jwk["kty"] == "EC" and "d" not in jwk and jwk["kid"] == ec.thumbprint()
    # No "alg": what a key may sign with follows from its type (an RSA key signs RS256 and PS256).
    assert "alg" not in jwk and "alg" not in public_jwk(RSAKey.generate_key(2048, private=True).as_pem(private=False))
    assert public_jwk(OKPKey.generate_key("Ed25519").as_dict(private=False))["crv"] == "Ed25519"
    assert public_jwk(ECKey.generate_key("P-521", private=True).as_pem(private=False))["crv"] == "P-521"
    # Keys no assertion algorithm fits are refused at registration, not registered to fail later.
    for key in (ECKey.generate_key("secp256k1", private=True), OKPKey.generate_key("Ed448", private=True)):
        with pytest.raises(ValueError, match=r"unsupported key type.*P-256"):
            public_jwk(key.as_dict(private=False))
    with pytest.raises(ValueError, match="private key"):
        public_jwk(ec.as_pem(private=True))
    with pytest.raises(ValueError, match="too weak"):
        public_jwk(RSAKey.generate_key(1024, private=True, auto_kid=False).as_pem(private=False))
    with pytest.raises(ValueError, match="not a public key"):
        public_jwk(OctKey.generate_key(256).as_dict(private=True))


async def test_sqlite_store_file_is_owner_only(tmp_path: Path) -> None:
    s = ClientStore(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'clients.sqlite'}")
    await s.init()
    await s.close()
    assert stat.S_IMODE((tmp_path / "new" / "clients.sqlite").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700


# --- revocation cache ---------------------------------------------------------------------------


class CountingStore:
    def __init__(self, fail: bool = False) -> None:
        self.calls, self.fail = 0, fail

    async def get(self, client_id: str) -> None:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise sa.exc.OperationalError("SELECT", {}, OSError("connection refused"))


async def test_status_cache_shares_one_query_and_fails_closed() -> None:
    now = [0.0]
    backing = CountingStore()
    cache = ClientStatusCache(backing, ttl=5, clock=lambda: now[0])  # type: ignore[arg-type]
    await asyncio.gather(*(cache.get("a") for _ in range(20)))
    assert backing.calls == 1, "concurrent misses share one query"
    await cache.get("a")
    assert backing.calls == 1
    now[0] = 6
    await cache.get("a")
    assert backing.calls == 2

    broken = ClientStatusCache(CountingStore(fail=True))  # type: ignore[arg-type]
    with pytest.raises(AuthError) as exc:
        await broken.get("a")
    assert exc.value.status == 503 and exc.value.reason.value == "unavailable"


# --- demo clients -------------------------------------------------------------------------------


async def test_demo_clients_and_the_refusal_outside_demo_mode(store: ClientStore) -> None:
    assert sorted(await ensure_demo_clients(store)) == sorted(c.client_id for c in DEMO_CLIENTS)
    assert await ensure_demo_clients(store) == [], "registered once"
    by_id = {c.client_id: c for c in await store.list()}
    assert dict(by_id["street-office-app"].attributes) == {"district": "北苑区"}
    assert all(not c.attributes for c in by_id.values() if c.client_id != "street-office-app")
    assert (by_id["street-office-app"].department, by_id["street-office-app"].roles) == ("civil", ("street-office",))
    assert (by_id["health-app"].department, by_id["health-app"].roles) == ("health", ("clinician",))
    assert (by_id["market-app"].department, by_id["market-app"].roles) == ("mr", ("market-inspector",))
    assert (by_id["citizen-portal"].department, by_id["citizen-portal"].roles) == ("service", ("citizen-portal",
                                                                                               "consent-recorder"))
    assert (by_id["legal-office"].department, by_id["legal-office"].roles) == ("civil", ("legal-basis-recorder",))
    assert (by_id["auditor"].department, by_id["auditor"].roles) == ("audit", ("auditor",))
    assert (by_id["policy-admin"].department, by_id["policy-admin"].roles) == ("admin", ("policy-admin",))
    for demo in DEMO_CLIENTS:
        assert verify_secret(demo.secret, by_id[demo.client_id].secret_hash)

    await refuse_demo_secrets(store, demo=True)
    with pytest.raises(DemoSecretsError) as exc:
        await refuse_demo_secrets(store, demo=False)
    assert isinstance(exc.value, ConfigError)
    assert "street-office-app" in str(exc.value) and "rotate-secret" in str(exc.value)
    assert "demo-secret" not in str(exc.value), "the message names clients, never secrets"


async def test_a_demo_client_registered_before_attributes_gets_them(tmp_path: Path) -> None:
    store = ClientStore(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    await store.init()
    try:
        await store.add("street-office-app", "civil", ["street-office"], secret="street-office-demo-secret")
        assert "street-office-app" not in await ensure_demo_clients(store)
        assert dict((await store.get("street-office-app")).attributes) == {"district": "北苑区"}  # type: ignore[union-attr]
        await store.set_attributes("street-office-app", {"district": "南湖区"})
        await ensure_demo_clients(store)
        assert dict((await store.get("street-office-app")).attributes) == {"district": "南湖区"}, \
            "attributes an operator set are left alone"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_a_demo_secret_under_another_client_id_is_found(tmp_path: Path) -> None:
    store = ClientStore(f"sqlite+aiosqlite:///{tmp_path / 'c.sqlite'}")
    await store.init()
    try:
        await store.add("hospital-prod", "health", ["clinician"], secret="health-demo-secret")
        await store.add("fine-app", "health", ["clinician"], secret=new_secret())
        with pytest.raises(DemoSecretsError, match="hospital-prod") as exc:
            await refuse_demo_secrets(store, demo=False)
        assert "fine-app" not in str(exc.value)
        await store.rotate_secret("hospital-prod", new_secret())
        await refuse_demo_secrets(store, demo=False)
    finally:
        await store.close()


async def test_the_gateway_refuses_to_start_with_demo_secrets_outside_demo_mode(tmp_path: Path) -> None:
    demo = AuthService(auth_settings(tmp_path, demo=True))
    await demo.start()  # registers the demo clients
    await demo.close()
    production = AuthService(auth_settings(tmp_path, demo=False))
    try:
        with pytest.raises(DemoSecretsError, match="demo mode is off"):
            await production.start()
    finally:
        await production.close()


def test_demo_secrets_are_what_the_docs_say() -> None:
    docs = (Path(__file__).resolve().parent.parent / "docs" / "identity.md").read_text(encoding="utf-8")
    for demo in DEMO_CLIENTS:
        assert f"`{demo.client_id}`" in docs and f"`{demo.secret}`" in docs, demo.client_id
