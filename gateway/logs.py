"""Logging that cannot leak data: exceptions are logged by type and place, never by text.

Driver and parser exceptions quote the values they choked on (an ID number in a failed
cast, a stored address in a decode error), so their messages never reach a log line.
"""

from __future__ import annotations

import traceback
from typing import Any

from uvicorn.config import LOGGING_CONFIG

__all__ = ["LOG_CONFIG", "where"]


def where(exc: BaseException) -> str:
    """``file:line in function`` of the innermost frame of ``exc``'s traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "unknown place"
    f = frames[-1]
    return f"{f.filename}:{f.lineno} in {f.name}"


# uvicorn's own logging configuration, plus the gateway's loggers on the same handler.
# Its access log is turned off where the gateway is served: gateway.access_log replaces it.
LOG_CONFIG: dict[str, Any] = {
    **LOGGING_CONFIG,
    "loggers": {
        **LOGGING_CONFIG["loggers"],
        "hutong": {"handlers": ["default"], "level": "INFO", "propagate": False},
    },
}
