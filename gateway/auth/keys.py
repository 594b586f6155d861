"""The gateway's token signing keys and the JWKS document that publishes their public halves.

One private key signs (``[auth] signing_key``); ``previous_keys`` are still published and
accepted, so that rotating the signing key never invalidates tokens already issued. Each key's
``kid`` is its RFC 7638 thumbprint, and its algorithm follows from its type: EC P-256 signs
ES256 (the default: compact, fast, understood by every JOSE library), P-384 ES384, RSA (2048
bits or more) RS256. A token is verified only with the algorithm of the key its ``kid`` names.
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

__all__ = ["KeyRing", "PublicKey", "generate_key_file", "key_algorithm", "load_key_file"]

log = logging.getLogger("hutong.auth")

Key = ECKey | RSAKey | OKPKey


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
        if key.raw_value.key_size < 2048:
            raise ValueError(f"an RSA key of {key.raw_value.key_size} bits is too weak: use 2048 bits or more")
        return "RS256"
    if allow_eddsa and isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return "EdDSA"
    raise ValueError("unsupported key type: use an EC P-256 key (recommended) or an RSA key of 2048 bits or more")


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
