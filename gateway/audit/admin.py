"""Administrative events in the audit log: who changed a client, a policy or the catalogue, and how.

Command-line tools run briefly, so they append through a writer of their own that continues the
same chain from the store's head (one chain whatever process writes, see writer.py).
"""

from __future__ import annotations

import getpass
import os
from typing import Any

from gateway.audit.record import Receipt
from gateway.audit.settings import AuditSettings
from gateway.audit.writer import AuditWriter
from gateway.config import Settings

__all__ = ["actor", "admin_event", "append_admin"]


def actor() -> str:
    """Who runs this tool: HUTONG_ACTOR when an operator's tooling sets it, else the OS account."""
    return os.environ.get("HUTONG_ACTOR") or f"os:{getpass.getuser()}"


def admin_event(action: str, target: str, *, by: str, before: Any = None, after: Any = None,
                detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of an admin record. ``before``/``after`` must hold no secrets (hashes included)."""
    return {"event": action, "target": target, "actor": by, "before": before, "after": after,
            **(detail or {}), "outcome": "ok"}


async def append_admin(settings: Settings, body: dict[str, Any]) -> Receipt:
    """Append one admin record through a short-lived writer; raises AuditUnavailable on failure."""
    writer = AuditWriter.from_settings(AuditSettings.from_settings(settings))
    await writer.start()
    try:
        return await writer.append("admin", body)
    finally:
        await writer.close()
