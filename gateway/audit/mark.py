"""The head mark: the newest checkpoint this machine's writers made, kept outside the store.

A chain cut back to one of its own checkpoints (the newest records and their checkpoints
deleted) is indistinguishable, from the store alone, from a younger chain: every record links and
every checkpoint that is left is genuine. What tells them apart is a witness of how far the chain
had reached. After each committed checkpoint the writer records it (signed, as it is in the store)
in a small file beside the signing key, one per store; ``hutong audit verify`` then requires the
store to reach that checkpoint, with the same hash. It protects against whoever can write to the
store but not to the gateway's own files: on PostgreSQL, the database's operators (see
docs/audit.md, "What verify can prove").
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import orjson
import sqlalchemy as sa

__all__ = ["head_mark_path", "read_head_mark", "write_head_mark"]

FIELDS = ("seq", "hash", "time", "key_id", "signature", "every")


def store_tag(url: str) -> str:
    """A short name for a store: its backend, host, port and database (not the role: the gateway's
    and the owner's URLs name one store)."""
    u = sa.engine.make_url(url)
    where = f"{u.get_backend_name()}://{u.host or ''}:{u.port or ''}/{u.database or ''}"
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def head_mark_path(signing_key: Path, url: str) -> Path:
    """Where the head mark of the store at ``url`` is kept: beside the signing key."""
    return signing_key.parent / f"audit-head-{store_tag(url)}.json"


def read_head_mark(path: Path) -> dict[str, Any] | None:
    """The checkpoint the mark holds; None if there is no mark. ValueError if it is unreadable."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(f"cannot read the head mark {path}: {exc.strerror}") from None
    try:
        mark = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError(f"the head mark {path} is not JSON") from None
    if not isinstance(mark, dict) or not isinstance(mark.get("seq"), int) or not all(
            isinstance(mark.get(k), str) for k in ("hash", "time", "key_id", "signature")):
        raise ValueError(f"the head mark {path} is not a checkpoint")
    return {k: mark.get(k) for k in FIELDS}


def write_head_mark(path: Path, checkpoint: dict[str, Any], *, sync: bool = True) -> None:
    """Record ``checkpoint`` unless the mark already holds a later one. Processes sharing the file
    take turns (flock); the file is replaced whole (rename), flushed to disk when ``sync``."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = os.open(path.with_name(path.name + ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            current = read_head_mark(path)
        except ValueError:
            current = None  # replaced by a good one
        if current is not None and current["seq"] >= checkpoint["seq"]:
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".audit-head-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(orjson.dumps({k: checkpoint.get(k) for k in FIELDS}))
                f.flush()
                if sync:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if sync:
            dirfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
    finally:
        os.close(lock)  # releases the flock
