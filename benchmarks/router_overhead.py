"""Router overhead: direct to a demo node vs a bare aiohttp pass-through proxy vs the router.

    .venv/bin/python benchmarks/router_overhead.py --diagnose   # ~2 min on 2 cores
    .venv/bin/python benchmarks/router_overhead.py --seconds 3 --concurrency 1 16
    .venv/bin/python benchmarks/router_overhead.py --baseline /tmp/base/router  # before/after
    .venv/bin/python benchmarks/router_overhead.py --durable    # + ledger.commit_mode=durable
    .venv/bin/python benchmarks/router_overhead.py --workers 1 2 --concurrency 16 64   # serve --workers N

Everything runs on 127.0.0.1 in separate processes: one demo node (``fdp-router
demo-node``), one bare proxy (this file with ``--proxy``: aiohttp server + one pooled
ClientSession forwarding the body; the floor for any aiohttp gateway), and the router
(``fdp-router serve``, ONE worker process) with everything on: HS256 JWT verification,
durable SQLite ledger reservation + commit with the hash-chained encrypted audit record,
balancer, Prometheus metrics, cache lookup (every prompt is unique, so every request
misses and is charged), admission control. The JSON access log is off (``--no-access-log``).
The load generator is this process (asyncio + aiohttp), so it competes for the same cores:
numbers are a floor for the machine, comparable between the three targets. CPU per request
is reported for the whole serving process tree and for its main threads (the event loops); the
rest is other threads (the router's ledger writer). With ``--workers N [M ...]`` the router
rows are ``fdp-router serve --workers N`` (one row per N, each with its own ledger file): the
CPU of a tree is its parent's plus every descendant's (the workers), read from ``/proc``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the bare proxy ---------------------------------------------------------------------------


def run_proxy(port: int, upstream: str, loop: str = "asyncio") -> None:
    from aiohttp import web
    from fdp_router.service_cli import new_loop

    async def on_startup(app: web.Application) -> None:
        app["session"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, limit_per_host=64))

    async def on_cleanup(app: web.Application) -> None:
        await app["session"].close()

    async def forward(request: web.Request) -> web.Response:
        body = await request.read()
        async with request.app["session"].post(
            upstream + request.path, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return web.Response(body=await resp.read(), status=resp.status, content_type="application/json")

    app = web.Application()
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_post("/v1/chat/completions", forward)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=new_loop(loop))


# --- diagnosis: the router with a no-op ledger ------------------------------------------------


def run_router_without_ledger(config: str) -> None:
    """The same router and config, but a ledger that records nothing (NOT for use: it only
    separates the router's own cost from the durable ledger's in the report)."""
    import datetime as dt
    import uuid

    from aiohttp import web
    from fdp_router.app import Settings, create_app
    from fdp_router.config import LedgerConfig, PrivacyConfig, load_config
    from fdp_router.privacy.accounting import epsilon_of
    from fdp_router.privacy.api import BudgetStatus, Charge, Ledger, Reservation, Scope

    class NoopLedger(Ledger):
        def __init__(self, privacy: PrivacyConfig) -> None:
            self.delta = privacy.delta

        async def reserve(self, charge: Charge, nodes: tuple[str, ...] = ()) -> Reservation:
            eps = epsilon_of(charge.event, self.delta)  # type: ignore[arg-type]
            return Reservation(uuid.uuid4().hex, charge, eps, self.delta, dt.datetime.now(dt.UTC), 1e6)

        async def commit(self, reservation_id: str, nodes: tuple[str, ...] = ()) -> None:
            return None

        async def release(self, reservation_id: str) -> None:
            return None

        async def budget(self, scope: Scope, key: str) -> BudgetStatus:
            return BudgetStatus(scope, key, 1e6, 0.0, 1e6, self.delta, None, None)

        async def close(self) -> None:
            return None

    async def factory(ledger: LedgerConfig, privacy: PrivacyConfig) -> Ledger:
        return NoopLedger(privacy)

    cfg = load_config(config)
    settings = Settings(config=cfg, ledger_factory=factory, access_log=False)
    from fdp_router.service_cli import new_loop

    # The loop `fdp-router serve` uses by default, as the "router" row's.
    loop = new_loop("uvloop")
    web.run_app(
        create_app(settings), host="127.0.0.1", port=cfg.server.port, access_log=None, print=None, loop=loop
    )


def serve(config: Path, env: dict[str, str], workers: int = 1) -> subprocess.Popen[bytes]:
    """`fdp-router serve` as the benchmark runs it: one worker process (unless `workers` > 1:
    a supervising parent and that many worker processes), access log off."""
    return subprocess.Popen(
        [
            str(BIN / "fdp-router"),
            "serve",
            "--config",
            str(config),
            "--no-access-log",
            "--log-level",
            "WARNING",
            *(["--workers", str(workers)] if workers > 1 else []),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# --- load generation --------------------------------------------------------------------------

# Every prompt is this question plus a unique tag: the demo PHI node answers it through its DP
# mechanism, and the router's answer cache never hits.
QUESTION = "Most common first-line treatment for hypertension among our patients?"
NODE_PRIVACY = {"epsilon": 0.001, "delta": 0.0, "mechanism": "pure_dp", "purpose": "release"}


async def load(
    url: str, headers: dict[str, str], concurrency: int, seconds: float
) -> tuple[list[float], int, float]:
    """Closed-loop load: `concurrency` workers for `seconds`. (latencies, errors, elapsed)."""
    lat: list[float] = []
    errors = 0
    counter = 0
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn, headers=headers) as http:

        async def one(content: str) -> bool:
            # The node is a PHI demo node: a direct or proxied call carries the privacy
            # parameters the router would send; the router ignores a client's copy.
            body = {"messages": [{"role": "user", "content": content}], "fdp_privacy": NODE_PRIVACY}
            async with http.post(url, json=body) as resp:
                await resp.read()
                return resp.status == 200

        await asyncio.gather(
            *(one(f"{QUESTION} warm {i} {secrets.token_hex(4)}") for i in range(concurrency))
        )
        deadline = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors, counter
            while time.perf_counter() < deadline:
                counter += 1
                t0 = time.perf_counter()
                ok = await one(f"{QUESTION} q{counter}-{secrets.token_hex(4)}")
                lat.append(time.perf_counter() - t0)
                errors += not ok

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return lat, errors, elapsed


def _stat_cpu(path: Path) -> float:
    fields = path.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """`pid` and all its live descendants (``/proc/PID/task/TID/children``)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:  # gone meanwhile
            continue
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User + system CPU time of a process tree (all threads of `pid` and of its descendants:
    ``serve --workers N``'s parent and workers) and of its processes' main threads (the event
    loops), from /proc: independent of how busy the rest of the machine is, unlike wall-clock
    throughput. The difference is the other threads' (for the router: the ledger writer)."""
    total = loop = 0.0
    for p in _tree(pid):
        try:
            total += _stat_cpu(Path(f"/proc/{p}/stat"))
            loop += _stat_cpu(Path(f"/proc/{p}/task/{p}/stat"))
        except OSError:
            continue
    return total, loop


async def wait_workers(url: str, headers: dict[str, str], workers: int, timeout: float = 120.0) -> None:
    """Until every one of `workers` processes answered once (their ``X-FDP-Worker`` header)."""
    if workers <= 1:
        return
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only workers {sorted(seen)} of {workers} answered")
        # A new connection each time: the kernel spreads connections, not requests.
        async with aiohttp.ClientSession(headers=headers) as http, http.get(url) as resp:
            seen.add(resp.headers.get("X-FDP-Worker", "?"))
        await asyncio.sleep(0.05)


def summarize(lat: list[float], errors: int, elapsed: float) -> dict[str, Any]:
    lat = sorted(lat)
    return {
        "requests": len(lat),
        "errors": errors,
        "rps": len(lat) / elapsed,
        "p50_ms": statistics.median(lat) * 1000,
        "p99_ms": lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000,
    }


async def wait_http(url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            try:
                async with http.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def bench_token(secret: str) -> str:
    """A clinician's token for `bench_config`'s router (issuer and audience "bench")."""
    from fdp_router.auth import mint_token

    return mint_token(
        secret.encode(),
        user="bench",
        department="cardiology",
        roles=["clinician"],
        issuer="bench",
        audience="bench",
        ttl_seconds=3600,
    )


def bench_config(tmp: Path, node_url: str, port: int) -> dict[str, Any]:
    """The router config every router benchmark measures: one demo PHI node, a durable SQLite
    ledger with an audit key, budgets that never run out, rate limits off (one user at full
    speed). FDP_BENCH_IDLE_FAST_PATH=1 turns the opt-in ledger.idle_fast_path on (round 4 ran
    with it on, when it was the default)."""
    (tmp / "audit.key").write_text(secrets.token_hex(32))
    return {
        "server": {"host": "127.0.0.1", "port": port},
        "nodes": [
            {
                "id": "bench-node",
                "hospital": "bench-hospital",
                "endpoint": node_url,
                "model": "patient-stats",
                "privacy": {"data_class": "phi", "mechanism": "pure_dp"},
            }
        ],
        "privacy": {
            "default_epsilon_per_query": 0.001,
            "max_epsilon_per_query": 1.0,
            "budgets": {"per_user": 1e6, "per_department": 1e7, "per_hospital": 1e8},
        },
        "routing": {"strategy": "least_request"},
        "auth": {"algorithms": ["HS256"], "issuer": "bench", "audience": "bench"},
        "ledger": {
            "backend": "sqlite",
            "sqlite_path": str(tmp / "ledger.sqlite"),
            "audit_key_file": str(tmp / "audit.key"),
            # the default, written out so that a --baseline tree older than that default
            # (durable until 2026-11-30) runs the same mode
            "commit_mode": "deferred",
            "idle_fast_path": os.environ.get("FDP_BENCH_IDLE_FAST_PATH") == "1",
        },
        "overload": {"max_concurrency": 256, "max_queue": 1024},
        "rate_limits": {
            "per_user": {"rate_per_second": 0, "burst": 0},
            "per_department": {"rate_per_second": 0, "burst": 0},
        },
    }


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="fdp-bench-"))
    node_port, proxy_port, router_port = free_port(), free_port(), free_port()
    node_url = f"http://127.0.0.1:{node_port}"
    secret = secrets.token_hex(32)
    cfg = bench_config(tmp, node_url, router_port)
    cfg_path = tmp / "router.json"
    cfg_path.write_text(json.dumps(cfg))
    noop_port = free_port()
    noop_path = tmp / "router-noop.json"
    noop_path.write_text(json.dumps({**cfg, "server": {"host": "127.0.0.1", "port": noop_port}}))
    base_port = free_port()
    base_path = tmp / "router-baseline.json"
    base_cfg = {
        **cfg,
        "server": {"host": "127.0.0.1", "port": base_port},
        "ledger": {**cfg["ledger"], "sqlite_path": str(tmp / "ledger-baseline.sqlite")},  # type: ignore[dict-item]
    }
    base_path.write_text(json.dumps(base_cfg))
    durable_port = free_port()
    durable_path = tmp / "router-durable.json"
    durable_cfg = {
        **cfg,
        "server": {"host": "127.0.0.1", "port": durable_port},
        "ledger": {  # type: ignore[dict-item]
            **cfg["ledger"],
            "sqlite_path": str(tmp / "ledger-durable.sqlite"),
            "commit_mode": "durable",
        },
    }
    durable_path.write_text(json.dumps(durable_cfg))
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
    if args.diagnose:
        procs.append(
            subprocess.Popen(
                [sys.executable, str(HERE), "--noop-ledger-router", str(noop_path)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    if args.durable:
        procs.append(serve(durable_path, env))
        durable_pid = procs[-1].pid
    uv_proxy_port = free_port()
    if args.uvloop_proxy:
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(HERE),
                    "--proxy",
                    str(uv_proxy_port),
                    "--upstream",
                    node_url,
                    "--proxy-loop",
                    "uvloop",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        uv_proxy_pid = procs[-1].pid
    idle_ab_port = free_port()
    idle_ab_on = not cfg["ledger"]["idle_fast_path"]  # type: ignore[index]
    idle_ab_name = f"router, idle_fast_path {'on' if idle_ab_on else 'off'}"
    if args.idle_ab:
        # The same tree with ledger.idle_fast_path flipped: an on/off A/B in the same run.
        idle_ab_path = tmp / "router-idle-ab.json"
        idle_ab_cfg = {
            **cfg,
            "server": {"host": "127.0.0.1", "port": idle_ab_port},
            "ledger": {  # type: ignore[dict-item]
                **cfg["ledger"],
                "sqlite_path": str(tmp / "ledger-idle-ab.sqlite"),
                "idle_fast_path": idle_ab_on,
            },
        }
        idle_ab_path.write_text(json.dumps(idle_ab_cfg))
        procs.append(serve(idle_ab_path, env))
        idle_ab_pid = procs[-1].pid
    if args.baseline:
        # The same router command, importing fdp_router from another source tree (an older
        # revision): before/after compared in one run, under the same machine load.
        procs.append(serve(base_path, {**env, "PYTHONPATH": str(Path(args.baseline).resolve())}))
    workers: dict[int, tuple[int, int]] = {}  # N -> (port, pid of the supervising parent)
    for n in sorted(set(args.workers or ())):
        if n <= 1:
            continue  # the "router" row is one worker
        w_port = free_port()
        w_path = tmp / f"router-workers{n}.json"
        w_cfg = {
            **cfg,
            "server": {"host": "127.0.0.1", "port": w_port},
            "ledger": {**cfg["ledger"], "sqlite_path": str(tmp / f"ledger-workers{n}.sqlite")},  # type: ignore[dict-item]
        }
        w_path.write_text(json.dumps(w_cfg))
        procs.append(serve(w_path, env, workers=n))
        workers[n] = (w_port, procs[-1].pid)
    try:
        await wait_http(f"{node_url}/health")
        await wait_http(f"http://127.0.0.1:{proxy_port}/v1/chat/completions")
        await wait_http(f"http://127.0.0.1:{router_port}/healthz")
        if args.diagnose:
            await wait_http(f"http://127.0.0.1:{noop_port}/healthz")
        if args.durable:
            await wait_http(f"http://127.0.0.1:{durable_port}/healthz")
        if args.uvloop_proxy:
            await wait_http(f"http://127.0.0.1:{uv_proxy_port}/v1/chat/completions")
        if args.baseline:
            await wait_http(f"http://127.0.0.1:{base_port}/healthz")
        if args.idle_ab:
            await wait_http(f"http://127.0.0.1:{idle_ab_port}/healthz")
        for n, (w_port, _) in workers.items():
            await wait_http(f"http://127.0.0.1:{w_port}/healthz")
            await wait_workers(f"http://127.0.0.1:{w_port}/healthz", {}, n)
        tok = bench_token(secret)
        targets: dict[str, tuple[str, dict[str, str]]] = {
            "direct": (f"{node_url}/v1/chat/completions", {}),
            "bare proxy": (f"http://127.0.0.1:{proxy_port}/v1/chat/completions", {}),
            "router": (
                f"http://127.0.0.1:{router_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            ),
        }
        pids = {"direct": procs[0].pid, "bare proxy": procs[1].pid, "router": procs[2].pid}
        if args.diagnose:
            pids["router, no-op ledger"] = procs[3].pid
            targets["router, no-op ledger"] = (
                f"http://127.0.0.1:{noop_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            )
        if args.uvloop_proxy:
            pids["bare proxy, uvloop"] = uv_proxy_pid
            targets["bare proxy, uvloop"] = (f"http://127.0.0.1:{uv_proxy_port}/v1/chat/completions", {})
        if args.durable:
            pids["router, durable commit"] = durable_pid
            targets["router, durable commit"] = (
                f"http://127.0.0.1:{durable_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            )
        if args.idle_ab:
            pids[idle_ab_name] = idle_ab_pid
            targets[idle_ab_name] = (
                f"http://127.0.0.1:{idle_ab_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            )
        if args.baseline:
            pids["router, baseline"] = procs[-1].pid
            targets["router, baseline"] = (
                f"http://127.0.0.1:{base_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            )
        for n, (w_port, w_pid) in workers.items():
            name = f"router, {n} workers"
            pids[name] = w_pid
            targets[name] = (
                f"http://127.0.0.1:{w_port}/v1/chat/completions",
                {"Authorization": f"Bearer {tok}"},
            )
        rows = []
        for c in args.concurrency:
            # Targets interleaved over several short rounds, so that load from other jobs on
            # the machine hits all of them alike; latencies pooled, throughput = total/time.
            acc: dict[str, tuple[list[float], int, float]] = {name: ([], 0, 0.0) for name in targets}
            cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            loop_cpu: dict[str, float] = dict.fromkeys(targets, 0.0)
            for _ in range(args.rounds):
                for name, (url, headers) in targets.items():
                    total0, loop0 = cpu_seconds(pids[name])
                    lat, errs, elapsed = await load(url, headers, c, args.seconds / args.rounds)
                    total1, loop1 = cpu_seconds(pids[name])
                    cpu[name] += total1 - total0
                    loop_cpu[name] += loop1 - loop0
                    a_lat, a_err, a_el = acc[name]
                    acc[name] = (a_lat + lat, a_err + errs, a_el + elapsed)
            base = summarize(*acc["direct"])
            for name in targets:
                r = summarize(*acc[name])
                r.update(
                    {
                        "target": name,
                        "concurrency": c,
                        "added_p50_ms": r["p50_ms"] - base["p50_ms"],
                        "added_p99_ms": r["p99_ms"] - base["p99_ms"],
                        # CPU of the serving process per request (includes warm-up requests,
                        # c of them per round: a small overestimate).
                        "cpu_us_per_request": cpu[name] / (r["requests"] + c * args.rounds) * 1e6,
                        "loop_cpu_us_per_request": loop_cpu[name] / (r["requests"] + c * args.rounds) * 1e6,
                    }
                )
                rows.append(r)
                print(
                    f"c={c:<3} {name:<24} {r['rps']:8.0f} req/s"
                    f"  p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms"
                    f"  added p50 {r['added_p50_ms']:+6.2f} ms  p99 {r['added_p99_ms']:+6.2f} ms"
                    f"  cpu {r['cpu_us_per_request']:6.0f} us/req"
                    f" (event loop {r['loop_cpu_us_per_request']:4.0f})  errors {r['errors']}",
                    flush=True,
                )
        if args.idle_ab:
            fsync = fsync_ms(tmp)
            print(f"fsync of a 4 KiB write in the ledgers' directory: median {fsync:.2f} ms", flush=True)
            print_targets(rows, fsync)
        return rows
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)


def fsync_ms(directory: Path, n: int = 200) -> float:
    """Median time of one 4 KiB write + fsync in `directory` (a durable write's floor)."""
    path = directory / "fsync-probe"
    times = []
    with path.open("wb") as f:
        for _ in range(n):
            f.write(os.urandom(4096))
            f.flush()
            t0 = time.perf_counter()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return statistics.median(times) * 1000


def print_targets(rows: list[dict[str, Any]], fsync: float) -> None:
    """Issue 14's two targets for every router row: c=1 added p50 <= the bare proxy's added
    p50 + one fsync + 1 ms; CPU per request <= 2.5x the bare proxy's (stated for c=16)."""
    by = {(r["target"], r["concurrency"]): r for r in rows}
    for proxy in ("bare proxy", "bare proxy, uvloop"):
        for c in sorted({r["concurrency"] for r in rows}):
            bare = by.get((proxy, c))
            if bare is None:
                continue
            budget = bare["added_p50_ms"] + fsync + 1.0
            for (name, cc), r in by.items():
                if cc != c or not name.startswith("router"):
                    continue
                ratio = r["cpu_us_per_request"] / bare["cpu_us_per_request"]
                line = f"target c={c:<3} {name:<30} CPU/req {ratio:.2f}x the {proxy}'s (<= 2.5 at c=16)"
                if c == 1:
                    ok = "met" if r["added_p50_ms"] <= budget else "not met"
                    line += f"; added p50 {r['added_p50_ms']:+.2f} ms vs {budget:.2f} ms: {ok}"
                print(line, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0, help="measurement time per cell")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per cell")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument(
        "--diagnose",
        action="store_true",
        help="also measure the router with a no-op ledger (router cost alone)",
    )
    ap.add_argument(
        "--durable",
        action="store_true",
        help="also measure the router with ledger.commit_mode=durable (the commit record awaited)",
    )
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also measure the router imported from DIR (a directory holding an fdp_router "
        "package, e.g. `git archive REV router | tar -x -C /tmp/base` gives /tmp/base/router)",
    )
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        metavar="N",
        help="also measure `fdp-router serve --workers N` for each N > 1 (the `router` row is one "
        "worker); CPU is the whole process tree's",
    )
    ap.add_argument(
        "--idle-ab",
        action="store_true",
        help="also measure the router with ledger.idle_fast_path flipped from what "
        "FDP_BENCH_IDLE_FAST_PATH sets (it applies to every router, the baseline's too): an "
        "on/off A/B of one tree in one run; then prints the fsync and issue 14's targets",
    )
    ap.add_argument(
        "--uvloop-proxy",
        action="store_true",
        help="also measure the bare proxy on uvloop (the loop `fdp-router serve` uses by default); "
        "the targets are printed against both proxies",
    )
    ap.add_argument("--noop-ledger-router", help=argparse.SUPPRESS)
    ap.add_argument("--proxy", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--proxy-loop", default="asyncio", help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.proxy:
        run_proxy(args.proxy, args.upstream, args.proxy_loop)
        return 0
    if args.noop_ledger_router:
        run_router_without_ledger(args.noop_ledger_router)
        return 0
    rows = asyncio.run(main_async(args))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0 if all(r["errors"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
