"""The token endpoint and the bearer check, end to end over HTTP (ASGI), with a real SQLite
client store in tmp_path and, where marked, the real PostgreSQL on this machine."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.auth.clients import public_jwk
from gateway.auth.demo import DEMO_CLIENTS
from gateway.auth.tokens import LEEWAY, MAX_TOKEN_BYTES
from tests.conftest import throwaway_pg_database
from tests.test_auth_support import ISSUER, Harness, auth_settings, b64, drop_store_tables

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
GRANT = {"grant_type": "client_credentials"}


@pytest.fixture(scope="module")
def pg_auth_url() -> Iterator[str]:
    yield from throwaway_pg_database()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    h = await Harness.start(auth_settings(tmp_path))
    yield h
    await h.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
async def any_harness(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    """The same service over the SQLite file store or the PostgreSQL store."""
    url = request.getfixturevalue("pg_auth_url") if request.param == "postgresql" else None
    h = await Harness.start(auth_settings(tmp_path, url))
    yield h
    await h.close()
    if url:
        await drop_store_tables(url)


def refusal(r: Any) -> str:
    """The reason of a GraphQL-shaped 401, after checking its shape."""
    assert r.status_code == 401, r.text
    body = r.json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1
    err = body["errors"][0]
    assert err["extensions"]["code"] == "UNAUTHENTICATED"
    assert r.headers["www-authenticate"].startswith('Bearer realm="hutong"')
    assert r.headers["cache-control"] == "no-store"
    return str(err["extensions"]["reason"])


def assertion(client_id: str, key: Any, alg: str, **over: Any) -> str:
    now = int(__import__("time").time())
    claims = {"iss": client_id, "sub": client_id, "aud": f"{ISSUER}/oauth/token", "iat": now, "exp": now + 60,
              "jti": uuid.uuid4().hex, **over}
    return jwt.encode({"alg": alg}, {k: v for k, v in claims.items() if v is not None}, key, algorithms=[alg])


# --- getting a token ----------------------------------------------------------------------------


async def test_client_secret_basic_token_verifies_with_the_published_jwks(any_harness: Harness) -> None:
    h = any_harness
    secret = await h.register("street-office-app", "civil", ("street-office",))
    r = await h.token_request(GRANT, auth=("street-office-app", secret))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store" and r.headers["pragma"] == "no-cache"
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 300 and set(body) == {
        "access_token", "token_type", "expires_in"}
    token = body["access_token"]

    # Verified independently of the gateway's code: the JWKS document and cryptography only.
    jwks = (await h.http.get("/.well-known/jwks.json")).json()
    header_b64, payload_b64, sig_b64 = token.split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256"
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert "d" not in jwk and jwk["use"] == "sig" and jwk["alg"] == "ES256"
    num = lambda s: int.from_bytes(base64.urlsafe_b64decode(s + "=="), "big")  # noqa: E731
    public = ec.EllipticCurvePublicNumbers(num(jwk["x"]), num(jwk["y"]), ec.SECP256R1()).public_key()
    raw = base64.urlsafe_b64decode(sig_b64 + "==")
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, f"{header_b64}.{payload_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSignature):
        public.verify(der, f"{header_b64}.{payload_b64}x".encode(), ec.ECDSA(hashes.SHA256()))

    claims = json.loads(base64.urlsafe_b64decode(payload_b64 + "=="))
    assert claims["iss"] == ISSUER and claims["aud"] == "hutong"
    assert claims["sub"] == claims["client_id"] == "street-office-app"
    assert claims["department"] == "civil" and claims["roles"] == ["street-office"]
    assert claims["exp"] - claims["iat"] == 300 and claims["nbf"] == claims["iat"] and len(claims["jti"]) == 32

    r = await h.call(token)
    assert r.status_code == 200, r.text
    who = r.json()
    assert who["client_id"] == "street-office-app" and who["department"] == "civil"
    assert who["roles"] == ["street-office"] and who["token_id"] == claims["jti"] and who["issuer"] == ISSUER
    assert who["jti"] == claims["jti"], "identity.jti is the token's jti, for the audit trail"
    assert claims["attributes"] == {} and who["attributes"] == {}


async def test_client_secret_post(any_harness: Harness) -> None:
    secret = await any_harness.register("health-app", "health", ("clinician",))
    r = await any_harness.token_request({**GRANT, "client_id": "health-app", "client_secret": secret})
    assert r.status_code == 200, r.text
    assert (await any_harness.call(r.json()["access_token"])).json()["department"] == "health"


async def test_basic_credentials_are_form_urlencoded_inside(harness: Harness) -> None:
    # RFC 6749 §2.3.1: id and secret are form-encoded before base64; a '+' in the secret is %2B.
    await harness.register("odd.client", secret="a+b:c%d")
    creds = base64.b64encode(b"odd.client:a%2Bb%3Ac%25d").decode()
    r = await harness.token_request(GRANT, headers={"Authorization": f"Basic {creds}"})
    assert r.status_code == 200, r.text


async def test_private_key_jwt_succeeds_once_and_replay_is_refused(any_harness: Harness) -> None:
    h = any_harness
    key = ECKey.generate_key("P-256", private=True)
    await h.register("market-app", "mr", ("market-inspector",), public_key=public_jwk(key.as_dict(private=False)))
    signed = assertion("market-app", key, "ES256")
    form = {**GRANT, "client_assertion_type": ASSERTION_TYPE, "client_assertion": signed}
    r = await h.token_request(form)
    assert r.status_code == 200, r.text
    assert (await h.call(r.json()["access_token"])).json()["client_id"] == "market-app"

    replay = await h.token_request(form)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    # A fresh assertion (new jti) works again; the issuer URL is an accepted audience too.
    r = await h.token_request({**form, "client_assertion": assertion("market-app", key, "ES256", aud=ISSUER)})
    assert r.status_code == 200, r.text


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
async def test_private_key_jwt_with_ed25519_and_rsa_keys(harness: Harness) -> None:
    ed = OKPKey.generate_key("Ed25519", private=True)
    rsa = RSAKey.generate_key(2048, private=True)
    await harness.register("ed-app", public_key=public_jwk(ed.as_dict(private=False)))
    await harness.register("rsa-app", public_key=public_jwk(rsa.as_pem(private=False)))
    for client_id, key, alg in (("ed-app", ed, "EdDSA"), ("ed-app", ed, "Ed25519"), ("rsa-app", rsa, "RS256")):
        r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                         "client_assertion": assertion(client_id, key, alg)})
        assert r.status_code == 200, (alg, r.text)


def _sign_assertion(client_id: str, key: Any, alg: str) -> str | None:
    """A client assertion, or None when the key cannot sign with ``alg`` at all."""
    try:
        return assertion(client_id, key, alg)
    except Exception:  # joserfc refuses a key of another type or curve
        return None


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")
async def test_assertion_algorithms_follow_the_key_type_and_the_metadata_lists_exactly_them(
        harness: Harness) -> None:
    keys = {
        "rsa-app": (RSAKey.generate_key(2048, private=True), {"RS256", "PS256"}),
        "p256-app": (ECKey.generate_key("P-256", private=True), {"ES256"}),
        "p384-app": (ECKey.generate_key("P-384", private=True), {"ES384"}),
        "p521-app": (ECKey.generate_key("P-521", private=True), {"ES512"}),
        "ed-app": (OKPKey.generate_key("Ed25519", private=True), {"EdDSA", "Ed25519"}),
    }
    every = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "ES256K",
             "EdDSA", "Ed25519", "Ed448"]
    accepted: set[str] = set()
    for client_id, (key, expected) in keys.items():
        await harness.register(client_id, public_key=public_jwk(key.as_pem(private=False)))
        works = set()
        for alg in every:
            signed = _sign_assertion(client_id, key, alg)
            if signed is None:
                continue
            r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                             "client_assertion": signed})
            assert r.status_code in (200, 401), r.text
            if r.status_code == 200:
                works.add(alg)
        assert works == expected, client_id
        accepted |= works
    meta = (await harness.http.get("/.well-known/oauth-authorization-server")).json()
    assert sorted(meta["token_endpoint_auth_signing_alg_values_supported"]) == sorted(accepted)


async def test_an_rsa_key_registered_before_ps256_was_accepted_signs_ps256(harness: Harness) -> None:
    rsa = RSAKey.generate_key(2048, private=True)
    # Registrations made before this fix stored "alg": "RS256" with every RSA key.
    await harness.register("rsa-app", public_key={**public_jwk(rsa.as_pem(private=False)), "alg": "RS256"})
    for alg in ("PS256", "RS256"):
        r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                         "client_assertion": assertion("rsa-app", rsa, alg)})
        assert r.status_code == 200, (alg, r.text)


async def test_alg_none_and_hmac_with_the_clients_public_key_are_refused(harness: Harness) -> None:
    rsa = RSAKey.generate_key(2048, private=True)
    jwk = public_jwk(rsa.as_pem(private=False))
    await harness.register("rsa-app", public_key=jwk)
    now = int(harness.clock())
    claims = {"iss": "rsa-app", "sub": "rsa-app", "aud": f"{ISSUER}/oauth/token", "exp": now + 60}
    forged = []
    for alg in ("none", "None"):
        forged.append(f"{b64({'alg': alg})}.{b64({**claims, 'jti': uuid.uuid4().hex})}.")
    for secret in (rsa.as_pem(private=False), json.dumps(jwk).encode()):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            signing_input = f"{b64({'alg': alg})}.{b64({**claims, 'jti': uuid.uuid4().hex})}"
            forged.append(f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), digest).digest())}")
    for token in forged:
        r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE, "client_assertion": token})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", token[:40]


async def test_bad_client_assertions_are_invalid_client(harness: Harness) -> None:
    key = ECKey.generate_key("P-256", private=True)
    other = ECKey.generate_key("P-256", private=True)
    await harness.register("market-app", public_key=public_jwk(key.as_dict(private=False)))
    await harness.register("health-app")  # secret only: no key registered
    now = int(harness.clock())
    bad = {
        "another key": assertion("market-app", other, "ES256"),
        "wrong audience": assertion("market-app", key, "ES256", aud="http://elsewhere/oauth/token"),
        "expired": assertion("market-app", key, "ES256", exp=now - LEEWAY - 5),
        "too long-lived": assertion("market-app", key, "ES256", exp=now + 3600),
        "no jti": assertion("market-app", key, "ES256", jti=None),
        "jti too long for the replay record": assertion("market-app", key, "ES256", jti="j" * 256),
        "iss and sub differ": assertion("market-app", key, "ES256", sub="health-app"),
        "issued in the future": assertion("market-app", key, "ES256", iat=now + LEEWAY + 60),
        "iss differs": assertion("market-app", key, "ES256", iss="health-app"),
        "client without key": assertion("health-app", key, "ES256"),
        "unknown client": assertion("nobody", key, "ES256"),
        "HS256": jwt.encode({"alg": "HS256"}, {"iss": "market-app", "sub": "market-app"},
                            __import__("joserfc.jwk", fromlist=["OctKey"]).OctKey.import_key(b"k" * 32),
                            algorithms=["HS256"]),
        "garbage": "not.a.jwt",
    }
    for why, signed in bad.items():
        r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                         "client_assertion": signed})
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", (why, r.text)
    r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                     "client_assertion": assertion("market-app", key, "ES256"),
                                     "client_id": "health-app"})
    assert r.status_code == 401, "client_id must match the assertion's sub"


async def test_demo_mode_serves_the_documented_clients(tmp_path: Path) -> None:
    h = await Harness.start(auth_settings(tmp_path, demo=True))
    try:
        for demo in DEMO_CLIENTS:
            who = (await h.call(await h.token(demo.client_id, demo.secret))).json()
            assert (who["department"], tuple(who["roles"])) == (demo.department, demo.roles)
            assert who["attributes"] == dict(demo.attributes)
        assert dict(next(c for c in DEMO_CLIENTS if c.client_id == "street-office-app").attributes) == {
            "district": "北苑区"}
    finally:
        await h.close()


async def test_a_demo_secret_is_refused_outside_demo_mode(harness: Harness) -> None:
    # The start-up check already refuses such a store; this covers a client added afterwards.
    await harness.register("late-app", secret="auditor-demo-secret")
    r = await harness.token_request(GRANT, auth=("late-app", "auditor-demo-secret"))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


# --- token endpoint refusals --------------------------------------------------------------------


async def test_wrong_secret_and_unknown_client_answer_the_same(harness: Harness) -> None:
    secret = await harness.register("health-app", "health", ("clinician",))
    await harness.register("gone-app")
    await harness.service.store.disable("gone-app")
    answers = [
        await harness.token_request(GRANT, auth=("health-app", secret + "x")),
        await harness.token_request(GRANT, auth=("no-such-app", secret)),
        await harness.token_request({**GRANT, "client_id": "no-such-app", "client_secret": "s"}),
        await harness.token_request(GRANT, auth=("gone-app", "whatever")),
    ]
    for r in answers:
        assert r.status_code == 401
        assert r.headers["www-authenticate"] == 'Basic realm="hutong"'
        assert r.headers["cache-control"] == "no-store"
    assert len({r.text for r in answers}) == 1, "the answer must not tell which client ids exist"
    assert answers[0].json()["error"] == "invalid_client"


async def test_disabled_client_gets_no_token(harness: Harness) -> None:
    secret = await harness.register("health-app")
    await harness.service.store.disable("health-app")
    r = await harness.token_request(GRANT, auth=("health-app", secret))
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"


async def test_grant_and_request_errors(harness: Harness) -> None:
    secret = await harness.register("health-app")
    cases = [
        ({"grant_type": "password", "username": "u", "password": "p"}, ("health-app", secret),
         400, "unsupported_grant_type"),
        ({"grant_type": "authorization_code", "code": "x"}, ("health-app", secret), 400, "unsupported_grant_type"),
        ({}, ("health-app", secret), 400, "invalid_request"),
        ({**GRANT, "client_id": "health-app", "client_secret": secret}, ("health-app", secret),
         400, "invalid_request"),  # two authentication methods
        ({**GRANT, "client_secret": secret}, None, 400, "invalid_request"),  # secret without id
        ({**GRANT, "client_assertion_type": "urn:other", "client_assertion": "a.b.c"}, None, 400, "invalid_request"),
        (GRANT, None, 401, "invalid_client"),  # no client authentication at all
    ]
    for data, auth, status, error in cases:
        r = await harness.token_request(data, auth=auth)
        assert (r.status_code, r.json()["error"]) == (status, error), (data, r.text)
        assert r.json()["error_description"] and r.headers["cache-control"] == "no-store"


async def test_malformed_token_requests(harness: Harness) -> None:
    secret = await harness.register("health-app")
    r = await harness.http.post("/oauth/token", json=GRANT, auth=("health-app", secret))
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    assert "x-www-form-urlencoded" in r.json()["error_description"]
    r = await harness.http.post("/oauth/token", content="grant_type=client_credentials&grant_type=password",
                                headers={"Content-Type": "application/x-www-form-urlencoded"},
                                auth=("health-app", secret))
    assert r.status_code == 400 and "repeated" in r.json()["error_description"]
    r = await harness.http.post("/oauth/token", content="a=" + "x" * 20000,
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400 and "larger" in r.json()["error_description"]
    r = await harness.token_request(GRANT, headers={"Authorization": "Basic !!notbase64"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = await harness.token_request(GRANT, headers={"Authorization": "Bearer abc"})
    assert (r.status_code, r.json()["error"]) == (400, "invalid_request")
    r = await harness.http.get("/oauth/token")
    assert r.status_code == 405


async def test_a_disabled_client_gets_no_token_with_a_client_assertion(harness: Harness) -> None:
    key = ECKey.generate_key("P-256", private=True)
    await harness.register("market-app", public_key=public_jwk(key.as_dict(private=False)))
    await harness.service.store.disable("market-app")
    r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                     "client_assertion": assertion("market-app", key, "ES256")})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    assert r.headers["www-authenticate"] == 'Basic realm="hutong"'


# --- the token endpoint on Authlib --------------------------------------------------------------


def test_the_token_endpoint_is_authlibs_authorization_server(harness: Harness) -> None:
    from authlib.oauth2.rfc6749 import AuthorizationServer
    from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
    from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
    from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator

    endpoint = harness.service.token_endpoint
    assert endpoint is not None
    server = endpoint.server
    assert isinstance(server, AuthorizationServer)
    ((grant, _),) = server._token_grants
    assert issubclass(grant, ClientCredentialsGrant)
    assert grant.TOKEN_ENDPOINT_AUTH_METHODS == ["client_secret_basic", "client_secret_post", "private_key_jwt"]
    assert isinstance(server._token_generators["default"], JWTBearerTokenGenerator)
    assert server._client_auth is not None
    assert isinstance(server._client_auth._methods["private_key_jwt"], JWTBearerClientAssertion)


async def test_an_unknown_client_costs_the_same_secret_check(harness: Harness,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Authlib stops at an unknown client id; the gateway answers it with a client without secret,
    # so that the scrypt check runs all the same and the timing does not tell which ids exist.
    import gateway.auth.client_auth as client_auth

    checked: list[str | None] = []
    original = client_auth.verify_secret

    def counting(secret: str, stored: str | None) -> bool:
        checked.append(stored)
        return original(secret, stored)

    monkeypatch.setattr(client_auth, "verify_secret", counting)
    secret = await harness.register("health-app")
    for auth in (("health-app", secret + "x"), ("no-such-app", secret), ("x" * 300, secret)):
        r = await harness.token_request(GRANT, auth=auth)
        assert r.status_code == 401
    r = await harness.token_request({**GRANT, "client_id": "no-such-app", "client_secret": "s"})
    assert r.status_code == 401
    assert len(checked) == 4 and checked[0] is not None and checked[1:] == [None, None, None]


async def test_concurrent_token_requests(any_harness: Harness) -> None:
    # Authlib runs in worker threads; the client store's calls go back to the event loop.
    import asyncio

    h = any_harness
    secret = await h.register("health-app", "health", ("clinician",))
    key = ECKey.generate_key("P-256", private=True)
    await h.register("market-app", "mr", ("market-inspector",), public_key=public_jwk(key.as_dict(private=False)))
    requests = [h.token_request(GRANT, auth=("health-app", secret)) for _ in range(6)]
    requests += [h.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                  "client_assertion": assertion("market-app", key, "ES256")}) for _ in range(6)]
    answers = await asyncio.gather(*requests)
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers]
    assert len({r.json()["access_token"] for r in answers}) == 12
    # One assertion sent six times at once: exactly one token.
    same = {**GRANT, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion("market-app", key, "ES256")}
    answers = await asyncio.gather(*[h.token_request(same) for _ in range(6)])
    assert sorted(r.status_code for r in answers) == [200] + [401] * 5


async def test_a_requested_scope_is_ignored(harness: Harness) -> None:
    secret = await harness.register("health-app")
    r = await harness.token_request({**GRANT, "scope": "everything"}, auth=("health-app", secret))
    assert r.status_code == 200 and "scope" not in r.json()
    claims = json.loads(base64.urlsafe_b64decode(r.json()["access_token"].split(".")[1] + "=="))
    assert claims["scope"] == ""


@pytest.mark.parametrize("failure", ["get", "use_assertion"])
async def test_an_unreachable_client_store_is_503(harness: Harness, monkeypatch: pytest.MonkeyPatch,
                                                  failure: str) -> None:
    from sqlalchemy.exc import OperationalError

    key = ECKey.generate_key("P-256", private=True)
    await harness.register("market-app", public_key=public_jwk(key.as_dict(private=False)))

    async def down(*_: Any) -> Any:
        raise OperationalError("SELECT", {}, ConnectionRefusedError())

    monkeypatch.setattr(harness.service.store, failure, down)
    r = await harness.token_request({**GRANT, "client_assertion_type": ASSERTION_TYPE,
                                     "client_assertion": assertion("market-app", key, "ES256")})
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "temporarily_unavailable" and r.headers["retry-after"] == "5"
    assert r.headers["cache-control"] == "no-store"


# --- the bearer check ---------------------------------------------------------------------------


async def test_missing_token(harness: Harness) -> None:
    r = await harness.call()
    assert refusal(r) == "missing"
    assert r.headers["www-authenticate"] == 'Bearer realm="hutong"'  # no error code without a token (§3.1)
    r = await harness.call(headers=[("Authorization", "Basic dXNlcjpwYXNz")])
    assert refusal(r) == "missing"


async def test_each_failed_check_has_its_own_reason(harness: Harness) -> None:
    await harness.register("street-office-app")
    now = int(harness.clock())
    other_key = ECKey.generate_key("P-256", private=True)
    signing = harness.service.keys.signing  # type: ignore[union-attr]
    cases = {
        "malformed": ["not-a-jwt", "a.b", f"{b64(b'not json')}.{b64({'a': 1})}.sig", "x" * 100 + ".y.z",
                      "Zm9v bar"],
        "bad_signature": [
            harness.forge(key=other_key),  # right kid, wrong key
            harness.forge(key=other_key, header={"kid": other_key.thumbprint()}),  # unknown kid
            harness.forge()[:-4] + "AAAA",  # tampered signature
        ],
        "expired": [harness.forge(exp=now - LEEWAY - 1, iat=now - 400, nbf=now - 400)],
        "not_yet_valid": [harness.forge(nbf=now + LEEWAY + 60), harness.forge(iat=now + LEEWAY + 60)],
        "wrong_audience": [harness.forge(aud="another-api"), harness.forge(aud=["a", "b"]), harness.forge(aud=None)],
        "wrong_issuer": [harness.forge(iss="http://evil.test"), harness.forge(iss=None)],
        "unsupported_token_type": [harness.forge(header={"typ": "JWT"}), harness.forge(header={"typ": None})],
        "too_large": [harness.forge(padding="x" * MAX_TOKEN_BYTES)],
    }
    assert (await harness.call(harness.forge())).status_code == 200, "the baseline forged token must pass"
    for reason, tokens in cases.items():
        for token in tokens:
            assert refusal(await harness.call(token)) == reason, (reason, token[:80])
    assert signing.alg == "ES256"


async def test_alg_none_and_hs256_with_the_public_key_are_refused(harness: Harness) -> None:
    await harness.register("street-office-app")
    signing = harness.service.keys.signing  # type: ignore[union-attr]
    claims = harness.claims()
    # alg none: no signature at all (with and without a trailing empty segment).
    for alg in ("none", "None", "NONE"):
        head = b64({"alg": alg, "typ": "at+jwt", "kid": signing.kid})
        assert refusal(await harness.call(f"{head}.{b64(claims)}.")) == "bad_signature", alg
        assert refusal(await harness.call(f"{head}.{b64(claims)}")) == "malformed", alg
    # HS/RS confusion: HMAC keyed with the public key, as published (PEM and JWK JSON forms).
    public_pem = signing.key.as_pem(private=False)
    public_json = json.dumps(signing.as_jwk()).encode()
    for secret in (public_pem, public_json):
        for alg, digest in (("HS256", hashlib.sha256), ("HS512", hashlib.sha512)):
            head = b64({"alg": alg, "typ": "at+jwt", "kid": signing.kid})
            signing_input = f"{head}.{b64(claims)}"
            mac = hmac.new(secret, signing_input.encode(), digest).digest()
            assert refusal(await harness.call(f"{signing_input}.{b64(mac)}")) == "bad_signature"


async def test_ambiguous_authorization_headers(harness: Harness) -> None:
    secret = await harness.register("street-office-app")
    token = await harness.token("street-office-app", secret)
    r = await harness.call(headers=[("Authorization", f"Bearer {token}"), ("Authorization", "Bearer other")])
    assert refusal(r) == "malformed"
    r = await harness.call(headers=[("Authorization", f"bearer {token}")])  # the scheme is case-insensitive
    assert r.status_code == 200
    r = await harness.call(headers=[("Authorization", "Bearer " + "a" * (MAX_TOKEN_BYTES + 100))])
    assert refusal(r) == "too_large"


async def test_expired_after_ttl_with_the_injected_clock(harness: Harness) -> None:
    secret = await harness.register("street-office-app")
    token = await harness.token("street-office-app", secret)
    harness.clock.advance(300 + LEEWAY - 1)
    assert (await harness.call(token)).status_code == 200, "within the leeway"
    harness.clock.advance(2)
    r = await harness.call(token)
    assert refusal(r) == "expired"
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "expired" in r.headers["www-authenticate"]


async def test_disabled_clients_token_is_refused_after_the_cache_ttl(any_harness: Harness) -> None:
    h = any_harness
    secret = await h.register("citizen-portal", "civil", ("citizen-portal",))
    token = await h.token("citizen-portal", secret)
    assert (await h.call(token)).status_code == 200
    await h.service.store.disable("citizen-portal")
    # Within the cache TTL the process has not looked again; then it has, on every worker.
    h.monotonic.advance(4.9)
    assert (await h.call(token)).status_code == 200
    h.monotonic.advance(0.2)
    assert refusal(await h.call(token)) == "revoked_client"


async def test_a_token_for_a_deleted_or_unknown_client_is_refused(harness: Harness) -> None:
    assert refusal(await harness.call(harness.forge(sub="ghost", client_id="ghost"))) == "revoked_client"


async def test_tokens_signed_before_a_key_rotation_stay_valid(tmp_path: Path) -> None:
    first = await Harness.start(auth_settings(tmp_path))
    secret = await first.register("street-office-app")
    old_token = await first.token("street-office-app", secret)
    old_kid = first.service.keys.signing.kid  # type: ignore[union-attr]
    await first.close()

    # Rotation: the old key file becomes a previous key, a new key signs.
    run = tmp_path / "run"
    (run / "signing-key.pem").rename(run / "signing-key-old.pem")
    rotated = await Harness.start(auth_settings(tmp_path, previous_keys=(run / "signing-key-old.pem",)))
    try:
        kids = [k["kid"] for k in (await rotated.http.get("/.well-known/jwks.json")).json()["keys"]]
        new_kid = rotated.service.keys.signing.kid  # type: ignore[union-attr]
        assert kids == [new_kid, old_kid]
        assert (await rotated.call(old_token)).status_code == 200
        new_token = await rotated.token("street-office-app", secret)
        assert json.loads(base64.urlsafe_b64decode(new_token.split(".")[0] + "=="))["kid"] == new_kid
    finally:
        await rotated.close()


# --- attributes ---------------------------------------------------------------------------------


async def test_attributes_travel_in_the_access_token(any_harness: Harness) -> None:
    h = any_harness
    secret = await h.register("street-office-app", attributes={"district": "北苑区", "street": "北苑街道"})
    token = await h.token("street-office-app", secret)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["attributes"] == {"district": "北苑区", "street": "北苑街道"}
    who = (await h.call(token)).json()
    assert who["attributes"] == {"district": "北苑区", "street": "北苑街道"} and who["jti"] == claims["jti"]

    # A change reaches the next token; a token already issued keeps what it was issued with.
    await h.service.store.set_attributes("street-office-app", {"district": "南湖区"}, unset=["street"])
    newer = await h.token("street-office-app", secret)
    assert (await h.call(newer)).json()["attributes"] == {"district": "南湖区"}
    assert (await h.call(token)).json()["attributes"] == {"district": "北苑区", "street": "北苑街道"}


async def test_the_attributes_claim_is_checked(harness: Harness) -> None:
    await harness.register("street-office-app")
    r = await harness.call(harness.forge())  # issued before attributes existed: none
    assert r.status_code == 200 and r.json()["attributes"] == {}
    r = await harness.call(harness.forge(attributes={"district": "北苑区"}))
    assert r.json()["attributes"] == {"district": "北苑区"}
    for bad in (["北苑区"], "district=北苑区", {"District": "x"}, {"district": ""}, {"district": 7},
                {"district": "x" * 201}, {"district": {"nested": "x"}}):
        assert refusal(await harness.call(harness.forge(attributes=bad))) == "malformed", bad


def test_identity_attributes_are_an_immutable_mapping() -> None:
    from datetime import UTC, datetime

    from gateway.auth.identity import Identity

    plain = Identity("a", "civil", frozenset(), None, ISSUER, datetime.now(UTC))
    assert dict(plain.attributes) == {} and plain.jti is None
    who = Identity("a", "civil", frozenset(), "j1", ISSUER, datetime.now(UTC), attributes={"district": "北苑区"})
    assert who.attributes["district"] == "北苑区" and who.jti == "j1"
    assert hash(who) == hash(Identity("a", "civil", frozenset(), "j1", ISSUER, who.expires_at,
                                      attributes={"district": "北苑区"}))
    with pytest.raises(TypeError):
        who.attributes["district"] = "南湖区"  # type: ignore[index]
    with pytest.raises(ValueError, match="attribute name"):
        Identity("a", "civil", frozenset(), None, ISSUER, who.expires_at, attributes={"Bad Name": "x"})


# --- metadata -----------------------------------------------------------------------------------


async def test_authorization_server_metadata(harness: Harness) -> None:
    r = await harness.http.get("/.well-known/oauth-authorization-server", headers={"Host": "evil.test"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    meta = r.json()
    assert meta["issuer"] == ISSUER
    assert meta["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert meta["jwks_uri"] == f"{ISSUER}/.well-known/jwks.json"
    assert meta["grant_types_supported"] == ["client_credentials"]
    assert set(meta["token_endpoint_auth_methods_supported"]) == {
        "client_secret_basic", "client_secret_post", "private_key_jwt"}
    assert "ES256" in meta["token_endpoint_auth_signing_alg_values_supported"]
    assert not {"none", "HS256"} & set(meta["token_endpoint_auth_signing_alg_values_supported"])
    assert "evil.test" not in r.text

    jwks = await harness.http.get("/.well-known/jwks.json")
    assert jwks.headers["content-type"].startswith("application/jwk-set+json")
    assert "max-age" in jwks.headers["cache-control"]
    (key,) = jwks.json()["keys"]
    assert set(key) == {"kty", "crv", "x", "y", "kid", "alg", "use"}


async def test_a_verified_token_is_remembered_briefly(harness: Harness) -> None:
    secret = await harness.register("street-office-app")
    token = await harness.token("street-office-app", secret)
    verifier = harness.service.bearer.verifier
    calls = []
    original = verifier.verify

    async def counting(t: str) -> Any:
        calls.append(t)
        return await original(t)

    verifier.verify = counting  # type: ignore[method-assign]
    for _ in range(3):
        assert (await harness.call(token)).status_code == 200
    assert len(calls) == 1, "the signature is checked once"
    harness.monotonic.advance(61)
    assert (await harness.call(token)).status_code == 200
    assert len(calls) == 2, "and again after a minute"
    # Change a character in the middle of the signature: its last characters
    # may carry padding bits, and a random signature can already end in "AA".
    middle = len(token) - 20
    tampered = token[:middle] + ("B" if token[middle] == "A" else "A") + token[middle + 1 :]
    assert refusal(await harness.call(tampered)) == "bad_signature", "only the exact string is remembered"
