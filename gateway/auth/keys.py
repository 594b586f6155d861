"""The gateway's token signing keys and the JWKS document that publishes their public halves.

One private key signs (``[auth] signing_key``); ``previous_keys`` are still published and
accepted, so that rotating the signing key never invalidates tokens already issued. Each key's
``kid`` is its RFC 7638 thumbprint, and its algorithm follows from its type: EC P-256 signs
ES256 (the default: compact, fast, understood by every JOSE library), RSA (2048 bits or more)
RS256. A token is verified only with the algorithm of the key its ``kid`` names. The signing key
is one of those two (``SIGNING_ALGORITHMS``): Authlib's RFC 9068 token generator signs through
joserfc's default registry, which allows only joserfc's recommended algorithms (HS256, RS256,
ES256; HS256 is symmetric, never used). ``previous_keys``, which only verify, may also be EC
P-384 (ES384) or P-521 (ES512).

Clients' keys (``private_key_jwt``) follow the same idea: ``client_key_algorithms`` says which
algorithms a registered key may sign client assertions with, from its type alone (RSA: RS256 and
PS256; EC P-256, P-384, P-521: ES256, ES384, ES512; Ed25519: EdDSA or its RFC 9864 name Ed25519).
``ASSERTION_ALGORITHMS`` is their union: exactly what the token endpoint accepts and advertises.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey, OKPKey, RSAKey

from gateway.config import ConfigError

__all__ = ["ASSERTION_ALGORITHMS", "SIGNING_ALGORITHMS", "Key", "KeyRing", "PublicKey", "client_key_algorithms",
           "generate_key_file", "key_algorithm", "load_key_file"]

log = logging.getLogger("hutong.auth")

Key = ECKey | RSAKey | OKPKey
MIN_RSA_BITS = 2048
# The algorithms a client's registered key may sign its assertions with, by key type and curve.
# Never HS* (a shared secret: keyed with a public key it is the HS/RS confusion attack), never "none".
CLIENT_KEY_ALGORITHMS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("EC", "P-521"): ("ES512",),
    ("RSA", None): ("RS256", "PS256"),
    ("OKP", "Ed25519"): ("EdDSA", "Ed25519"),  # one signature, two names (RFC 8037, RFC 9864)
}
ASSERTION_ALGORITHMS: tuple[str, ...] = tuple(a for algs in CLIENT_KEY_ALGORITHMS.values() for a in algs)
# What the gateway's own signing key may sign access tokens with: asymmetric, and what Authlib's
# JWTBearerTokenGenerator can sign (joserfc's recommended algorithms).
SIGNING_ALGORITHMS = ("ES256", "RS256")


@dataclass(frozen=True)
class PublicKey:
    kid: str
    alg: str
    key: Key  # may hold the private half: only as_jwk() leaves the process

    def as_jwk(self) -> dict[str, Any]:
        return {**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg, "use": "sig"}


def key_algorithm(key: Key, *, allow_eddsa: bool = False) -> str:
    """The JWS algorithm a key signs with, or ValueError saying which keys are accepted."""
    if isinstance(key, ECKey) and key.curve_name in ("P-256", "P-384", "P-521"):
        return {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}[key.curve_name]
    if isinstance(key, RSAKey):
        _check_rsa_size(key)
        return "RS256"
    if allow_eddsa and isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return "EdDSA"
    raise ValueError("unsupported key type: use an EC P-256 key (recommended) or an RSA key of 2048 bits or more")


def client_key_algorithms(key: Key) -> tuple[str, ...]:
    """The algorithms a client's public key may sign client assertions with (``private_key_jwt``),
    or ValueError saying which keys are accepted."""
    if isinstance(key, RSAKey):
        _check_rsa_size(key)
        return CLIENT_KEY_ALGORITHMS[("RSA", None)]
    curve = key.curve_name if isinstance(key, ECKey | OKPKey) else None
    algs = CLIENT_KEY_ALGORITHMS.get((key.key_type, curve)) if curve else None
    if algs is None:
        kind = f"{key.key_type} {curve}" if curve else key.key_type
        raise ValueError(f"unsupported key type ({kind}): register an EC P-256 (recommended), P-384 or P-521 key, "
                         f"an RSA key of {MIN_RSA_BITS} bits or more, or an Ed25519 key")
    return algs


def _check_rsa_size(key: RSAKey) -> None:
    bits = key.raw_value.key_size
    if bits < MIN_RSA_BITS:
        raise ValueError(f"an RSA key of {bits} bits is too weak: use {MIN_RSA_BITS} bits or more")


def load_key_file(path: Path, *, private: bool) -> Key:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the key file {path}: {exc.strerror}") from None
    for cls in (ECKey, RSAKey, OKPKey):
        try:
            key: Key = cls.import_key(data)
        except Exception:  # joserfc/cryptography raise several kinds for a key of another type
            continue
        if private and not key.is_private:
            raise ConfigError(f"{path} holds a public key; the signing key must be the private key (PEM)")
        return key
    raise ConfigError(f"{path} is not a PEM key the gateway can use (EC P-256 or RSA)")


def generate_key_file(path: Path) -> None:
    """Write a new EC P-256 private key, readable by the owner only. Several workers may start
    at once: the key is written to a temporary file and linked into place, so exactly one wins
    and nobody ever reads half a key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = ECKey.generate_key("P-256", private=True).as_pem(private=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".signing-key-")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        with contextlib.suppress(FileExistsError):  # another worker was first: use its key
            os.link(tmp, path)
            log.warning("generated a new token signing key at %s; production deployments should provision "
                        "their own (see docs/identity.md)", path)
    finally:
        os.unlink(tmp)


class KeyRing:
    """The signing key and every key tokens are verified with, by kid."""

    def __init__(self, signing: Key, previous: list[Key] | None = None) -> None:
        self.signing = self._entry(signing)
        if self.signing.alg not in SIGNING_ALGORITHMS:
            raise ConfigError(f"token signing key: an {self.signing.alg} key cannot sign access tokens: use an EC "
                              "P-256 key (recommended) or an RSA key of 2048 bits or more")
        self.by_kid: dict[str, PublicKey] = {self.signing.kid: self.signing}
        for key in previous or []:
            entry = self._entry(key)
            self.by_kid.setdefault(entry.kid, entry)

    @staticmethod
    def _entry(key: Key) -> PublicKey:
        try:
            alg = key_algorithm(key)
        except ValueError as exc:
            raise ConfigError(f"token signing key: {exc}") from None
        return PublicKey(kid=key.thumbprint(), alg=alg, key=key)

    @classmethod
    def load(cls, signing_key: Path, previous_keys: tuple[Path, ...] = (), *, generate: bool = True) -> KeyRing:
        if not signing_key.exists() and generate:
            generate_key_file(signing_key)
        mode = signing_key.stat().st_mode if signing_key.exists() else 0
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the token signing key %s is readable by other users (mode %o): chmod 600 it",
                        signing_key, stat.S_IMODE(mode))
        return cls(load_key_file(signing_key, private=True),
                   [load_key_file(p, private=False) for p in previous_keys])

    @property
    def algorithms(self) -> tuple[str, ...]:
        return tuple(sorted({k.alg for k in self.by_kid.values()}))

    def jwks(self) -> dict[str, Any]:
        """The JWKS document: public parameters only, the signing key first."""
        return {"keys": [k.as_jwk() for k in self.by_kid.values()]}
