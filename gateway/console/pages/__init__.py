"""The console's pages, one module each; :func:`page_routes` gathers their routes.

Each module exposes ``routes()``: Starlette routes relative to ``/console``, named so that
templates reach them as ``url_for('console:<name>')``. Views call
:func:`gateway.console.security.require` with the roles the page is for, and
:func:`gateway.console.security.check_csrf` before any change.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from gateway.console.pages import audit, catalog, policy, scoreboard, sharing

__all__ = ["page_routes"]


def page_routes() -> list[BaseRoute]:
    return [*catalog.routes(), *policy.routes(), *sharing.routes(), *audit.routes(), *scoreboard.routes()]
