"""The console's sharing page (being written: see gateway/console/pages/__init__.py)."""

from __future__ import annotations

from starlette.routing import BaseRoute

__all__ = ["routes"]


def routes() -> list[BaseRoute]:
    return []
