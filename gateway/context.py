"""Who asks, for what, on whose behalf: the request context every data request carries.

Like X-Road's userId and issue: a department app names the acting official
(``X-Acting-User``) and the case it serves (``X-Case-Id``), and declares a purpose
(``X-Purpose``) from the catalogue. Decisions, row rules and (later) consent and audit
read this context, never the raw headers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from catalog.model import Catalog
from gateway.errors import Code, RequestError
from policies.decide import Subject

__all__ = ["UNRESTRICTED", "RequestContext", "Unrestricted", "context_from_headers", "require_role"]

MAX_HEADER = 128


@dataclass(frozen=True, slots=True)
class RequestContext:
    subject: Subject
    purpose: str | None  # None on a request that reads only metadata
    acting_user: str | None
    case_id: str | None
    reject_unauthorized: bool = False  # fail the whole request instead of nulling denied fields
    request_id: str = ""


class Unrestricted:
    """In-process callers (tests, `hutong plan`, benchmarks) that bypass authorisation on purpose.

    The HTTP layer never builds one: every request from outside carries a RequestContext."""

    def __repr__(self) -> str:
        return "UNRESTRICTED"


UNRESTRICTED = Unrestricted()


def _clean(name: str, value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if len(value) > MAX_HEADER or not value.isprintable():
        raise RequestError(Code.BAD_REQUEST, f"the {name} header must be printable text of at most {MAX_HEADER} "
                                             "characters")
    return value


def context_from_headers(headers: dict[str, str] | object, subject: Subject, catalog: Catalog, *,
                         data_request: bool, reject_default: bool, request_id: str) -> RequestContext:
    """Validate the context headers. A request that fetches data must declare a known purpose, the
    acting official and the case; a metadata-only request (catalog, introspection) need not."""
    get = headers.get  # type: ignore[attr-defined]
    purpose = _clean("X-Purpose", get("x-purpose"))
    acting = _clean("X-Acting-User", get("x-acting-user"))
    case = _clean("X-Case-Id", get("x-case-id"))
    accepted = ", ".join(sorted(catalog.purposes)) or "(none defined)"
    if purpose is not None and purpose not in catalog.purposes:
        raise RequestError(Code.UNKNOWN_PURPOSE, f"unknown purpose in X-Purpose; accepted: {accepted}")
    if data_request:
        if purpose is None:
            raise RequestError(Code.PURPOSE_REQUIRED, f"declare the purpose of this request in the X-Purpose "
                                                      f"header; accepted: {accepted}")
        if acting is None:
            raise RequestError(Code.ACTING_USER_REQUIRED, "name the official acting in the X-Acting-User header")
        if case is None:
            raise RequestError(Code.CASE_ID_REQUIRED, "name the case this request serves in the X-Case-Id header")
    reject = _clean("X-Reject-Unauthorized", get("x-reject-unauthorized"))
    if reject is not None and reject.lower() not in ("true", "false"):
        # Anything else silently meaning "false" would override a server default of reject.
        raise RequestError(Code.BAD_REQUEST, "the X-Reject-Unauthorized header must be true or false")
    return RequestContext(subject, purpose, acting, case,
                          reject_default if reject is None else reject.lower() == "true", request_id)


def require_role(context: Mapping[str, Any], *roles: str) -> Subject:
    """The calling client (GraphQL context ``subject``) when it holds one of ``roles``; PermissionError
    otherwise, which the pipeline answers as FORBIDDEN. Every role-restricted query and mutation
    (audit log, consents, policy administration, sharing requests) checks its caller here."""
    subject = context.get("subject")
    if subject is None or not set(roles) & set(subject.roles):
        raise PermissionError(f"this needs a client with the role {' or '.join(repr(r) for r in roles)}")
    return subject  # type: ignore[no-any-return]
