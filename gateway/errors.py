"""Error codes and the GraphQL error objects the gateway returns.

Every error a client sees carries ``extensions.code``; messages say what is wrong and
what to do, and never carry a stack trace or a data value that was not the caller's own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["Code", "GraphQLErrorOut", "RequestError"]


class Code(StrEnum):
    BAD_REQUEST = "BAD_REQUEST"  # the HTTP request is not a GraphQL request
    GRAPHQL_PARSE_FAILED = "GRAPHQL_PARSE_FAILED"
    GRAPHQL_VALIDATION_FAILED = "GRAPHQL_VALIDATION_FAILED"
    BAD_USER_INPUT = "BAD_USER_INPUT"  # arguments or variables with wrong values (invalid keys, limits)
    OPERATION_NOT_FOUND = "OPERATION_NOT_FOUND"
    QUERY_TOO_DEEP = "QUERY_TOO_DEEP"  # nesting beyond max_depth
    QUERY_TOO_COSTLY = "QUERY_TOO_COSTLY"  # estimated cost over max_cost, or an answer over max_nodes objects
    RATE_LIMITED = "RATE_LIMITED"  # the client sent more than its rate allows (429, Retry-After)
    REQUEST_TIMEOUT = "REQUEST_TIMEOUT"  # the request took longer than request_timeout (504)
    REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"  # the body is larger than max_body (413)
    TOO_MANY_OPERATIONS = "TOO_MANY_OPERATIONS"  # a batch of more operations than max_operations
    INTROSPECTION_DISABLED = "INTROSPECTION_DISABLED"  # __schema / __type refused to this client
    VERIFY_LIMIT = "VERIFY_LIMIT"  # more verify claims than a request, or a subject's field per window, allows
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"
    NOT_ACCEPTABLE = "NOT_ACCEPTABLE"
    UNAUTHENTICATED = "UNAUTHENTICATED"  # no valid access token (401)
    SERVICE_UNAVAILABLE = "SERVICE_UNAVAILABLE"  # tokens cannot be checked now (client store or IdP down): 503
    PURPOSE_REQUIRED = "PURPOSE_REQUIRED"  # no X-Purpose header on a data request
    UNKNOWN_PURPOSE = "UNKNOWN_PURPOSE"  # X-Purpose names no catalogue purpose
    ACTING_USER_REQUIRED = "ACTING_USER_REQUIRED"  # no X-Acting-User header on a data request
    CASE_ID_REQUIRED = "CASE_ID_REQUIRED"  # no X-Case-Id header on a data request
    FORBIDDEN = "FORBIDDEN"  # the client's roles do not allow this query (auditLog, dataTracker)
    FORBIDDEN_FIELD = "FORBIDDEN_FIELD"  # policy or catalogue terms deny the field for this caller and purpose
    CONSENT_REQUIRED = "CONSENT_REQUIRED"  # a conditional field without the subject's consent or a legal basis
    CONSENT_EXPIRED = "CONSENT_EXPIRED"  # the subject's consent covering it has expired
    CONSENT_REVOKED = "CONSENT_REVOKED"  # ... was revoked
    CONSENT_PAUSED = "CONSENT_PAUSED"  # ... is paused
    CONSENT_FREQUENCY_EXCEEDED = "CONSENT_FREQUENCY_EXCEEDED"  # ... allows no more uses in this period
    OUTSIDE_CONSENT_RANGE = "OUTSIDE_CONSENT_RANGE"  # the record's date is outside the consent's data range
    CONSENT_UNAVAILABLE = "CONSENT_UNAVAILABLE"  # the consent store cannot be read: nothing conditional flows
    SOURCE_UNAVAILABLE = "SOURCE_UNAVAILABLE"
    SOURCE_TIMEOUT = "SOURCE_TIMEOUT"
    SOURCE_ERROR = "SOURCE_ERROR"
    ROW_LIMIT_EXCEEDED = "ROW_LIMIT_EXCEEDED"  # one fetch matched more than max_rows records
    AUDIT_UNAVAILABLE = "AUDIT_UNAVAILABLE"  # the request's audit record could not be written: no answer (503)
    POLICY_UNAVAILABLE = "POLICY_UNAVAILABLE"  # no policy could be loaded: nothing is shared (503)
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"


@dataclass
class GraphQLErrorOut:
    """One entry of the response's ``errors`` list."""

    message: str
    code: Code
    path: list[str | int] | None = None
    locations: list[dict[str, int]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.locations:
            out["locations"] = self.locations
        if self.path is not None:
            out["path"] = self.path
        out["extensions"] = {"code": self.code.value, **self.extra}
        return out


class RequestError(Exception):
    """The whole request fails before execution: no ``data`` (or ``data: null``) in the response."""

    def __init__(self, code: Code, message: str, status: int = 400, *,
                 errors: list[GraphQLErrorOut] | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.errors = errors or [GraphQLErrorOut(message, code)]
        self.headers = headers or {}
