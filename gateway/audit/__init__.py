"""The tamper-evident audit store: a hash chain of records with signed checkpoints.

See docs/audit.md. The gateway appends one record per request through an ``AuditWriter``
(group commit, fail closed); ``hutong audit verify|export|search|report`` read the store,
``hutong audit init`` sets it up, ``hutong audit archive|prune`` apply retention (retention.py).
"""

from gateway.audit.errors import AuditError, AuditUnavailable
from gateway.audit.record import GENESIS_HASH, Receipt
from gateway.audit.settings import AuditSettings
from gateway.audit.store import AuditStore, insert_only_grants
from gateway.audit.verify import Report, verify_file, verify_files, verify_store
from gateway.audit.writer import AuditWriter, NullAuditWriter

__all__ = ["GENESIS_HASH", "AuditError", "AuditSettings", "AuditStore", "AuditUnavailable", "AuditWriter",
           "NullAuditWriter", "Receipt", "Report", "insert_only_grants", "verify_file", "verify_files", "verify_store"]
