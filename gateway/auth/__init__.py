"""Identity: who is calling the gateway.

OAuth 2.0 client credentials (RFC 6749 §4.4) with client secrets or signed client assertions
(RFC 7523), JWT access tokens (RFC 9068) signed with the gateway's own key and published as a
JWKS, or an external identity provider trusted instead. See docs/identity.md.
"""

from gateway.auth.bearer import auth_error_response
from gateway.auth.errors import AuthError, Reason
from gateway.auth.identity import Identity
from gateway.auth.service import AuthService

__all__ = ["AuthError", "AuthService", "Identity", "Reason", "auth_error_response"]
