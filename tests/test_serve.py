"""``hutong serve --workers N`` (gateway/serve.py): workers on SO_REUSEPORT sockets, the port still
owned by one gateway only."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from gateway.config import REPO_ROOT
from gateway.serve import REUSE_PORT


@pytest.mark.skipif(not REUSE_PORT, reason="SO_REUSEPORT balancing is used on Linux only")
@pytest.mark.parametrize("reuse_port", [False, True], ids=["plain listener", "another SO_REUSEPORT gateway"])
def test_a_port_in_use_is_refused_even_to_a_reuse_port_gateway(reuse_port: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as other:
        if reuse_port:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        code = (f"from gateway.serve import serve; serve('gateway.app:create_app', host='127.0.0.1', port={port}, "
                "workers=2)")
        done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr.lower()
