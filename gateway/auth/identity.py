"""Who is calling: what a verified access token says, in the gateway's own terms."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["Identity"]


@dataclass(frozen=True)
class Identity:
    client_id: str  # the registered client (an application of a department), never a person
    department: str  # the department code the client acts for, e.g. "civil", "health"
    roles: frozenset[str]  # what authorisation decides on, e.g. {"street-office"}
    token_id: str | None  # the token's jti, for the audit trail (external IdPs may omit it)
    issuer: str
    expires_at: datetime  # UTC
