"""The [auth] section, and the signing keys it names."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.auth.keys import KeyRing, load_key_file
from gateway.auth.settings import AuthSettings, parse_auth
from gateway.config import ConfigError, load_settings


def config(tmp_path: Path, text: str = "", gateway: str = "") -> Path:
    path = tmp_path / "hutong.toml"
    path.write_text(f'[gateway]\ncatalog = "cat"\n{gateway}\n{text}', encoding="utf-8")
    return path


def parse(tmp_path: Path, **raw: Any) -> AuthSettings:
    return parse_auth(raw, base_dir=tmp_path, demo=False, default_issuer="http://127.0.0.1:8000", environ={})


def test_defaults_follow_the_config_file(tmp_path: Path) -> None:
    auth = AuthSettings.from_settings(load_settings(config(tmp_path, gateway="port = 9100\ndemo = true"),
                                                    environ={}))
    assert auth.issuer == "http://127.0.0.1:9100" and auth.audience == "hutong" and auth.token_ttl == 300
    assert auth.signing_key == tmp_path / "run" / "signing-key.pem"
    assert auth.client_store == f"sqlite+aiosqlite:///{tmp_path / 'run' / 'clients.sqlite'}"
    assert auth.demo and auth.external is None and auth.previous_keys == ()
    assert auth.token_endpoint == "http://127.0.0.1:9100/oauth/token"
    assert auth.jwks_uri == "http://127.0.0.1:9100/.well-known/jwks.json"


def test_explicit_values_and_environment_variables(tmp_path: Path) -> None:
    text = """[auth]
issuer = "https://${GW_HOST}/"
audience = "hutong-prod"
token_ttl = 600
signing_key = "/etc/hutong/key.pem"
previous_keys = ["keys/old.pem"]
client_store = "postgresql+asyncpg://hutong:${STORE_PASSWORD}@db.internal/identity"
"""
    env = {"GW_HOST": "gateway.city.test", "STORE_PASSWORD": "s3cret"}
    auth = AuthSettings.from_settings(load_settings(config(tmp_path, text), environ=env), environ=env)
    assert auth.issuer == "https://gateway.city.test"  # no trailing slash: endpoint URLs append to it
    assert (auth.audience, auth.token_ttl) == ("hutong-prod", 600)
    assert auth.signing_key == Path("/etc/hutong/key.pem") and auth.previous_keys == (tmp_path / "keys/old.pem",)
    assert auth.client_store == "postgresql+asyncpg://hutong:s3cret@db.internal/identity"


@pytest.mark.parametrize(("raw", "message"), [
    ({"isuser": "x"}, "unknown key(s) isuser"),
    ({"token_ttl": 7200}, "token_ttl must be a whole number of seconds from 1 to 3600"),
    ({"token_ttl": True}, "token_ttl"),
    ({"token_ttl": "300"}, "token_ttl"),
    ({"issuer": "gateway.city.test"}, "issuer must be an http(s) URL"),
    ({"issuer": "https://gw.test/?x=1"}, "without query"),
    ({"issuer": "http://gateway.city.test"}, "issuer must be an https URL"),
    ({"issuer": "${NOPE}"}, "environment variable NOPE is not set"),
    ({"audience": ""}, "audience must be a non-empty string"),
    ({"client_store": "mysql+aiomysql://db/x"}, "SQLite or PostgreSQL"),
    ({"client_store": "sqlite:///x.sqlite"}, "sqlite+aiosqlite"),
    ({"client_store": "sqlite+aiosqlite://"}, "file path"),
    ({"client_store": "postgresql://db/x"}, "postgresql+asyncpg"),
    ({"client_store": "not a url"}, "not a SQLAlchemy URL"),
    ({"previous_keys": "old.pem"}, "previous_keys must be a list"),
    ({"external": "yes"}, "[auth.external]"),
    ({"external": {"issuer": "https://idp.test"}}, "jwks_url is required"),
    ({"external": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/c", "roles": "x"}},
     "[auth.external] has unknown key(s) roles"),
    ({"external": {"issuer": "https://idp.test", "jwks_url": "http://idp.test/certs"}}, "must use https"),
    ({"external": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/c", "algorithms": ["HS256"]}},
     "HS256 not accepted"),
    ({"external": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/c", "algorithms": ["none"]}},
     "none not accepted"),
    ({"external": {"issuer": "https://idp.test", "jwks_url": "https://idp.test/c", "role_map": {"a": 1}}},
     "role_map.a"),
])
def test_mistakes_are_refused_with_what_to_do(tmp_path: Path, raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(tmp_path, **raw)
    assert message in str(exc.value)


def test_external_defaults(tmp_path: Path) -> None:
    auth = parse(tmp_path, audience="hutong-x",
                 external={"issuer": "https://idp.test/realms/gov/", "jwks_url": "http://127.0.0.1:9/certs",
                           "trust_department": True})
    ext = auth.external
    assert ext is not None
    assert ext.issuer == "https://idp.test/realms/gov/", "compared exactly as the IdP writes it"
    assert ext.audience == "hutong-x"
    assert (ext.department_claim, ext.roles_claim, ext.client_id_claim) == ("department", "roles", "client_id")
    assert "HS256" not in ext.algorithms and ext.token_types == ("at+jwt", "application/at+jwt")


# --- keys ---------------------------------------------------------------------------------------


def test_the_signing_key_is_generated_owner_only_with_a_thumbprint_kid(tmp_path: Path) -> None:
    path = tmp_path / "run" / "signing-key.pem"
    ring = KeyRing.load(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert list(tmp_path.joinpath("run").iterdir()) == [path], "no temporary file left behind"
    again = KeyRing.load(path)
    assert again.signing.kid == ring.signing.kid, "generated once, then reused"
    # RFC 7638: SHA-256 over the required members, sorted, no whitespace.
    jwk = ring.jwks()["keys"][0]
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    digest = base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()
    assert jwk["kid"] == digest and jwk["alg"] == "ES256" and "d" not in jwk


def test_rsa_signing_keys_and_refused_key_types(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.pem"
    rsa.write_bytes(RSAKey.generate_key(2048, private=True).as_pem(private=True))
    assert KeyRing.load(rsa, generate=False).signing.alg == "RS256"
    ed = tmp_path / "ed.pem"
    ed.write_bytes(OKPKey.generate_key("Ed25519", private=True).as_pem(private=True))
    with pytest.raises(ConfigError, match="EC P-256 key"):
        KeyRing.load(ed, generate=False)
    public = tmp_path / "public.pem"
    public.write_bytes(ECKey.generate_key("P-256", private=True).as_pem(private=False))
    with pytest.raises(ConfigError, match="holds a public key"):
        KeyRing.load(public, generate=False)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key", encoding="utf-8")
    with pytest.raises(ConfigError, match="not a PEM key"):
        load_key_file(junk, private=True)
    with pytest.raises(ConfigError, match="cannot read"):
        load_key_file(tmp_path / "absent.pem", private=True)


def test_only_es256_and_rs256_keys_sign_but_p384_keys_still_verify(tmp_path: Path) -> None:
    # Authlib's RFC 9068 generator signs with joserfc's recommended algorithms only.
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(ECKey.generate_key("P-384", private=True).as_pem(private=True))
    with pytest.raises(ConfigError, match="ES384 key cannot sign access tokens: use an EC P-256 key"):
        KeyRing.load(p384, generate=False)
    ring = KeyRing.load(tmp_path / "new.pem", (p384,))
    assert sorted(ring.algorithms) == ["ES256", "ES384"]


def test_previous_keys_are_published_after_the_signing_key(tmp_path: Path) -> None:
    old = tmp_path / "old.pem"
    old.write_bytes(ECKey.generate_key("P-256", private=True).as_pem(private=True))
    ring = KeyRing.load(tmp_path / "new.pem", (old,))
    kids = [k["kid"] for k in ring.jwks()["keys"]]
    assert kids[0] == ring.signing.kid and len(kids) == 2
    assert all("d" not in k for k in ring.jwks()["keys"])
