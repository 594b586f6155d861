"""The identity half of the gateway in one object: keys, client store, token endpoint, verifier.

```python
auth = AuthService.from_settings(settings)
await auth.start()                 # tables, demo clients or the demo-secret refusal
routes = auth.routes()             # /oauth/token and /.well-known/...
identity = await auth.authenticate(request)   # or AuthError
await auth.close()
```
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from starlette.requests import Request
from starlette.routing import Route

from gateway.auth.bearer import BearerAuth, ClientStatusCache, Verifier
from gateway.auth.client_auth import Clients, PrivateKeyJWT
from gateway.auth.clients import ClientStore
from gateway.auth.demo import ensure_demo_clients, refuse_demo_secrets
from gateway.auth.external import ExternalVerifier, RemoteJWKS
from gateway.auth.identity import Identity
from gateway.auth.keys import KeyRing
from gateway.auth.metadata import MetadataEndpoints
from gateway.auth.settings import AuthSettings
from gateway.auth.token_endpoint import TokenEndpoint, TokenServer
from gateway.auth.tokens import AccessTokenGenerator, LocalVerifier
from gateway.config import Settings

__all__ = ["AuthService"]

JWKS_TIMEOUT = httpx.Timeout(5.0)


class AuthService:
    """Owns what identity needs for the life of one gateway process.

    With ``[auth.external]`` the gateway trusts that identity provider instead of issuing
    tokens: ``routes()`` is empty (clients get tokens from the IdP) and no signing key is loaded.
    The client store is still read, so ``hutong client disable`` can cut off an IdP client here.
    """

    def __init__(self, config: AuthSettings, store: ClientStore | None = None, *,
                 clock: Callable[[], float] = time.time, status_ttl: float = 5.0,
                 monotonic: Callable[[], float] = time.monotonic, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self.store = store or ClientStore(config.client_store)
        self.statuses = ClientStatusCache(self.store, ttl=status_ttl, clock=monotonic)
        self.keys: KeyRing | None = None  # None with an external IdP: this gateway signs nothing
        self.token_endpoint: TokenEndpoint | None = None  # None with an external IdP: it issues the tokens
        self._http: httpx.AsyncClient | None = None  # only an HTTP client this service created is closed by it
        verifier: Verifier
        registered_id = None
        if config.external is not None:
            client = http or httpx.AsyncClient(timeout=JWKS_TIMEOUT, follow_redirects=False)
            self._http = None if http else client
            jwks = RemoteJWKS(config.external.jwks_url, client, config.external.algorithms, clock=monotonic)
            verifier = ExternalVerifier(config.external, jwks, clock=clock)
            registered_id = verifier.registered_id
        else:
            self.keys = KeyRing.load(config.signing_key, config.previous_keys)
            verifier = LocalVerifier(self.keys, config.issuer, config.audience, clock=clock)
            clients = Clients(self.store, demo=config.demo, clock=clock)
            server = TokenServer(
                clients,
                AccessTokenGenerator(self.keys, config.issuer, config.audience, config.token_ttl, clock=clock),
                PrivateKeyJWT(clients, issuer=config.issuer, token_endpoint=config.token_endpoint, clock=clock))
            self.token_endpoint = TokenEndpoint(server, config.token_endpoint)
        self.bearer = BearerAuth(verifier, self.statuses, require_registered=config.external is None,
                                 clock=clock, monotonic=monotonic, registered_id=registered_id)

    @classmethod
    def from_settings(cls, settings: Settings, *, clock: Callable[[], float] = time.time,
                      status_ttl: float = 5.0) -> AuthService:
        """ConfigError when [auth] or a key file is wrong (raised before anything listens)."""
        return cls(AuthSettings.from_settings(settings), clock=clock, status_ttl=status_ttl)

    async def start(self) -> None:
        """Create the store's tables; in demo mode register the demo clients, otherwise refuse to
        start while any client has a documented demo secret (DemoSecretsError, a ConfigError)."""
        await self.store.init()
        if self.config.demo and self.config.external is None:
            await ensure_demo_clients(self.store)
        await refuse_demo_secrets(self.store, self.config.demo)

    def routes(self) -> list[Route]:
        if self.keys is None or self.token_endpoint is None:
            return []
        meta = MetadataEndpoints(self.config, self.keys)
        return [
            Route("/oauth/token", self.token_endpoint.handle, methods=["POST"]),
            Route("/.well-known/jwks.json", meta.jwks, methods=["GET"]),
            Route("/.well-known/oauth-authorization-server", meta.authorization_server, methods=["GET"]),
        ]

    async def authenticate(self, request: Request) -> Identity:
        """The caller's identity, or AuthError (turn it into a response with ``auth_error_response``)."""
        return await self.bearer.authenticate(request)

    async def close(self) -> None:
        if self.token_endpoint is not None:
            self.token_endpoint.close()
        if self._http is not None:
            await self._http.aclose()
        await self.store.close()
