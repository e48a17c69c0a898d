"""Two or more router trees side by side: CPU and context switches per request, interleaved.

    .venv/bin/python benchmarks/router_switches.py /tmp/base/router router --concurrency 16
    .venv/bin/python benchmarks/router_switches.py A/router B/router --concurrency 1 --seconds 3 --rounds 10

Each tree (a directory holding ``fdp_router``) serves through its own ``fdp-router serve``
(``PYTHONPATH`` set to it, the config of ``router_overhead.py``) in front of one demo node;
all run at once and take the load in turn, in alternating order, for ``--rounds`` rounds of
``--seconds``. Per request, medians over the rounds: the serving process's CPU (all threads)
and its event loop's, p50 latency, and the voluntary and involuntary context switches of the
main thread (the event loop) and of the other threads (the ledger writer), read from
``/proc/<pid>/task/*/status``. An involuntary switch of the loop is a preemption: a thread
woken on its CPU took it (see ledger/core.py, "Writer scheduling").
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from router_overhead import BIN, bench_config, bench_token, cpu_seconds, free_port, serve, wait_http
from router_streaming import load


def switches(pid: int) -> dict[str, tuple[int, int]]:
    """(voluntary, involuntary) context switches so far: the main thread's and the others'."""
    out = {"loop": [0, 0], "other": [0, 0]}
    for tid in os.listdir(f"/proc/{pid}/task"):
        fields = dict(
            line.split(":\t", 1)
            for line in Path(f"/proc/{pid}/task/{tid}/status").read_text().splitlines()
            if ":\t" in line
        )
        acc = out["loop" if tid == str(pid) else "other"]
        acc[0] += int(fields["voluntary_ctxt_switches"])
        acc[1] += int(fields["nonvoluntary_ctxt_switches"])
    return {k: (v[0], v[1]) for k, v in out.items()}


async def run(trees: list[str], concurrency: int, seconds: float, rounds: int) -> dict[str, dict[str, float]]:
    tmp = Path(tempfile.mkdtemp(prefix="fdp-switches-"))
    node_port = free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    secret = secrets.token_hex(32)
    node = subprocess.Popen(
        [str(BIN / "fdp-router"), "demo-node", "--port", str(node_port), "--name", "bench"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    routers: list[tuple[str, int, subprocess.Popen[bytes]]] = []
    try:
        for i, tree in enumerate(trees):
            port = free_port()
            home = tmp / f"r{i}"
            home.mkdir()
            (home / "router.json").write_text(json.dumps(bench_config(home, node_url, port)))
            env = {**os.environ, "FDP_JWT_SECRET": secret, "PYTHONPATH": str(Path(tree).resolve())}
            routers.append((tree, port, serve(home / "router.json", env)))
        await wait_http(f"{node_url}/health")
        headers = {"Authorization": f"Bearer {bench_token(secret)}"}
        for _, port, _ in routers:
            await wait_http(f"http://127.0.0.1:{port}/healthz")
            await load(f"http://127.0.0.1:{port}/v1/chat/completions", headers, concurrency, 1.0, False)
        rows: dict[str, list[dict[str, float]]] = {tree: [] for tree in trees}
        for r in range(rounds):
            for tree, port, proc in routers if r % 2 == 0 else routers[::-1]:
                cpu0, sw0 = cpu_seconds(proc.pid), switches(proc.pid)
                lat, _, _, elapsed = await load(
                    f"http://127.0.0.1:{port}/v1/chat/completions", headers, concurrency, seconds, False
                )
                cpu1, sw1 = cpu_seconds(proc.pid), switches(proc.pid)
                n = max(1, len(lat))
                row = {
                    "cpu_us": (cpu1[0] - cpu0[0]) / n * 1e6,
                    "loop_cpu_us": (cpu1[1] - cpu0[1]) / n * 1e6,
                    "p50_ms": statistics.median(lat) * 1000 if lat else float("nan"),
                    "rps": n / elapsed,
                }
                for k in sw1:
                    row[f"{k}_voluntary"] = (sw1[k][0] - sw0[k][0]) / n
                    row[f"{k}_involuntary"] = (sw1[k][1] - sw0[k][1]) / n
                rows[tree].append(row)
        return {tree: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for tree, rs in rows.items()}
    finally:
        for _, _, proc in routers:
            proc.terminate()
        node.terminate()
        for _, _, proc in routers:
            proc.wait(timeout=10)
        node.wait(timeout=10)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trees", nargs="+", help="directories holding fdp_router (e.g. router, /tmp/base/router)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", help="write the medians here")
    args = ap.parse_args()
    result = asyncio.run(run(args.trees, args.concurrency, args.seconds, args.rounds))
    for tree, m in result.items():
        print(
            f"c={args.concurrency:<3} {tree}: " + "  ".join(f"{k} {v:.2f}" for k, v in m.items()), flush=True
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"concurrency": args.concurrency, "rows": result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
