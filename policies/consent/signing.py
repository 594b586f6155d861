"""The gateway's signature on consent terms and on each status change.

The key is the gateway's Ed25519 key (the one that signs audit checkpoints, see
docs/audit.md), so one public key proves both the audit trail and the consents. A grant whose
terms or status fail their signature is treated as absent: a row widened or edited in the
database behind the gateway's back lets nothing through. Status changes form a signed chain
(each signs the one before); the store also checks that a grant's state is the last of its
chain, so replaying an older signed state (un-revoking) means cutting the history, which
``hutong consent verify`` finds against the audit log.
"""

from __future__ import annotations

from collections import OrderedDict
from datetime import UTC
from typing import Protocol

import orjson

from policies.consent.model import Grant, StatusEvent, Terms

__all__ = ["ConsentSigner", "state_message", "terms_message"]

_TERMS = b"hutong consent terms v1\0"
_STATE = b"hutong consent state v1\0"


def terms_message(terms: Terms) -> bytes:
    return _TERMS + orjson.dumps(terms.canonical(), option=orjson.OPT_SORT_KEYS)


def state_message(grant_id: str, event: StatusEvent, prev_signature: str) -> bytes:
    """A status change, chained to the one before by its signature."""
    stamp = event.at.astimezone(UTC).isoformat(timespec="microseconds")
    return _STATE + orjson.dumps([grant_id, event.status.value, event.seq, stamp, event.by, event.reason,
                                  prev_signature])


class Keys(Protocol):
    """What :class:`gateway.audit.keys.AuditKeys` offers (kept as a protocol: policies do not
    depend on the gateway)."""

    @property
    def signing_id(self) -> str: ...

    def sign(self, message: bytes) -> str: ...

    def verify(self, kid: str, message: bytes, signature: str) -> bool: ...


class ConsentSigner:
    """Signs with the gateway key; verifies against every trusted key, remembering good answers."""

    def __init__(self, keys: Keys, cache_size: int = 65_536) -> None:
        self.keys = keys
        self._good: OrderedDict[tuple[bytes, bytes, str, str], None] = OrderedDict()
        self._size = cache_size

    @property
    def key_id(self) -> str:
        return self.keys.signing_id

    def sign_terms(self, terms: Terms) -> str:
        return self.keys.sign(terms_message(terms))

    def sign_state(self, grant_id: str, event: StatusEvent, prev_signature: str) -> str:
        return self.keys.sign(state_message(grant_id, event, prev_signature))

    def verify_event(self, key_id: str, grant_id: str, event: StatusEvent, prev_signature: str) -> bool:
        return self.keys.verify(key_id, state_message(grant_id, event, prev_signature), event.signature)

    def verify(self, grant: Grant) -> bool:
        """Both signatures hold. Verified messages with their signatures are cached (the cache key is
        the signed content itself, so an edited row misses it): an Ed25519 check costs ~50 µs, and
        the same grants are read request after request."""
        terms = terms_message(grant.terms)
        state = state_message(grant.id, grant.last_event, grant.prev_signature)
        memo = (terms, state, grant.signature, grant.state_signature)
        if memo in self._good:
            self._good.move_to_end(memo)
            return True
        ok = (self.keys.verify(grant.key_id, terms, grant.signature)
              and self.keys.verify(grant.key_id, state, grant.state_signature))
        if ok:
            self._good[memo] = None
            if len(self._good) > self._size:
                self._good.popitem(last=False)
        return ok
