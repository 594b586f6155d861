"""GraphQL over HTTP (GraphQL Foundation specification) for the ``/graphql`` endpoint.

- ``POST`` with ``Content-Type: application/json``; ``GET`` with ``query``, ``operationName``
  and ``variables`` (JSON) parameters, for queries only.
- Responses are ``application/graphql-response+json`` when the client accepts it: then a
  request that fails before execution (parse, validation, variables) gets 400. Clients
  that accept only ``application/json`` get 200 for any well-formed request, as the
  specification asks for compatibility; malformed requests get 400 either way.
- A browser navigating to ``GET /graphql`` gets the offline explorer.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from catalog.keys import scrub_keys
from gateway.accept import best_of
from gateway.audit.entry import answer_withheld, part_record, request_record
from gateway.audit.errors import AuditUnavailable
from gateway.auth.bearer import auth_error_response
from gateway.auth.errors import AuthError
from gateway.context import RequestContext, context_from_headers
from gateway.cutoffs import Cutoffs
from gateway.errors import Code, GraphQLErrorOut, RequestError
from gateway.explorer import explorer_page, wants_explorer
from gateway.limits import Limits
from gateway.logs import where
from gateway.pipeline import Gateway, Outcome
from gateway.rate_limit import MemoryRateLimiter
from gateway.stream import StreamedAnswer
from policies.decide import Subject

__all__ = ["graphql_endpoint", "json_response"]

log = logging.getLogger("hutong.http")

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
# 1 MiB of JSON is far beyond any legitimate query with its variables.
MAX_BODY = 1 << 20
# What a newcomer sees first in the explorer: what exists, who provides it, on what terms.
EXPLORER_QUERY = """# Welcome to hutong. Every request needs an access token: get one from /oauth/token
# (see /.well-known/oauth-authorization-server) and put it in the Headers tab below:
#   {"Authorization": "Bearer <token>"}
# Data queries also need X-Purpose, X-Acting-User and X-Case-Id headers.
# This query shows what the departments share; myAccess shows what you may use.
{
  catalog {
    datasets {
      code name provider { code name }
      fields { graphqlPath type shareType sensitivity }
    }
  }
}
"""


def json_response(body: Any, status: int = 200, media_type: str = JSON,
                  headers: dict[str, str] | None = None) -> Response:
    content = orjson.dumps(body, option=orjson.OPT_NON_STR_KEYS)
    return Response(content, status_code=status, media_type=f"{media_type}; charset=utf-8", headers=headers)


Operation = tuple[Any, Any, Any]  # query, operationName, variables


async def _params(request: Request, max_body: int = MAX_BODY, max_operations: int = 1) -> list[Operation] | Operation:
    """One operation, or (a JSON array in the body) a batch of at most ``max_operations``."""
    if request.method == "GET":
        qp = request.query_params
        variables: Any = None
        if qp.get("variables"):
            try:
                variables = orjson.loads(qp["variables"])
            except orjson.JSONDecodeError:
                raise RequestError(Code.BAD_REQUEST, "the variables parameter is not valid JSON") from None
        return qp.get("query"), qp.get("operationName"), variables

    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != JSON:
        raise RequestError(Code.UNSUPPORTED_MEDIA_TYPE,
                           f"send the request as Content-Type: application/json (got {ctype or 'none'!r})", 415)
    too_large = RequestError(Code.REQUEST_TOO_LARGE, f"the request body is larger than {max_body} bytes "
                             "(max_body): send a shorter query, or fewer keys per request", 413)
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise RequestError(Code.BAD_REQUEST, "the Content-Length header is not a number")
    if int(declared or 0) > max_body:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():  # counted as it arrives: a chunked upload has no Content-Length
        size += len(chunk)
        if size > max_body:
            raise too_large
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestError(Code.BAD_REQUEST, f"the request body is not valid JSON ({exc.args[0]})") from None
    if isinstance(body, list):
        if max_operations <= 1:
            raise RequestError(Code.TOO_MANY_OPERATIONS, "batched requests (a JSON array) are not accepted from "
                               "this client (max_operations = 1): send one operation per request")
        if not body or len(body) > max_operations:
            raise RequestError(Code.TOO_MANY_OPERATIONS, f"a batch holds 1 to {max_operations} operations "
                               f"(max_operations), this one {len(body)}: split it")
        if not all(isinstance(op, dict) for op in body):
            raise RequestError(Code.BAD_REQUEST, "every operation of a batch must be a JSON object with a 'query'")
        return [(op.get("query"), op.get("operationName"), op.get("variables")) for op in body]
    if not isinstance(body, dict):
        raise RequestError(Code.BAD_REQUEST, "the request body must be a JSON object with a 'query' string")
    return body.get("query"), body.get("operationName"), body.get("variables")


async def graphql_endpoint(request: Request) -> Response:
    gateway: Gateway = request.app.state.gateway
    started = time.perf_counter()
    request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    if len(request_id) > 64 or not request_id.replace("-", "").isalnum() or _holds_key(request_id):
        request_id = uuid.uuid4().hex  # never echo arbitrary header text back, nor keep a key in records
    # The same URL answers HTML (explorer) or JSON depending on Accept: caches must know.
    headers = {"X-Request-Id": request_id, "Vary": "Accept"}

    explorer = request.method == "GET" and wants_explorer(request)
    if explorer:
        return explorer_page(request, request.query_params.get("query") or EXPLORER_QUERY)
    media = best_of(request.headers.get("accept"), (GRAPHQL_RESPONSE, JSON))

    record = _Recorder(request, request_id, started)
    address = f"address:{request.client.host if request.client else '-'}"
    failures: MemoryRateLimiter = request.app.state.auth_failures
    cutoffs: Cutoffs = request.app.state.cutoffs
    wait = failures.wait_now(address, gateway.limits.failed_auth_rate, gateway.limits.failed_auth_burst)
    if wait > 0:  # this address keeps sending junk: refused before any check, counted (gateway/cutoffs.py)
        await cutoffs.refused(address)
        return _rate_limited("too many requests with an invalid access token from this address (send a valid "
                             "one)", wait, media or JSON, headers)[1]
    await cutoffs.let_through(address)  # served again: what its refusals left pending is recorded first

    def junk() -> None:
        """A request no endpoint can answer spends the address's bucket, as a bad token does."""
        failures.take_now(address, gateway.limits.failed_auth_rate, gateway.limits.failed_auth_burst)

    if request.method not in ("GET", "POST"):
        junk()
        err = GraphQLErrorOut(f"{request.method} is not supported: send queries with GET or POST",
                              Code.METHOD_NOT_ALLOWED)
        body = {"errors": [err.to_dict()]}
        return await record.then(json_response(body, 405, JSON, {**headers, "Allow": "GET, POST"}), status=405,
                                 body=body, audit={}, media=JSON, headers=headers)
    if media is None:
        junk()
        err = GraphQLErrorOut(f"cannot answer in any type the Accept header allows: accept {GRAPHQL_RESPONSE} "
                              f"or {JSON}", Code.NOT_ACCEPTABLE)
        body = {"errors": [err.to_dict()]}
        return await record.then(json_response(body, 406, JSON, headers), status=406, body=body, audit={},
                                 media=JSON, headers=headers)
    try:
        identity = await request.app.state.auth.authenticate(request)
    except AuthError as exc:
        junk()
        response = auth_error_response(exc, media)
        response.headers.update(headers)
        refused = {"errors": [{"extensions": {"code": Code.UNAUTHENTICATED.value}}]}
        return await record.then(response, status=exc.status, body=refused, audit={}, media=media,
                                 headers=headers)
    subject = Subject.of(identity.client_id, identity.department, identity.roles, identity.attributes)
    record.subject = subject
    record.token_id = identity.token_id
    limits = gateway.limits.of(identity.client_id)
    if limits.rate_limited:
        wait = await request.app.state.rate_limiter.take(identity.client_id, limits.rate, limits.burst)
        if wait > 0:
            body, response = _rate_limited(f"this client may send {limits.rate:g} requests per second (burst "
                                           f"{limits.burst})", wait, media, headers)
            return await record.then(response, status=429, body=body, audit={}, media=media, headers=headers)

    params: list[Operation] | Operation | None = None
    audit: dict[str, Any] = {}
    try:
        # The deadline covers reading the body, planning, the sources and consent (lifted once consent
        # uses are counted); the record of a request it stops keeps what was asked, durable before the 504.
        async with asyncio.timeout(limits.request_timeout) as deadline:
            params = await _params(request, limits.max_body, limits.max_operations)
            if not isinstance(params, list):
                query, operation_name, variables = params
                outcome = await gateway.run(query, operation_name, variables, context=record.context_of,
                                            method=request.method, stream=True, limits=limits, deadline=deadline,
                                            audit=audit)
    except Exception as exc:
        outcome = _failed(exc, request_id, limits, audit)

    if isinstance(params, list):  # a batch: each operation under its own deadline
        return await _batch(request, record, params, limits, media, headers)
    if outcome.stream is not None:
        return await record.streamed(outcome.stream, media=media, headers=headers)
    status = outcome.status
    if media == JSON and status == 400 and _code(outcome.body) not in _HTTP_LEVEL:
        status = 200  # application/json clients expect 200 for any well-formed GraphQL request
    response = json_response(outcome.body, status, media, {**headers, **outcome.headers})
    return await record.then(response, status=outcome.status, body=outcome.body, audit=outcome.audit,
                             media=media, headers=headers)


async def _batch(request: Request, first: _Recorder, operations: list[Operation], limits: Limits, media: str,
                 headers: dict[str, str]) -> Response:
    """A batch: each operation answered and recorded as a request of its own (request id ``ID-1``,
    ``ID-2``, ...), one after another, each under its own deadline; the answers as a JSON array.
    Each operation beyond the first spends a token of the client's rate; if any record cannot be
    written, no answer leaves."""
    gateway: Gateway = request.app.state.gateway
    assert first.subject is not None
    subject = first.subject
    if limits.rate_limited:
        for _ in operations[1:]:
            wait = await request.app.state.rate_limiter.take(subject.client_id, limits.rate, limits.burst)
            if wait > 0:
                body, response = _rate_limited(f"a batch of {len(operations)} operations is {len(operations)} "
                                               f"requests: more than this client's {limits.rate:g} per second (burst "
                                               f"{limits.burst}) allow", wait, media, headers)
                return await first.then(response, status=429, body=body, audit={}, media=media, headers=headers)
    bodies: list[dict[str, Any]] = []
    recorded: list[str] = []  # request ids of the operations whose records are written
    for i, (query, operation_name, variables) in enumerate(operations, 1):
        recorder = _Recorder(request, f"{first.request_id}-{i}", time.perf_counter())
        recorder.subject, recorder.token_id = subject, first.token_id
        audit: dict[str, Any] = {}
        try:
            async with asyncio.timeout(limits.request_timeout) as deadline:
                outcome = await gateway.run(query, operation_name, variables, context=recorder.context_of,
                                            limits=limits, deadline=deadline, audit=audit)
        except Exception as exc:
            outcome = _failed(exc, recorder.request_id, limits, audit)
        if not await recorder.write(outcome.status, outcome.body, outcome.audit):
            await _withheld(request, recorded)
            return _audit_unavailable(media, headers)
        recorded.append(recorder.request_id)
        bodies.append(outcome.body)
    return json_response(bodies, 200, media, headers)


def _failed(exc: Exception, request_id: str, limits: Limits, audit: dict[str, Any]) -> Outcome:
    """The answer of a request that ``Gateway.run`` (or reading it) did not complete."""
    if isinstance(exc, TimeoutError):  # the request's deadline: what was asked stays in its record
        err = GraphQLErrorOut(f"the request took longer than {limits.request_timeout:g} s (request_timeout) and was "
                              "stopped: ask for less, or retry later", Code.REQUEST_TIMEOUT)
        return Outcome(504, {"errors": [err.to_dict()]}, None, audit=audit)
    if isinstance(exc, RequestError):
        return Outcome(exc.status, {"errors": [e.to_dict() for e in exc.errors]}, None, exc.headers)
    # Type and place only: exception text may quote data values.
    log.error("request %s failed: %s at %s", request_id, type(exc).__name__, where(exc))
    err = GraphQLErrorOut(f"internal error; quote request id {request_id} to the operators",
                          Code.INTERNAL_SERVER_ERROR)
    return Outcome(500, {"errors": [err.to_dict()]}, audit=getattr(exc, "audit", {}))


async def _withheld(request: Request, request_ids: list[str]) -> None:
    """The batch's earlier operations were recorded as answered, but nothing is sent: say so, as far
    as the audit log can still be written (it just failed once)."""
    for rid in request_ids:
        try:
            await request.app.state.audit.append("admin", answer_withheld(rid))
        except AuditUnavailable:
            log.error("batch: could not record that the answer to %s was withheld", rid)
            return


def _rate_limited(message: str, wait: float, media: str, headers: dict[str, str]) -> tuple[dict[str, Any], Response]:
    """A 429 with ``Retry-After``: the body (for the record) and the response."""
    retry = str(max(1, math.ceil(wait)))
    body = {"errors": [GraphQLErrorOut(f"{message}: retry after {retry} s", Code.RATE_LIMITED).to_dict()]}
    return body, json_response(body, 429, media, {**headers, "Retry-After": retry})


def _audit_unavailable(media: str, headers: dict[str, str]) -> Response:
    err = GraphQLErrorOut("the audit log cannot record this request, so it is not answered: retry later",
                          Code.AUDIT_UNAVAILABLE)
    return json_response({"errors": [err.to_dict()]}, 503, media, {**headers, "Retry-After": "5"})


class _Recorder:
    """Writes the request's audit record before its response leaves (fail closed)."""

    def __init__(self, request: Request, request_id: str, started: float) -> None:
        self.request = request
        self.request_id = request_id
        self.started = started
        self.subject: Subject | None = None
        self.context: RequestContext | None = None
        self.token_id: str | None = None  # the access token's jti: which token asked (RFC 9068)

    def context_of(self, data_request: bool) -> RequestContext:
        """The request's context from its headers (``Gateway.run`` asks once it knows whether data is
        wanted), kept for the record."""
        gateway: Gateway = self.request.app.state.gateway
        assert self.subject is not None
        self.context = context_from_headers(self.request.headers, self.subject, gateway.catalog,
                                            data_request=data_request,
                                            reject_default=gateway.policy.reject_unauthorized,
                                            request_id=self.request_id)
        return self.context

    async def then(self, response: Response, *, status: int, body: dict[str, Any], audit: dict[str, Any],
                   media: str, headers: dict[str, str]) -> Response:
        if not await self.write(status, body, audit):
            return _audit_unavailable(media, headers)
        return response

    async def write(self, status: int, body: dict[str, Any], audit: dict[str, Any]) -> bool:
        """The request's record, durable; False if it could not be written (then no answer may leave:
        X-Road's rule, no record, no data)."""
        return await self._append(self._entry(status, body, audit))

    async def _append(self, entry: dict[str, Any]) -> bool:
        try:
            await self.request.app.state.audit.append("request", entry)
        except AuditUnavailable:
            log.error("request %s: audit record not written; answer withheld", self.request_id)
            return False
        return True


    async def streamed(self, answer: StreamedAnswer, *, media: str, headers: dict[str, str]) -> Response:
        """A page sent part by part: the request's record (with the first part's subjects) before the
        first byte, a record per later part before that part, a final one before the document closes."""
        entry = self._entry(200, {"data": {}}, answer.audit)  # its outcome: ok, as the part it opens
        if not await self._append(entry):
            return _audit_unavailable(media, headers)
        audit = self.request.app.state.audit

        async def record_part(part: int, subjects: set[str], rows: dict[str, int]) -> None:
            await audit.append("request-part", part_record(entry, part=part, subjects=subjects, rows=rows, final=False))

        async def record_end(part: int, codes: list[str]) -> None:
            if codes:
                log.log(logging.WARNING if codes == ["CLIENT_DISCONNECTED"] else logging.ERROR,
                        "request %s: streamed answer cut at part %d: %s", self.request_id, part, ", ".join(codes))
            await audit.append("request-part", part_record(
                entry, part=part, subjects=set(), rows={}, final=True, status=200 if not codes else 502, codes=codes,
                latency_ms=(time.perf_counter() - self.started) * 1000))

        return StreamingResponse(answer.body(record_part, record_end), media_type=f"{media}; charset=utf-8",
                                 headers=headers)

    def _entry(self, status: int, body: dict[str, Any], audit: dict[str, Any]) -> dict[str, Any]:
        gateway: Gateway = self.request.app.state.gateway
        ctx, subject = self.context, self.subject
        purpose = ctx.purpose if ctx else None
        entry = request_record(
            request_id=self.request_id, ip=self.request.client.host if self.request.client else None,
            client_id=subject.client_id if subject else None, department=subject.department if subject else None,
            acting_user=ctx.acting_user if ctx else None, case_id=ctx.case_id if ctx else None, purpose=purpose,
            legal_basis=gateway.catalog.purposes[purpose].legal_basis if purpose in gateway.catalog.purposes else None,
            status=status, body=body, audit=audit, latency_ms=(time.perf_counter() - self.started) * 1000,
            token_id=self.token_id)
        # Text the caller chose (aliases, operation and variable names, the case and official headers)
        # may carry an ID number: never kept raw, only as its pseudonym (kind:HMAC prefix).
        for name in _FREE_TEXT:
            if isinstance(entry.get(name), str):
                entry[name] = scrub_keys(entry[name], gateway.subjects)
        for f in entry["fields"]:  # response paths hold the aliases
            if isinstance(f.get("path"), str):
                f["path"] = scrub_keys(f["path"], gateway.subjects)
        return entry


_FREE_TEXT = ("query", "operation", "acting_user", "case_id")


def _holds_key(request_id: str) -> bool:
    """Whether a request id holds a key. A hex id (a UUID, a trace id) is checked for ID numbers only:
    its runs of digits would pass a credit code's checksum one time in 31."""
    hexadecimal = all(c in "0123456789abcdefABCDEF-" for c in request_id)
    kinds = ("id_number",) if hexadecimal else ("id_number", "credit_code")
    return scrub_keys(request_id, lambda _key: "", kinds) != request_id

# Refusals of the HTTP request itself, not of a GraphQL operation: 400 whatever the client accepts.
_HTTP_LEVEL = (Code.BAD_REQUEST.value, Code.TOO_MANY_OPERATIONS.value)


def _code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors") or [{}]
    return errors[0].get("extensions", {}).get("code")

