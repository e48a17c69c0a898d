"""Streaming vs whole answers: the router against a bare streaming proxy, in one run.

    .venv/bin/python benchmarks/router_streaming.py                 # ~1.5 min on 2 cores
    .venv/bin/python benchmarks/router_streaming.py --seconds 6 --concurrency 1 16 --json out.json
    .venv/bin/python benchmarks/router_streaming.py --baseline /tmp/base/router   # + an older revision

Everything on 127.0.0.1, each its own process: one demo PHI node (``fdp-router demo-node``,
which streams its answer in chunks of 4 words: about 10 events per answer, the privacy report
in its headers), a **bare proxy** that relays the body as it arrives (aiohttp server + one
pooled ClientSession; a stream is relayed chunk by chunk with no parsing: the floor for any
aiohttp gateway), and the **router** (``fdp-router serve``, one worker process) with everything
on: JWT, validation, cache lookup (every prompt unique: every request misses and is charged),
admission, balancer, durable SQLite reservation and commit with the sealed audit record, the
node's report checked, SSE re-framed chunk by chunk, metrics; access log off. Each target is
asked for whole answers and for streams (``stream: true``, the client reads to ``[DONE]``).
Targets interleave over rounds so background load hits them alike. CPU per request is the
serving process's user+system CPU (all threads, /proc) divided by requests. The fsync of a
4 KiB write in the same directory as the ledger is measured in the same run (the durable
write the added latency at concurrency 1 is compared with). ``--baseline DIR`` adds the same
router command importing ``fdp_router`` from DIR (an older revision, its own ledger file):
before and after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_overhead import (
    BIN,
    NODE_PRIVACY,
    QUESTION,
    bench_config,
    bench_token,
    cpu_seconds,
    free_port,
    fsync_ms,
    serve,
    summarize,
    wait_http,
)

HERE = Path(__file__).resolve()


def run_stream_proxy(port: int, upstream: str) -> None:
    """The bare proxy: forwards the body; relays a stream as its chunks arrive."""
    from aiohttp import web

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=64))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with request.app["session"].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                return web.Response(
                    body=await resp.read(), status=resp.status, content_type="application/json"
                )
            out = web.StreamResponse(status=resp.status, headers={"Content-Type": "text/event-stream"})
            await out.prepare(request)
            async for piece in resp.content.iter_any():
                await out.write(piece)
            await out.write_eof()
            return out

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


async def load(
    url: str, headers: dict[str, str], concurrency: int, seconds: float, stream: bool
) -> tuple[list[float], list[float], int, float]:
    """Closed loop: (latencies to the end of the body, to the first body byte, errors, elapsed)."""
    lat: list[float] = []
    ttfb: list[float] = []
    errors = 0
    counter = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as http:

        async def one(content: str) -> tuple[bool, float]:
            body: dict[str, Any] = {
                "messages": [{"role": "user", "content": content}],
                "fdp_privacy": NODE_PRIVACY,
                "stream": stream,
            }
            t0 = time.perf_counter()
            async with http.post(url, json=body) as resp:
                first = await resp.content.readany()
                t1 = time.perf_counter()
                rest = await resp.read() if not resp.content.at_eof() else b""
                ok = resp.status == 200 and (not stream or (first + rest).rstrip().endswith(b"[DONE]"))
                return ok, t1 - t0

        await asyncio.gather(
            *(one(f"{QUESTION} warm {i} {secrets.token_hex(4)}") for i in range(concurrency))
        )
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                counter += 1
                t0 = time.perf_counter()
                ok, first = await one(f"{QUESTION} q{counter}-{secrets.token_hex(4)}")
                lat.append(time.perf_counter() - t0)
                ttfb.append(first)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return lat, ttfb, errors, elapsed


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="fdp-bench-stream-"))
    node_port, proxy_port, router_port = free_port(), free_port(), free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    secret = secrets.token_hex(32)
    cfg = bench_config(tmp, node_url, router_port)
    cfg_path = tmp / "router.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {**os.environ, "FDP_JWT_SECRET": secret}
    procs = [
        subprocess.Popen(
            [str(BIN / "fdp-router"), "demo-node", "--port", str(node_port), "--name", "bench"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen(
            [sys.executable, str(HERE), "--proxy", str(proxy_port), "--upstream", node_url],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        serve(cfg_path, env),
    ]
    base_port = free_port()
    if args.baseline:
        base_cfg = {
            **cfg,
            "server": {"host": "127.0.0.1", "port": base_port},
            "ledger": {**cfg["ledger"], "sqlite_path": str(tmp / "ledger-baseline.sqlite")},
        }
        (tmp / "router-baseline.json").write_text(json.dumps(base_cfg))
        procs.append(
            serve(tmp / "router-baseline.json", {**env, "PYTHONPATH": str(Path(args.baseline).resolve())})
        )
    try:
        await wait_http(f"{node_url}/health")
        await wait_http(f"http://127.0.0.1:{proxy_port}/v1/chat/completions")
        await wait_http(f"http://127.0.0.1:{router_port}/healthz")
        if args.baseline:
            await wait_http(f"http://127.0.0.1:{base_port}/healthz")
        tok = bench_token(secret)
        auth = {"Authorization": f"Bearer {tok}"}
        urls = {
            "direct": (f"{node_url}/v1/chat/completions", {}, procs[0].pid),
            "bare proxy": (f"http://127.0.0.1:{proxy_port}/v1/chat/completions", {}, procs[1].pid),
            "router": (f"http://127.0.0.1:{router_port}/v1/chat/completions", auth, procs[2].pid),
        }
        if args.baseline:
            urls["baseline"] = (f"http://127.0.0.1:{base_port}/v1/chat/completions", auth, procs[3].pid)
        targets = [(name, stream) for name in urls for stream in (False, True)]
        fsync = fsync_ms(tmp)
        print(f"fsync of a 4 KiB write in the ledger's directory: median {fsync:.2f} ms", flush=True)
        rows: list[dict[str, Any]] = []
        for c in args.concurrency:
            acc: dict[tuple[str, bool], tuple[list[float], list[float], int, float]] = {
                t: ([], [], 0, 0.0) for t in targets
            }
            cpu: dict[tuple[str, bool], float] = dict.fromkeys(targets, 0.0)
            for _ in range(args.rounds):
                for t in targets:
                    url, headers, pid = urls[t[0]]
                    cpu0, _ = cpu_seconds(pid)
                    lat, ttfb, errs, elapsed = await load(url, headers, c, args.seconds / args.rounds, t[1])
                    cpu1, _ = cpu_seconds(pid)
                    cpu[t] += cpu1 - cpu0
                    a = acc[t]
                    acc[t] = (a[0] + lat, a[1] + ttfb, a[2] + errs, a[3] + elapsed)
            for t in targets:
                lat, ttfb, errs, elapsed = acc[t]
                base = summarize(acc[("direct", t[1])][0], 0, 1.0)
                r = summarize(lat, errs, elapsed)
                r.update(
                    {
                        "target": t[0],
                        "stream": t[1],
                        "concurrency": c,
                        "ttfb_p50_ms": statistics.median(ttfb) * 1000,
                        "added_p50_ms": r["p50_ms"] - base["p50_ms"],
                        "cpu_us_per_request": cpu[t] / (r["requests"] + c * args.rounds) * 1e6,
                        "fsync_ms": fsync,
                    }
                )
                rows.append(r)
                print(
                    f"c={c:<3} {t[0]:<10} {'stream' if t[1] else 'whole ':<6} {r['rps']:7.0f} req/s"
                    f"  p50 {r['p50_ms']:6.2f} ms (first byte {r['ttfb_p50_ms']:6.2f})"
                    f"  p99 {r['p99_ms']:7.2f} ms"
                    f"  added p50 {r['added_p50_ms']:+6.2f} ms  cpu {r['cpu_us_per_request']:6.0f} us/req"
                    f"  errors {r['errors']}",
                    flush=True,
                )
        summarize_targets(rows, fsync)
        return rows
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def summarize_targets(rows: list[dict[str, Any]], fsync: float) -> None:
    """Issue 14's three router targets, from this run's rows."""
    by = {(r["target"], r["stream"], r["concurrency"]): r for r in rows}
    for name in ("router", "baseline"):
        for c in sorted({r["concurrency"] for r in rows}):
            whole, stream = by.get((name, False, c)), by.get((name, True, c))
            bare = by.get(("bare proxy", False, c))
            if whole is None or stream is None or bare is None:
                continue
            cpu = whole["cpu_us_per_request"]
            line = (
                f"targets c={c:<3} {name:<8}: CPU/req {cpu / bare['cpu_us_per_request']:.2f}x"
                f" the bare proxy's (whole; target <= 2.5 at c=16); stream/whole CPU"
                f" {stream['cpu_us_per_request'] / cpu:.2f} (target <= 1.10)"
            )
            if c == 1:
                budget = bare["added_p50_ms"] + fsync + 1.0
                line += f"; added p50 {whole['added_p50_ms']:+.2f} ms vs budget {budget:.2f} ms"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=6.0, help="per target and concurrency, over all rounds")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--json", help="write the rows to this file")
    ap.add_argument("--baseline", metavar="DIR", help="also the router imported from DIR (an older revision)")
    ap.add_argument("--proxy", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.proxy:
        run_stream_proxy(args.proxy, args.upstream)
        return
    rows = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
