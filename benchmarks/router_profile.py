"""Where the router's CPU goes: py-spy samples of `fdp-router serve` under the benchmark's load.

    .venv/bin/pip install py-spy     # a profiler from PyPI, not a project dependency
    .venv/bin/python benchmarks/router_profile.py                       # c=16, whole answers
    .venv/bin/python benchmarks/router_profile.py --stream --raw prof.txt
    .venv/bin/python benchmarks/router_profile.py --concurrency 1 --wall

One demo PHI node and the router with everything on (the config, token and load generator of
``router_overhead.py``), closed-loop load for ``--seconds``, while ``py-spy record`` samples
the router process (all threads; with ``--gil``, the default, only the thread holding the GIL,
i.e. Python work, which is what the event loop and the ledger writer thread compete for;
``--wall`` samples every thread, waits included). Prints the serving process's CPU per
request (event loop and other threads, from /proc), the share of samples per category (the
node call, aiohttp's server side, the router's own code, the ledger on the loop and in its
writer thread, metrics, validation, asyncio) and the functions with the most samples.
py-spy needs ptrace rights over the router process (root, or CAP_SYS_PTRACE).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_overhead import BIN, bench_config, bench_token, cpu_seconds, free_port, serve, wait_http
from router_streaming import load

# (category, test on the sample's thread and frames): the first that matches counts the sample.
CATEGORIES: list[tuple[str, str]] = [
    ("ledger writer thread (Python: seal, MACs, filter, SQL parameters)", "writer"),
    ("other threads", "thread"),
    ("metrics (prometheus_client, ledger observer)", "metrics"),
    ("ledger transaction on the loop (idle fast path)", "inline"),
    ("ledger on the loop (submit, futures, timers)", "ledger"),
    ("node call (aiohttp client, node answer parsed)", "node"),
    ("request validation (pydantic)", "pydantic"),
    ("router code (auth, request path, handlers, streaming, JSON)", "router"),
    ("aiohttp server (request parsing, response writing)", "server"),
    ("aiohttp, other (streams, protocols)", "aiohttp"),
    ("asyncio event loop (epoll, callbacks, tasks, sockets)", "asyncio"),
    ("other", "other"),
]


def category(thread: str, frames: list[str]) -> str:
    stack = ";".join(frames)
    leaf = frames[-1] if frames else ""
    tests = {
        "writer": "fdp-ledger-writer" in thread,
        "thread": "MainThread" not in thread,
        "metrics": any(m in leaf for m in ("prometheus_client", "metrics.py", "ledger_health.py")),
        "inline": "_run_inline" in stack,
        "ledger": "privacy/ledger" in stack,
        "node": "BackendPool" in stack or "NodeStream" in stack,
        "pydantic": "pydantic" in leaf,
        "router": "fdp_router" in leaf,
        "server": "aiohttp" in leaf and any(m in leaf for m in ("web_", "http_writer", "http_parser")),
        "aiohttp": "aiohttp" in leaf,
        "asyncio": "asyncio" in leaf or "selectors" in leaf,
        "other": True,
    }
    return next(name for name, key in CATEGORIES if tests[key])


def summarize(raw: Path, top: int) -> None:
    cats: collections.Counter[str] = collections.Counter()
    funcs: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_text = line.rpartition(" ")
        if not stack:
            continue
        n = int(n_text)
        total += n
        thread, *frames = stack.split(";")
        threads[re.sub(r" \(\d+\)", "", thread)] += n
        cats[category(thread, frames)] += n
        if frames:
            funcs[re.sub(r" \(/.*?/(site-packages|router|python3\.\d+)/", " (", frames[-1])] += n
    if not total:
        print("no samples")
        return
    print(f"\n{total} samples; per thread:")
    for name, n in threads.most_common():
        print(f"  {n / total * 100:5.1f} %  {name}")
    print("per category:")
    for name, n in cats.most_common():
        print(f"  {n / total * 100:5.1f} %  {name}")
    print(f"top {top} functions (samples in the function itself):")
    for name, n in funcs.most_common(top):
        print(f"  {n / total * 100:5.1f} %  {name}")


async def main_async(args: argparse.Namespace, spy: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="fdp-profile-"))
    node_port, router_port = free_port(), free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    secret = secrets.token_hex(32)
    (tmp / "router.json").write_text(json.dumps(bench_config(tmp, node_url, router_port)))
    env = {**os.environ, "FDP_JWT_SECRET": secret}
    node = subprocess.Popen(
        [str(BIN / "fdp-router"), "demo-node", "--port", str(node_port), "--name", "bench"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    router = serve(tmp / "router.json", env)
    try:
        await wait_http(f"{node_url}/health")
        await wait_http(f"http://127.0.0.1:{router_port}/healthz")
        tok = bench_token(secret)
        url = f"http://127.0.0.1:{router_port}/v1/chat/completions"
        headers = {"Authorization": f"Bearer {tok}"}
        await load(url, headers, args.concurrency, 1.0, args.stream)  # warm-up
        cmd = [spy, "record", "-r", str(args.rate), "-d", str(int(args.seconds)), "-f", "raw"]
        cmd += ["-o", str(args.raw), "--threads", "-p", str(router.pid)]
        cmd += [] if args.wall else ["--gil"]
        sampler = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        await asyncio.sleep(0.5)
        cpu0 = cpu_seconds(router.pid)
        lat, _, errors, elapsed = await load(url, headers, args.concurrency, args.seconds - 1.0, args.stream)
        cpu1 = cpu_seconds(router.pid)
        _, err = sampler.communicate()
        if sampler.returncode != 0:
            print(err.decode(errors="replace")[-2000:], file=sys.stderr)
        n = max(1, len(lat))
        print(
            f"c={args.concurrency} {'stream' if args.stream else 'whole'}: {len(lat) / elapsed:.0f} req/s,"
            f" errors {errors}; router CPU {(cpu1[0] - cpu0[0]) / n * 1e6:.0f} us/req"
            f" (event loop {(cpu1[1] - cpu0[1]) / n * 1e6:.0f}, other threads"
            f" {((cpu1[0] - cpu0[0]) - (cpu1[1] - cpu0[1])) / n * 1e6:.0f})",
            flush=True,
        )
    finally:
        router.terminate()
        node.terminate()
        router.wait(timeout=10)
        node.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=12.0, help="sampling time (load runs as long)")
    ap.add_argument("--stream", action="store_true", help="streamed answers (stream: true)")
    ap.add_argument("--wall", action="store_true", help="sample every thread, not only the GIL holder")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--raw", type=Path, default=None, help="keep py-spy's raw (collapsed) stacks here")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    spy = shutil.which("py-spy") or str(BIN / "py-spy")
    if not Path(spy).exists():
        print("py-spy not found: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2
    args.raw = args.raw or Path(tempfile.mkdtemp(prefix="fdp-profile-raw-")) / "stacks.txt"
    asyncio.run(main_async(args, spy))
    summarize(args.raw, args.top)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
