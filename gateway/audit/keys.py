"""The audit signing key: Ed25519, signing checkpoints (the chain head at a point in time).

Each key is named by its RFC 7638 JWK thumbprint (``key_id``). Verification trusts the current
key and ``previous_keys`` from the configuration, or keys given explicitly; the public keys an
export file carries are used only when nothing else is at hand, and verify says so.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.config import ConfigError

__all__ = ["AuditKeys", "fingerprint", "generate_key_file", "jwk_of", "key_id", "load_private_key",
           "load_public_keys", "parse_public_keys", "public_key_from_jwk"]

log = logging.getLogger("hutong.audit")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    """RFC 7638 thumbprint: SHA-256 of the canonical JWK members, base64url."""
    members = orjson.dumps({"crv": "Ed25519", "kty": "OKP", "x": _b64(_raw(key))}, option=orjson.OPT_SORT_KEYS)
    return _b64(hashlib.sha256(members).digest())


def jwk_of(key: Ed25519PublicKey) -> dict[str, Any]:
    return {"kty": "OKP", "crv": "Ed25519", "x": _b64(_raw(key)), "kid": key_id(key), "alg": "EdDSA",
            "use": "sig"}


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex in pairs: what to read out and compare by another channel."""
    return ":".join(f"{b:02x}" for b in hashlib.sha256(_raw(key)).digest())


def public_key_from_jwk(jwk: dict[str, Any]) -> Ed25519PublicKey:
    if not isinstance(jwk, dict) or jwk.get("kty") != "OKP" or jwk.get("crv") != "Ed25519" \
            or not isinstance(jwk.get("x"), str):
        raise ValueError("not an Ed25519 public JWK")
    x = jwk["x"]
    try:
        key = Ed25519PublicKey.from_public_bytes(base64.urlsafe_b64decode(x + "=" * (-len(x) % 4)))
    except (ValueError, TypeError):
        raise ValueError("not an Ed25519 public JWK") from None
    if "kid" in jwk and jwk["kid"] != key_id(key):
        raise ValueError(f"the JWK's kid {jwk['kid']!r} is not its key's thumbprint ({key_id(key)})")
    return key


def parse_public_keys(data: bytes, where: str) -> list[Ed25519PublicKey]:
    """Public keys from a PEM key (either half), a JWK as `hutong audit key` prints it, or a JWK Set."""
    text = data.strip()
    if text.startswith(b"{"):
        try:
            doc = orjson.loads(text)
            jwks = doc["keys"] if isinstance(doc, dict) and "keys" in doc else [doc]
            if not isinstance(jwks, list) or not jwks:
                raise ValueError("an empty JWK Set")
            return [public_key_from_jwk(j) for j in jwks]
        except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"{where}: not an Ed25519 public JWK or JWK Set ({exc})") from None
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError):
            raise ConfigError(f"{where} is not a PEM key or a JWK") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{where}: audit keys are Ed25519 keys")
    return [key]


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit signing key {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: the audit signing key must be an Ed25519 key "
                          "(openssl genpkey -algorithm ed25519)")
    return key


def load_public_keys(path: Path) -> list[Ed25519PublicKey]:
    """The public keys in a file: PEM (either half: a private key gives its public half), a JWK as
    `hutong audit key` prints it, or a JWK Set."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the audit key {path}: {exc.strerror}") from None
    return parse_public_keys(data, str(path))


def generate_key_file(path: Path) -> None:
    """Write a new Ed25519 private key, owner-only; several workers may race: exactly one wins."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption())
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-key-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
            log.warning("generated a new audit signing key at %s; keep it (and a copy of its public key, "
                        "`hutong audit key`) safe: it proves the audit trail was not rewritten", path)
    finally:
        os.unlink(tmp)


@dataclass
class AuditKeys:
    """The key that signs checkpoints (may be None: a verifier only) and every trusted public key."""

    signing: Ed25519PrivateKey | None
    trusted: dict[str, Ed25519PublicKey] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.signing is not None:
            self.trusted.setdefault(key_id(self.signing.public_key()), self.signing.public_key())

    @property
    def signing_id(self) -> str:
        if self.signing is None:
            raise ValueError("no audit signing key loaded")
        return key_id(self.signing.public_key())

    @classmethod
    def load(cls, signing_key: Path, previous_keys: tuple[Path, ...] = (), *, generate: bool = True) -> AuditKeys:
        if not signing_key.exists():
            if not generate:
                raise ConfigError(f"there is no audit signing key at {signing_key} yet: `hutong audit init` creates "
                                  "it (and the audit tables)")
            generate_key_file(signing_key)
        mode = signing_key.stat().st_mode if signing_key.exists() else 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the audit signing key %s is readable by other users (mode %o): chmod 600 it",
                        signing_key, stat.S_IMODE(mode))
        trusted = {key_id(k): k for p in previous_keys for k in load_public_keys(p)}
        return cls(load_private_key(signing_key), trusted)

    @classmethod
    def public_only(cls, keys: list[Ed25519PublicKey]) -> AuditKeys:
        return cls(None, {key_id(k): k for k in keys})

    def sign(self, message: bytes) -> str:
        if self.signing is None:
            raise ValueError("no audit signing key loaded")
        return _b64(self.signing.sign(message))

    def verify(self, kid: str, message: bytes, signature: str) -> bool:
        key = self.trusted.get(kid) if isinstance(kid, str) else None
        if key is None or not isinstance(signature, str):
            return False
        try:
            key.verify(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)), message)
        except (InvalidSignature, ValueError):
            return False
        return True

    def jwks(self) -> list[dict[str, Any]]:
        return [jwk_of(k) for k in self.trusted.values()]
