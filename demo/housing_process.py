"""The Housing bureau's REST service as a separate process, the way `make demo` runs it.

The Housing department is "a small separate REST service over its own data file": `hutong demo
serve` starts ``python -m demo.housing_service`` as a child process, waits until it answers
``GET /healthz``, and stops it when the gateway stops. The child also watches its parent and
exits by itself if the gateway dies without stopping it (``kill -9``), so it never keeps the port.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

__all__ = ["HousingProcess", "HousingStartError"]

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where `demo` is importable from


class HousingStartError(RuntimeError):
    """The Housing service did not come up; the message says why and what to do."""


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class HousingProcess:
    """``with HousingProcess(data_file, port):`` serves ``data_file`` on 127.0.0.1:``port`` from a
    child process for the duration of the block."""

    def __init__(self, data: Path, port: int, *, host: str = "127.0.0.1", start_timeout: float = 20.0,
                 log_level: str = "warning") -> None:
        self.data = Path(data)
        self.port = port
        self.host = host
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "demo.housing_service", "--data", str(self.data), "--host", self.host,
                "--port", str(self.port), "--log-level", self.log_level, "--parent-pid", str(os.getpid())]

    def start(self) -> None:
        if not self.data.is_file():
            raise HousingStartError(f"the Housing data file {self.data} does not exist: run `hutong demo build`")
        if _port_in_use(self.host, self.port):
            raise HousingStartError(f"port {self.port} is in use, so the Housing service cannot start there; "
                                    "stop what holds it or choose another port (HOUSING_PORT=... for make, "
                                    "--housing-port for hutong demo serve)")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
        # Same process group as the gateway: a Ctrl-C in the terminal reaches both at once.
        self.process = subprocess.Popen(self.command(), cwd=_PACKAGE_ROOT, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=1.0) as client:
            while True:
                code = self.process.poll()
                if code is not None:
                    self.process = None
                    raise HousingStartError(f"the Housing service exited with status {code} before it answered "
                                            f"on port {self.port} (its error is printed above)")
                try:
                    if client.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise HousingStartError(f"the Housing service did not answer on port {self.port} within "
                                            f"{self.start_timeout:g} s")
                time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # uvicorn shuts down gracefully on SIGTERM
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> HousingProcess:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
