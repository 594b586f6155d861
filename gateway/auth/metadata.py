"""``GET /.well-known/jwks.json`` (RFC 7517) and ``GET /.well-known/oauth-authorization-server``
(RFC 8414): what a client or a department's API needs to get and verify tokens.

URLs are built from the configured issuer, never from the request's Host header, which a
caller controls.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.auth.keys import ASSERTION_ALGORITHMS, KeyRing
from gateway.auth.settings import AuthSettings

__all__ = ["MetadataEndpoints", "server_metadata"]

# Long enough to spare the gateway, short enough that a newly published key spreads before it signs.
MAX_AGE = 300


def server_metadata(config: AuthSettings, keys: KeyRing) -> dict[str, Any]:
    return {
        "issuer": config.issuer,
        "token_endpoint": config.token_endpoint,
        "jwks_uri": config.jwks_uri,
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],  # no authorization endpoint: machines only
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
        # Not registered by RFC 8414; says how access tokens are signed (RFC 9068 tokens, typ at+jwt).
        "access_token_signing_alg_values_supported": list(keys.algorithms),
    }


class MetadataEndpoints:
    def __init__(self, config: AuthSettings, keys: KeyRing) -> None:
        self.metadata = orjson.dumps(server_metadata(config, keys))
        self.jwks_doc = orjson.dumps(keys.jwks())

    async def jwks(self, _: Request) -> Response:
        return Response(self.jwks_doc, media_type="application/jwk-set+json",
                        headers={"Cache-Control": f"public, max-age={MAX_AGE}"})

    async def authorization_server(self, _: Request) -> Response:
        return Response(self.metadata, media_type="application/json",
                        headers={"Cache-Control": f"public, max-age={MAX_AGE}"})
