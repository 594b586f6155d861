"""Limits on ``verify(...)`` claims: predicate-only access must not become the value by repetition.

One claim answers a yes/no question about one subject's field. Many claims rebuild the value: forty
aliased ``eq`` claims find a birth date, ``lt`` claims bisect it in about fifteen, a ``claim.in`` of
forty dates is forty guesses at once. So, per the caller's ``[limits]``:

- a request makes at most ``verify_claims`` claims (a ``claim.in`` of N values counts N):
  ``VERIFY_LIMIT``, 400, before anything runs;
- each subject's field answers at most ``verify_budget`` claims to one client per ``verify_window``
  hours (``VERIFY_LIMIT``, 429 with ``Retry-After``), counted after authorisation, before the source
  is asked. The budget lives in the rate-limit store: shared by every worker through Redis.

Every claim's subject is recorded in the request's audit record whatever the answer (a ``false``
also tells something about the person), so it shows in the data tracker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gateway.audit.entry import SubjectHasher
from gateway.errors import Code, RequestError
from gateway.limits import Limits
from gateway.plan import Plan, RootVerify
from gateway.rate_limit import RateLimiter
from resolvers.query import Op

__all__ = ["Claim", "check_claims", "claims_of", "spend_claims"]


@dataclass(frozen=True, slots=True)
class Claim:
    key: str  # the response key (alias) of the verify root
    pseudonym: str  # whom the claim is about: the audit pseudonym of the subject's key (never the key)
    field: str  # dataset.field the claim tests
    weight: int  # guesses it makes: the values of a claim.in, else 1


def claims_of(plan: Plan, hasher: SubjectHasher) -> list[Claim]:
    out: list[Claim] = []
    fetches = {f.id: f for f in plan.fetches}
    for root in plan.roots:
        if not isinstance(root, RootVerify):
            continue
        fetch = fetches[root.fetch]
        cond = fetch.query.conditions[0]  # the claim (row rules are added after, by authorisation)
        weight = len(cond.value) if cond.op is Op.IN else 1
        assert fetch.literal_keys is not None
        out.append(Claim(root.key, hasher(str(fetch.literal_keys[0])), f"{fetch.dataset}.{cond.column}", weight))
    return out


def check_claims(claims: list[Claim], limits: Limits) -> None:
    """Refuse, before anything runs, more claims than one request may make."""
    total = sum(c.weight for c in claims)
    if total > limits.verify_claims:
        raise RequestError(Code.VERIFY_LIMIT, f"the request makes {total} verify claims (each value of a claim.in "
                           f"counts), more than this client's verify_claims ({limits.verify_claims})", 400)


async def spend_claims(claims: list[Claim], limiter: RateLimiter, client_id: str, limits: Limits) -> None:
    """Take each claim from its (client, subject, field) budget; refuse the request when one is spent."""
    rate = limits.verify_budget / (limits.verify_window * 3600.0)
    for c in claims:
        # The subject only as its pseudonym: the store (Redis) never holds a raw ID number.
        bucket = f"{client_id}:{c.pseudonym}:{c.field}"
        for _ in range(c.weight):
            wait = await limiter.take(bucket, rate, limits.verify_budget)
            if wait > 0:
                retry = math.ceil(wait)
                raise RequestError(Code.VERIFY_LIMIT, f"{c.key}: this client has used its verify claims on "
                                   f"{c.field} of this subject ({limits.verify_budget} per "
                                   f"{limits.verify_window:g} hours): retry in {retry} s",
                                   429, headers={"Retry-After": str(retry)})
