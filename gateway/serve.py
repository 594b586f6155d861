"""``hutong serve``: uvicorn, with the connections of several workers balanced by the kernel.

uvicorn's workers share one listening socket: whichever worker's event loop wakes first accepts
every connection waiting, so clients that open their keep-alive connections together (a
department's app starting its pool, a load generator) all land on one worker while the others
idle (measured: 32 connections from wrk, one worker 1.12 cores busy, the other 0.01). On Linux each
worker here listens on a socket of its own with ``SO_REUSEPORT``, and the kernel spreads new
connections across them by address hash. The parent still binds the address first (so a port in
use fails at once, before any worker starts) but never listens: only listening sockets take part in
the kernel's distribution. Elsewhere the shared socket of plain uvicorn is used.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

import uvicorn
from uvicorn.supervisors import multiprocess

__all__ = ["serve"]

REUSE_PORT = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _reuse_port_socket(config: uvicorn.Config) -> socket.socket:
    sock = socket.socket(_family(config.host or ""), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((config.host, config.port))
    sock.set_inheritable(True)
    return sock


class _WorkerServer(uvicorn.Server):
    """A worker that listens on its own SO_REUSEPORT socket instead of the parent's."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=[_reuse_port_socket(self.config)])


class _WorkerProcess(multiprocess.Process):
    @property
    def server(self) -> uvicorn.Server:
        if self._server is None:
            self._server = _WorkerServer(config=self.config)
        return self._server


class _Supervisor(multiprocess.Multiprocess):
    """uvicorn's supervisor (restarts, signals, health checks), starting :class:`_WorkerProcess`es."""

    def run(self) -> None:
        # uvicorn's supervisor makes its workers through its module's ``Process``: this supervisor's
        # process runs alone in the `hutong serve` parent, so the name is pointed at ours for its life.
        multiprocess.Process = _WorkerProcess  # type: ignore[misc]
        super().run()


def serve(app: str, *, host: str, port: int, workers: int, **options: Any) -> None:
    """Serve the ASGI app factory ``app`` ("module:function") with ``workers`` processes."""
    if workers <= 1 or not REUSE_PORT:
        uvicorn.run(app, factory=True, host=host, port=port, workers=workers, **options)
        return
    config = uvicorn.Config(app, factory=True, host=host, port=port, workers=workers, **options)
    try:
        # SO_REUSEPORT lets any process of this user bind the port too; a probe without it fails if
        # anything at all (another gateway included) holds the port, so two never share it.
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            # SO_REUSEADDR: connections of the previous run in TIME_WAIT do not count, a listener does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
        parent = _reuse_port_socket(config)  # bound, never listening: the workers' sockets join it
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    try:
        _Supervisor(config, sockets=[parent]).run()
    finally:
        parent.close()
