"""The console's pages, one module each; :func:`page_routes` gathers their routes."""

from __future__ import annotations

from starlette.routing import BaseRoute

__all__ = ["page_routes"]


def page_routes() -> list[BaseRoute]:
    routes: list[BaseRoute] = []
    return routes
