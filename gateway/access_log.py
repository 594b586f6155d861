"""An access log that never records query strings.

uvicorn's access log prints the full URL, and ``GET /graphql?variables=...`` carries ID
numbers. This logs method, path, status and duration only; the request id ties a line to
the response (and, later, to the audit record).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["AccessLog"]

log = logging.getLogger("hutong.access")


class AccessLog:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "request_id": "-"}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                for name, value in message.get("headers", []):
                    if name.lower() == b"x-request-id":
                        status["request_id"] = value.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            client = scope.get("client") or ("-", 0)
            log.info('%s "%s %s" %d %.1fms id=%s', client[0], scope["method"], scope["path"], status["code"],
                     (time.perf_counter() - started) * 1000, status["request_id"])
