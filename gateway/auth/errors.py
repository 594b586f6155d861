"""Why a bearer token was refused: one reason code per failed check, and a fixed message for each.

The reason names the check that failed (``expired``, ``wrong_audience``...), never the key,
the secret or the value that was expected: a caller learns what to fix, an attacker learns
nothing the published metadata does not already say. Claims are judged only after the
signature verified, so a forger sees ``malformed`` or ``bad_signature`` and nothing else.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AuthError", "Reason"]

REALM = "hutong"


class Reason(StrEnum):
    MISSING = "missing"  # no Authorization: Bearer header
    TOO_LARGE = "too_large"  # token (or header) beyond MAX_TOKEN_BYTES: refused before parsing
    MALFORMED = "malformed"  # not a compact JWS, bad base64/JSON, missing required claims
    BAD_SIGNATURE = "bad_signature"  # unknown key, algorithm not allowed (none, HS*), signature mismatch
    UNSUPPORTED_TOKEN_TYPE = "unsupported_token_type"  # typ is not at+jwt (an ID token, a client assertion)
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # nbf (or iat) in the future beyond the clock leeway
    UNMAPPED_CLAIMS = "unmapped_claims"  # external IdP token without a client id or department the config maps
    REVOKED_CLIENT = "revoked_client"  # the client was disabled after the token was issued
    UNAVAILABLE = "unavailable"  # the client store or the IdP's JWKS cannot be reached: 503, retry


MESSAGES: dict[Reason, str] = {
    Reason.MISSING: "send an access token in the header Authorization: Bearer <token>; "
                    "get one from the token endpoint (see /.well-known/oauth-authorization-server)",
    Reason.TOO_LARGE: "the access token is too large to be one the gateway issued",
    Reason.MALFORMED: "the access token is not a well-formed signed JWT access token",
    Reason.BAD_SIGNATURE: "the access token is not signed by a key and algorithm the gateway trusts",
    Reason.UNSUPPORTED_TOKEN_TYPE: "the token is not an access token (its typ header must be at+jwt)",
    Reason.WRONG_ISSUER: "the access token was issued by an issuer the gateway does not trust",
    Reason.WRONG_AUDIENCE: "the access token was issued for another audience",
    Reason.EXPIRED: "the access token has expired: request a new one",
    Reason.NOT_YET_VALID: "the access token is not valid yet: check the client's clock",
    Reason.UNMAPPED_CLAIMS: "the access token does not carry the client and department claims the gateway needs",
    Reason.REVOKED_CLIENT: "the client this access token was issued to has been disabled",
    Reason.UNAVAILABLE: "the gateway cannot check access tokens right now: retry in a few seconds",
}


class AuthError(Exception):
    """A request's bearer token was refused (401), or could not be checked (503)."""

    def __init__(self, reason: Reason, message: str | None = None) -> None:
        self.reason = reason
        self.message = message or MESSAGES[reason]
        super().__init__(f"{reason.value}: {self.message}")

    @property
    def status(self) -> int:
        return 503 if self.reason is Reason.UNAVAILABLE else 401

    @property
    def www_authenticate(self) -> str:
        """The RFC 6750 §3 challenge. No error attribute when no token was sent (§3.1)."""
        if self.reason is Reason.MISSING:
            return f'Bearer realm="{REALM}"'
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{_quotable(self.message)}"'


def _quotable(text: str) -> str:
    # RFC 6750 §3: error_description is limited to printable ASCII without '"' and '\'.
    return "".join(c if 0x20 <= ord(c) <= 0x7E and c not in '"\\' else "?" for c in text)
