"""``POST /oauth/token``: the client credentials grant (RFC 6749 §4.4), on Authlib's server.

``TokenServer`` is Authlib's framework-agnostic ``AuthorizationServer`` made concrete for this
gateway (Authlib ships no server integration for Starlette): ``create_oauth2_request``,
``handle_response``, ``query_client``, ``save_token`` and ``send_signal``. It registers:

- the grant: Authlib's ``ClientCredentialsGrant`` (``ClientCredentials``, which allows the three
  client authentication methods below);
- client authentication: Authlib's ``client_secret_basic`` and ``client_secret_post``, and its
  RFC 7523 ``JWTBearerClientAssertion`` as ``private_key_jwt`` (``client_auth``);
- the token: Authlib's RFC 9068 ``JWTBearerTokenGenerator`` (``tokens.AccessTokenGenerator``).

hutong's own, where Authlib has nothing: reading the form (``application/x-www-form-urlencoded``,
at most 16 KiB, no repeated parameter), ``invalid_request`` for a missing ``grant_type`` and for
more than one (or a malformed) client authentication, one ``invalid_client`` answer for every
authentication failure (Authlib's say "does not exist" for an unknown client, and answer 400 or
401 by method), and ``temporarily_unavailable`` (503) when the client store fails.

Authlib's server is synchronous: each request runs it in a worker thread, and the client store's
calls run back on the event loop (``client_auth.Clients``). The answer is a JWT access token and
its lifetime, never cached (``Cache-Control: no-store``); errors are RFC 6749 §5.2 JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qsl

import orjson
from authlib.oauth2.base import OAuth2Error
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    InvalidClientError,
    InvalidRequestError,
    OAuth2Request,
    UnsupportedGrantTypeError,
)
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.client_auth import AUTH_METHODS, Clients, OAuthClient, PrivateKeyJWT, check_one_method, oauth_text
from gateway.auth.errors import REALM
from gateway.auth.tokens import AccessTokenGenerator

__all__ = ["ClientCredentials", "TokenEndpoint", "TokenServer"]

log = logging.getLogger("hutong.auth")

FORM = "application/x-www-form-urlencoded"
MAX_FORM_BYTES = 16 * 1024  # a client assertion with an RSA signature is under 2 KiB
MAX_FIELDS = 16
WORKERS = 4  # token requests handled at once; scrypt runs are limited further (client_auth.HASH_CONCURRENCY)
INVALID_CLIENT = "client authentication failed: check the client id and secret (or the client assertion)"
GRANT_TYPES = "this token endpoint supports grant_type=client_credentials only"


class ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = AUTH_METHODS


class ClientAuthenticationFailed(InvalidClientError):
    """Every ``invalid_client``: one status, one description, one challenge, whatever failed."""

    status_code = 401
    description = INVALID_CLIENT

    def get_headers(self) -> list[tuple[str, str]]:
        # RFC 6749 §5.2 asks for the challenge when Basic was used; HTTP asks for one on every 401.
        # Authlib's InvalidClientError puts its (varying) description into the challenge instead.
        return [*OAuth2Error.get_headers(self), ("WWW-Authenticate", f'Basic realm="{REALM}"')]


class TemporarilyUnavailable(OAuth2Error):
    error = "temporarily_unavailable"
    status_code = 503
    description = "the client store is unavailable: retry in a few seconds"

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Retry-After", "5")]


class FormRequest(OAuth2Request):
    """A token request as Authlib reads it: the headers and the form hutong has already read."""

    def __init__(self, uri: str, headers: Headers, form: dict[str, str]) -> None:
        # Authlib refuses to build a request for a URI that is neither https nor loopback
        # (InsecureTransportError: RFC 6749 §3.2 asks for TLS). The gateway serves plain HTTP behind
        # the deployment's TLS-terminating proxy and cannot see which scheme the client used, so
        # the check would judge the proxy hop, not the client's; transport security stays the
        # deployment's (docs/identity.md). The request is built as the https URL and then carries
        # the configured token endpoint URL.
        super().__init__("POST", "https://" + uri.partition("://")[2], headers=headers)
        self.uri = uri
        self._form = form
        self.payload = BasicOAuth2Payload(form)

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return {}


class TokenServer(AuthorizationServer):
    """Authlib's authorization server with a token endpoint only: machines, no users."""

    def __init__(self, clients: Clients, tokens: AccessTokenGenerator, assertions: PrivateKeyJWT) -> None:
        super().__init__(scopes_supported=None)
        self.clients = clients
        self.register_grant(ClientCredentials)
        self.register_token_generator("default", tokens)
        self.register_client_auth_method(PrivateKeyJWT.CLIENT_AUTH_METHOD, assertions)

    def query_client(self, client_id: str) -> OAuthClient:
        return self.clients.query(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        # Nothing to store: the token is a self-contained JWT and revocation is per client.
        payload = token["access_token"].split(".")[1]
        jti = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]
        log.info("issued access token %s to client %r (%s) for %d s", jti, request.client.get_client_id(),
                 request.auth_method, token["expires_in"])

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass  # no signal system: the log records what happened

    def create_oauth2_request(self, request: Any) -> OAuth2Request:
        if not isinstance(request, OAuth2Request):
            raise TypeError("TokenEndpoint builds the request (FormRequest) before calling the server")
        return request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        return Response(orjson.dumps(body), status_code=status, headers=dict(headers),
                        media_type="application/json")

    def create_token_response(self, request: Any = None) -> Response:
        request = self.create_oauth2_request(request)
        if not request.payload.grant_type:
            # Authlib answers unsupported_grant_type; a missing parameter is invalid_request (§5.2).
            error = InvalidRequestError("grant_type is missing: send grant_type=client_credentials")
            return self.handle_error_response(request, error)
        return super().create_token_response(request)

    def authenticate_client(self, request: OAuth2Request, methods: list[str], endpoint: str = "token") -> OAuthClient:
        check_one_method(request.headers, request.form)
        return super().authenticate_client(request, methods, endpoint)

    def handle_error_response(self, request: OAuth2Request | None, error: OAuth2Error) -> Response:
        if isinstance(error, InvalidClientError) and not isinstance(error, ClientAuthenticationFailed):
            log.info("token request refused: invalid_client: %s", error.get_error_description())
            error = ClientAuthenticationFailed()
        elif isinstance(error, UnsupportedGrantTypeError):
            error.description = GRANT_TYPES  # Authlib's repeats the grant_type the client sent
        return super().handle_error_response(request, error)


class TokenEndpoint:
    """The Starlette side: reads the form, runs ``TokenServer`` in a worker thread."""

    def __init__(self, server: TokenServer, uri: str) -> None:
        self.server, self.uri = server, uri
        self._pool: ThreadPoolExecutor | None = None

    async def handle(self, request: Request) -> Response:
        try:
            form = await _form(request)
        except OAuth2Error as exc:
            return self.server.handle_error_response(None, exc)
        token_request = FormRequest(self.uri, request.headers, form)
        loop = asyncio.get_running_loop()
        self.server.clients.bind(loop)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="hutong-token")
        try:
            response: Response = await loop.run_in_executor(self._pool, self.server.create_token_response,
                                                            token_request)
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.error("token endpoint: the client store failed: %s", type(exc).__name__)
            return self.server.handle_error_response(token_request, TemporarilyUnavailable())
        return response

    def close(self) -> None:
        # Not waiting: a worker may be waiting for the event loop, which is the caller.
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


async def _form(request: Request) -> dict[str, str]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != FORM:
        raise InvalidRequestError(f"send the parameters as Content-Type: {FORM}")
    chunks, size = [], 0
    async for chunk in request.stream():  # counted as it arrives: a chunked upload has no Content-Length
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            raise InvalidRequestError(f"the request body is larger than {MAX_FORM_BYTES} bytes")
        chunks.append(chunk)
    try:
        pairs = parse_qsl(b"".join(chunks).decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS,
                          errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequestError("the form body is not valid UTF-8 form encoding") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 §3.2: parameters must not repeat
            raise InvalidRequestError(oauth_text(f"the parameter {name[:40]!r} is repeated"))
        form[name] = value
    return form
