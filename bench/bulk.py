"""Workload 1, bulk: one page of residents (8 columns) from one source, and its peak memory.

Time (in process, per backend), the same answer from four contestants:

- **hutong**: ``Gateway.run`` with the bulk reader's RequestContext (authorisation on: decisions,
  row rules; three of the eight columns masked), then the response encoded with orjson as the
  HTTP layer does;
- **hutong unrestricted**: the same without a context (no authorisation, no masks), to show what
  authorisation and masking cost;
- **direct**: the same ``SELECT`` through the same driver, rows to dicts, orjson: the limit;
- **naive**: a graphene schema with one resolver per field (masks applied in the resolvers).

Memory: a child process per (contestant, rows) runs the query once after a small warm-up and
reports its peak RSS during the query and the growth over its RSS just before it. The contestants:
**hutong** over HTTP (the real app, its ASGI interface called directly, the answer's bytes counted
and dropped as a socket would: pages of ``stream_from`` rows and more are streamed, see
gateway/stream.py), **hutong whole** (``Gateway.run`` in process: the whole answer in memory), and
**direct**. The peak is
reset first through ``/proc/self/clear_refs`` and read as VmHWM (``ru_maxrss`` follows the same
reset). ``ru_maxrss`` over the child's whole life is reported too, but it is not the child's own
figure: Linux carries the high-water mark of the address space an ``exec`` replaces into the new
program's ``ru_maxrss``, so a child started by the suite (which holds the whole city in memory)
starts with the suite's size. ``python -m bench.bulk --config ...`` is that child; the suite
starts it.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from bench import direct
from bench.city import BULK_MASKS, BULK_READER, BULK_READER_SECRET, PURPOSE, Backend, World, child_env, context
from bench.common import BenchError, Target, console, fmt_ms, fmt_ratio, interleave, table
from bench.harness import Baseline
from bench.naive import NaiveGraphQL
from gateway.config import REPO_ROOT
from gateway.context import UNRESTRICTED
from gateway.pipeline import Gateway

__all__ = ["BULK_QUERY", "memory", "run"]

BULK_QUERY = ("query Bulk($n: Int!) { residents(limit: $n) { nodes { idNumber name gender birthDate district "
              "householdId relation registeredOn } } }")
FIELDS = len(direct.BULK_KEYS)
# Sub-linear means bytes per row fall as rows grow. A response held whole in memory measures an
# exponent of about 1.0 between 10,000 and 100,000 rows; this much below counts as sub-linear.
MAX_EXPONENT = 0.8


async def gateway_bulk(gw: Gateway, n: int, ctx: Any) -> bytes:
    out = await gw.run(BULK_QUERY, None, {"n": n}, context=ctx)
    if out.status != 200 or "errors" in out.body:
        raise BenchError(f"bulk: hutong answered {out.status}: {str(out.body.get('errors'))[:300]}")
    return orjson.dumps(out.body, option=orjson.OPT_NON_STR_KEYS)  # what gateway.http.json_response sends


async def run(backend: Backend, gw: Gateway, baseline: Baseline, rows: int, rounds: int, warmup: int,
              naive_rounds: int) -> tuple[dict[str, Any], list[Target]]:
    ctx = context(BULK_READER)
    naive = NaiveGraphQL(baseline, gw.masker, BULK_MASKS)
    contestants = {
        "hutong": lambda: gateway_bulk(gw, rows, ctx),
        "hutong unrestricted": lambda: gateway_bulk(gw, rows, UNRESTRICTED),
        "direct": lambda: direct.bulk(baseline, rows),
        "naive": lambda: naive.run(BULK_QUERY, {"n": rows}),
    }
    queries = await check(gw, baseline, naive, rows, ctx)
    series = await interleave(contestants, {**dict.fromkeys(contestants, rounds), "naive": naive_rounds}, warmup)
    for name, s in series.items():
        s.queries = queries[name]
    d = series["direct"].median_ms
    result = {
        "query": BULK_QUERY, "rows": rows, "fields": FIELDS, "masked_fields": sorted(BULK_MASKS),
        "subject": BULK_READER.client_id,
        "contestants": {name: {**s.json(), "vs_direct": round(s.median_ms / d, 3),
                               "us_per_value": round(s.median_ms * 1000 / (rows * FIELDS), 4)}
                        for name, s in series.items()},
        "naive_over_hutong": round(series["naive"].median_ms / series["hutong"].median_ms, 2),
        "auth_and_masking_ms": round(series["hutong"].median_ms - series["hutong unrestricted"].median_ms, 2),
    }
    ratio = series["hutong"].median_ms / d
    console.print(table(
        f"[bold]bulk[/] ({backend.name}): {rows:,} residents × {FIELDS} fields, one source; "
        f"{len(BULK_MASKS)} fields masked",
        [("contestant", "left"), ("median ms", "right"), ("range ms", "right"), ("rounds", "right"),
         ("vs direct", "right"), ("µs/value", "right"), ("queries", "right")],
        [[name, fmt_ms(s.median_ms), f"{fmt_ms(min(s.times) * 1000)}–{fmt_ms(max(s.times) * 1000)}",
          str(len(s.times)), fmt_ratio(s.median_ms / d), f"{s.median_ms * 1000 / (rows * FIELDS):.3f}",
          str(s.queries)] for name, s in series.items()],
        caption=f"every contestant JSON-encodes its answer (orjson); naive / hutong = "
                f"{fmt_ratio(result['naive_over_hutong'])}"))
    target = Target("bulk_vs_direct", f"bulk ({rows:,} rows × {FIELDS} fields): hutong (authorisation and masking "
                    "on) within 2x of the direct fetch-and-encode", backend.name, ratio, "x", 2.0, ratio <= 2.0,
                    f"hutong {series['hutong'].median_ms:.1f} ms, direct {d:.1f} ms (medians)")
    return result, [target]


async def check(gw: Gateway, baseline: Baseline, naive: NaiveGraphQL, rows: int, ctx: Any) -> dict[str, int]:
    """Every contestant's answer, checked before anything is timed; and its source queries per run."""
    queries: dict[str, int] = {}

    def gw_count() -> int:
        return sum(gw.sources.statements().values())

    answers: dict[str, bytes] = {}
    for name, run_one, count in (
        ("hutong", lambda: gateway_bulk(gw, rows, ctx), gw_count),
        ("hutong unrestricted", lambda: gateway_bulk(gw, rows, UNRESTRICTED), gw_count),
        ("direct", lambda: direct.bulk(baseline, rows), lambda: baseline.statements),
        ("naive", lambda: naive.run(BULK_QUERY, {"n": rows}), lambda: baseline.statements),
    ):
        before = count()
        answers[name] = await run_one()
        queries[name] = count() - before
    ours = orjson.loads(answers["hutong"])["data"]["residents"]["nodes"]
    if len(ours) != rows:
        raise BenchError(f"bulk: hutong returned {len(ours):,} rows, not {rows:,}: is the city that large?")
    raw = orjson.loads(answers["direct"])["data"]["residents"]["nodes"]
    if orjson.loads(answers["hutong unrestricted"])["data"]["residents"]["nodes"] != raw:
        raise BenchError("bulk: hutong unrestricted and direct differ")
    masks = {key: BULK_MASKS[col] for key, col in zip(direct.BULK_KEYS, direct.BULK_COLUMNS, strict=True)
             if col in BULK_MASKS}
    expected = [{k: gw.masker.apply(masks[k], v) if k in masks else v for k, v in r.items()} for r in raw]
    if ours != expected:
        raise BenchError("bulk: hutong's masked answer is not the direct rows with the bulk reader's masks")
    if any(r[k] == m[k] for r, m in zip(raw, ours, strict=True) for k in masks):
        raise BenchError("bulk: a masked value equals its clear value")
    if answers["naive"] != answers["hutong"]:
        raise BenchError("bulk: naive's JSON differs from hutong's")
    return queries


# --- memory -----------------------------------------------------------------------------------


def _reset_peak() -> bool:
    """Reset the peak RSS (VmHWM, and ru_maxrss with it) to the current RSS (Linux 4.0+)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _status_kib(field: str) -> int:
    """VmRSS (resident now) or VmHWM (the peak since start or since the last reset), KiB."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


class _Asgi:
    """Requests straight into the gateway's ASGI app, as uvicorn would hand them over, without a socket:
    the answer's bytes are counted and dropped as they are sent (a socket would not keep them either),
    so the child's memory is the gateway's own."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def call(self, method: str, path: str, headers: dict[str, str], body: bytes,
                   keep: bool = False, count: bytes = b"\x00") -> tuple[int, int, bytes, int]:
        """Status, bytes sent, the body if ``keep``, and how many times ``count`` occurs in it."""
        sent = {"status": 0, "bytes": 0, "count": 0}
        kept: list[bytes] = []
        request = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if request:
                return request.pop()
            await asyncio.Event().wait()  # the client stays connected until the answer is complete
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            elif message["type"] == "http.response.body":
                sent["bytes"] += len(message.get("body", b""))
                sent["count"] += message.get("body", b"").count(count)
                if keep:
                    kept.append(message.get("body", b""))

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
                 "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}
        await self.app(scope, receive, send)
        return sent["status"], sent["bytes"], b"".join(kept), sent["count"]


async def _child(config: Path, sql_url: str, rows: int, who: str) -> dict[str, Any]:
    from urllib.parse import urlencode

    from bench.city import started_gateway
    from gateway.app import create_app

    gw: Gateway | None = None
    baseline: Baseline | None = None
    app: Any = None
    if who == "hutong":  # over HTTP, as a department's app asks: large pages are streamed
        backend = Backend("child", config, {}, "")
        app = create_app(backend.settings())
        lifespan = app.router.lifespan_context(app)
        await lifespan.__aenter__()
        store = app.state.auth.store
        if await store.get(BULK_READER.client_id) is None:
            await store.add(BULK_READER.client_id, BULK_READER.department, sorted(BULK_READER.roles),
                            secret=BULK_READER_SECRET)
        asgi = _Asgi(app)
        form = urlencode({"grant_type": "client_credentials", "client_id": BULK_READER.client_id,
                          "client_secret": BULK_READER_SECRET}).encode()
        status, _, token_body, _ = await asgi.call("POST", "/oauth/token", {
            "content-type": "application/x-www-form-urlencoded"}, form, keep=True)
        if status != 200:
            raise BenchError(f"memory child: no token ({status}): {token_body[:300]!r}")
        headers = {"authorization": f"Bearer {orjson.loads(token_body)['access_token']}",
                   "content-type": "application/json", "accept": "application/json", "x-purpose": PURPOSE,
                   "x-acting-user": "official-007", "x-case-id": "CASE-BENCH-1"}

        async def one(n: int) -> int:
            status, size, _, nodes = await asgi.call("POST", "/graphql", headers,
                                                     orjson.dumps({"query": BULK_QUERY, "variables": {"n": n}}),
                                                     count=b'"idNumber":')
            if status != 200 or nodes != n:
                raise BenchError(f"memory child: the bulk query answered HTTP {status} with {nodes:,} of {n:,} rows")
            return size
    elif who == "hutong whole":  # in process, the answer built whole (Gateway.run)
        gw = await started_gateway(Backend("child", config, {}, ""))
        ctx = context(BULK_READER)

        async def one(n: int) -> int:
            assert gw is not None
            return len(await gateway_bulk(gw, n, ctx))
    else:
        baseline = Baseline({"psb": sql_url}, "http://127.0.0.1:9")  # Housing is never asked

        async def one(n: int) -> int:
            assert baseline is not None
            return len(await direct.bulk(baseline, n))

    try:
        await one(100)  # connections, compiled statements, caches: not the rows' memory
        gc.collect()
        reset = _reset_peak()
        base = _status_kib("VmRSS")
        size = await one(rows)
        # VmHWM, reset just above, is the peak during the query alone; ru_maxrss also holds the peak
        # carried over from the parent's address space at exec (see the module's docstring).
        peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"rows": rows, "who": who, "base_kib": base, "peak_kib": peak, "growth_kib": max(0, peak - base),
                "ru_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,  # KiB on Linux
                "response_bytes": size, "peak_reset": reset}
    finally:
        if app is not None:
            await lifespan.__aexit__(None, None, None)
        if gw is not None:
            await gw.close()
        if baseline is not None:
            await baseline.close()


def measure_child(backend: Backend, rows: int, who: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.bulk", "--config", str(backend.config), "--sql-url", backend.sql_url["psb"],
           "--rows", str(rows), "--who", who]
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True, timeout=600,
                          check=False)
    if done.returncode != 0:
        raise BenchError(f"memory child ({who}, {rows:,} rows) failed: {done.stderr[-1500:]}")
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def exponent(small: dict[str, Any], large: dict[str, Any]) -> float | None:
    """b in growth ∝ rows^b between two sizes (1.0: linear)."""
    if small["growth_kib"] <= 0 or large["growth_kib"] <= 0:
        return None
    return math.log(large["growth_kib"] / small["growth_kib"]) / math.log(large["rows"] / small["rows"])


async def memory(world: World, backend: Backend, sizes: list[int]) -> tuple[dict[str, Any], list[Target]]:
    """Peak memory of the bulk query at each size: hutong over HTTP (streamed from ``stream_from``
    rows), hutong's whole answer in process, and direct."""
    sizes = sorted({min(s, world.residents) for s in sizes})
    runs: dict[str, list[dict[str, Any]]] = {"hutong": [], "hutong whole": [], "direct": []}
    for n in sizes:
        for who in runs:
            runs[who].append(await asyncio.to_thread(measure_child, backend, n, who))
    rows_out = []
    for n_i, n in enumerate(sizes):
        h, w, d = (runs[who][n_i] for who in runs)
        rows_out.append([f"{n:,}", f"{h['peak_kib'] / 1024:.0f}", f"{h['growth_kib'] / 1024:.1f}",
                         f"{h['growth_kib'] * 1024 / n:,.0f}", f"{w['growth_kib'] / 1024:.1f}",
                         f"{d['growth_kib'] / 1024:.1f}", f"{h['response_bytes'] / 2**20:.1f}"])
    result: dict[str, Any] = {"sizes": sizes, "runs": runs,
                              "stream_from": backend.settings().stream_from,
                              "stream_chunk": backend.settings().stream_chunk}
    targets: list[Target] = []
    caption = ("growth: peak RSS during the query minus RSS just before it (after a 100-row warm-up); hutong over "
               f"HTTP streams pages of {result['stream_from']:,} rows and more in parts of "
               f"{result['stream_chunk']:,}")
    if len(sizes) >= 2:
        for who in runs:
            result[f"{who.replace(' ', '_')}_exponent"] = exponent(runs[who][-2], runs[who][-1])
        b = result["hutong_exponent"]
        growth = runs["hutong"][-1]["growth_kib"] / max(1, runs["hutong"][-2]["growth_kib"])
        caption += (f"; from {sizes[-2]:,} to {sizes[-1]:,} rows hutong's growth is {growth:.1f}x for "
                    f"{sizes[-1] / sizes[-2]:.0f}x rows (exponent {b:.2f}; 1.0 = linear)" if b is not None else "")
        targets.append(Target(
            "bulk_memory_sublinear", f"bulk memory: peak growth sub-linear in rows (exponent ≤ {MAX_EXPONENT} "
            f"from {sizes[-2]:,} to {sizes[-1]:,} rows)", backend.name, b,
            "exponent", MAX_EXPONENT, b is not None and b <= MAX_EXPONENT,
            "peak RSS " + ", ".join(f"{r['rows']:,}: {r['peak_kib'] / 1024:.0f} MiB" for r in runs["hutong"])
            + f"; growth {growth:.1f}x for {sizes[-1] / sizes[-2]:.0f}x rows; whole answer in process: exponent "
            + (f"{result['hutong_whole_exponent']:.2f}" if result["hutong_whole_exponent"] is not None else "n/a")))
    console.print(table(f"[bold]bulk memory[/] ({backend.name}): peak RSS of a child process running the query once",
                        [("rows", "right"), ("hutong (HTTP) peak MiB", "right"), ("growth MiB", "right"),
                         ("bytes/row", "right"), ("whole, in process: growth MiB", "right"),
                         ("direct growth MiB", "right"), ("JSON MiB", "right")], rows_out, caption=caption))
    return result, targets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bulk", description="The bulk memory child (bench.suite "
                                     "starts it): run the bulk query once and print peak RSS as JSON.")
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--sql-url", required=True, help="the psb source, for the direct contestant")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--who", choices=("hutong", "hutong whole", "direct"), required=True)
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_child(args.config, args.sql_url, args.rows, args.who))))


if __name__ == "__main__":
    main()
