"""The connector interface every kind of department source implements."""

from __future__ import annotations

from typing import Any, Protocol

from resolvers.query import SourceQuery

__all__ = ["Connector", "Row"]

Row = dict[str, Any]


class Connector(Protocol):
    code: str
    kind: str
    statements: int  # source queries or requests issued so far; tests and metrics read it

    async def fetch(self, query: SourceQuery) -> list[Row]:
        """Run the query in the source; raise :class:`resolvers.errors.SourceError` on failure."""
        ...

    async def ping(self) -> None:
        """Raise :class:`resolvers.errors.SourceError` unless the source answers."""
        ...

    async def close(self) -> None: ...
