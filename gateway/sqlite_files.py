"""SQLite files the gateway owns (client store, audit log): created owner-only before first use."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import sqlalchemy as sa

__all__ = ["prepare_sqlite_file"]


def prepare_sqlite_file(url: str) -> None:
    """Create a SQLite store's folder (0700) and file (0600) before SQLAlchemy opens it with the
    process umask, which would leave secrets' hashes or the audit log readable by others."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    path = Path(parsed.database)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # another worker created it meanwhile
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
