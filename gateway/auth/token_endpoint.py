"""``POST /oauth/token``: the client credentials grant (RFC 6749 §4.4).

The request is form-encoded (``application/x-www-form-urlencoded``); the answer is a JWT access
token (RFC 9068) and its lifetime, never cached (``Cache-Control: no-store``). Errors are RFC 6749
§5.2 JSON: ``invalid_request``, ``invalid_client`` (401, with a ``WWW-Authenticate: Basic``
challenge), ``unsupported_grant_type``.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

import orjson
from sqlalchemy.exc import SQLAlchemyError
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.client_auth import ClientAuthenticator, OAuthError, credentials
from gateway.auth.errors import REALM
from gateway.auth.tokens import TokenIssuer

__all__ = ["TokenEndpoint", "oauth_error_response"]

log = logging.getLogger("hutong.auth")

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024  # a client assertion with an RSA signature is under 2 KiB
MAX_FIELDS = 16
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                    headers={**NO_STORE, **(headers or {})})


def oauth_error_response(err: OAuthError) -> Response:
    headers = {}
    if err.status == 401:
        # RFC 6749 §5.2 asks for the challenge when Basic was used; HTTP asks for one on every 401.
        headers["WWW-Authenticate"] = f'Basic realm="{REALM}"'
    return _json({"error": err.error, "error_description": err.description}, err.status, headers)


class TokenEndpoint:
    def __init__(self, authenticator: ClientAuthenticator, issuer: TokenIssuer) -> None:
        self.authenticator, self.issuer = authenticator, issuer

    async def handle(self, request: Request) -> Response:
        try:
            form = await _form(request)
            grant = form.get("grant_type")
            if not grant:
                raise OAuthError("invalid_request", "grant_type is missing: send grant_type=client_credentials")
            if grant != "client_credentials":
                raise OAuthError("unsupported_grant_type",
                                 "this token endpoint supports grant_type=client_credentials only")
            creds = credentials(request.headers.get("authorization"), form)
            client = await self.authenticator.authenticate(creds)
        except OAuthError as exc:
            return oauth_error_response(exc)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("token endpoint: the client store failed: %s", type(exc).__name__)
            return _json({"error": "temporarily_unavailable",
                          "error_description": "the client store is unavailable: retry in a few seconds"},
                         503, {"Retry-After": "5"})
        token = self.issuer.issue(client)
        log.info("issued access token %s to client %r (%s) for %d s", token.token_id, client.client_id,
                 creds.method, token.expires_in)
        return _json({"access_token": token.access_token, "token_type": "Bearer", "expires_in": token.expires_in})


async def _form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != FORM:
        raise OAuthError("invalid_request", f"send the parameters as Content-Type: {FORM}")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked upload has no Content-Length
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", f"the request body is larger than {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    try:
        pairs = parse_qsl(b"".join(chunks).decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the form body is not valid UTF-8 form encoding") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 §3.2: parameters must not repeat
            raise OAuthError("invalid_request", f"the parameter {name[:40]!r} is repeated")
        form[name] = value
    return form
