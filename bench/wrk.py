"""Load from wrk (a C load generator, Debian package ``wrk``), driven by a generated Lua script.

A load generator written in Python spends more CPU per request than the gateway's own answer on a
two-core machine (measured: 1.2–1.4 ms per request with httpx), so it would cap what it measures.
wrk sends ``POST`` requests with the given bodies in turn over ``connections`` keep-alive
connections for a fixed time, checks every answer (HTTP 200 and no ``"errors"`` member) and reports
requests, failures and latency percentiles. ``make bench`` installs it where it can; without it the
suite falls back to its httpx clients and says so.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["WrkResult", "available", "run"]

_SCRIPT = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  failures = 0
  i = 0
%(headers)s
end
bodies = {%(bodies)s}
function request()
  i = i + 1
  return wrk.format("POST", %(path)s, nil, bodies[(i %% #bodies) + 1])
end
function response(status, headers, body)
  if status ~= 200 or (%(check)s and string.find(body, '"errors"', 1, true)) then failures = failures + 1 end
end
function done(summary, latency, requests)
  local f = 0
  for _, t in ipairs(threads) do f = f + t:get("failures") end
  local e = summary.errors
  io.write(string.format("HUTONG-WRK {\\"requests\\": %%d, \\"failures\\": %%d, \\"socket_errors\\": %%d, "
    .. "\\"duration_us\\": %%d, \\"p50_us\\": %%d, \\"p99_us\\": %%d, \\"max_us\\": %%d}\\n",
    summary.requests, f, e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""


@dataclass(frozen=True)
class WrkResult:
    requests: int
    failures: int  # non-200 answers, GraphQL errors and socket errors
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def available() -> str | None:
    return shutil.which("wrk")


def _lua_string(data: bytes) -> str:
    """A Lua string literal of any bytes (decimal escapes: LuaJIT knows no \\u escapes)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b:03d}" for b in data) + '"'


def run(url: str, path: str, bodies: list[bytes], headers: dict[str, str], connections: int, seconds: float,
        threads: int = 1, check_errors: bool = True) -> WrkResult:
    """Load ``url + path`` for ``seconds`` with ``connections`` connections (wrk's ``-c``)."""
    exe = available()
    if exe is None:
        raise RuntimeError("wrk is not installed (Debian: apt-get install wrk)")
    script = _SCRIPT % {
        "headers": "\n".join(f"  wrk.headers[{_lua_string(k.encode())}] = {_lua_string(v.encode())}"
                             for k, v in headers.items()),
        "bodies": ", ".join(_lua_string(b) for b in bodies),
        "path": _lua_string(path.encode()),
        "check": "true" if check_errors else "false",
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False, encoding="utf-8") as f:
        f.write(script)
        lua = Path(f.name)
    try:
        proc = subprocess.run([exe, f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
                               "--timeout", "30s", "-s", str(lua), url], capture_output=True, text=True,
                              timeout=seconds + 120)
    finally:
        lua.unlink(missing_ok=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("HUTONG-WRK ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-500:] or proc.stdout[-500:]}")
    r = json.loads(line.removeprefix("HUTONG-WRK "))
    return WrkResult(r["requests"], r["failures"] + r["socket_errors"], r["duration_us"] / 1e6, r["p50_us"] / 1000,
                     r["p99_us"] / 1000, r["max_us"] / 1000)
