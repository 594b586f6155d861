"""Audit errors. ``AuditUnavailable`` is what the pipeline turns into 503 AUDIT_UNAVAILABLE."""

from __future__ import annotations

__all__ = ["AuditError", "AuditTimeout", "AuditUnavailable"]


class AuditError(Exception):
    pass


class AuditUnavailable(AuditError):
    """A record could not be written durably: the request must not be answered with data."""

    code = "AUDIT_UNAVAILABLE"
    status = 503

    def __init__(self, reason: str = "the audit store cannot record this request") -> None:
        super().__init__(reason)


class AuditTimeout(AuditUnavailable):
    """The store did not confirm in time: the record may still be written (the writer then makes it,
    or a correction after it, say that its request was answered 503)."""
