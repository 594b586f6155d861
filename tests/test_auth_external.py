"""Trusting an external identity provider: a fake IdP serves its JWKS on a real local port;
its tokens are verified with those keys and their claims mapped by configuration."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from demo.server_thread import ServerThread, free_port
from gateway.auth.settings import parse_auth
from tests.test_auth_support import Harness, b64

IDP = "https://idp.city.test/realms/gov"


class FakeIdP:
    """Publishes whatever keys the test gives it, and counts the fetches."""

    def __init__(self) -> None:
        self.rsa = RSAKey.generate_key(2048, private=True)
        self.keys: list[dict[str, Any]] = [{**self.rsa.as_dict(private=False), "kid": "idp-1", "use": "sig"}]
        self.fetches = 0

        async def jwks(_: Request) -> JSONResponse:
            self.fetches += 1
            return JSONResponse({"keys": self.keys})

        self.app = Starlette(routes=[Route("/certs", jwks)])

    def token(self, key: Any = None, kid: str = "idp-1", alg: str = "RS256", typ: str | None = "at+jwt",
              **claims: Any) -> str:
        import time

        now = int(time.time())
        body = {"iss": IDP, "aud": "hutong", "sub": "service-account-1", "azp": "hospital-his",
                "org": {"department": "/gov/health"}, "realm_access": {"roles": ["doctor", "offline_access"]},
                "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex, **claims}
        header = {"alg": alg, "kid": kid, **({"typ": typ} if typ else {})}
        return jwt.encode(header, {k: v for k, v in body.items() if v is not None}, key or self.rsa,
                          algorithms=[alg], default_type=None)


@pytest.fixture(scope="module")
def idp() -> Iterator[tuple[FakeIdP, str]]:
    fake = FakeIdP()
    with ServerThread(fake.app) as server:
        yield fake, f"http://127.0.0.1:{server.port}/certs"


def external_config(tmp_path: Path, jwks_url: str, **external: Any) -> Any:
    raw = {"external": {"issuer": IDP, "jwks_url": jwks_url, "client_id_claim": "azp",
                        "department_claim": "org.department", "roles_claim": "realm_access.roles",
                        "department_map": {"/gov/health": "health", "/gov/civil": "civil"},
                        "role_map": {"doctor": ["clinician"], "clerk": "street-office"}, **external}}
    return parse_auth(raw, base_dir=tmp_path, demo=False, default_issuer="https://gw.test", environ={})


@pytest.fixture
async def ext(tmp_path: Path, idp: tuple[FakeIdP, str]) -> AsyncIterator[tuple[Harness, FakeIdP]]:
    fake, url = idp
    fake.keys = [{**fake.rsa.as_dict(private=False), "kid": "idp-1", "use": "sig"}]
    h = await Harness.start(external_config(tmp_path, url))
    yield h, fake
    await h.close()


def reason(r: Any) -> str:
    assert r.status_code == 401, r.text
    assert r.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    return str(r.json()["errors"][0]["extensions"]["reason"])


async def test_claims_are_mapped_by_configuration(ext: tuple[Harness, FakeIdP]) -> None:
    h, fake = ext
    assert h.service.routes() == [], "with an external IdP the gateway issues no tokens"
    r = await h.call(fake.token())
    assert r.status_code == 200, r.text
    who = r.json()
    assert who["client_id"] == "idp:hospital-his"  # the configured claim, namespaced
    assert who["department"] == "health" and who["roles"] == ["clinician"]  # offline_access maps to nothing
    assert who["issuer"] == IDP and who["token_id"] and who["jti"] == who["token_id"]
    assert who["attributes"] == {}
    r = await h.call(fake.token(azp="his-2", realm_access={"roles": ["clerk", "doctor"]},
                                org={"department": "/gov/civil"}))
    assert r.json()["client_id"] == "idp:his-2" and r.json()["department"] == "civil"
    assert r.json()["roles"] == ["clinician", "street-office"]


async def test_namespaced_claims_and_unmapped_values(tmp_path: Path, idp: tuple[FakeIdP, str]) -> None:
    fake, url = idp
    h = await Harness.start(external_config(tmp_path, url, department_claim="https://city.test/department",
                                            roles_claim="scope", department_map={}, role_map={}, trust_roles=True,
                                            trust_department=True))
    try:
        r = await h.call(fake.token(**{"https://city.test/department": "mr", "scope": "market-inspector read"}))
        assert r.status_code == 200, r.text
        assert r.json()["department"] == "mr" and r.json()["roles"] == ["market-inspector", "read"]
        assert reason(await h.call(fake.token())) == "unmapped_claims"  # no department claim at all
    finally:
        await h.close()
    h = await Harness.start(external_config(tmp_path, url))
    try:
        assert reason(await h.call(fake.token(org={"department": "/gov/unknown"}))) == "unmapped_claims"
    finally:
        await h.close()


async def test_idp_tokens_are_checked_like_our_own(ext: tuple[Harness, FakeIdP]) -> None:
    h, fake = ext
    public_pem = fake.rsa.as_pem(private=False)
    head = b64({"alg": "HS256", "kid": "idp-1", "typ": "at+jwt"})
    body = b64({"iss": IDP, "aud": "hutong", "azp": "x", "exp": 9999999999, "org": {"department": "/gov/health"}})
    hs = f"{head}.{body}.{b64(hmac.new(public_pem, f'{head}.{body}'.encode(), hashlib.sha256).digest())}"
    none = f"{b64({'alg': 'none', 'kid': 'idp-1', 'typ': 'at+jwt'})}.{body}."
    cases = {
        "wrong_issuer": fake.token(iss="https://idp.other.test"),
        "wrong_audience": fake.token(aud="another-api"),
        "bad_signature": fake.token(key=RSAKey.generate_key(2048, private=True)),
        "unsupported_token_type": fake.token(typ="JWT"),
        "expired": fake.token(exp=1_000_000),
    }
    for expected, token in cases.items():
        assert reason(await h.call(token)) == expected, expected
    assert reason(await h.call(hs)) == "bad_signature"
    assert reason(await h.call(none)) == "bad_signature"


async def test_jwt_typ_accepted_when_configured(tmp_path: Path, idp: tuple[FakeIdP, str]) -> None:
    fake, url = idp
    h = await Harness.start(external_config(tmp_path, url, token_types=["at+jwt", "JWT"]))
    try:
        assert (await h.call(fake.token(typ="JWT"))).status_code == 200
        assert reason(await h.call(fake.token(typ="id_token+jwt"))) == "unsupported_token_type"
    finally:
        await h.close()


async def test_unknown_kid_refetches_at_most_once_a_minute(ext: tuple[Harness, FakeIdP]) -> None:
    h, fake = ext
    assert (await h.call(fake.token())).status_code == 200
    fetched = fake.fetches
    # The IdP rotates: a new key it starts signing with at once.
    new = ECKey.generate_key("P-256", private=True)
    fake.keys = [*fake.keys, {**new.as_dict(private=False), "kid": "idp-2", "use": "sig"}]
    h.monotonic.advance(61)
    assert (await h.call(fake.token(key=new, kid="idp-2", alg="ES256"))).status_code == 200
    assert fake.fetches == fetched + 1
    # A flood of made-up kids costs the IdP one request a minute.
    for i in range(5):
        assert reason(await h.call(fake.token(kid=f"made-up-{i}"))) == "bad_signature"
    assert fake.fetches == fetched + 1
    h.monotonic.advance(61)
    assert reason(await h.call(fake.token(kid="made-up-again"))) == "bad_signature"
    assert fake.fetches == fetched + 2
    # The key set is refreshed after its TTL anyway, and a key the IdP dropped stops working.
    fake.keys = [fake.keys[1]]
    h.monotonic.advance(301)
    assert reason(await h.call(fake.token())) == "bad_signature"


async def test_symmetric_keys_in_the_jwks_are_ignored(ext: tuple[Harness, FakeIdP]) -> None:
    h, fake = ext
    fake.keys = [*fake.keys, {"kty": "oct", "kid": "shared", "k": b64(b"s" * 32)}]
    h.monotonic.advance(61)
    from joserfc.jwk import OctKey

    token = fake.token(key=OctKey.import_key(b"s" * 32), kid="shared", alg="HS256")
    assert reason(await h.call(token)) == "bad_signature"


async def test_a_disabled_registered_client_is_cut_off(ext: tuple[Harness, FakeIdP]) -> None:
    h, fake = ext
    await h.service.store.add("hospital-his", "health", ["clinician"], secret="unused-here")
    assert (await h.call(fake.token())).status_code == 200
    await h.service.store.disable("hospital-his")
    h.monotonic.advance(6)
    assert reason(await h.call(fake.token())) == "revoked_client"


async def test_idp_unreachable_is_503_not_401(tmp_path: Path, idp: tuple[FakeIdP, str]) -> None:
    fake, _ = idp
    h = await Harness.start(external_config(tmp_path, f"http://127.0.0.1:{free_port()}/certs"))
    try:
        r = await h.call(fake.token())
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        err = r.json()["errors"][0]
        assert err["extensions"] == {"code": "SERVICE_UNAVAILABLE", "reason": "unavailable"}
        assert "www-authenticate" not in r.headers
        assert (await h.call()).status_code == 401, "no token is still a plain 401"
    finally:
        await h.close()


# --- hardening: client ids, roles, attributes ---------------------------------------------------


async def test_the_client_id_comes_from_one_claim_and_is_namespaced(tmp_path: Path, idp: tuple[FakeIdP, str]
                                                                    ) -> None:
    fake, url = idp
    h = await Harness.start(external_config(tmp_path, url, client_id_claim="client_id"))
    try:
        # No fallback to azp or sub: a token without the configured claim names no client.
        assert reason(await h.call(fake.token())) == "unmapped_claims"
        assert reason(await h.call(fake.token(azp=None, sub="street-office-app"))) == "unmapped_claims"
        # An IdP client named like a local client (or a policy group) is not that client here.
        await h.service.store.add("street-office-app", "civil", ["street-office"], secret="local-secret")
        r = await h.call(fake.token(client_id="street-office-app"))
        assert r.status_code == 200, r.text
        assert r.json()["client_id"] == "idp:street-office-app"
        for bad in ("role:policy-admin", "dept:civil", "idp:x", "a b", ""):
            assert reason(await h.call(fake.token(client_id=bad))) == "unmapped_claims", bad
        # The kill switch still works: the store entry of the IdP's own name, disabled, refuses it.
        await h.service.store.disable("street-office-app")
        h.monotonic.advance(6)
        assert reason(await h.call(fake.token(client_id="street-office-app"))) == "revoked_client"
    finally:
        await h.close()


async def test_idp_roles_count_only_when_mapped_or_explicitly_trusted(tmp_path: Path, idp: tuple[FakeIdP, str]
                                                                     ) -> None:
    fake, url = idp
    roles = {"roles": ["policy-admin", "doctor", "Policy Admin", "x:y"]}
    untrusted = await Harness.start(external_config(tmp_path, url, role_map={}))
    try:
        r = await untrusted.call(fake.token(realm_access=roles))
        assert r.status_code == 200 and r.json()["roles"] == [], "without a role_map the IdP's roles are not trusted"
    finally:
        await untrusted.close()
    trusted = await Harness.start(external_config(tmp_path, url, role_map={}, trust_roles=True))
    try:
        r = await trusted.call(fake.token(realm_access=roles))
        assert r.json()["roles"] == ["doctor", "policy-admin"], "trusted, but only names of a role's shape"
    finally:
        await trusted.close()
    mapped = await Harness.start(external_config(tmp_path, url))  # role_map: doctor -> clinician, clerk
    try:
        r = await mapped.call(fake.token(realm_access=roles))
        assert r.json()["roles"] == ["clinician"], "a role_map maps only the roles it lists"
    finally:
        await mapped.close()


async def test_attributes_are_mapped_from_claims(tmp_path: Path, idp: tuple[FakeIdP, str]) -> None:
    fake, url = idp
    h = await Harness.start(external_config(tmp_path, url, attributes={"district": "org.district",
                                                                       "division": "division_code"}))
    try:
        r = await h.call(fake.token(org={"department": "/gov/civil", "district": "北苑区"}, division_code=110105))
        assert r.status_code == 200, r.text
        assert r.json()["attributes"] == {"district": "北苑区", "division": "110105"}
        r = await h.call(fake.token())  # claims absent: no attributes, the token is still fine
        assert r.status_code == 200 and r.json()["attributes"] == {}
        for bad in ("", "x" * 201, ["北苑区"], {"a": 1}, True, "a\nb"):
            token = fake.token(org={"department": "/gov/civil", "district": bad})
            assert reason(await h.call(token)) == "unmapped_claims", bad
    finally:
        await h.close()


def test_external_configuration_is_checked(tmp_path: Path) -> None:
    from gateway.config import ConfigError

    url = "https://idp.city.test/certs"
    assert external_config(tmp_path, url).external.client_id_prefix == "idp:"
    default = parse_auth({"external": {"issuer": IDP, "jwks_url": url, "trust_department": True}}, base_dir=tmp_path,
                         demo=False, default_issuer="https://gw.test", environ={}).external
    assert (default.client_id_claim, default.trust_roles, default.role_map, default.attributes) == (
        "client_id", False, {}, {})
    # Without a department_map, the IdP's department values are trusted only when the configuration says so.
    with pytest.raises(ConfigError, match="give a department_map"):
        parse_auth({"external": {"issuer": IDP, "jwks_url": url}}, base_dir=tmp_path, demo=False,
                   default_issuer="https://gw.test", environ={})
    for bad, match in (
            ({"trust_roles": True}, "exclude each other"),  # with the role_map external_config sets
            ({"role_map": {}, "trust_roles": "yes"}, "true or false"),
            ({"client_id_prefix": "role:"}, "client_id_prefix"),
            ({"client_id_prefix": "dept:"}, "client_id_prefix"),
            ({"client_id_prefix": "ext"}, "client_id_prefix"),
            ({"client_id_prefix": "Ext:"}, "client_id_prefix"),
            ({"client_id_prefix": "group:"}, "client_id_prefix"),
            ({"client_id_prefix": "keycloak:"}, "client_id_prefix"),
            ({"role_map": {"doctor": "Clinician"}}, "role_map.doctor"),
            ({"role_map": {"doctor": "role:x"}}, "role_map.doctor"),
            ({"attributes": {"District": "district"}}, "attribute name"),
            ({"attributes": {"district": ""}}, "attributes must be"),
            ({"department_map": {"/gov/x": "Not A Code"}}, "department_map"),
    ):
        with pytest.raises(ConfigError, match=match):
            external_config(tmp_path, url, **bad)
    assert external_config(tmp_path, url, client_id_prefix="idp-kc:").external.client_id_prefix == "idp-kc:"
